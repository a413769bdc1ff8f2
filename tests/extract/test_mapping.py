"""Bring your own data: real export shapes, mapped by a sources file, loaded by the CLI.

The fixtures in tests/fixtures/exports/ are hand-made in the shapes real systems export
(a Shopify orders export, UCI Online Retail invoice lines, a plain-date orders CSV, a
German shop's `;`-separated latin-1 file with decimal commas, US dates with epoch
milliseconds), each with a few deliberately bad rows. Each test writes a sources file,
runs ``lifecycle extract`` as a user would and checks what landed and what was
quarantined, value by value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.conftest import ORDERS_ONLY_SOURCES

EXPORTS = Path(__file__).parents[1] / "fixtures" / "exports"
UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def lifecycle(tmp_path: Path, db: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the CLI in `tmp_path` with a private state folder and warehouse `db`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    clean |= {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": db,
        "LIFECYCLE_WORLD_DIR": str(tmp_path / "no-world"),
        **env,
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "lifecycle"), *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )


def sources_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sources.yml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_extract(
    tmp_path: Path, db: str, day: str, sources: str | None, **env: str
) -> subprocess.CompletedProcess:
    """Run ``lifecycle extract --source orders --date day --full`` and return the process."""
    if sources is not None:
        env["LIFECYCLE_SOURCES_FILE"] = sources
    return lifecycle(tmp_path, db, "extract", "--source", "orders", "--date", day, "--full", **env)


def extract(tmp_path: Path, db: str, day: str, sources: str | None, **env: str) -> str:
    """Run ``lifecycle extract --source orders --date day --full``; return its stdout."""
    out = run_extract(tmp_path, db, day, sources, **env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def orders(db: str) -> dict[str, tuple]:
    with psycopg.connect(db) as conn:
        got = conn.execute(
            "select order_id, customer_id, ordered_at, updated_at, status, currency, amount, "
            "quantity, _extra, _line from raw.orders__orders"
        ).fetchall()
    return {r[0]: r[1:] for r in got}


def quarantine(db: str) -> dict[int, str]:
    with psycopg.connect(db) as conn:
        got = conn.execute(
            "select _line, reason from raw.quarantine where entity = 'orders'"
        ).fetchall()
    return dict(got)


def _orders_only(path: Path, setting: str) -> str:
    """Return the orders-only sources file of `path` with one more `setting` line of the
    orders entity (e.g. ``format: {compression: zstd}``)."""
    return ORDERS_ONLY_SOURCES.format(orders=path).replace(
        "      order_items:", f"        {setting}\n      order_items:"
    )


def key(customer_id: str) -> str:
    """customer_key of a shop customer known only by its id."""
    return hashlib.md5(f"customer_id:{customer_id}".encode()).hexdigest()


# --------------------------------------------------------------------- (a) Shopify

SHOPIFY = """
version: 1
sources:
  orders:
    kind: csv
    path: {path}
    entities:
      orders:
        columns:
          order_id: Name
          customer_id: Email          # the export has no customer id: the email is one
          email: Email
          ordered_at: {{column: Created at, format: iso}}
          status:
            column: Financial Status
            values: {{paid: completed, partially_refunded: completed, refunded: refunded,
                      voided: cancelled}}
          amount: Total
          currency: {{constant: EUR}}
        extra_columns: [Billing Name, Id]
      order_items: {{skip: true}}
"""


def test_shopify_orders_export(tmp_path: Path, fresh_db: str) -> None:
    path = EXPORTS / "shopify_orders.csv"
    src = sources_file(tmp_path, SHOPIFY.format(path=path))
    out = extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.3")
    assert "raw.orders__orders 2024-03-31 success: 12 read, 9 loaded, 3 quarantined" in out
    got = orders(fresh_db)
    assert sorted(got) == [f"#10{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 9, 10)]
    # "2024-03-05 14:02:11 -0500": the offset is the source's own; UTC in raw
    assert got["#1001"] == (
        "ann@example.com",
        utc(2024, 3, 5, 19, 2, 11),
        None,
        "completed",
        "EUR",
        Decimal("45.00"),
        None,
        {"Billing Name": "Ann Lee", "Id": "5012345678901"},
        2,
    )
    assert got["#1003"][1:6] == (utc(2024, 3, 7, 3, 31, 45), None, "refunded", "EUR", Decimal("65"))
    assert got["#1005"][3] == "cancelled"
    assert got["#1006"][1] == utc(2024, 3, 10, 12, 0)  # -0400: after the US DST change
    assert got["#1007"][3] == "completed"  # partially_refunded
    assert got["#1009"][1] == utc(2024, 3, 12, 23, 20)  # +0100
    assert got["#1010"][5] == Decimal("1050.00")
    assert quarantine(fresh_db) == {
        9: "status: 'pending' is not one of paid, partially_refunded, refunded, voided "
        "(sources.orders.entities.orders.columns.status.values; add it, or a default)",
        12: "ordered_at: 'last tuesday' is not an ISO-8601 date or timestamp "
        "(e.g. 2024-03-05 14:02:11 -05:00)",
        13: "amount is empty",
    }
    with psycopg.connect(fresh_db) as conn:
        payload = conn.execute("select payload from raw.quarantine where _line = 12").fetchone()
    # the quarantine shows the source record as it was read
    assert json.loads(payload[0])["Created at"] == "last tuesday"


# ----------------------------------------------------------------------- (b) UCI

UCI = """
version: 1
business: {{currency: GBP}}       # the retailer reports in pounds
sources:
  orders:
    kind: csv
    path: {path}
    timezone: Europe/London       # the retailer's wall-clock time
    currency: GBP
    entities:
      orders:
        grain: line               # one row per invoice line: summed per invoice
        columns:
          order_id: InvoiceNo
          customer_id: CustomerID
          ordered_at: {{column: InvoiceDate, format: "%m/%d/%Y %H:%M"}}
          amount: {{multiply: [Quantity, UnitPrice]}}
          quantity: Quantity
        refunds: {{column: InvoiceNo, starts_with: C}}   # C536548 cancels
        extra_columns: [Country]
      order_items: {{skip: true}}
"""


def test_uci_invoice_lines_become_orders_and_stages(tmp_path: Path, fresh_db: str) -> None:
    path = EXPORTS / "uci_online_retail.csv"
    src = sources_file(tmp_path, UCI.format(path=path))
    out = extract(tmp_path, fresh_db, "2011-12-09", src, LIFECYCLE_MAX_REJECT_SHARE="0.2")
    # 28 lines of 14 invoices: 12 orders loaded, 2 quarantined
    assert "raw.orders__orders 2011-12-09 success: 14 read, 12 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert len(got) == 12
    # three lines at the top and one at the very end (the file is not sorted)
    assert got["536365"] == (
        "17850",
        utc(2010, 12, 1, 8, 26),  # London winter time is UTC
        None,
        None,
        "GBP",
        Decimal("72.94"),  # 6 × 2.55 + 6 × 3.39 + 8 × 2.75 + 2 × 7.65
        22,
        {"Country": "United Kingdom"},
        2,
    )
    assert got["536367"][5:7] == (Decimal("79.28"), 44)  # 32 × 1.69 + 6 × 2.1 + 6 × 2.1
    assert got["554030"][1] == utc(2011, 5, 20, 14, 52)  # 15:52 British Summer Time
    assert got["579885"][5:8] == (Decimal("48.00"), 9, {"Country": "France"})
    # the cancellation is a refund: status refunded, amount and quantity positive
    assert got["C536548"][3:7] == ("refunded", "GBP", Decimal("20.75"), 3)
    assert quarantine(fresh_db) == {
        10: "customer_id is empty",  # invoice 536544 has no CustomerID
        23: "amount: 'six' is not a number (line 23); quantity: 'six' is not a number (line 23)",
    }

    done = lifecycle(tmp_path, fresh_db, "transform", "--date", "2011-12-09")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with psycopg.connect(fresh_db) as conn:
        stages = dict(
            conn.execute("select customer_key, current_stage from marts.customers").fetchall()
        )
    # 13047: 4 completed orders in the last 365 days (Feb, May, Aug, Nov 2011), the last
    # 18 days ago; 12583: first order 14 days ago; 13748: last order 147 days ago; 17850:
    # last completed order 373 days ago (its cancellation never counts)
    assert stages[key("13047")] == "loyal"
    assert stages[key("12583")] == "new"
    assert stages[key("13748")] == "at_risk"
    assert stages[key("17850")] == "churned"


def test_a_pandas_written_export_with_guest_rows_loads_with_its_own_reject_limit(
    tmp_path: Path, fresh_db: str
) -> None:
    """The same invoices as pandas writes them from a frame with blank customers: every id a
    float (`17850.0`), and a third of the invoices guests'. The guests are not a broken
    mapping: the error says how to allow them, and `max_reject_share` on the entity does."""
    lines = (EXPORTS / "uci_online_retail.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    out_rows = []
    for row in rows:
        cells = row.split(",")
        if cells[6] in ("13047", "12583"):
            cells[6] = ""  # these two customers' invoices are guest checkouts here
        elif cells[6]:
            cells[6] += ".0"
        out_rows.append(",".join(cells))
    export = tmp_path / "online_retail_pandas.csv"
    export.write_text("\n".join([header, *out_rows]) + "\n", encoding="utf-8")
    text = UCI.format(path=export)
    refused = run_extract(tmp_path, fresh_db, "2011-12-09", sources_file(tmp_path, text))
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert (
        "8 of 14 rows rejected (57.1%), more than the allowed 5.0% (max_reject_share); "
        "nothing was published; most: customer_id is empty (7 rows alike); rows without "
        "customer_id (guest checkouts, say) cannot be attributed to a customer: if the export "
        "has them, allow their share with max_reject_share on this entity in the sources file "
        "(they stay in raw.quarantine, counted)"
    ) in refused.stderr
    allowed = text.replace(
        "        grain: line", "        grain: line\n        max_reject_share: 0.6"
    )
    out = extract(tmp_path, fresh_db, "2011-12-09", sources_file(tmp_path, allowed))
    assert "raw.orders__orders 2011-12-09 success: 14 read, 6 loaded, 8 quarantined" in out
    got = orders(fresh_db)
    # the float's ".0" is gone: 17850.0 is the customer 17850, as in the CRM or a re-export
    assert got["536365"][0] == "17850"
    assert sorted({row[0] for row in got.values()}) == ["13748", "17850"]


def test_the_example_files_shopify_block_reads_an_export_of_line_items(
    tmp_path: Path, fresh_db: str
) -> None:
    """Shopify's export has one row per line item, the order's fields on its first row:
    the commented example (sources.example.yml) reads it as it ships, one order each."""
    import yaml

    example = yaml.safe_load((Path(__file__).parents[2] / "sources.example.yml").read_text())
    orders_block = example["sources"]["orders"]
    orders_block["entities"]["orders"]["path"] = str(EXPORTS / "shopify_orders_lines.csv")
    doc = {"version": 1, "business": example["business"], "sources": {"orders": orders_block}}
    src = sources_file(tmp_path, yaml.safe_dump(doc))
    out = extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    # 11 rows of 6 orders: 5 loaded; #1004 has no email (Shopify's customer id here)
    assert "raw.orders__orders 2024-03-31 success: 6 read, 5 loaded, 1 quarantined" in out
    got = orders(fresh_db)
    assert {k: (v[0], v[3], v[5], v[6]) for k, v in got.items()} == {
        "#1001": ("ann@example.com", "completed", Decimal("57.00"), 3),
        "#1002": ("bob@example.com", "completed", Decimal("18.50"), 2),
        "#1003": ("cleo@example.com", "refunded", Decimal("65.00"), 5),
        "#1005": ("dan@example.com", "cancelled", Decimal("99.00"), 2),
        # partially_refunded: 80.00 less the 25.00 of its Refunded Amount
        "#1006": ("eve@example.com", "completed", Decimal("55.00"), 2),
    }
    assert got["#1001"][1] == utc(2024, 3, 5, 19, 2, 11)
    assert got["#1001"][7] == {"Tags": "vip", "Shipping Method": "Standard"}
    assert quarantine(fresh_db) == {8: "customer_id is empty"}


SHOPIFY_NOTES = """
version: 1
sources:
  orders:
    kind: csv
    path: {path}
    entities:
      orders:
        columns:
          order_id: Name
          customer_id: Email
          email: Email
          ordered_at: {{column: Created at, format: "%Y-%m-%d %H:%M:%S %z"}}
          status: {{column: Financial Status, values: {{paid: completed, refunded: refunded}}}}
          amount: Total
          quantity: Lineitem quantity
          currency: Currency
        grain: line
        cursor: ordered_at
        extra_columns: [Shipping Street, Notes]
      order_items: {{skip: true}}
"""


def test_a_shopify_export_with_notes_over_several_lines_reads_them_whole(
    tmp_path: Path, fresh_db: str
) -> None:
    """Shopify quotes a note or an address typed over several lines, line breaks kept
    (CRLF here): each such record is one order, numbered by its first line; a quote
    inside an unquoted value (`Frame 8" wide`) is a character, as every CSV reader reads it."""
    src = sources_file(tmp_path, SHOPIFY_NOTES.format(path=EXPORTS / "shopify_orders_notes.csv"))
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    # 7 records (the item row of #1001 among them) over 12 lines; 5 orders once summed
    assert "7 rows sampled, 6 after mapping, 0 would be quarantined" in check.stdout
    out = extract(tmp_path, fresh_db, "2024-03-31", src)
    assert "raw.orders__orders 2024-03-31 success: 6 read, 6 loaded, 0 quarantined" in out
    got = orders(fresh_db)
    assert {k: (v[5], v[6], v[8]) for k, v in got.items()} == {
        "#1001": (Decimal("57.00"), 3, 2),
        "#1002": (Decimal("18.50"), 2, 5),
        "#1003": (Decimal("65.00"), 1, 7),
        "#1004": (Decimal("40.00"), 1, 10),
        "#1005": (Decimal("22.00"), 1, 11),
        "#1006": (Decimal("31.00"), 1, 12),
    }
    assert got["#1001"][7] == {
        "Shipping Street": "12 Elm Road",
        "Notes": "Leave it at the back door.\r\nRing twice.",
    }
    assert got["#1002"][7]["Shipping Street"] == "Flat 2\r\n10 High Street"
    assert got["#1003"][7]["Notes"] == 'Gift wrap, please.\r\n\r\nCard: "Happy birthday, Jo!"'
    assert got["#1006"][7]["Notes"] == "Merci beaucoup —\r\nà bientôt"
    assert got["#1003"][3] == "refunded"
    assert got["#1004"][7] == {"Shipping Street": "4 Oak Close"}  # Frame 8" wide: not kept
    assert quarantine(fresh_db) == {}


def test_sources_check_says_to_read_line_items_as_lines(tmp_path: Path) -> None:
    src = sources_file(tmp_path, SHOPIFY.format(path=EXPORTS / "shopify_orders_lines.csv"))
    out = lifecycle(tmp_path, "postgresql://unused@127.0.0.1:1/x", "sources", "check",
                    "--entity", "orders", LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 1
    assert (
        "note: order_id repeats on 5 of 11 sampled rows: if each row is an order line (a "
        "Shopify export has one row per item, the order's fields on its first), set grain: "
        "line to sum the lines into one order"
    ) in out.stdout


SALES_SAMPLE = (  # the shape of Kaggle's sales_data_sample.csv: order lines, own words
    "ORDERNUMBER,QUANTITYORDERED,SALES,ORDERDATE,STATUS,CUSTOMERNAME\n"
    "10101,31,2917.72,5/7/2003 0:00,Shipped,Land of Toys Inc.\n"
    "10101,35,2583.0,5/7/2003 0:00,Shipped,Land of Toys Inc.\n"
    "10102,20,1000.00,5/8/2003 0:00,Disputed,Reims Collectables\n"
    "10103,10,500.00,5/9/2003 0:00, Completed ,Mini Gifts\n"
    "10104,12,600.00,5/9/2003 0:00,Cancelled,Mini Gifts\n"
)
SALES_SOURCES = """
version: 1
sources:
  orders:
    kind: csv
    entities:
      orders:
        path: {path}
        grain: line
        columns:
          order_id: ORDERNUMBER
          customer_id: CUSTOMERNAME
          ordered_at: {{column: ORDERDATE, format: "%m/%d/%Y %H:%M"}}
          amount: SALES
          quantity: QUANTITYORDERED
          status: {status}
      order_items: {{skip: true}}
"""


def test_status_words_of_an_export_are_mapped_or_quarantined_with_the_way_to_map_them(
    tmp_path: Path, fresh_db: str
) -> None:
    """A status the marts do not know ("Shipped") never reaches the raw gate.

    Unmapped, `sources check` fails naming the field, the contract's words and how to map
    them, and a load quarantines the row with that reason; the contract's own words pass
    whatever their case. Mapped with `values`, every row loads.
    """
    (tmp_path / "sales.csv").write_text(SALES_SAMPLE, encoding="utf-8")
    src = sources_file(tmp_path, SALES_SOURCES.format(path=tmp_path / "sales.csv", status="STATUS"))
    check = lifecycle(tmp_path, fresh_db, "sources", "check", "--entity", "orders",
                      LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert check.returncode == 1
    why = (
        "is not one of completed, refunded, cancelled (map the export's words onto them "
        "with status: {column: ..., values: {...}} in the sources file)"
    )
    assert check.stderr.strip().splitlines()[-1] == (
        f"error: {src}: sources.orders.entities.orders.columns.status: 50.0% of 4 sampled "
        "rows would be quarantined, more than an extract allows (5.0%, "
        "sources.orders.entities.orders.max_reject_share or LIFECYCLE_MAX_REJECT_SHARE); "
        f"most: status: {why}, e.g. 'Shipped'"
    )
    extract(tmp_path, fresh_db, "2003-05-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.6")
    assert {k: v[3] for k, v in orders(fresh_db).items()} == {
        "10103": "completed",
        "10104": "cancelled",
    }
    assert quarantine(fresh_db) == {
        2: f"status: 'Shipped' {why}",
        4: f"status: 'Disputed' {why}",
    }

    mapped = "{column: STATUS, values: {Shipped: completed, Disputed: completed}}"
    src = sources_file(tmp_path, SALES_SOURCES.format(path=tmp_path / "sales.csv", status=mapped))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("drop schema raw cascade")
    extract(tmp_path, fresh_db, "2003-05-31", src)
    got = orders(fresh_db)
    assert {k: (v[3], str(v[5]), v[6]) for k, v in got.items()} == {
        "10101": ("completed", "5500.72", 66),
        "10102": ("completed", "1000.00", 20),
        "10103": ("completed", "500.00", 10),
        "10104": ("cancelled", "600.00", 12),
    }


# ---------------------------------------------------------------- (c) plain dates

PLAIN = (
    "customer_id,order_id,ordered_at,amount\n"
    "C1,O1,2024-01-05,10.00\n"
    "C1,O2,2024-02-05,20.00\n"
    "C1,O3,2024-03-05,30.00\n"
    "C1,O4,2024-04-05,40.00\n"
    "C2,O5,2024-06-20,5.00\n"
    "C3,O6,2023-11-01,50.00\n"
    "C4,O7,2024-13-01,12.00\n"
    "C4,O8,05/03/2024,12.00\n"
)


def test_plain_dates_without_a_sources_file(tmp_path: Path, fresh_db: str) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export/orders.csv").write_text(PLAIN, encoding="utf-8")
    out = extract(
        tmp_path,
        fresh_db,
        "2024-06-30",
        None,
        LIFECYCLE_ORDERS_SOURCE="csv",
        LIFECYCLE_ORDERS_CSV_DIR=str(tmp_path / "export"),
        LIFECYCLE_MAX_REJECT_SHARE="0.3",
    )
    assert "raw.orders__orders 2024-06-30 success: 8 read, 6 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert {k: v[1] for k, v in got.items()} == {
        "O1": utc(2024, 1, 5),
        "O2": utc(2024, 2, 5),
        "O3": utc(2024, 3, 5),
        "O4": utc(2024, 4, 5),
        "O5": utc(2024, 6, 20),
        "O6": utc(2023, 11, 1),
    }
    assert quarantine(fresh_db) == {
        8: "ordered_at: '2024-13-01' is not a valid timestamp",
        9: "ordered_at: '05/03/2024' is not a valid timestamp",
    }
    done = lifecycle(tmp_path, fresh_db, "transform", "--date", "2024-06-30")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with psycopg.connect(fresh_db) as conn:
        stages = dict(
            conn.execute("select customer_key, current_stage from marts.customers").fetchall()
        )
    # the same as tests/transform/test_orders_only.py, whose orders are at 10:00 UTC
    assert stages == {key("C1"): "at_risk", key("C2"): "new", key("C3"): "churned"}


def test_plain_dates_are_midnight_in_the_business_time_zone(tmp_path: Path, fresh_db: str) -> None:
    (tmp_path / "orders.csv").write_text(PLAIN, encoding="utf-8")
    src = sources_file(
        tmp_path,
        "version: 1\n"
        "business: {timezone: Europe/Berlin}\n"
        f"sources:\n  orders:\n    kind: csv\n    path: {tmp_path / 'orders.csv'}\n"
        "    entities: {order_items: {skip: true}}\n",
    )
    extract(tmp_path, fresh_db, "2024-06-30", src, LIFECYCLE_MAX_REJECT_SHARE="0.3")
    got = orders(fresh_db)
    assert got["O1"][1] == utc(2024, 1, 4, 23)  # CET
    assert got["O5"][1] == utc(2024, 6, 19, 22)  # CEST
    assert got["O5"][4] == "USD"  # the default currency, said explicitly
    assert quarantine(fresh_db) == {
        8: "ordered_at: '2024-13-01' is not an ISO-8601 date or timestamp "
        "(e.g. 2024-03-05 14:02:11 -05:00)",
        9: "ordered_at: '05/03/2024' is not an ISO-8601 date or timestamp "
        "(e.g. 2024-03-05 14:02:11 -05:00)",
    }


def test_a_plain_date_whose_midnight_dst_skips_is_the_first_instant_of_its_day(
    tmp_path: Path, fresh_db: str
) -> None:
    """Chile's clocks go from 00:00 to 01:00 on 8 September 2024: that day's plain dates
    are its first instant (01:00, UTC-3), not rejected rows; a time written in the gap is
    still refused (defaults.nonexistent_time: reject)."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,2024-09-07,10.00\n"
        "C1,O2,2024-09-08,10.00\n"
        "C2,O3,2024-09-08 00:30,5.00\n"
        "C2,O4,2024-09-09,5.00\n",
        encoding="utf-8",
    )
    src = sources_file(
        tmp_path,
        "version: 1\nbusiness: {timezone: America/Santiago}\n"
        + ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv").removeprefix("version: 1\n"),
    )
    extract(tmp_path, fresh_db, "2024-09-30", src, LIFECYCLE_MAX_REJECT_SHARE="0.3")
    got = {k: v[1] for k, v in orders(fresh_db).items()}
    assert got == {
        "O1": utc(2024, 9, 7, 4),  # UTC-4
        "O2": utc(2024, 9, 8, 4),  # 01:00 UTC-3, the day's first instant
        "O4": utc(2024, 9, 9, 3),  # UTC-3
    }
    assert quarantine(fresh_db) == {
        4: "ordered_at: '2024-09-08 00:30' does not exist in America/Santiago (the clocks "
        "skip it at a DST change; defaults.nonexistent_time: reject)",
    }


def test_ids_of_spaces_are_empty_and_dates_before_1900_are_quarantined(
    tmp_path: Path, fresh_db: str
) -> None:
    """An id of spaces, a tab or a no-break space names nobody (it loaded as a customer
    called '   '); a date before 1900 is quarantined at load, not left for the raw gate
    to refuse the whole day with."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,2024-03-01,10.00\n"
        "   ,O2,2024-03-02,5.00\n"
        "C2,\t,2024-03-02,5.00\n"
        "\u00a0,O4,2024-03-02,5.00\n"
        "C3,O5,1899-12-31,7.00\n"
        "C4,O6,2024-03-03,8.00\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv"))
    extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.9")
    assert sorted(orders(fresh_db)) == ["O1", "O6"]
    assert quarantine(fresh_db) == {
        3: "customer_id is empty",
        4: "order_id is empty",
        5: "customer_id is empty",
        6: "ordered_at 1899-12-31 is before 1900 (a year typed wrong?)",
    }
    gate = lifecycle(
        tmp_path,
        fresh_db,
        "validate",
        "--layer",
        "raw",
        "--date",
        "2024-03-31",
        LIFECYCLE_SOURCES_FILE=src,
    )
    assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr[-2000:]


def test_epoch_values_that_are_no_instant_are_quarantined(tmp_path: Path, fresh_db: str) -> None:
    """NaN, infinity and numbers past any timestamp in an epoch column: each row is
    quarantined (one such value failed the whole batch with an Arrow type error)."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,1709251200000,10.00\n"
        "C2,O2,nan,5.00\n"
        "C3,O3,99999999999999999999,5.00\n"
        "C4,O4,inf,5.00\n",
        encoding="utf-8",
    )
    src = sources_file(
        tmp_path,
        _orders_only(
            tmp_path / "orders.csv", "columns: {ordered_at: {column: ordered_at, format: epoch_ms}}"
        ),
    )
    extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.9")
    assert {k: v[1] for k, v in orders(fresh_db).items()} == {"O1": utc(2024, 3, 1)}
    expected = "is not a number of milliseconds since 1970-01-01 UTC (format epoch_ms)"
    assert quarantine(fresh_db) == {
        3: f"ordered_at: 'nan' {expected}",
        4: f"ordered_at: '99999999999999999999' {expected}",
        5: f"ordered_at: 'inf' {expected}",
    }


def test_a_row_dated_after_today_is_quarantined_once_not_left_outside(
    tmp_path: Path, fresh_db: str
) -> None:
    """9999-12-31 was counted "outside" the load interval, left for a day no batch
    reaches, while `sources check` called it in the future: it is quarantined, once,
    however many days read the file again. A row of a later day than the batch's (and
    not after today) is still outside, for its own day's batch."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,2024-03-01,10.00\n"
        "C2,O2,9999-12-31,5.00\n"
        "C3,O3,2024-04-01T10:00:00Z,5.00\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv"))
    env = {"LIFECYCLE_SOURCES_FILE": src, "LIFECYCLE_MAX_REJECT_SHARE": "0.9"}
    today = dt.datetime.now(UTC).date()
    for day in ("2024-03-31", "2024-04-01", "2024-04-02"):
        out = lifecycle(tmp_path, fresh_db, "extract", "--source", "orders", "--date", day, **env)
        assert out.returncode == 0, out.stderr
        if day == "2024-03-31":
            assert "3 read, 1 loaded, 1 quarantined, 0 duplicate, 1 outside" in out.stdout
    assert sorted(orders(fresh_db)) == ["O1", "O3"]
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute("select _line, reason from raw.quarantine").fetchall()
    assert got == [(3, f"ordered_at 9999-12-31 is in the future (after today, {today})")]


def test_an_id_too_long_for_an_index_is_quarantined_not_the_batch_failed(
    tmp_path: Path, fresh_db: str
) -> None:
    """A 3,000-character order id failed the whole batch with "index row size exceeds
    btree maximum ... is the warehouse running?"; an email past 254 characters would have
    failed the identity graph's build."""
    long_id, long_email = "ab" * 1500, "x" * 250 + "@example.com"
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount,email\n"
        f"C1,{long_id},2024-03-01,10.00,\nC2,O2,2024-03-01,5.00,{long_email}\n"
        f"C3,O3,2024-03-01,5.00,{'y' * 240}@example.com\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv"))
    extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.9")
    assert sorted(orders(fresh_db)) == ["O3"]
    assert quarantine(fresh_db) == {
        2: "order_id: 'abababababababababababababababababababab'... is 3,000 characters "
        "long, more than the 256 an id may have (a shifted column?)",
        3: "email: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... is 262 characters long, "
        "more than the 254 an email address may have (a shifted column?)",
    }


def test_a_nul_in_a_column_kept_in_extra_quarantines_its_row_not_the_batch(
    tmp_path: Path, fresh_db: str
) -> None:
    """A NUL byte in a free-text column nobody mapped failed the whole batch with "the
    warehouse refused a statement: unsupported Unicode escape sequence"."""
    (tmp_path / "orders.csv").write_bytes(
        b"customer_id,order_id,ordered_at,amount,note\n"
        b"C1,O1,2024-03-01,10.00,ok\nC2,O2,2024-03-01,5.00,a\x00b\n"
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv"))
    extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.9")
    assert {k: v[7] for k, v in orders(fresh_db).items()} == {"O1": {"note": "ok"}}
    assert quarantine(fresh_db) == {
        3: "note: 'a\\x00b' holds a NUL character (\\x00), which PostgreSQL cannot store"
    }


def test_a_dotted_path_into_a_json_lines_record_is_read(tmp_path: Path, fresh_db: str) -> None:
    """`customer_id: cust.id`, as docs/mapping.md shows it, failed `sources check` and
    extract with "column 'cust.id' is not in o.jsonl" (`cust` was)."""
    (tmp_path / "orders.jsonl").write_text(
        '{"id": "O1", "cust": {"id": "C1"}, "ts": "2024-03-01", "cents": 1999}\n',
        encoding="utf-8",
    )
    mapping = (
        "columns: {order_id: id, customer_id: cust.id, ordered_at: ts, "
        "amount: {column: cents, scale: 0.01}}"
    )
    text = _orders_only(tmp_path / "orders.jsonl", mapping).replace("kind: csv", "kind: jsonl")
    src = sources_file(tmp_path, text)
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert check.returncode == 0, check.stderr
    assert "is in no record of the sample" not in check.stdout
    extract(tmp_path, fresh_db, "2024-03-31", src)
    assert {k: (v[0], v[5]) for k, v in orders(fresh_db).items()} == {
        "O1": ("C1", Decimal("19.99"))
    }


def test_an_order_updated_before_it_was_placed_has_one_verdict_in_every_mode(
    tmp_path: Path, fresh_db: str
) -> None:
    """updated_at 03-30 of an order placed 03-31 (clocks apart): the daily run of 03-30
    quarantined it "in the future" and later days counted it outside, where a full load
    loaded it. Up to a day apart, it is placed by its ordered_at and loads on its day;
    further apart (O4: updated 11 days before it was placed) it is quarantined, in
    daily runs as in a full load."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,updated_at,amount\n"
        "C1,O1,2024-03-29,2024-03-29,10.00\nC3,O3,2024-03-31,2024-03-30,30.00\n"
        "C4,O4,2024-03-31,2024-03-20,40.00\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv"))
    env = {"LIFECYCLE_SOURCES_FILE": src, "LIFECYCLE_MAX_REJECT_SHARE": "0.9"}
    for day, full in (("2024-03-29", ["--full"]), ("2024-03-30", []), ("2024-03-31", [])):
        out = lifecycle(tmp_path, fresh_db, "extract", "--source", "orders", "--date", day, *full,
                        **env)  # fmt: skip
        assert out.returncode == 0, out.stderr
    daily = orders(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute("select order_id, _batch_id from raw.orders__orders order by 1")
        assert got.fetchall() == [
            ("O1", "orders__orders:2024-03-29"),
            ("O3", "orders__orders:2024-03-31"),
        ]
    assert list(quarantine(fresh_db)) == [4]
    # a full load as of the last day: the same rows loaded, O4 quarantined
    out = lifecycle(tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2024-03-31",
                    "--full", **env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert sorted(orders(fresh_db)) == sorted(daily) == ["O1", "O3"]
    # quarantined once, by the daily batch that held its updated_at (the full load counts
    # the same line a duplicate of it)
    assert quarantine(fresh_db) == {
        4: "ordered_at 2024-03-31 is in the future (after the end of the load interval, "
        "2024-03-30T00:00:00+00:00)"
    }


def test_a_json_line_with_half_a_character_is_quarantined_alone(
    tmp_path: Path, fresh_db: str
) -> None:
    """A lone UTF-16 surrogate escape (\\ud800) failed the whole batch with a codec error
    naming no file; a pair (an emoji) is one character and loads."""
    (tmp_path / "orders.jsonl").write_text(
        '{"customer_id": "C1", "order_id": "O1", "ordered_at": "2024-03-01", "amount": 10}\n'
        '{"customer_id": "\\ud800", "order_id": "O2", "ordered_at": "2024-03-01", "amount": 5}\n'
        '{"customer_id": "C3 \\ud83d\\ude00", "order_id": "O3", "ordered_at": "2024-03-02", '
        '"amount": 5}\n',
        encoding="utf-8",
    )
    src = sources_file(
        tmp_path,
        ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.jsonl").replace(
            "kind: csv", "kind: jsonl"
        ),
    )
    extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert {k: v[0] for k, v in orders(fresh_db).items()} == {"O1": "C1", "O3": "C3 \U0001f600"}
    assert quarantine(fresh_db) == {
        2: "malformed JSON: a \\u escape of half a character (a lone UTF-16 surrogate, "
        "\\ud800-\\udfff), which no text can hold"
    }


def test_a_header_without_rows_is_checked_against_the_mapping(
    tmp_path: Path, fresh_db: str
) -> None:
    """A file of a header alone is read as no rows: its wrong header passed `sources
    check` and loaded nothing, silently. A right one still loads nothing, without error."""
    path = tmp_path / "orders.csv"
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=path))
    path.write_text("foo,bar\n", encoding="utf-8")
    error = (
        f"error: {src}: sources.orders.entities.orders.columns.order_id: required field "
        f"'order_id' is not mapped and {path} has no column 'order_id': map it, e.g. "
        "`order_id: <column>` (also missing: customer_id, ordered_at, amount) (columns: foo, bar)"
    )
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert check.returncode == 1 and check.stderr.splitlines()[-1] == error
    load = run_extract(tmp_path, fresh_db, "2024-03-31", src)
    assert load.returncode == 1 and error in load.stderr
    path.write_text("customer_id,order_id,ordered_at,amount\n", encoding="utf-8")
    assert "raw.orders__orders 2024-03-31 success: 0 read, 0 loaded" in extract(
        tmp_path, fresh_db, "2024-03-31", src
    )


@pytest.mark.parametrize("compression", ["infer", "zstd"])
def test_a_zstd_compressed_export_is_read(tmp_path: Path, fresh_db: str, compression) -> None:
    """format.compression: zstd (or inferred from .zst) was documented and failed: fsspec
    needs the zstandard package, and its reader has no readline for the header."""
    import zstandard

    path = tmp_path / "orders.csv.zst"
    path.write_bytes(
        zstandard.ZstdCompressor().compress(
            b"customer_id,order_id,ordered_at,amount\nC1,O1,2024-03-01,10.00\n"
            b"C2,O2,2024-03-02,5.00\n"
        )
    )
    src = sources_file(
        tmp_path,
        _orders_only(path, f"format: {{compression: {compression}}}"),
    )
    extract(tmp_path, fresh_db, "2024-03-31", src)
    assert {k: v[0] for k, v in orders(fresh_db).items()} == {"O1": "C1", "O2": "C2"}


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bz2", "zip"])
def test_a_compressed_export_without_its_extension_is_read(
    tmp_path: Path, fresh_db: str, kind: str
) -> None:
    """A gzip saved as orders.csv (a download link, `curl -o`) read as text: every line
    was malformed. Its first bytes say what it is."""
    import bz2
    import gzip
    import zipfile

    import zstandard

    text = b"customer_id,order_id,ordered_at,amount\nC1,O1,2024-03-01,10.00\nC2,O2,2024-03-02,5\n"
    path = tmp_path / "orders.csv"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("export/orders.csv", text)
    else:
        packed = {
            "gzip": gzip.compress,
            "zstd": zstandard.ZstdCompressor().compress,
            "bz2": bz2.compress,
        }[kind](text)
        path.write_bytes(packed)
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=path))
    out = extract(tmp_path, fresh_db, "2024-03-31", src)
    assert "raw.orders__orders 2024-03-31 success: 2 read, 2 loaded, 0 quarantined" in out
    assert {k: v[0] for k, v in orders(fresh_db).items()} == {"O1": "C1", "O2": "C2"}


def test_a_bad_line_is_quarantined_once_whatever_batch_reads_it_again(
    tmp_path: Path, fresh_db: str
) -> None:
    """A full load, a daily load that meets two bad lines, a rerun of the full load's
    date and a full load of a later date: the quarantine holds each bad line once (the
    reruns counted them again, as their own), the later batches count them as duplicates."""
    path = tmp_path / "orders.csv"
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=path))
    header = "customer_id,order_id,ordered_at,amount\n"
    path.write_text(header + "C1,O1,2024-03-01,10.00\n", encoding="utf-8")

    def load(day: str, *full: str) -> str:
        done = lifecycle(
            tmp_path, fresh_db, "extract", "--source", "orders", "--date", day, *full,
            LIFECYCLE_SOURCES_FILE=src, LIFECYCLE_MAX_REJECT_SHARE="0.9",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    load("2024-03-01", "--full")
    path.write_text(
        header + "C1,O1,2024-03-01,10.00\nC3,O3,garbage,5.00\nC4,O4,2024-03-03,abc\n"
        "C5,O5,2024-03-03,7.00\n",
        encoding="utf-8",
    )
    assert "1 loaded, 2 quarantined" in load("2024-03-03")
    reasons = quarantine(fresh_db)
    assert sorted(reasons) == [3, 4]
    rerun = load("2024-03-01")
    assert "0 quarantined" in rerun
    later = load("2024-03-03", "--full")
    assert "0 quarantined" in later
    with psycopg.connect(fresh_db) as conn:
        held = conn.execute(
            "select _line, count(*) from raw.quarantine group by 1 order by 1"
        ).fetchall()
    assert held == [(3, 1), (4, 1)]
    assert quarantine(fresh_db) == reasons


@pytest.mark.parametrize(
    ("fmt", "values"),
    [
        ("iso", ["2024-03-05T10:00:00+05:30", "2024-03-05T10:00:00+25:00"]),
        ("%d.%m.%Y %H:%M %z", ["05.03.2024 10:00 +0530", "05.03.2024 10:00 +2500"]),
    ],
)
def test_an_offset_of_a_day_or_more_is_quarantined(
    tmp_path: Path, fresh_db: str, fmt: str, values: list[str]
) -> None:
    """+25:00 is no UTC offset: it loaded as one (25 hours off)."""
    good, bad = values
    (tmp_path / "orders.csv").write_text(
        f"customer_id,order_id,ordered_at,amount\nC1,O1,{good},10.00\nC2,O2,{bad},5.00\n",
        encoding="utf-8",
    )
    src = sources_file(
        tmp_path,
        _orders_only(
            tmp_path / "orders.csv",
            f"columns: {{ordered_at: {{column: ordered_at, format: '{fmt}'}}}}",
        ),
    )
    extract(tmp_path, fresh_db, "2024-03-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.9")
    assert {k: v[1] for k, v in orders(fresh_db).items()} == {"O1": utc(2024, 3, 5, 4, 30)}
    assert list(quarantine(fresh_db)) == [3]
    assert quarantine(fresh_db)[3].startswith(f"ordered_at: '{bad}' ")


def test_a_refused_batch_counts_what_it_quarantined_and_loaded_nothing(
    tmp_path: Path, fresh_db: str
) -> None:
    """A batch over the reject share keeps its quarantine for diagnosis: the command's
    lines said 0 quarantined (and the batch's own line was not printed)."""
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,2024-03-01,10.00\nC2,O2,2024-03-01,abc\nC3,O3,2024-03-01,5.00\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=path))
    done = run_extract(tmp_path, fresh_db, "2024-03-31", src)
    assert done.returncode == 1
    assert done.stdout.startswith("raw.orders__orders 2024-03-31 failed: 3 read, 0 loaded, ")
    assert "1 quarantined" in done.stdout.splitlines()[0]
    assert done.stderr.splitlines()[-1].startswith(
        "extract 2024-03-31: 1 source(s), 0 rows loaded, 1 quarantined in "
    )
    assert done.stderr.splitlines()[-1].endswith(", FAILED")
    assert list(quarantine(fresh_db)) == [3]


def test_a_later_batch_that_reads_a_refused_ones_rows_replaces_its_quarantine(
    tmp_path: Path, fresh_db: str
) -> None:
    """The refused batch's quarantine stayed while the next day's batch loaded the row
    fixed since: loaded and quarantined at once. A row still bad is quarantined once."""
    path = tmp_path / "orders.csv"
    header = "customer_id,order_id,ordered_at,amount\n"
    path.write_text(
        header + "C1,O1,2024-03-01,10.00\nC2,O2,2024-03-01,abc\nC3,O3,2024-03-01,5.00\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=path))
    env = {"LIFECYCLE_SOURCES_FILE": src}
    assert run_extract(tmp_path, fresh_db, "2024-03-31", src).returncode == 1
    assert list(quarantine(fresh_db)) == [3]
    path.write_text(
        header + "C1,O1,2024-03-01,10.00\nC2,O2,2024-03-01,7.00\nC3,O3,2024-03-01,5.00\n"
        "C4,O4,2024-04-01,x\n" + "".join(f"C9,P{i},2024-04-01,1.00\n" for i in range(30)),
        encoding="utf-8",
    )
    out = lifecycle(
        tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2024-04-01", **env
    )
    assert out.returncode == 0, out.stderr
    assert orders(fresh_db)["O2"][5] == Decimal("7.00")
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute("select _batch_id, _line from raw.quarantine").fetchall()
    assert got == [("orders__orders:2024-04-01", 5)]  # O4's; O2's refused entry is gone


def test_an_order_that_moves_to_another_customer_is_warned_about(
    tmp_path: Path, fresh_db: str
) -> None:
    """An order id reused by another customer (a second shop's numbering) moved the order
    and its revenue without a word; the latest version still counts."""
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,order_id,ordered_at,amount\nC1,O1,2024-03-01,10.00\nC2,O2,2024-03-01,5.00\n",
        encoding="utf-8",
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=path))
    env = {"LIFECYCLE_SOURCES_FILE": src}
    first = lifecycle(
        tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2024-03-31", **env
    )
    assert first.returncode == 0, first.stderr
    assert "warning" not in first.stdout
    path.write_text(
        "customer_id,order_id,ordered_at,amount\nC1,O1,2024-03-01,10.00\n"
        "C2,O2,2024-03-01,5.00\nC9,O1,2024-04-01,7.00\n",
        encoding="utf-8",
    )
    out = lifecycle(
        tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2024-04-01", **env
    )
    assert out.returncode == 0, out.stderr
    assert (
        "1 warning(s): 1 order(s) name another customer than an earlier version of theirs "
        "(e.g. order 'O1': customer 'C1', now 'C9'); the latest version counts"
    ) in out.stdout
    with psycopg.connect(fresh_db) as conn:
        (warned,) = conn.execute(
            "select warnings from ops.load_runs where batch_id = 'orders__orders:2024-04-01'"
        ).fetchone()
    assert len(warned) == 1 and warned[0].startswith("1 order(s) name another customer")


DAILY_EXPORT = {
    # the export as it stands on each run's date: what a shop writes out every night
    "2024-06-03": "C1,O1,2024-06-01,10.00\nC2,O2,2024-06-02,20.00\nC1,O3,2024-06-03,30.00\n",
    "2024-06-04": "C3,O4,2024-06-04,40.00\nC3,O5,2024-06-04,forty\n",
    "2024-06-05": "C2,O6,2024-06-05T00:00:00,50.00\nC4,O7,2024-06-05,5.00\n",
    "2024-06-06": "",  # nothing sold
    "2024-06-07": "C1,O8,2024-06-07,70.00\nC5,O9,2024-06-08,1.00\n",  # O9: tomorrow's
}


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_a_growing_plain_date_export_loaded_day_by_day_equals_a_full_load(
    tmp_path: Path, fresh_db: str, embedded_settings, zone: str
) -> None:
    """Each day's run loads that day's rows, as a full load of the last day does.

    A plain date is its day's midnight, and a day's interval is [D 00:00, D+1 00:00): the
    order dated D is D's (never the day before's, where a daily run after D-1 would miss
    it), its malformed row is quarantined by D's run, and tomorrow's row waits for it.
    """
    from lifecycle import warehouse as wh
    from tests.conftest import scratch_database

    export = tmp_path / "orders.csv"
    src = sources_file(
        tmp_path,
        f"version: 1\nbusiness: {{timezone: {zone}}}\n"
        f"sources:\n  orders:\n    kind: csv\n    path: {export}\n"
        "    entities: {orders: {max_reject_share: 0.5}, order_items: {skip: true}}\n",
    )
    text = "customer_id,order_id,ordered_at,amount\n"
    summaries = []
    for n, (day, rows) in enumerate(DAILY_EXPORT.items()):
        text += rows
        export.write_text(text, encoding="utf-8")
        args = ["extract", "--source", "orders", "--date", day] + (["--full"] if n == 0 else [])
        out = lifecycle(tmp_path, fresh_db, *args, LIFECYCLE_SOURCES_FILE=src)
        assert out.returncode == 0, out.stderr
        summaries.append(next(line for line in out.stdout.splitlines() if "raw.orders__" in line))
    counts = [s.split("success: ")[1].split(" outside")[0] for s in summaries]
    assert counts == [
        "3 read, 3 loaded, 0 quarantined, 0 duplicate, 0",
        "5 read, 1 loaded, 1 quarantined, 0 duplicate, 3",
        "7 read, 2 loaded, 0 quarantined, 0 duplicate, 5",
        "7 read, 0 loaded, 0 quarantined, 0 duplicate, 7",
        "9 read, 1 loaded, 0 quarantined, 0 duplicate, 8",
    ], summaries

    def landed(db: str) -> tuple[dict, dict]:
        with psycopg.connect(db) as conn:
            rows = conn.execute(
                "select order_id, customer_id, ordered_at, amount from raw.orders__orders"
            ).fetchall()
            bad = conn.execute(
                "select _line, reason, _batch_id from raw.quarantine where entity = 'orders'"
            ).fetchall()
        return {r[0]: r[1:] for r in rows}, {r[0]: r[1:] for r in bad}

    daily, daily_bad = landed(fresh_db)
    midnight = {d: dt.datetime.fromisoformat(f"{d}T00:00").replace(tzinfo=ZoneInfo(zone))
                for d in ("2024-06-01", "2024-06-02", "2024-06-03", "2024-06-04",
                          "2024-06-05", "2024-06-07")}  # fmt: skip
    assert {k: (v[0], v[1]) for k, v in daily.items()} == {
        "O1": ("C1", midnight["2024-06-01"]),
        "O2": ("C2", midnight["2024-06-02"]),
        "O3": ("C1", midnight["2024-06-03"]),
        "O4": ("C3", midnight["2024-06-04"]),
        "O6": ("C2", midnight["2024-06-05"]),
        "O7": ("C4", midnight["2024-06-05"]),
        "O8": ("C1", midnight["2024-06-07"]),
    }
    assert daily_bad == {
        6: ("amount: 'forty' is not a valid numeric", "orders__orders:2024-06-04"),
    }
    with scratch_database(wh.warehouse_url(embedded_settings, start=False)) as full_db:
        out = lifecycle(
            tmp_path, full_db, "extract", "--source", "orders", "--date", "2024-06-07", "--full",
            LIFECYCLE_SOURCES_FILE=src,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        full, full_bad = landed(full_db)
    assert full == daily
    assert {k: v[0] for k, v in full_bad.items()} == {k: v[0] for k, v in daily_bad.items()}


# -------------------------------------------------- (d) ; latin-1 decimal commas

GERMAN = """
version: 1
business: {{timezone: Europe/Berlin, currency: EUR}}
sources:
  orders:
    kind: csv
    path: {path}
    format:
      delimiter: ";"
      encoding: latin-1
      decimal_separator: ","
      thousands_separator: "."
      skip_rows: 1                # the report title above the header
    currency: EUR
    entities:
      orders:
        columns:
          order_id: Bestellnr
          customer_id: Kundennr
          email: E-Mail
          ordered_at: {{column: Bestelldatum, format: "%d.%m.%Y %H:%M"}}
          amount: Betrag
          quantity: Menge
          status: {{column: Status, values: {{bezahlt: completed, erstattet: refunded,
                                             storniert: cancelled}}}}
        extra_columns: [Kunde, Bemerkung]
      order_items: {{skip: true}}
"""


def test_semicolon_latin1_export_with_decimal_commas(tmp_path: Path, fresh_db: str) -> None:
    path = EXPORTS / "webshop_de_latin1.csv"
    src = sources_file(tmp_path, GERMAN.format(path=path))
    out = extract(tmp_path, fresh_db, "2024-10-31", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert "raw.orders__orders 2024-10-31 success: 8 read, 5 loaded, 3 quarantined" in out
    got = orders(fresh_db)
    assert got["10001"] == (
        "K-001",
        utc(2024, 3, 5, 13, 2),
        None,
        "completed",
        "EUR",
        Decimal("1234.50"),
        3,
        {"Kunde": "Jürgen Müller", "Bemerkung": "Lieferung; bitte klingeln"},
        3,
    )
    assert got["10002"][7] == {"Kunde": "José Núñez"}
    assert got["10002"][5] == Decimal("19.99")
    assert got["10003"][3:6] == ("refunded", "EUR", Decimal("249.00"))
    assert got["10004"][1] == utc(2024, 3, 10, 1, 30)
    # 27.10.2024 02:30 happens twice in Berlin: the earlier (summer time) by default
    assert got["10008"][1] == utc(2024, 10, 27, 0, 30)
    assert got["10008"][5:8] == (Decimal("1000.00"), 10, {"Kunde": "Zoë Ångström"})
    assert quarantine(fresh_db) == {
        7: "ordered_at: '31.02.2024 10:00' does not match the format '%d.%m.%Y %H:%M'",
        8: "ordered_at: '31.03.2024 02:30' does not exist in Europe/Berlin (the clocks skip "
        "it at a DST change; defaults.nonexistent_time: reject)",
        9: "amount: '12,3,4' is not a number (decimal separator ',', thousands separator '.')",
    }


# --------------------------------------------------------- (e) US dates, epoch ms

US = """
version: 1
defaults: {{format: {{null_values: ["", "n/a"]}}}}
sources:
  orders:
    kind: csv
    path: {path}
    timezone: America/New_York
    entities:
      orders:
        cursor: updated_at
        columns:
          order_id: order_id
          customer_id: customer_id
          ordered_at: {{column: order_date, format: "%m/%d/%Y %H:%M"}}
          updated_at: {{column: last_update_ms, format: epoch_ms}}
          amount: {{column: order_total_cents, scale: 0.01}}
          status: {{column: state, values: {{complete: completed, refunded: refunded,
                                            canceled: cancelled}}}}
      order_items: {{skip: true}}
"""


def test_a_latin1_export_read_as_utf8_says_to_set_the_encoding(
    tmp_path: Path, fresh_db: str
) -> None:
    path = EXPORTS / "webshop_de_latin1.csv"
    src = sources_file(tmp_path, GERMAN.format(path=path).replace("      encoding: latin-1\n", ""))
    hint = (
        "the file is not UTF-8: set format.encoding in the sources file (cp1252 or latin-1 "
        "for most Western European exports)"
    )
    check = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert check.returncode == 1
    assert hint in check.stderr
    out = lifecycle(tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2024-10-31",
                    "--full", LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 1
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert "; most: broken encoding: byte 0xfc at position " in error
    assert "is not valid UTF-8 (8 rows alike); " + hint + ". See raw.quarantine" in error


def test_us_dates_and_epoch_milliseconds(tmp_path: Path, fresh_db: str) -> None:
    path = EXPORTS / "us_orders_epoch.csv"
    src = sources_file(tmp_path, US.format(path=path))
    out = extract(tmp_path, fresh_db, "2024-11-30", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert "raw.orders__orders 2024-11-30 success: 8 read, 5 loaded, 3 quarantined" in out
    got = orders(fresh_db)
    assert {k: v[1:7] for k, v in got.items()} == {
        "A-1001": (
            utc(2024, 3, 5, 19, 2),
            utc(2024, 3, 5, 19, 30),
            "completed",
            "USD",
            Decimal("45.99"),
            None,
        ),
        "A-1002": (
            utc(2024, 3, 9, 14, 5),
            utc(2024, 3, 9, 14, 5),
            "completed",
            "USD",
            Decimal("1200.00"),
            None,
        ),
        "A-1004": (
            utc(2024, 7, 5, 3, 59),
            utc(2024, 7, 5, 4, 0),
            "refunded",
            "USD",
            Decimal("50.00"),
            None,
        ),
        # 01:30 on 3 Nov 2024 happens twice in New York: the earlier (EDT) by default
        "A-1005": (
            utc(2024, 11, 3, 5, 30),
            utc(2024, 11, 3, 6, 0),
            "completed",
            "USD",
            Decimal("2.50"),
            None,
        ),
        "A-1008": (
            utc(2024, 11, 20, 21, 45),
            utc(2024, 11, 20, 21, 45),
            "completed",
            "USD",
            Decimal("10.50"),
            None,
        ),
    }
    assert quarantine(fresh_db) == {
        4: "ordered_at: '03/10/2024 02:30' does not exist in America/New_York (the clocks "
        "skip it at a DST change; defaults.nonexistent_time: reject)",
        7: "updated_at: 'abc' is not a number of milliseconds since 1970-01-01 UTC "
        "(format epoch_ms)",
        8: "amount is empty",  # n/a is a null marker
    }


# -------------------------------------- (f) CDNOW: aligned text, 1990s, no order id

CDNOW = """
version: 1
sources:
  orders:
    kind: csv
    format:
      delimiter: whitespace        # columns aligned with runs of spaces (or tabs)
      header: false
      column_names: [customer, date, cds, dollars]
    entities:
      orders:
        path: {path}
        grain: line                # one purchase a line; a customer's lines of a day: one order
        columns:
          order_id: {{concat: [customer, date], separator: "-"}}
          customer_id: customer
          ordered_at: {{column: date, format: "%Y%m%d"}}
          amount: dollars
          quantity: cds
          status: {{constant: completed}}
      order_items: {{skip: true}}
"""


def test_cdnow_aligned_text_from_the_1990s(tmp_path: Path, fresh_db: str) -> None:
    path = EXPORTS / "cdnow_master.txt"
    src = sources_file(tmp_path, CDNOW.format(path=path))
    out = extract(tmp_path, fresh_db, "1998-06-30", src, LIFECYCLE_MAX_REJECT_SHARE="0.2")
    # 14 lines (and a blank one) of 13 customer-days: 11 orders loaded, 2 quarantined
    assert "raw.orders__orders 1998-06-30 success: 13 read, 11 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert sorted(got) == [
        "00001-19970101",
        "00001-19970112",
        "00001-19970602",
        "00001-19971105",
        "00001-19980105",
        "00001-19980325",
        "00001-19980601",
        "00002-19970112",
        "00003-19980610",
        "00004-19970301",
        "00004-19980115",
    ]
    # two lines of customer 00002 on 12 Jan 1997 are one order; %Y%m%d reads the day
    assert got["00002-19970112"][:7] == (
        "00002",
        utc(1997, 1, 12),
        None,
        "completed",
        "USD",
        Decimal("109.50"),
        8,
    )
    assert got["00004-19980115"][1] == utc(1998, 1, 15)  # a tab-separated line
    assert got["00001-19980325"][5] == Decimal("20.00")  # trailing blanks
    assert quarantine(fresh_db) == {
        7: "ordered_at: '19971332' does not match the format '%Y%m%d' (line 7)",
        12: "malformed row: expected 4 fields, got 3",
    }

    gate = lifecycle(tmp_path, fresh_db, "validate", "--layer", "raw", "--date", "1998-06-30")
    assert gate.returncode == 0, gate.stdout[-3000:] + gate.stderr[-3000:]
    done = lifecycle(tmp_path, fresh_db, "transform", "--date", "1998-06-30")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with psycopg.connect(fresh_db) as conn:
        stages = dict(
            conn.execute("select customer_key, current_stage from marts.customers").fetchall()
        )
    # 00001: 4 orders in the last 365 days, the last 29 days ago; 00002: last order
    # 534 days ago; 00003: first order 20 days ago; 00004: last order 166 days ago
    assert stages == {
        key("00001"): "loyal",
        key("00002"): "churned",
        key("00003"): "new",
        key("00004"): "at_risk",
    }


def test_any_iso_currency_passes_the_raw_gate(tmp_path: Path, fresh_db: str) -> None:
    """A Brazilian or Japanese shop's orders land and pass the raw gate (its currency
    check once listed USD, EUR and GBP only, refusing every BRL order)."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount,currency\n"
        "C1,O1,2018-10-01,120.50,BRL\nC2,O2,2018-10-02,3400,JPY\nC3,O3,2018-10-03,9.99,brl\n"
        "C4,O4,2018-10-03,5,REAIS\n"
    )
    src = sources_file(tmp_path, ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv"))
    out = extract(tmp_path, fresh_db, "2018-10-17", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert "success: 4 read, 3 loaded, 1 quarantined" in out
    assert {k: v[4] for k, v in orders(fresh_db).items()} == {"O1": "BRL", "O2": "JPY", "O3": "BRL"}
    gate = lifecycle(tmp_path, fresh_db, "validate", "--layer", "raw", "--date", "2018-10-17",
                     LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert gate.returncode == 0, gate.stdout[-3000:] + gate.stderr[-3000:]


def test_an_evening_order_of_the_last_day_west_of_utc_passes_the_raw_gate(
    tmp_path: Path, fresh_db: str
) -> None:
    """The raw gate's "not after the end of the day" bound is the business zone's midnight.

    In Sao Paulo, an order at 23:32 on the day loaded is 02:32 UTC the next day: the gate
    compared it with UTC midnight and refused the day of every shop west of UTC that
    sells in the evening (an Olist-shaped export, on its last day). One hour past the
    zone's midnight it is still refused."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,2018-10-16 10:00:00,10\nC2,O2,2018-10-16 23:32:25,20\n"
    )
    src = sources_file(
        tmp_path,
        ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv").replace(
            "sources:", "business: {timezone: America/Sao_Paulo, currency: BRL}\nsources:"
        ),
    )
    out = extract(tmp_path, fresh_db, "2018-10-16", src)
    assert "success: 2 read, 2 loaded, 0 quarantined" in out
    assert orders(fresh_db)["O2"][1] == utc(2018, 10, 17, 2, 32, 25)

    def gate() -> subprocess.CompletedProcess:
        return lifecycle(tmp_path, fresh_db, "validate", "--layer", "raw",
                         "--date", "2018-10-16", LIFECYCLE_SOURCES_FILE=src)  # fmt: skip

    passed = gate()
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    with psycopg.connect(fresh_db) as conn:  # 00:30 the next day in Sao Paulo
        conn.execute("update raw.orders__orders set ordered_at = %s where order_id = 'O2'",
                     (utc(2018, 10, 17, 3, 30),))  # fmt: skip
    refused = gate()
    assert refused.returncode != 0
    assert "ordered_at within the load interval" in refused.stdout + refused.stderr


@pytest.mark.parametrize("column", ["Totl", "Created"])
def test_a_mapped_column_that_is_not_in_the_file_is_a_clear_error(
    tmp_path: Path, fresh_db: str, column: str
) -> None:
    path = EXPORTS / "shopify_orders.csv"
    text = SHOPIFY.format(path=path)
    if column == "Totl":
        text = text.replace("amount: Total", f"amount: {column}")
    else:
        text = text.replace("column: Created at", f"column: {column}")
    src = sources_file(tmp_path, text)
    out = lifecycle(
        tmp_path,
        fresh_db,
        "extract",
        "--source",
        "orders",
        "--date",
        "2024-03-31",
        LIFECYCLE_SOURCES_FILE=src,
    )
    assert out.returncode == 1
    field = "amount" if column == "Totl" else "ordered_at"
    assert (
        f"error: {src}: sources.orders.entities.orders.columns.{field}.column: column "
        f"{column!r} is not in {path} (columns: Name, Email, Financial Status," in out.stderr
    )
    assert "Traceback" not in out.stderr
