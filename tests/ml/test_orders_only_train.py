"""`lifecycle train` on a tiny orders-only world: absent sources' features are dropped with a
stated reason, and a CLV fit the data cannot support is reported in one line while churn
and segmentation are trained and registered (exit code 3)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from lifecycle.transform import transform
from tests.conftest import ORDERS_ONLY_SOURCES
from tests.transform.conftest import land, scratch_database, settings_for, write

AS_OF = dt.date(2024, 6, 30)


def _orders() -> str:
    """40 one-order customers and 4 repeat buyers: too few for BG/NBD (it needs 10), enough
    for both churn classes at each of the 3 snapshots (A-150, A-120, A-90)."""
    day = lambda n: (AS_OF - dt.timedelta(days=n)).isoformat()  # noqa: E731
    lines = ["customer_id,order_id,ordered_at,amount"]
    for i in range(40):
        lines.append(f"S{i},S{i}-1,{day(160 + 3 * i)}T10:00:00Z,{20 + i}.00")
    for i in range(2):  # bought again after the first two snapshots, then silent
        lines += [f"R{i},R{i}-1,{day(200 + i)}T10:00:00Z,50.00"]
        lines += [f"R{i},R{i}-2,{day(100 + i)}T10:00:00Z,60.00"]
    for i in range(2, 4):  # bought again after the last two snapshots
        lines += [f"R{i},R{i}-1,{day(200 + i)}T10:00:00Z,70.00"]
        lines += [f"R{i},R{i}-2,{day(50 + i)}T10:00:00Z,80.00"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def trained(embedded_settings, tmp_path_factory):
    world = tmp_path_factory.mktemp("orders_only_train")
    orders = write(world / "orders" / "orders.csv", _orders())
    sources = write(world / "sources.yml", ORDERS_ONLY_SOURCES.format(orders=orders))
    home = tmp_path_factory.mktemp("orders_only_home")
    with scratch_database(embedded_settings) as url:
        settings = settings_for(home, url, world)
        land(settings, AS_OF, full=True, sources=("orders",))
        transform(AS_OF, settings, quiet=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
        env.update(
            LIFECYCLE_HOME=str(home),
            LIFECYCLE_WAREHOUSE_URL=url,
            LIFECYCLE_WORLD_DIR=str(world),
            LIFECYCLE_SOURCES_FILE=str(sources),
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lifecycle.cli",
                "train",
                "--as-of",
                AS_OF.isoformat(),
                "--set",
                "snapshots.count=3",
            ],
            env=env,
            cwd=world,
            capture_output=True,
            text=True,
            timeout=600,
        )
        yield proc, home, sources, settings_for(home, url, world)


def test_train_reports_the_clv_fit_the_data_cannot_support_and_trains_the_rest(trained):
    proc, *_ = trained
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # MLflow's advice to library authors and registry chatter are not the user's news
    for noise in ("Add type hints", "CloudPickle", "Inferred schema", "already exists"):
        both = proc.stdout + proc.stderr
        assert noise not in both, both[max(0, both.find(noise) - 400) : both.find(noise) + 50]
    lines = [ln for ln in proc.stdout.splitlines() if "not trained" in ln]
    assert lines == [
        "lifecycle_clv not trained: the data cannot fit CLV: BG/NBD fit: only 4 of 44 customers "
        "bought more than once (need at least 10); the drop-out process cannot be estimated"
    ]
    assert "lifecycle_churn v1 -> champion" in proc.stdout
    assert "lifecycle_segmentation v1 -> champion" in proc.stdout
    assert "lifecycle_clv v" not in proc.stdout


def test_churn_and_segmentation_drop_the_absent_sources_features(trained):
    import mlflow

    from lifecycle.settings import load_settings
    from ml import tracking
    from ml.churn import load_churn_spec

    _, home, sources, _ = trained
    settings = load_settings(
        {"LIFECYCLE_HOME": str(home), "LIFECYCLE_WAREHOUSE_URL": "postgresql://unused@127.0.0.1/x"}
    )
    client = tracking.configure(settings)
    params = {}
    for name in (tracking.CHURN_MODEL, tracking.SEGMENTATION_MODEL):
        version = tracking.version_by_alias(client, name, tracking.CHAMPION)
        params[name] = mlflow.get_run(version.run_id).data.params
    churn = params[tracking.CHURN_MODEL]
    # the one training snapshot has no repeat buyer yet: the gap features have no
    # value in any of its 44 rows and are dropped too, rather than faked
    gaps = ["mean_gap_days", "last_gap_days", "gap_trend", "recency_over_gap"]
    # so have the timing features of repeat buyers, and a year-old history; BG/NBD cannot
    # be fitted at any snapshot (4 repeat buyers): its features are empty and dropped
    timing = [
        "gap_p25_days",
        "gap_median_days",
        "gap_p75_days",
        "gap_slope",
        "days_to_usual_next",
        "orders_same_window_last_year",
        "value_trend",
        "days_since_last_refund",
    ]
    btyd = [
        "btyd_p_alive",
        "btyd_expected_purchases",
        "btyd_expected_order_value",
        "btyd_purchases_residual",
        "btyd_p_no_purchase",
    ]
    orders_only = load_churn_spec()["features"]["orders_only"]
    assert churn["features"].split(",") == [
        f for f in orders_only if f not in [*gaps, *timing, *btyd]
    ]
    assert churn["dropped_features"].split(",") == [
        *gaps,
        "sessions_7d",
        "sessions_30d",
        "sessions_90d",
        "product_views_30d",
        "product_views_90d",
        "carts_30d",
        "carts_90d",
        "days_since_last_visit",
        "is_marketing_opt_in",
        *timing,
        *btyd,
        "acquisition_channel",
        "country_code",
    ]
    assert churn["dropped_reason.btyd_p_alive"] == "no value in any of the 44 training rows"
    assert churn["dropped_reason.sessions_7d"] == (
        f"no such source: web events (raw.web__events) is not configured in {sources}"
    )
    assert churn["dropped_reason.gap_trend"] == "no value in any of the 44 training rows"
    assert churn["dropped_reason.country_code"] == (
        f"no such source: CRM contacts (raw.crm__contacts) is not configured in {sources}"
    )
    seg = params[tracking.SEGMENTATION_MODEL]
    assert json.loads(seg["features"]) == [
        "days_since_last_order",
        "count_orders",
        "revenue",
        "avg_order_value",
        "days_since_first_order",
    ]
    assert seg["roles.engagement"] == "None"  # no cluster is named after web visits
    assert seg["dropped_features"] == "sessions_90d"


def test_customers_are_scored_gated_and_activated_without_a_clv_champion(trained):
    """Orders with too few repeat buyers for BG/NBD still give churn risk and segments: the
    daily score task must not wait forever for a CLV champion that the data cannot fit."""
    import psycopg

    from lifecycle.activation.run import run_activation
    from lifecycle.quality.gate import validate_layer
    from ml.score import score

    *_, settings = trained
    result = score(AS_OF, settings)
    assert result.rows == 44
    assert set(result.versions) == {"lifecycle_churn", "lifecycle_segmentation"}
    assert (
        "models: lifecycle_churn v1, lifecycle_segmentation v1, "
        "no CLV champion (p_alive and CLV left empty)"
    ) in result.summary()
    with psycopg.connect(settings.warehouse_url) as conn:
        counts = conn.execute(
            "select count(*), count(churn_probability), count(segment_name), count(p_alive), "
            "count(expected_purchases_12m), count(expected_order_value), count(clv_12m), "
            "count(clv_model_version), min(churn_model_version) "
            "from ml.scores_history where score_date = %s",
            (AS_OF,),
        ).fetchone()
    assert counts == (44, 44, 44, 0, 0, 0, 0, 0, "1")
    verdict = validate_layer("scores", AS_OF, settings)
    assert verdict.passed, [str(vars(o)) for o in verdict.failures]
    with psycopg.connect(settings.warehouse_url) as conn:  # a CLV value with no CLV model
        conn.execute(
            "update ml.scores_history set clv_12m = 1 where score_date = %s "
            "and customer_key = (select min(customer_key) from ml.scores_history)",
            (AS_OF,),
        )
    mixed = validate_layer("scores", AS_OF, settings)
    assert [(o.expectation, o.observed_value) for o in mixed.failures] == [
        ("unexpected_rows_expectation", 1)
    ]
    again = score(AS_OF, settings)  # a rerun replaces the partition: same rows
    assert again.rows == 44
    assert validate_layer("scores", AS_OF, settings).passed
    run_activation(AS_OF, settings)
    with psycopg.connect(settings.warehouse_url) as conn:
        scored = conn.execute(
            "select count(*) filter (where is_scored), count(clv_12m) "
            "from activation.customer_scores_history where as_of_date = %s",
            (AS_OF,),
        ).fetchone()
    assert scored == (44, 0)


def test_todays_customers_alone_are_those_of_the_whole_load(trained):
    """The CLV and segmentation stages read today's customers without the labelled
    snapshots (load_current): the same frame and BTYD fit as the whole load, and the same
    dropped features, both kinds — an absent source, and no value in any training row
    (counted in the database instead of read); a BTYD feature is judged on the whole load."""
    from ml import train as tr
    from ml.churn import load_churn_spec

    *_, settings = trained
    spec = load_churn_spec(None)
    spec["snapshots"].update(count=3)  # as the fixture's `lifecycle train --set` had it
    tr.build_training_sets(AS_OF, settings, spec)
    whole = tr.load_frames(AS_OF, settings, spec)
    wanted = ["count_orders", "mean_gap_days", "sessions_90d", "gap_slope", "country_code"]
    alone = tr.load_current(AS_OF, settings, spec, wanted)
    assert len(alone.current) == 44 and alone.train.empty and alone.holdout.empty
    pd.testing.assert_frame_equal(alone.current, whole.current, check_exact=True)
    assert alone.btyd_fit == whole.btyd_fit
    assert alone.dropped == {f: whole.dropped[f] for f in wanted if f in whole.dropped}
    assert list(alone.dropped) == ["mean_gap_days", "sessions_90d", "gap_slope", "country_code"]
    assert alone.dropped["gap_slope"] == "no value in any of the 44 training rows"
    assert alone.dropped["sessions_90d"].startswith("no such source: web events")
    with_btyd = tr.load_current(AS_OF, settings, spec, ["btyd_p_alive", "count_orders"])
    assert with_btyd.dropped == {"btyd_p_alive": "no value in any of the 44 training rows"}
    assert tr.load_current(AS_OF, settings, spec).dropped == {}


def test_training_takes_the_snapshots_a_short_history_reaches(trained, caplog):
    """A shop with less history than snapshots.count × step_days trains on the snapshots its
    data reaches (at least 3), saying so, rather than asking the user to tune the spec."""
    import logging

    from ml import train as tr
    from ml.churn import load_churn_spec
    from ml.train import TrainError

    *_, settings = trained
    spec = load_churn_spec(None)
    spec["snapshots"].update(count=9, step_days=30)  # back to A-330; the data starts at A-277
    tr.build_training_sets(AS_OF, settings, spec)
    with caplog.at_level(logging.WARNING, logger="ml.train"):
        frames = tr.load_frames(AS_OF, settings, spec)
    day = lambda n: AS_OF - dt.timedelta(days=n)  # noqa: E731
    assert frames.holdout_date == day(90) and frames.calibration_date == day(120)
    assert frames.train_dates == [day(150), day(180), day(210), day(240), day(270)]
    assert (
        f"the data starts after snapshot(s) {day(300)}, {day(330)}: training on the 7 of 9 "
        "snapshots it reaches"
    ) in caplog.messages
    spec["snapshots"].update(count=3, step_days=100)  # only 2 reached
    tr.build_training_sets(AS_OF, settings, spec)
    with pytest.raises(TrainError) as refused:
        tr.load_frames(AS_OF, settings, spec)
    assert str(refused.value) == (
        f"no eligible customers at snapshot(s) {day(290)}: training needs 3 snapshots 100 days "
        f"apart (holdout, calibration, training), the latest 90 days before {AS_OF} (the churn "
        f"horizon), so a customer with a completed order by {day(290)}; the data does not "
        "reach back that far (lower snapshots.step_days or label.horizon_days with "
        "`lifecycle train --set`)"
    )
