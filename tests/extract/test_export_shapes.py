"""More export shapes a user brings, each read by the CLI through a sources file.

The fixtures in tests/fixtures/exports/ are hand-made in the shapes real systems export,
with their quirks: Tableau's "Sample - Superstore" order lines (cp1252, US dates, quoted
commas and inch marks), a PayPal activity download (date and time apart, thousands
separators, refunds naming the payment), Etsy's sold orders (two-digit years), a Stripe
payments export (guests without a customer id), WooCommerce orders (``wc-`` statuses, a
German ``;`` variant with decimal commas) and an ERP's latin-1 ``;`` export with a totals
line. Each test writes the sources file a user would write from docs/sources.md and checks
what landed and what was quarantined, value by value.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.extract.test_mapping import (
    EXPORTS,
    extract,
    lifecycle,
    orders,
    quarantine,
    run_extract,
    sources_file,
    utc,
)

# ------------------------------------------------------------------ Superstore

SUPERSTORE = """
version: 1
business: {{timezone: America/New_York, currency: USD}}
sources:
  orders:
    kind: csv
{format}
    entities:
      orders:
        path: {path}
        grain: line
        columns:
          order_id: Order ID
          customer_id: Customer ID
          ordered_at: {{column: Order Date, format: "%m/%d/%Y"}}
          amount: Sales
          quantity: Quantity
          status: {{constant: completed}}
        extra_columns: [Product Name]
      order_items: {{skip: true}}
"""


def superstore(tmp_path: Path, encoding: str | None) -> str:
    fmt = f"    format: {{encoding: {encoding}}}" if encoding else ""
    path = EXPORTS / "superstore_cp1252.csv"
    return sources_file(tmp_path, SUPERSTORE.format(format=fmt, path=path))


def test_superstore_order_lines_in_cp1252(tmp_path: Path, fresh_db: str) -> None:
    """Order lines summed per order; en dashes, é and inch marks read from cp1252."""
    out = extract(tmp_path, fresh_db, "2024-06-30", superstore(tmp_path, "cp1252"))
    assert "raw.orders__orders 2024-06-30 success: 12 read, 12 loaded, 0 quarantined" in out
    got = orders(fresh_db)
    assert len(got) == 12
    # 1/8/2024 is midnight in New York; 261.96 + 731.94
    assert got["CA-2024-152156"][:7] == (
        "CG-12520",
        utc(2024, 1, 8, 5),
        None,
        "completed",
        "USD",
        Decimal("993.90"),
        5,
    )
    assert got["CA-2024-152156"][7:] == ({"Product Name": "Bush Somerset Collection Bookcase"}, 2)
    assert got["US-2024-108966"][5] == Decimal("979.95")  # 957.5775 + 22.368
    assert got["CA-2024-143336"][1:7] == (
        utc(2024, 5, 27, 4),  # summer time
        None,
        "completed",
        "USD",
        Decimal("244.76"),  # 8.56 + 213.48 + 22.72
        9,
    )
    assert got["CA-2024-161389"][7] == {
        "Product Name": "Fellowes PB200 Plastic Comb Binding Machine \u2013 Black"
    }
    assert got["CA-2024-105893"][7] == {
        "Product Name": 'Stur-D-Stor Shelving, Vertical 5-Shelf: 72"H x 36"W x 18 1/2"D'
    }
    assert got["CA-2024-143336"][7] == {"Product Name": "Newell 341"}  # the first line's
    assert quarantine(fresh_db) == {}


def test_superstore_read_as_utf8_quarantines_the_orders_of_its_unreadable_lines(
    tmp_path: Path, fresh_db: str
) -> None:
    """The encoding forgotten: the check says to set it; an extract that allows the
    rejects never loads an order short of a line it could not read."""
    src = superstore(tmp_path, None)
    hint = (
        "the file is not UTF-8: set format.encoding in the sources file (cp1252 or latin-1 "
        "for most Western European exports)"
    )
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert check.returncode == 1
    assert "Traceback" not in check.stderr
    (error,) = [line for line in check.stderr.splitlines() if line.startswith("error: ")]
    assert error.endswith(hint)
    assert f"  note: 3 sampled line(s) are not valid UTF-8; {hint}" in check.stdout
    refused = run_extract(tmp_path, fresh_db, "2024-06-30", src)
    assert refused.returncode == 1
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert "5 of 14 rows rejected (35.7%)" in error
    assert f"(3 rows alike); {hint}. See raw.quarantine" in error

    allowed = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src,
                        LIFECYCLE_MAX_REJECT_SHARE="0.5")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert f"  note: 3 sampled line(s) are not valid UTF-8; {hint}" in allowed.stdout
    out = extract(tmp_path, fresh_db, "2024-06-30", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert "raw.orders__orders 2024-06-30 success: 14 read, 9 loaded, 5 quarantined" in out
    got = orders(fresh_db)
    # their lines 17 and 20 unread, these two orders would have loaded 31.28 and 60.34
    assert "CA-2024-143336" not in got
    assert "CA-2024-137330" not in got
    assert "CA-2024-161389" not in got  # its only line is unreadable
    assert got["CA-2024-152156"][5] == Decimal("993.90")
    assert quarantine(fresh_db) == {
        11: "broken encoding: byte 0x96 at position 213 is not valid UTF-8",
        16: "amount: line 17 of this order could not be read (broken encoding: byte 0x96 at "
        "position 196 is not valid UTF-8), so its sum is not known",
        17: "broken encoding: byte 0x96 at position 196 is not valid UTF-8",
        19: "amount: line 20 of this order could not be read (broken encoding: byte 0x97 at "
        "position 187 is not valid UTF-8), so its sum is not known",
        20: "broken encoding: byte 0x97 at position 187 is not valid UTF-8",
    }


# ---------------------------------------------------------------------- PayPal

PAYPAL = """
version: 1
business: {{timezone: America/Los_Angeles, currency: USD}}
sources:
  orders:
    kind: csv
    format: {{thousands_separator: ","}}     # "1,234.56"
    entities:
      orders:
        path: {path}
        max_reject_share: 0.2
        columns:
          order_id: Transaction ID
          customer_id: From Email Address
          email: From Email Address
          # the date and the time are two columns; TimeZone (PST/PDT) is the zone's name
          ordered_at: {{concat: [Date, Time], separator: " ", format: "%m/%d/%Y %H:%M:%S"}}
          amount: Gross
          currency: Currency
          status:
            concat: [Type, Status]
            separator: " / "
            values:
              Express Checkout Payment / Completed: completed
              Website Payment / Completed: completed
              Express Checkout Payment / Refunded: completed   # its refund row follows
              Payment Refund / Completed: refunded
        refunds: {{refund_of: Reference Txn ID}}
        extra_columns: [Name]
      order_items: {{skip: true}}
"""


def test_paypal_activity_download(tmp_path: Path, fresh_db: str) -> None:
    """Date and time joined and read in the account's zone; a refund is a refunded
    version of the payment it names, of that payment's customer (PayPal writes the
    shop's own address as a refund's sender); pending payments and withdrawals are no
    sales: quarantined, naming their words."""
    src = sources_file(tmp_path, PAYPAL.format(path=EXPORTS / "paypal_activity.csv"))
    out = extract(tmp_path, fresh_db, "2024-12-31", src)
    assert "raw.orders__orders 2024-12-31 success: 12 read, 10 loaded, 2 quarantined" in out
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute(
            "select order_id, customer_id, email, ordered_at, updated_at, status, currency, "
            "amount from raw.orders__orders order by _line"
        ).fetchall()
    ann, bob = "ann@example.com", "bob@example.com"
    assert got == [
        ("1AB23456CD789012E", ann, ann, utc(2024, 1, 2, 17, 15, 2), None, "completed", "USD",
         Decimal("45.00")),
        ("2BC34567DE890123F", bob, bob, utc(2024, 1, 16, 7, 40, 10), None, "completed", "USD",
         Decimal("1234.56")),
        ("3CD45678EF901234G", ann, ann, utc(2024, 2, 3, 20), None, "completed", "USD",
         Decimal("30.00")),
        ("3CD45678EF901234G", ann, ann, utc(2024, 2, 3, 20), utc(2024, 2, 5, 16, 30),
         "refunded", "USD", Decimal("30.00")),
        ("7GH89012IJ345678K", "dan@example.com", "dan@example.com", utc(2024, 3, 10, 10, 30),
         None, "completed", "USD", Decimal("19.99")),  # 03:30 PDT, the first day of DST
        ("8HI90123JK456789L", "eve@example.fr", "eve@example.fr", utc(2024, 3, 12, 21, 2, 11),
         None, "completed", "EUR", Decimal("25.00")),
        ("9IJ01234KL567890M", bob, bob, utc(2024, 4, 2, 18, 11, 11), None, "completed", "USD",
         Decimal("15.00")),
        ("9IJ01234KL567890M", bob, bob, utc(2024, 4, 2, 18, 11, 11), utc(2024, 4, 9, 23, 45),
         "refunded", "USD", Decimal("15.00")),
        ("1KL23456MN789012O", "fay@example.com", "fay@example.com", utc(2024, 11, 3, 8, 30),
         None, "completed", "USD", Decimal("12.00")),  # 01:30 PDT
        # 01:30 PST is 09:30 UTC, but the zone's name is not read: 01:30 happens twice in
        # Los Angeles that night and defaults.ambiguous_time takes the earlier (reject
        # quarantines both); see docs/sources.md, "Dates and times in two columns"
        ("2LM34567NO890123P", "gus@example.com", "gus@example.com", utc(2024, 11, 3, 8, 30),
         None, "completed", "USD", Decimal("13.00")),
    ]  # fmt: skip
    listed = (
        "is not one of Express Checkout Payment / Completed, Website Payment / Completed, "
        "Express Checkout Payment / Refunded, Payment Refund / Completed "
        "(sources.orders.entities.orders.columns.status.values; add it, or a default)"
    )
    assert quarantine(fresh_db) == {
        6: f"status: 'Express Checkout Payment / Pending' {listed}",
        7: f"status: 'General Withdrawal / Completed' {listed}; amount -1000.00 is negative",
    }


def test_paypal_refunds_of_earlier_days_are_the_payments_customers(
    tmp_path: Path, fresh_db: str, embedded_settings
) -> None:
    """Loaded day by day, a refund's batch does not hold its payment: the refunded version
    was the shop's (PayPal writes the shop as the refund's sender), placed at the refund,
    so the shop became a customer with refunded orders and the payment moved to it. Day
    by day now lands what a full load lands; a refund of a payment that is nowhere stays
    a refunded order of its own, said in a warning."""
    from lifecycle import warehouse as wh
    from tests.conftest import scratch_database

    export = tmp_path / "paypal.csv"
    text = (EXPORTS / "paypal_activity.csv").read_text(encoding="utf-8-sig")
    unknown = (
        '"2/5/2024","09:00:00","PST","Zed Roe","Payment Refund","Completed","USD","-7.00",'
        '"0.30","-6.70","shop@example.com","zed@example.com","9ZZ99999ZZ999999Z","","",'
        '"Mug","","","","","0NOTLOADED0000000","","","","0.00","","Debit"\n'
    )
    export.write_text(text + unknown, encoding="utf-8")
    # the pending payment and the withdrawal are 2 of a day's few rows
    text = PAYPAL.format(path=export).replace("max_reject_share: 0.2", "max_reject_share: 0.5")
    src = sources_file(tmp_path, text)
    days = ["2024-02-03", "2024-02-05", "2024-04-02", "2024-04-09", "2024-12-31"]
    said = []
    for n, day in enumerate(days):
        args = ["extract", "--source", "orders", "--date", day] + (["--full"] if not n else [])
        out = lifecycle(tmp_path, fresh_db, *args, LIFECYCLE_SOURCES_FILE=src)
        assert out.returncode == 0, out.stderr
        said.append(out.stdout)

    def landed(url: str) -> list[tuple]:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "select order_id, customer_id, email, ordered_at, updated_at, status, amount "
                "from raw.orders__orders order by 1, 5 nulls first"
            ).fetchall()

    daily = landed(fresh_db)
    with scratch_database(wh.warehouse_url(embedded_settings, start=False)) as full_db:
        extract(tmp_path, full_db, days[-1], src)
        assert landed(full_db) == daily
    ann, bob = "ann@example.com", "bob@example.com"
    refunded = {r[0]: r[1:4] for r in daily if r[5] == "refunded"}
    assert refunded == {
        "3CD45678EF901234G": (ann, ann, utc(2024, 2, 3, 20)),
        "9IJ01234KL567890M": (bob, bob, utc(2024, 4, 2, 18, 11, 11)),
        "0NOTLOADED0000000": ("shop@example.com", "shop@example.com", utc(2024, 2, 5, 17)),
    }
    assert (
        "1 refund(s) name an order that is not loaded (e.g. '0NOTLOADED0000000'): each stays "
        "a refunded order of the refund's own sender and time"
    ) in said[1]
    assert not any("another customer" in out for out in said)


def test_a_zone_name_in_a_date_format_is_refused_naming_the_key(
    tmp_path: Path, fresh_db: str
) -> None:
    """%Z matched any word (PST, CET) and dropped it: the time was read in the business
    zone, silently hours off. It is an error that says what to do instead."""
    text = (
        PAYPAL.format(path=EXPORTS / "paypal_activity.csv")
        .replace(
            'ordered_at: {concat: [Date, Time], separator: " ", format: "%m/%d/%Y %H:%M:%S"}',
            'ordered_at: {concat: [Date, Time, TimeZone], separator: " ", '
            'format: "%m/%d/%Y %H:%M:%S %Z"}',
        )
        .replace("timezone: America/Los_Angeles", "timezone: UTC")
    )
    src = sources_file(tmp_path, text)
    for args in (["sources", "check"], ["extract", "--date", "2024-12-31", "--full"]):
        out = lifecycle(tmp_path, fresh_db, *args, LIFECYCLE_SOURCES_FILE=src)
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert error == (
            f"error: {src}: sources.orders.entities.orders.columns.ordered_at: "
            "'%m/%d/%Y %H:%M:%S %Z': %Z (a zone name such as PST or CET) cannot be read: a "
            "name does not say which zone it is (CST is Chicago or Shanghai). Leave the name "
            "out and give the zone its times are in with timezone: (e.g. America/Los_Angeles "
            "for PST/PDT); %z reads numeric offsets (-0800)"
        )


# ------------------------------------------------------------------------ Etsy

ETSY = """
version: 1
business: {{timezone: America/Los_Angeles, currency: USD}}
sources:
  orders:
    kind: csv
    entities:
      orders:
        path: {path}
        max_reject_share: 0.25
        columns:
          order_id: Order ID
          customer_id: Buyer User ID
          ordered_at: {{column: Sale Date, format: "%m/%d/%y"}}   # 03/05/24
          amount: {{coalesce: [Adjusted Order Total, Order Total]}}  # after a partial refund
          currency: Currency
          quantity: Number of Items
          status: {{constant: completed}}
        extra_columns: [Full Name, Order Net]
      order_items: {{skip: true}}
"""


def test_etsy_sold_orders_with_two_digit_years(tmp_path: Path, fresh_db: str) -> None:
    src = sources_file(tmp_path, ETSY.format(path=EXPORTS / "etsy_sold_orders.csv"))
    out = extract(tmp_path, fresh_db, "2024-06-30", src)
    assert "raw.orders__orders 2024-06-30 success: 9 read, 7 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert {k: v[:7] for k, v in got.items()} == {
        "3150012345": ("412345678", utc(2024, 1, 4, 8), None, "completed", "USD",
                       Decimal("32.05"), 1),
        "3150023456": ("523456789", utc(2024, 1, 19, 8), None, "completed", "USD",
                       Decimal("46.66"), 2),
        "3160034567": ("412345678", utc(2024, 2, 2, 8), None, "completed", "USD",
                       Decimal("1296.00"), 1),
        # partly refunded: the adjusted total
        "3160045678": ("634567890", utc(2024, 2, 14, 8), None, "completed", "EUR",
                       Decimal("21.00"), 3),
        "3170067890": ("745678901", utc(2024, 3, 10, 8), None, "completed", "USD",
                       Decimal("27.45"), 1),
        "3170078901": ("523456789", utc(2024, 3, 31, 7), None, "completed", "USD",
                       Decimal("21.15"), 1),
        "3180090123": ("856789012", utc(2024, 5, 6, 7), None, "completed", "GBP",
                       Decimal("30.50"), 2),
    }  # fmt: skip
    assert got["3170067890"][7] == {"Full Name": "Dan O'Neil", "Order Net": "21.84"}
    assert got["3160045678"][7] == {"Full Name": "Chloé Martin", "Order Net": "35.05"}
    assert quarantine(fresh_db) == {
        6: "customer_id is empty",  # a guest checkout
        9: "ordered_at: '04/31/24' does not match the format '%m/%d/%y'",
    }


# ---------------------------------------------------------------------- Stripe

STRIPE = """
version: 1
business: {{timezone: America/New_York, currency: USD}}
sources:
  orders:
    kind: csv
    format: {{thousands_separator: ","}}
    entities:
      orders:
        path: {path}
        max_reject_share: 0.25
        columns:
          order_id: id
          customer_id: {{coalesce: [Customer ID, Customer Email]}}   # guests have no cus_
          email: Customer Email
          ordered_at: {{column: Created (UTC), timezone: UTC}}
          amount: Amount
          currency: Currency                  # usd
          status:
            column: Status
            values: {{Paid: completed, Partially Refunded: completed, Refunded: refunded,
                      Failed: cancelled}}
        refunds: {{refunded_amount: Amount Refunded}}
      order_items: {{skip: true}}
"""


def test_stripe_payments_with_guests_known_by_their_email(tmp_path: Path, fresh_db: str) -> None:
    src = sources_file(tmp_path, STRIPE.format(path=EXPORTS / "stripe_payments.csv"))
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert check.returncode == 0, check.stderr
    assert "first non-empty of ['Customer ID', 'Customer Email']" in check.stdout
    out = extract(tmp_path, fresh_db, "2024-06-30", src)
    assert "raw.orders__orders 2024-06-30 success: 9 read, 7 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert {k.removeprefix("ch_3OqAbC2eZvKYlo2C0"): v[:6] for k, v in got.items()} == {
        "a1b2c3d": ("cus_PfL3xYz1", utc(2024, 1, 3, 14, 2), None, "completed", "USD",
                    Decimal("45.00")),
        "e4f5g6h": ("cus_PfL4aBc2", utc(2024, 1, 17, 9, 30), None, "completed", "USD",
                    Decimal("1200.00")),
        "i7j8k9l": ("cus_PfL3xYz1", utc(2024, 2, 1, 22, 15), None, "refunded", "USD",
                    Decimal("30.00")),
        "m1n2o3p": ("carla@example.com", utc(2024, 2, 12, 11), None, "cancelled", "USD",
                    Decimal("60.00")),
        "q4r5s6t": ("guest1@example.com", utc(2024, 2, 29, 23, 59), None, "completed", "USD",
                    Decimal("19.99")),
        # Partially Refunded: 25.00 less the 10.00 of Amount Refunded
        "u7v8w9x": ("cus_PfL5dEf3", utc(2024, 3, 5, 14, 2), None, "completed", "EUR",
                    Decimal("15.00")),
        "y1z2a3b": ("cus_PfL4aBc2", utc(2024, 3, 10, 7, 30), None, "completed", "USD",
                    Decimal("12.50")),
    }  # fmt: skip
    assert quarantine(fresh_db) == {
        9: "status: 'Uncaptured' is not one of Paid, Partially Refunded, Refunded, Failed "
        "(sources.orders.entities.orders.columns.status.values; add it, or a default)",
        10: "customer_id is empty",  # neither a customer nor an email: a POS sale
    }


# ----------------------------------------------------------------- WooCommerce

WOO = """
version: 1
business: {{timezone: Europe/Berlin, currency: EUR}}
sources:
  orders:
    kind: csv
{format}
    entities:
      orders:
        path: {path}
        max_reject_share: {share}
        columns:
          order_id: {number}
          customer_id: {email}
          email: {email}
          ordered_at: {date}
          amount: {total}
          status:
            column: {status}
            values: {{wc-completed: completed, wc-processing: completed,
                      wc-refunded: refunded, wc-cancelled: cancelled, wc-failed: cancelled}}
      order_items: {{skip: true}}
"""
WOO_EN = dict(
    number="Order Number", email="Customer Email", date="Order Date",
    total="Order Total Amount", status="Order Status", format="",
)  # fmt: skip
WOO_DE = dict(
    number="Bestellnummer", email="Kunden-E-Mail", date="Bestelldatum", total="Bestellsumme",
    status="Bestellstatus",
    format='    format: {delimiter: ";", decimal_separator: ",", thousands_separator: "."}',
)  # fmt: skip
#: What both WooCommerce exports load: (customer_id, ordered_at, status, amount).
WOO_ORDERS = {
    "1001": ("ann@example.com", utc(2024, 1, 5, 13, 2, 11), "completed", Decimal("45.00")),
    "1002": ("bob@example.com", utc(2024, 1, 20, 8, 15), "completed", Decimal("1234.56")),
    "1003": ("ann@example.com", utc(2024, 2, 3, 17, 40), "refunded", Decimal("30.00")),
    "1004": ("carla@example.com", utc(2024, 2, 10, 7), "cancelled", Decimal("60.00")),
    "1005": ("dan@example.com", utc(2024, 3, 5, 13, 2, 11), "completed", Decimal("19.99")),
    # 23:59:59 on the day Berlin's summer time begins
    "1007": ("bob@example.com", utc(2024, 3, 31, 21, 59, 59), "completed", Decimal("12.50")),
    "1008": ("fay@example.com", utc(2024, 4, 2, 8, 10, 10), "cancelled", Decimal("15.00")),
}
WOO_QUARANTINE = {
    7: "status: 'wc-on-hold' is not one of wc-completed, wc-processing, wc-refunded, "
    "wc-cancelled, wc-failed (sources.orders.entities.orders.columns.status.values; add it, "
    "or a default)",
    10: "customer_id is empty",  # a guest without an email
}


def woo(tmp_path: Path, names: dict, share: float = 0.3) -> str:
    path = EXPORTS / ("woocommerce_orders.csv" if names is WOO_EN else "woocommerce_orders_de.csv")
    return sources_file(tmp_path, WOO.format(path=path, share=share, **names))


def test_woocommerce_orders_and_their_german_export(tmp_path: Path, fresh_db: str) -> None:
    for names in (WOO_EN, WOO_DE):
        out = extract(tmp_path, fresh_db, "2024-06-30", woo(tmp_path, names))
        assert "raw.orders__orders 2024-06-30 success: 9 read, 7 loaded, 2 quarantined" in out
        assert {k: (v[0], v[1], v[3], v[5]) for k, v in orders(fresh_db).items()} == WOO_ORDERS
        assert quarantine(fresh_db) == WOO_QUARANTINE


def test_a_status_the_values_do_not_list_is_one_reason_in_check_and_load(
    tmp_path: Path, fresh_db: str
) -> None:
    """The reason of an unlisted status holds "; " itself: it is one reason of one row,
    not two (before, sources check counted a tenth row and showed half the message as a
    "whole rows" reason, and a refused load cut it at the "; ")."""
    src = woo(tmp_path, WOO_EN, share=0.05)
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert "9 rows sampled, 9 after mapping, 2 would be quarantined (22.2%)" in check.stdout
    assert "(whole rows)" not in check.stdout
    assert "22.2% of 9 sampled rows would be quarantined" in check.stderr
    refused = run_extract(tmp_path, fresh_db, "2024-06-30", src)
    assert refused.returncode == 1
    assert (
        "2 of 9 rows rejected (22.2%), more than the allowed 5.0% (max_reject_share); nothing "
        f"was published; most: {WOO_QUARANTINE[7]} (1 row alike). See raw.quarantine"
    ) in refused.stderr


# ------------------------------------------------------- ERP export, totals line

ERP = """
version: 1
business: {{timezone: Europe/Berlin, currency: EUR}}
sources:
  orders:
    kind: csv
    format: {{delimiter: ";", encoding: latin-1, decimal_separator: ",",
              thousands_separator: "."}}
    entities:
      orders:
        path: {path}
        max_reject_share: 0.5     # a small file: its totals line alone is 7%
        columns:
          order_id: Bestellnummer
          customer_id: Kundennummer
          ordered_at: {{column: Bestelldatum, format: "%d.%m.%Y"}}
          amount: Betrag
          status: {{constant: completed}}
      order_items: {{skip: true}}
"""
ERP_AMOUNTS = {
    "20001": Decimal("1234.56"), "20002": Decimal("19.99"), "20003": Decimal("250.00"),
    "20004": Decimal("75.50"), "20005": Decimal("3000.00"), "20006": Decimal("12.00"),
    "20008": Decimal("1500.00"), "20009": Decimal("4100.00"), "20010": Decimal("1000.00"),
    "20011": Decimal("653.64"), "20012": Decimal("460.00"),
}  # fmt: skip
ERP_QUARANTINE = {
    8: "ordered_at: '30.02.2024' does not match the format '%d.%m.%Y'",
    14: "customer_id is empty; ordered_at is empty",  # Summe;;;12.345,67
}


def test_an_erp_export_with_a_totals_line_and_blank_lines_at_the_end(
    tmp_path: Path, fresh_db: str
) -> None:
    src = sources_file(tmp_path, ERP.format(path=EXPORTS / "erp_bestellungen_latin1.csv"))
    out = extract(tmp_path, fresh_db, "2024-06-30", src)
    assert "raw.orders__orders 2024-06-30 success: 13 read, 11 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert {k: v[5] for k, v in got.items()} == ERP_AMOUNTS
    assert got["20001"][:5] == ("K-100", utc(2024, 1, 4, 23), None, "completed", "EUR")
    assert got["20009"][1] == utc(2024, 3, 30, 23)  # 31.03.2024, summer time from 02:00
    assert got["20012"][7:] == (None, 13)
    assert quarantine(fresh_db) == ERP_QUARANTINE


# ---------------------------------------------------- the daily (orders-only) path


def daily_then_full(
    tmp_path: Path, db: str, embedded_settings, src: str, days: list[str]
) -> tuple[list[str], dict, dict]:
    """Run the first day with --full and the others as daily extracts, then a --full load
    of the last day in a new warehouse; return the daily summaries and what each landed."""
    from lifecycle import warehouse as wh
    from tests.conftest import scratch_database

    summaries = []
    for n, day in enumerate(days):
        args = ["extract", "--source", "orders", "--date", day] + (["--full"] if not n else [])
        out = lifecycle(tmp_path, db, *args, LIFECYCLE_SOURCES_FILE=src)
        assert out.returncode == 0, out.stderr
        line = next(x for x in out.stdout.splitlines() if x.startswith("raw.orders__orders"))
        summaries.append(line.split(" success: ")[1].split(" outside")[0])

    def landed(url: str) -> tuple[dict, dict]:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "select order_id, customer_id, ordered_at, status, amount from raw.orders__orders"
            ).fetchall()
        return {r[0]: r[1:] for r in rows}, quarantine(url)

    daily = landed(db)
    with scratch_database(wh.warehouse_url(embedded_settings, start=False)) as full_db:
        extract(tmp_path, full_db, days[-1], src)
        full = landed(full_db)
    return summaries, daily, full


def test_woocommerce_orders_day_by_day_equal_a_full_load(
    tmp_path: Path, fresh_db: str, embedded_settings
) -> None:
    text = WOO.format(path=EXPORTS / "woocommerce_orders.csv", share=0.5, **WOO_EN)
    src = sources_file(tmp_path, text.replace("wc-failed: cancelled", "wc-failed: cancelled, "
                                              "wc-on-hold: cancelled"))  # fmt: skip
    days = ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30"]
    summaries, (daily, bad), full = daily_then_full(
        tmp_path, fresh_db, embedded_settings, src, days
    )
    assert summaries == [
        "9 read, 2 loaded, 0 quarantined, 0 duplicate, 7",
        "9 read, 2 loaded, 0 quarantined, 0 duplicate, 7",
        "9 read, 3 loaded, 0 quarantined, 0 duplicate, 6",
        "9 read, 1 loaded, 1 quarantined, 0 duplicate, 7",
    ]
    assert (daily, bad) == full
    assert {k: (v[0], v[1], v[2], v[3]) for k, v in daily.items() if k != "1006"} == WOO_ORDERS
    assert daily["1006"][1:3] == (utc(2024, 3, 10, 1, 30), "cancelled")
    assert bad == {10: WOO_QUARANTINE[10]}


def test_an_erp_export_day_by_day_equals_a_full_load(
    tmp_path: Path, fresh_db: str, embedded_settings
) -> None:
    """The unreadable date and the totals line are quarantined once, by the first run."""
    src = sources_file(tmp_path, ERP.format(path=EXPORTS / "erp_bestellungen_latin1.csv"))
    days = ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30"]
    summaries, (daily, bad), full = daily_then_full(
        tmp_path, fresh_db, embedded_settings, src, days
    )
    assert summaries == [
        "13 read, 3 loaded, 2 quarantined, 0 duplicate, 8",
        "13 read, 3 loaded, 0 quarantined, 2 duplicate, 8",
        "13 read, 2 loaded, 0 quarantined, 2 duplicate, 9",
        "13 read, 3 loaded, 0 quarantined, 2 duplicate, 8",
    ]
    assert (daily, bad) == full
    assert {k: v[3] for k, v in daily.items()} == ERP_AMOUNTS
    assert bad == ERP_QUARANTINE


def test_a_totals_line_rewritten_every_day_does_not_refuse_the_day(
    tmp_path: Path, fresh_db: str
) -> None:
    """An ERP export written anew every day ends with that day's total on a new line.
    The line was quarantined once per total, and a day of 12 orders with it counted 1 of
    13 rows rejected (7.7%) against the default 5%: every next day was refused, "guest
    checkouts" said. A line with neither customer nor date is quarantined and counted,
    and left out of the share."""
    path = tmp_path / "bestellungen.csv"
    src = sources_file(tmp_path, ERP.format(path=path).replace("        max_reject_share: 0.5", ""))
    rows: list[str] = []
    seen = []
    for day in (1, 2, 3):
        rows += [f"{day}{i:02d};K-{i % 5};0{day}.01.2024;10,00" for i in range(12)]
        total = f"{10 * len(rows):,}".replace(",", ".")
        lines = ["Bestellnummer;Kundennummer;Bestelldatum;Betrag", *rows, f"Summe;;;{total},00"]
        path.write_text("\n".join(lines) + "\n", encoding="latin-1")
        args = ["extract", "--source", "orders", "--date", f"2024-01-0{day}"]
        out = lifecycle(tmp_path, fresh_db, *args, *(["--full"] if day == 1 else []),
                        LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
        assert out.returncode == 0, out.stderr
        seen.append(next(x for x in out.stdout.splitlines() if x.startswith("raw.orders__")))
    assert [x.split(" success: ")[1].split(" outside")[0] for x in seen] == [
        "13 read, 12 loaded, 1 quarantined, 0 duplicate, 0",
        "25 read, 12 loaded, 1 quarantined, 0 duplicate, 12",
        "37 read, 12 loaded, 1 quarantined, 0 duplicate, 24",
    ]
    assert len(orders(fresh_db)) == 36
    assert quarantine(fresh_db) == {
        n: "customer_id is empty; ordered_at is empty" for n in (14, 26, 38)
    }


# ------------------------------------------------------- inch marks, unquoted


def test_an_inch_mark_in_an_unquoted_value_is_a_character() -> None:
    """Product names with inch marks written unquoted (`Eldon 12" Wall Clock`) are read
    as pyarrow, Python's csv and pandas read them; a quote that opens a value and never
    closes still costs its own line, and so does the line right after it."""
    import io

    from lifecycle.extract.readers import read_csv_chunks

    text = (
        "Row ID,Order ID,Product Name,Sales\r\n"
        'R1,CA-1,Eldon 12" Wall Clock,10.00\r\n'  # 2: one inch mark
        'R2,CA-2,"Avery 5"" x 8"" Dividers, 5 Tabs",5.00\r\n'  # 3: quoted, as Excel writes
        'R3,CA-3,Monitor 27",199.99\r\n'  # 4: the mark ends the value
        'R4,CA-4,"Frame 8 x 10,7.00\r\n'  # 5: a quote left open
        'R5,CA-5,x",8.00\r\n'  # 6: right after it: the rest of a broken record
        "R6,CA-6,Plain,9.00\r\n"
    )
    rows, bad = [], {}
    for chunk in read_csv_chunks(io.BytesIO(text.encode()), "superstore.csv"):
        t = chunk.table.to_pydict()
        rows += list(zip(chunk.lines.tolist(), t["Product Name"], t["Sales"], strict=True))
        bad |= {r.line: r.reason for r in chunk.rejects}
    assert rows == [
        (2, 'Eldon 12" Wall Clock', "10.00"),
        (3, 'Avery 5" x 8" Dividers, 5 Tabs', "5.00"),
        (4, 'Monitor 27"', "199.99"),
        (7, "Plain", "9.00"),
    ]
    assert bad == {
        5: "malformed row: unbalanced double quote",
        6: "malformed row: unbalanced double quote",
    }


def test_sources_check_notes_a_utc_column_read_in_the_business_zone(tmp_path: Path) -> None:
    """Stripe's "Created (UTC)" mapped bare would be read in New York, every time five hours
    off and every one parsing: the check says to set the column's timezone."""
    text = STRIPE.format(path=EXPORTS / "stripe_payments.csv")
    note = (
        "note: ordered_at: column 'Created (UTC)' says UTC, but its times without an offset "
        "are read in America/New_York: set sources.orders.entities.orders.columns.ordered_at."
        "timezone: UTC"
    )
    for mapping, noted in (
        ("{column: Created (UTC), timezone: UTC}", False),
        ("Created (UTC)", True),
    ):
        src = sources_file(
            tmp_path, text.replace("{column: Created (UTC), timezone: UTC}", mapping)
        )
        out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                        LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (note in out.stdout) is noted


def test_sources_check_suggests_the_format_of_the_dates_it_cannot_read(tmp_path: Path) -> None:
    """Etsy's two-digit-year dates mapped without a format: the error gives one that fits
    them (and the day-first reading, since 01/04/24 could be either)."""
    text = ETSY.format(path=EXPORTS / "etsy_sold_orders.csv").replace(
        '{column: Sale Date, format: "%m/%d/%y"}', "Sale Date"
    )
    src = sources_file(tmp_path, text)
    out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                    LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 1
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error == (
        f"error: {src}: sources.orders.entities.orders.columns.ordered_at: every sampled value "
        "fails: '01/04/24' is not an ISO-8601 date or timestamp (e.g. 2024-03-05 14:02:11 "
        "-05:00) (from column 'Sale Date'); give the column's format: format: '%m/%d/%y' fits "
        "'01/04/24'; '%d/%m/%y' if the day comes first"
    )


def test_the_unmapped_columns_of_an_export_are_one_warning(tmp_path: Path) -> None:
    """A PayPal download has 27 columns: the 18 left unmapped are kept in _extra and said
    so in one line, not in one warning each."""
    text = PAYPAL.format(path=EXPORTS / "paypal_activity.csv")
    src = sources_file(tmp_path, text.replace("        extra_columns: [Name]\n", ""))
    out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                    LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 0, out.stderr
    (warning,) = [line for line in out.stderr.splitlines() if "not in the contract" in line]
    assert warning.endswith(
        "paypal_activity.csv: 18 new columns are ('TimeZone', 'Name', 'Fee', 'Net', "
        "'To Email Address', 'Shipping Address', 'Address Status', 'Item Title', 'Item ID', "
        "'Shipping and Handling Amount', 'Insurance Amount', 'Sales Tax', 'Invoice Number', "
        "'Quantity', 'Receipt ID', 'Balance', 'Note', 'Balance Impact') not in the contract "
        "of raw.orders__orders; kept in _extra"
    )


def test_numbers_in_another_dialect_say_which_setting_reads_them(tmp_path: Path) -> None:
    """PayPal's "1,234.56" without thousands_separator, a German "1.234,56" without
    decimal_separator: quarantined naming the setting, not as "not a valid numeric"
    (under the reject limit such rows, the biggest orders, went quietly)."""
    text = PAYPAL.format(path=EXPORTS / "paypal_activity.csv")
    src = sources_file(tmp_path, text.replace('    format: {thousands_separator: ","}', ""))
    out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                    LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert (
        "is not a number in the file's dialect: set format.thousands_separator: ',' x2 "
        "(e.g. '1,234.56')"
    ) in out.stdout
    # the refunds repeat their payments' ids as versions: they are no order lines
    assert "note: order_id repeats" not in out.stdout

    text = woo(tmp_path, WOO_DE)
    german = (
        Path(text)
        .read_text()
        .replace(
            'format: {delimiter: ";", decimal_separator: ",", thousands_separator: "."}',
            'format: {delimiter: ";"}',
        )
    )
    src = sources_file(tmp_path, german)
    out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                    LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 1
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error == (
        f"error: {src}: sources.orders.entities.orders.columns.amount: every sampled value "
        "fails: '45,00' is not a number in the file's dialect: set format.decimal_separator: "
        "',' (and thousands_separator: '.') (from column 'Bestellsumme')"
    )


GUESTS = """
version: 1
business: {{timezone: UTC, currency: EUR}}
sources:
  orders:
    kind: csv
    path: {path}
    entities:
      orders:
        columns:
          order_id: Order Number
          customer_id: {customer}
          ordered_at: Order Date
          amount: Order Total Amount
          status: {{constant: completed}}
"""


def test_sources_check_notes_a_customer_id_that_stands_for_every_guest(tmp_path: Path) -> None:
    """WooCommerce writes customer id 0 for a guest checkout: mapped as it is, every guest
    would be one customer with a third of the orders. Nothing fails on it; the check says
    so, and mapped from the email the note goes."""
    lines = ["Order Number,Customer User,Order Date,Billing Email,Order Total Amount"]
    for i in range(30):
        guest = i % 3 == 0
        user = "0" if guest else str(100 + i % 7)
        lines.append(f"{2000 + i},{user},2024-03-{1 + i:02d} 10:00:00,p{i % 11}@example.com,9.50")
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    note = (
        "note: customer_id '0' is on 10 of 30 sampled orders (33%): if it stands for guest "
        "checkouts, every guest becomes one customer; map customer_id from column "
        "'Customer User' only where it is a real id, e.g. from the customer's email "
        "(customer_id: <email column>)"
    )
    for customer, noted in (("Customer User", True), ("Billing Email", False)):
        src = sources_file(tmp_path, GUESTS.format(path=path, customer=customer))
        out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                        LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (note in out.stdout) is noted, out.stdout


def test_sources_check_notes_customer_ids_that_name_orders(tmp_path: Path) -> None:
    """Olist's orders file: a new customer_id with every order. It loads; the check says
    that nobody in the sample orders twice, so the mapping can be fixed before training.
    One customer with a second order is enough to say nothing."""
    note = (
        "note: none of the 250 sampled customers has a second order: if customer_id is new "
        "with every order, it names the order, not the person"
    )
    path = tmp_path / "orders.csv"
    src = sources_file(tmp_path, GUESTS.format(path=path, customer="Customer"))
    for last_customer, noted in (("c249", True), ("c1", False)):
        lines = ["Order Number,Customer,Order Date,Order Total Amount"]
        lines += [f"o{i},c{i},2018-01-{1 + i % 28:02d} 10:00:00,9.50" for i in range(249)]
        lines.append(f"o249,{last_customer},2018-01-28 11:00:00,9.50")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                        LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert ("has a second order" in out.stdout) is noted, out.stdout
        assert (note in out.stdout) is noted


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("711", "format: epoch_days and origin: <the day numbered 0>"),  # Dunnhumby's DAY
        ("45356.5", "format: excel_serial"),
        ("1709647331", "format: epoch_s"),
        ("1709647331000", "format: epoch_ms"),
        ("05.03.2024", "format: '%d.%m.%Y' fits '05.03.2024'"),
    ],
)
def test_the_format_hint_of_a_number_names_the_format_that_reads_it(value: str, hint: str) -> None:
    """A day count was told to use '%d/%m/%Y %H:%M'; numbers get the format that reads them."""
    from lifecycle.extract.check import _format_hint

    assert hint in _format_hint(repr(value))


def test_sources_check_notes_amounts_that_load_as_nothing(tmp_path: Path) -> None:
    """H&M's normalised prices (0.0033...) load as 0.00 and Olist's orders file has no
    amount (mapped as the constant 0): the load warned of the first, nothing of the
    second; the check, run before any load, says both."""
    lines = ["Order Number,Customer,Order Date,Order Total Amount"]
    lines += [
        f"o{i},c{i % 9},2018-01-{1 + i % 28:02d} 10:00:00,0.00{3 + i % 5}5" for i in range(30)
    ]
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = GUESTS.format(path=path, customer="Customer")
    for yml, note in (
        (text, "note: amount: 30 value(s) with more than two decimals are stored rounded to "
               "cents (e.g. '0.0035' as 0.00)"),
        (text.replace("amount: Order Total Amount", "amount: {constant: 0}"),
         "note: amount is the constant 0: every order is worth nothing"),
    ):  # fmt: skip
        src = sources_file(tmp_path, yml)
        out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                        LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert note in out.stdout, out.stdout
