"""Training as of a day long after the data ends (a newcomer's "today" on last year's export)
is one error naming the newest order and the date to train as of, not "a single class"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lifecycle.transform import transform
from tests.conftest import ORDERS_ONLY_SOURCES
from tests.transform.conftest import land, scratch_database, settings_for, write

LAST_ORDER = dt.date(2024, 3, 1)
AS_OF = dt.date(2025, 3, 1)  # a year after the export's newest order


def _orders() -> list[str]:
    lines = []
    for i in range(30):
        first = LAST_ORDER - dt.timedelta(days=400 - 9 * i)
        lines.append(f"C{i},C{i}-1,{first}T10:00:00Z,{20 + i}.00")
        lines.append(f"C{i},C{i}-2,{LAST_ORDER - dt.timedelta(days=i)}T10:00:00Z,30.00")
    return lines


@contextmanager
def _training_sets(
    embedded_settings, tmp_path, orders: list[str], snapshots: int | None = None
) -> Iterator[tuple]:
    """Yield (settings, churn spec) of a scratch warehouse that landed the orders-only CSV
    `orders` (rows under the contract's header), built as of AS_OF, with its training sets
    (`snapshots` of them, or the spec's count)."""
    from ml import train as tr
    from ml.churn import load_churn_spec

    text = "\n".join(["customer_id,order_id,ordered_at,amount", *orders]) + "\n"
    path = write(tmp_path / "world" / "orders" / "orders.csv", text)
    sources = write(tmp_path / "world" / "sources.yml", ORDERS_ONLY_SOURCES.format(orders=path))
    assert sources.exists()
    with scratch_database(embedded_settings) as url:
        settings = settings_for(tmp_path / "home", url, tmp_path / "world")
        land(settings, AS_OF, full=True, sources=("orders",))
        transform(AS_OF, settings, quiet=True)
        spec = load_churn_spec(None)
        if snapshots is not None:
            spec["snapshots"].update(count=snapshots)
        tr.build_training_sets(AS_OF, settings, spec)
        yield settings, spec


def test_training_past_the_end_of_the_data_names_the_newest_order(embedded_settings, tmp_path):
    from ml import train as tr
    from ml.train import TrainError

    with (
        _training_sets(embedded_settings, tmp_path, _orders(), snapshots=3) as (settings, spec),
        pytest.raises(TrainError) as refused,
    ):
        tr.load_frames(AS_OF, settings, spec)
    newest_snapshot = AS_OF - dt.timedelta(days=90)
    assert str(refused.value) == (
        f"every customer is labelled churned at every snapshot: the newest order in the data "
        f"is of {LAST_ORDER}, 365 days before {AS_OF}, and the newest snapshot "
        f"({newest_snapshot}) looks for orders after it; train as of a day the data reaches "
        f"(`lifecycle train --as-of {LAST_ORDER}`, or the pipeline's --date {LAST_ORDER})"
    )


def test_customer_ids_that_name_orders_are_one_error_saying_so(embedded_settings, tmp_path):
    """Olist's orders file gives every order a customer id of its own: nobody orders twice,
    so every label is "churned". Training says that and what to map, not "a single class"."""
    from ml import train as tr
    from ml.train import TrainError

    orders = [f"K{i},O{i},{AS_OF - dt.timedelta(days=3 * i)},25.00" for i in range(120)]
    with (
        _training_sets(embedded_settings, tmp_path, orders, snapshots=3) as (settings, spec),
        pytest.raises(TrainError) as refused,
    ):
        tr.load_frames(AS_OF, settings, spec)
    assert str(refused.value) == (
        "every customer is labelled churned at every snapshot: none of the 120 buyers ordered "
        "more than once, so no one is seen to stay; if the orders' customer_id names an order "
        "rather than a person (a new id with every order), map the column that names the "
        "person (e.g. an email, or Olist's customer_unique_id) in the sources file"
    )


def test_a_history_shorter_than_the_snapshots_still_segments_todays_customers(
    embedded_settings, tmp_path
):
    """Four months of orders: no training snapshot holds a customer, and segmentation
    dropped every feature as having "no value in any of the 0 training rows", though it
    fits on today's customers. What today's customers carry is what it keeps now."""
    from ml import train as tr
    from ml.specs import load_spec

    orders = [
        f"S{i % 40},S{i},{AS_OF - dt.timedelta(days=i % 120)},{10 + i % 7}.00" for i in range(200)
    ]
    with _training_sets(embedded_settings, tmp_path, orders) as (settings, spec):
        seg = load_spec("segmentation")
        frames = tr.load_current(AS_OF, settings, spec, seg["features"])
    assert len(frames.current) == 40
    kept, dropped = tr.segmentation_spec(seg, frames)
    assert {"days_since_last_order", "count_orders", "revenue"} <= set(kept["features"])
    assert not any("training rows" in why for why in dropped.values()), dropped
