"""An orders-only deployment: a minimal orders CSV, no CRM, web or spend tables at all."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal

import psycopg
import pytest

from lifecycle.transform import transform
from tests.conftest import cli_env, interrupt_once_dbt_connects
from tests.transform.conftest import land, rows, scratch_database, settings_for, write

AS_OF = dt.date(2024, 6, 30)
D = dt.date

# the minimal export of DESIGN.md §4: no updated_at, status, currency, email or quantity
ORDERS = (
    "customer_id,order_id,ordered_at,amount\n"
    "C1,O1,2024-01-05T10:00:00Z,10.00\n"
    "C1,O2,2024-02-05T10:00:00Z,20.00\n"
    "C1,O3,2024-03-05T10:00:00Z,30.00\n"
    "C1,O4,2024-04-05T10:00:00Z,40.00\n"
    "C2,O5,2024-06-20T10:00:00Z,5.00\n"
    "C3,O6,2023-11-01T10:00:00Z,50.00\n"
)


def key(customer_id: str) -> str:
    """customer_key of a shop customer known only by its id."""
    return hashlib.md5(f"customer_id:{customer_id}".encode()).hexdigest()


@pytest.fixture(scope="module")
def built(embedded_settings, dbt_home, tmp_path_factory):
    world = tmp_path_factory.mktemp("orders_only")
    write(world / "orders/orders.csv", ORDERS)
    with scratch_database(embedded_settings) as url:
        settings = settings_for(dbt_home, url, world)
        land(settings, AS_OF, full=True, sources=("orders",))
        with psycopg.connect(url) as conn:  # the other sources were never set up
            for table in (
                "crm__contacts",
                "web__events",
                "marketing__spend",
                "orders__order_items",
            ):
                conn.execute(f"drop table raw.{table}")
        result = transform(AS_OF, settings, quiet=True)
        yield url, result


def test_builds_and_passes_every_data_test(built) -> None:
    _, result = built
    assert result.success and not result.failed
    assert rows(built[0], "select count(*) from staging.stg_web__events") == [(0,)]


def test_customers_and_stages(built) -> None:
    url, _ = built
    assert rows(
        url,
        "select customer_key, acquisition_channel, count_orders, total_revenue, "
        "has_marketing_consent, current_stage from marts.customers order by first_order_date",
    ) == [
        (key("C3"), "unknown", 1, Decimal("50.00"), False, "churned"),
        (key("C1"), "unknown", 4, Decimal("100.00"), False, "at_risk"),
        (key("C2"), "unknown", 1, Decimal("5.00"), False, "new"),
    ]
    c1 = rows(
        url,
        "select stage, valid_from, valid_to from marts.customer_stage_history "
        "where customer_key = %s order by valid_from",
        (key("C1"),),
    )
    # monthly orders: loyal with the 4th order in 365 days, until silent for more than
    # 2 × the typical gap of 30.3 days (61 days), long before 90 days
    assert c1 == [
        ("new", D(2024, 1, 5), D(2024, 2, 4)),
        ("active", D(2024, 2, 4), D(2024, 4, 5)),
        ("loyal", D(2024, 4, 5), D(2024, 6, 5)),
        ("at_risk", D(2024, 6, 5), None),
    ]
    assert rows(
        url,
        "select customer_key, identifier_type, identifier_value, is_anchor "
        "from marts.customer_identities order by identifier_value",
    ) == [(key(c), "customer_id", c, True) for c in ("C1", "C2", "C3")]


def test_cohorts_and_rfm(built) -> None:
    url, _ = built
    assert rows(
        url,
        "select months_since_acquisition, count_active_customers, revenue, "
        "cumulative_revenue_per_customer from marts.cohort_retention "
        "where cohort_month = '2024-01-01' and acquisition_channel = 'all' order by 1",
    ) == [
        (0, 1, Decimal("10.00"), Decimal("10.00")),
        (1, 1, Decimal("20.00"), Decimal("30.00")),
        (2, 1, Decimal("30.00"), Decimal("60.00")),
        (3, 1, Decimal("40.00"), Decimal("100.00")),
        (4, 0, Decimal("0.00"), Decimal("100.00")),
        (5, 0, Decimal("0.00"), Decimal("100.00")),
    ]
    assert rows(
        url,
        "select customer_key, rfm_score, rfm_segment from marts.customer_rfm order by recency_days",
    ) == [
        (key("C2"), "511", "new"),
        (key("C1"), "355", "loyal"),
        (key("C3"), "113", "hibernating"),
    ]
    assert rows(
        url, "select acquisition_channel, spend, cac from marts.channel_ltv order by 1"
    ) == [("all", None, None), ("unknown", None, None)]


def test_an_interrupted_build_publishes_nothing(built, dbt_home, tmp_path) -> None:
    """Ctrl-C during the dbt build: dbt's runner caught it and at times ran on to the
    end, then the marts were published and the command exited 0. Now it exits 130 with
    `error: interrupted`, no stack trace, and the published marts stay as they were."""
    url, _ = built
    count = "select count(*) from ops.marts_publications"
    [(published,)] = rows(url, count)
    env = cli_env(
        LIFECYCLE_HOME=str(dbt_home),
        LIFECYCLE_WAREHOUSE_URL=url,
        LIFECYCLE_WORLD_DIR=str(tmp_path / "no-world"),
    )
    proc = interrupt_once_dbt_connects(["transform", "--date", str(AS_OF)], env, url)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert err.splitlines()[-1] == "error: interrupted"
    # dbt reported the interrupt it re-raised as a crash, with its stack trace, on the
    # console; the user asked for the stop (dbt's log file keeps the report)
    assert "Traceback" not in out + err and "Encountered an error" not in out + err
    assert "marts published" not in out + err
    assert rows(url, count) == [(published,)]
