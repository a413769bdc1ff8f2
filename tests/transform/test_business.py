"""The business block of the sources file: the time zone of the days, the reporting currency.

Orders in EUR, USD and GBP, converted to EUR at the rates of a rates CSV (two rate days
per currency, and a fixed rate for the days before the first), built once with the
business zone America/New_York and once with UTC. An order at 23:30 in New York (04:30
UTC the next day) belongs to its New York day in the first build and to the UTC day in
the second; around a rate change that also changes its rate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path

import pytest

from lifecycle.extract import extract
from lifecycle.load import day_window
from lifecycle.sources_file import SourcesFileError, load_sources, parse_sources
from lifecycle.transform import TransformError, transform
from tests.conftest import ORDERS_ONLY_SOURCES, make_settings
from tests.transform.conftest import rows, scratch_database, write

AS_OF = dt.date(2024, 3, 31)
D = dt.date

RATES = (
    "date,currency,rate\n"
    "2024-03-01,USD,0.9\n"
    "2024-03-01,GBP,1.15\n"
    "2024-03-10,USD,0.8\n"
    "2024-03-10,GBP,1.2\n"
)

ORDERS = (
    "customer_id,order_id,ordered_at,amount,currency\n"
    # 2024-03-05 23:30 in New York
    "C1,O1,2024-03-06T04:30:00Z,100.00,USD\n"
    "C1,O2,2024-03-12T12:00:00Z,50.00,EUR\n"
    "C2,O3,2024-03-02T12:00:00Z,10.00,GBP\n"
    "C2,O4,2024-03-11T12:00:00Z,20.00,GBP\n"
    "C3,O5,2024-03-15T12:00:00Z,30.00,USD\n"
    # before the first rate of the file: the fixed rate
    "C3,O6,2024-02-20T12:00:00Z,10.00,USD\n"
    # 2024-03-09 23:00 in New York (the old rate), 2024-03-10 in UTC (the new one)
    "C4,O7,2024-03-10T03:00:00Z,10.00,usd\n"
)


SPEND = (
    "date,channel,spend,currency\n"
    "2024-03-04,paid_search,100.00,USD\n"
    "2024-03-05,paid_search,50.00,EUR\n"
    "2024-03-12,social,10.00,GBP\n"
)


def sources_yml(world: Path, timezone: str, orders: str = "orders.csv") -> str:
    return f"""version: 1
business:
  timezone: {timezone}
  currency: EUR
  rates: {world / "rates.csv"}
  fixed_rates: {{USD: 0.95}}
sources:
  orders:
    kind: csv
    entities:
      orders: {{path: {world / orders}}}
      order_items: {{skip: true}}
  marketing:
    kind: csv
    entities:
      spend: {{path: {world / "spend.csv"}}}
"""


def key(customer_id: str) -> str:
    return hashlib.md5(f"customer_id:{customer_id}".encode()).hexdigest()


def build(embedded_settings, dbt_home, world: Path, timezone: str):
    write(world / "rates.csv", RATES)
    write(world / "orders.csv", ORDERS)
    write(world / "spend.csv", SPEND)
    path = write(world / "sources.yml", sources_yml(world, timezone))
    with scratch_database(embedded_settings) as url:
        settings = make_settings(
            dbt_home, LIFECYCLE_WAREHOUSE_URL=url, LIFECYCLE_SOURCES_FILE=str(path)
        )
        for source in ("orders", "marketing", "fx"):
            for result in extract(source, AS_OF, settings, full=True):
                assert result.rows_quarantined == 0, result.describe()
        result = transform(AS_OF, settings, quiet=True)
        yield url, result


@pytest.fixture(scope="module")
def new_york(embedded_settings, dbt_home, tmp_path_factory):
    yield from build(embedded_settings, dbt_home, tmp_path_factory.mktemp("ny"), "America/New_York")


@pytest.fixture(scope="module")
def utc(embedded_settings, dbt_home, tmp_path_factory):
    yield from build(embedded_settings, dbt_home, tmp_path_factory.mktemp("utc"), "UTC")


CUSTOMERS = (
    "select customer_key, first_order_date, count_orders, total_revenue "
    "from marts.customers order by customer_key"
)


def test_new_york_days_and_eur_amounts(new_york) -> None:
    url, result = new_york
    assert result.success and not result.failed
    # by hand: O1 100 USD × 0.9 (03-01 rate) = 90.00, O2 50 EUR = 50.00;
    # O3 10 GBP × 1.15 = 11.50, O4 20 GBP × 1.2 = 24.00; O5 30 USD × 0.8 = 24.00,
    # O6 10 USD × 0.95 (fixed, before the file) = 9.50; O7 10 USD × 0.9 (NY 03-09) = 9.00
    assert rows(url, CUSTOMERS) == sorted(
        [
            (key("C1"), D(2024, 3, 5), 2, Decimal("140.00")),
            (key("C2"), D(2024, 3, 2), 2, Decimal("35.50")),
            (key("C3"), D(2024, 2, 20), 2, Decimal("33.50")),
            (key("C4"), D(2024, 3, 9), 1, Decimal("9.00")),
        ]
    )
    assert rows(url, "select sum(total_revenue) from marts.customers") == [(Decimal("218.00"),)]
    assert rows(
        url,
        "select order_id, order_date, currency, fx_rate, reporting_amount "
        "from intermediate.int_orders_versioned where order_id in ('O1', 'O6', 'O7') "
        "order by order_id",
    ) == [
        ("O1", D(2024, 3, 5), "USD", Decimal("0.9000000000"), Decimal("90.00")),
        ("O6", D(2024, 2, 20), "USD", Decimal("0.95"), Decimal("9.50")),
        ("O7", D(2024, 3, 9), "USD", Decimal("0.9000000000"), Decimal("9.00")),
    ]
    # the stage history starts on the New York day of the first order
    assert rows(
        url,
        "select stage, valid_from from marts.customer_stage_history "
        "where customer_key = %s order by valid_from",
        (key("C1"),),
    ) == [("new", D(2024, 3, 5))]
    # spend at the rate of its day: 100 USD × 0.9 + 50 EUR + 10 GBP × 1.2 = 152.00
    assert rows(url, "select acquisition_channel, spend from marts.channel_ltv order by 1") == [
        ("all", Decimal("152.00")),
        ("paid_search", Decimal("140.00")),
        ("social", Decimal("12.00")),
        ("unknown", None),
    ]
    # the rates landed by the loader, in full, with their decimals
    assert rows(url, "select count(*), sum(rate) from raw.fx__rates") == [(4, Decimal("4.05"))]


def test_utc_days(utc) -> None:
    url, result = utc
    assert result.success and not result.failed
    # O1 on 03-06 UTC (still the 03-01 rate); O7 on 03-10 UTC: 10 USD × 0.8 = 8.00
    assert rows(url, CUSTOMERS) == sorted(
        [
            (key("C1"), D(2024, 3, 6), 2, Decimal("140.00")),
            (key("C2"), D(2024, 3, 2), 2, Decimal("35.50")),
            (key("C3"), D(2024, 2, 20), 2, Decimal("33.50")),
            (key("C4"), D(2024, 3, 10), 1, Decimal("8.00")),
        ]
    )
    assert rows(
        url,
        "select stage, valid_from from marts.customer_stage_history "
        "where customer_key = %s order by valid_from",
        (key("C1"),),
    ) == [("new", D(2024, 3, 6))]


def test_a_currency_without_rate_is_named(embedded_settings, dbt_home, tmp_path) -> None:
    write(tmp_path / "rates.csv", RATES)
    write(tmp_path / "odd.csv", ORDERS + "C5,O8,2024-03-20T12:00:00Z,5.00,XYZ\n")
    path = write(tmp_path / "sources.yml", sources_yml(tmp_path, "UTC", orders="odd.csv"))
    with scratch_database(embedded_settings) as url:
        settings = make_settings(
            dbt_home, LIFECYCLE_WAREHOUSE_URL=url, LIFECYCLE_SOURCES_FILE=str(path)
        )
        for source in ("orders", "fx"):
            extract(source, AS_OF, settings, full=True)
        with pytest.raises(TransformError) as caught:
            transform(AS_OF, settings, quiet=True)
    assert str(caught.value) == (
        "currency 'XYZ' has no rate to EUR (1 rows of raw.orders__orders): add it to the "
        f"rates file (business.rates) or to business.fixed_rates in {path}"
    )


def test_day_windows_are_the_business_zone_midnights() -> None:
    utc = dt.UTC
    ny = day_window(D(2024, 3, 5), "America/New_York")
    assert (ny.start, ny.end) == (
        dt.datetime(2024, 3, 5, 5, tzinfo=utc),
        dt.datetime(2024, 3, 6, 5, tzinfo=utc),
    )
    # a date cursor's last day inside the window is the day itself
    assert ny.last_date() == D(2024, 3, 5)
    # the day clocks go forward is 23 hours long
    dst = day_window(D(2024, 3, 10), "America/New_York")
    assert dst.end - dst.start == dt.timedelta(hours=23)
    plain = day_window(D(2024, 3, 5))
    assert (plain.start, plain.end) == (
        dt.datetime(2024, 3, 5, tzinfo=utc),
        dt.datetime(2024, 3, 6, tzinfo=utc),
    )


def test_business_rates_is_an_fx_source() -> None:
    doc = {"version": 1, "business": {"currency": "EUR", "rates": "fx/rates.csv"}}
    parsed = parse_sources(doc)
    fx = parsed.source("fx")
    assert fx is not None and (fx.kind, fx.path) == ("csv", "fx/rates.csv")
    assert fx.entities["rates"].sync == "full_refresh"
    assert parsed.business.planning_rates == {"EUR": 1.0}
    both = {**doc, "sources": {"fx": {"kind": "csv", "path": "other.csv"}}}
    with pytest.raises(SourcesFileError, match="business.rates and sources.fx both say"):
        parse_sources(both)


def test_date_cursor_windows_in_the_business_zone(embedded_settings, dbt_home, tmp_path) -> None:
    """Day runs and a rerun of a date-cursor entity (spend) with New York days."""
    write(tmp_path / "rates.csv", RATES)
    write(tmp_path / "orders.csv", ORDERS)
    write(tmp_path / "spend.csv", SPEND)
    path = write(tmp_path / "sources.yml", sources_yml(tmp_path, "America/New_York"))
    with scratch_database(embedded_settings) as url:
        settings = make_settings(
            dbt_home, LIFECYCLE_WAREHOUSE_URL=url, LIFECYCLE_SOURCES_FILE=str(path)
        )
        loaded = [
            extract("marketing", day, settings)[0].rows_loaded
            for day in (D(2024, 3, 4), D(2024, 3, 5), D(2024, 3, 5), D(2024, 3, 12))
        ]
        # the first load takes everything to 03-04; then each day its own rows, and a
        # rerun of 03-05 the same row again (its window read back from ops.load_batches)
        assert loaded == [1, 1, 1, 1]
        assert rows(url, "select count(*) from raw.marketing__spend") == [(3,)]


def test_a_sources_file_in_usd_says_which_currency_took_a_planning_rate(
    embedded_settings, tmp_path
) -> None:
    """EUR and GBP orders of a sources file with no rates were converted at the sample
    world's planning rates (1.08, 1.27) without a word: the transform says so, once per
    currency (the built-in sources of the sample world keep them silently)."""
    from lifecycle.sources_file import builtin_sources
    from lifecycle.transform import check_currencies

    write(tmp_path / "orders.csv", ORDERS)
    path = write(
        tmp_path / "sources.yml", ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv")
    )
    with scratch_database(embedded_settings) as url:
        settings = make_settings(
            tmp_path / "home", LIFECYCLE_WAREHOUSE_URL=url, LIFECYCLE_SOURCES_FILE=str(path)
        )
        extract("orders", AS_OF, settings, full=True)
        warned = check_currencies(load_sources(settings), url)
        assert check_currencies(builtin_sources(settings), url) == []
    assert warned == [
        f"currency 'EUR' converted to USD at the sample world's planning rate 1.08 (1 rows of "
        f"raw.orders__orders): no rate for it in the rates file (business.rates) or "
        f"business.fixed_rates of {path}",
        f"currency 'GBP' converted to USD at the sample world's planning rate 1.27 (2 rows of "
        f"raw.orders__orders): no rate for it in the rates file (business.rates) or "
        f"business.fixed_rates of {path}",
    ]
