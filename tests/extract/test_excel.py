"""Excel workbooks as a file source: UCI Online Retail II is published as an .xlsx.

The workbook is written here with openpyxl the way Excel stores that export: two sheets
(one per year), invoice dates as date cells, customer ids as numbers (13085.0), a
cancellation invoice `C…`, a line with no customer, a quantity typed as a word, a blank
row. ``lifecycle sources check`` and ``lifecycle extract`` read it as a user would.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from openpyxl import Workbook

from tests.extract.test_mapping import extract, lifecycle, orders, quarantine, sources_file
from tests.extract.test_mapping import utc as utc_at

HEADER = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price",
          "Customer ID", "Country"]  # fmt: skip

YEAR_2010 = [
    ["489434", "85048", "15CM CHRISTMAS GLASS BALL", 12, dt.datetime(2009, 12, 1, 7, 45), 6.95,
     13085.0, "United Kingdom"],
]  # fmt: skip

YEAR_2011 = [
    ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, dt.datetime(2010, 12, 1, 8, 26),
     2.55, 17850.0, "United Kingdom"],
    ["536365", "71053", "WHITE METAL LANTERN", 6, dt.datetime(2010, 12, 1, 8, 26), 3.39, 17850.0,
     "United Kingdom"],
    ["536367", "84879", "ASSORTED COLOUR BIRD ORNAMENT", 32, dt.datetime(2010, 12, 1, 8, 34), 1.69,
     13047.0, "United Kingdom"],
    [None] * 8,
    ["536370", "22728", "ALARM CLOCK BAKELIKE PINK", 24, dt.datetime(2010, 12, 1, 8, 45), 3.75,
     12583.0, "France"],
    ["536414", "22139", None, 56, dt.datetime(2010, 12, 1, 11, 52), 0.0, None, "United Kingdom"],
    ["C536379", "D", "Discount", -1, dt.datetime(2010, 12, 1, 9, 41), 27.5, 14527.0,
     "United Kingdom"],
    ["536380", "22961", "JAM MAKING SET PRINTED", "six", dt.datetime(2010, 12, 1, 9, 41), 1.45,
     17809.0, "United Kingdom"],
    ["536367", "22745", "POPPY'S PLAYHOUSE BEDROOM", 6, dt.datetime(2010, 12, 1, 8, 34), 2.1,
     13047.0, "United Kingdom"],
]  # fmt: skip

SOURCES = """
version: 1
business: {{timezone: Europe/London, currency: GBP}}
sources:
  orders:
    kind: excel
    format: {{sheet: {sheet}}}
    entities:
      orders:
        path: {path}
        grain: line
        refunds: {{negative_amount: true, column: Invoice, starts_with: C}}
        columns:
          order_id: Invoice
          customer_id: Customer ID
          ordered_at: InvoiceDate
          amount: {{multiply: [Quantity, Price]}}
          quantity: Quantity
          status: {{constant: completed}}
        extra_columns: [Country]
      order_items: {{skip: true}}
"""


def workbook(path: Path) -> Path:
    book = Workbook()
    first = book.active
    first.title = "Year 2009-2010"
    for row in [HEADER, *YEAR_2010]:
        first.append(row)
    second = book.create_sheet("Year 2010-2011")
    for row in [HEADER, *YEAR_2011]:
        second.append(row)
    book.save(path)
    return path


def test_online_retail_workbook_by_sheet_name(tmp_path: Path, fresh_db: str) -> None:
    path = workbook(tmp_path / "online_retail_II.xlsx")
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet="Year 2010-2011"))
    check = lifecycle(tmp_path, fresh_db, "sources", "check", "--entity", "orders",
                      LIFECYCLE_SOURCES_FILE=src, LIFECYCLE_MAX_REJECT_SHARE="0.5")  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "raw.orders__orders <- excel " in check.stdout
    assert "2010-12-01T08:26:00+00:00" in check.stdout  # a date cell, London winter time

    out = extract(tmp_path, fresh_db, "2010-12-09", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    # 9 lines (and a blank row) of 6 invoices: 4 orders loaded, 2 quarantined
    assert "raw.orders__orders 2010-12-09 success: 6 read, 4 loaded, 2 quarantined" in out
    got = orders(fresh_db)
    assert sorted(got) == ["536365", "536367", "536370", "C536379"]
    assert got["536365"][:7] == (
        "17850",  # the number cell 17850.0 is the id 17850
        utc_at(2010, 12, 1, 8, 26),
        None,
        "completed",
        "GBP",
        Decimal("35.64"),  # 6 × 2.55 + 6 × 3.39
        12,
    )
    # the second line of 536367 is at the end of the sheet
    assert got["536367"][5:8] == (Decimal("66.68"), 38, {"Country": "United Kingdom"})
    assert got["C536379"][3:6] == ("refunded", "GBP", Decimal("27.50"))
    # quarantined lines are the sheet's row numbers, as Excel shows them
    assert quarantine(fresh_db) == {
        7: "customer_id is empty",
        9: "amount: 'six' is not a number (line 9); quantity: 'six' is not a number (line 9)",
    }


def test_a_workbook_of_two_sheets_read_by_default_says_the_second_was_not_read(
    tmp_path: Path, fresh_db: str
) -> None:
    """Online Retail II's second year was left out in silence: the default reads the first
    sheet only, which a user who did not open the workbook cannot know."""
    path = workbook(tmp_path / "online_retail_II.xlsx")
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet="null"))
    said = (
        f"{path}: read its first sheet 'Year 2009-2010' only; it also has 'Year 2010-2011' "
        "(format.sheet: all reads every sheet, or name the one to read)"
    )
    check = lifecycle(tmp_path, fresh_db, "sources", "check", "--entity", "orders",
                      LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"note: {said}" in check.stdout
    out = extract(tmp_path, fresh_db, "2010-12-09", src)
    assert "raw.orders__orders 2010-12-09 success: 1 read, 1 loaded, 0 quarantined" in out
    assert said in out
    # naming the sheet says the choice was made: no warning
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet=0))
    assert "read its first sheet" not in extract(tmp_path, fresh_db, "2010-12-09", src)


def test_every_sheet_of_a_workbook_is_read_with_sheet_all(tmp_path: Path, fresh_db: str) -> None:
    path = workbook(tmp_path / "online_retail_II.xlsx")
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet="all"))
    out = extract(tmp_path, fresh_db, "2010-12-09", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    # both years: the 2009 invoice and the 6 invoices of 2010 (2 quarantined)
    assert "raw.orders__orders 2010-12-09 success: 7 read, 5 loaded, 2 quarantined" in out
    assert "read its first sheet" not in out
    got = orders(fresh_db)
    assert sorted(got) == ["489434", "536365", "536367", "536370", "C536379"]
    assert got["489434"][5] == Decimal("83.40")  # 12 × 6.95
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute(
            "select _source, _line, reason from raw.quarantine order by _line"
        ).fetchall()
        sources = conn.execute("select distinct _source from raw.orders__orders").fetchall()
    # a row is located by its sheet and the sheet's row number
    assert [(r[0], r[1]) for r in rows] == [
        (f"{path}[Year 2010-2011]", 7),
        (f"{path}[Year 2010-2011]", 9),
    ]
    assert sorted(s for (s,) in sources) == [f"{path}[Year 2009-2010]", f"{path}[Year 2010-2011]"]
    # a list names the sheets: the same
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet="[0, 'Year 2010-2011']"))
    out = extract(tmp_path, fresh_db, "2010-12-09", src, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert "success: 7 read" in out


def test_sheets_of_other_columns_are_one_error_line(tmp_path: Path, fresh_db: str) -> None:
    path = workbook(tmp_path / "online_retail_II.xlsx")
    from openpyxl import load_workbook

    book = load_workbook(path)
    book.create_sheet("Notes").append(["Read me", "first"])
    book.save(path)
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet="all"))
    out = lifecycle(tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2010-12-09",
                    "--full", LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 1
    assert (
        f"{path}: sheet 'Notes' has other columns than sheet 'Year 2009-2010' (Read me, first "
        "against Invoice, StockCode, Description, Quantity, InvoiceDate, Price, Customer ID, "
        "Country): name the sheets to read with format.sheet"
    ) in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert orders(fresh_db) == {}


@pytest.mark.parametrize(
    ("sheet", "message"),
    [
        ("Year 2012", "no sheet named 'Year 2012' (sheets: Year 2009-2010, Year 2010-2011)"),
        ("7", "sheet 7 does not exist: the workbook has 2 sheet(s)"),
    ],
)
def test_a_missing_sheet_is_one_error_line(
    tmp_path: Path, fresh_db: str, sheet: str, message: str
) -> None:
    path = workbook(tmp_path / "online_retail_II.xlsx")
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet=sheet))
    out = lifecycle(tmp_path, fresh_db, "extract", "--source", "orders", "--date", "2010-12-09",
                    "--full", LIFECYCLE_SOURCES_FILE=src)  # fmt: skip
    assert out.returncode == 1
    assert message in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_a_csv_named_xlsx_is_one_error_line(tmp_path: Path, fresh_db: str) -> None:
    path = tmp_path / "orders.xlsx"
    path.write_text("Invoice,Customer ID\n1,2\n")
    src = sources_file(tmp_path, SOURCES.format(path=path, sheet=0))
    out = lifecycle(tmp_path, fresh_db, "sources", "check", LIFECYCLE_SOURCES_FILE=src)
    assert out.returncode == 1
    assert f"{path}: cannot be read as an Excel workbook (.xlsx)" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_number_cells_of_a_decimal_comma_sheet_keep_their_value(
    tmp_path: Path, fresh_db: str
) -> None:
    """A German sheet mixes amounts typed as text ("10,50") and as numbers (10.5). With
    decimal ',' and thousands '.', the number cell's "10.5" was read as 105.00."""
    book = Workbook()
    sheet = book.active
    for row in [
        ["Bestellung", "Kunde", "Datum", "Betrag"],
        ["B1", "K1", dt.datetime(2024, 3, 1, 10, 0), "10,50"],
        ["B2", "K2", dt.datetime(2024, 3, 1, 11, 0), 10.5],
        ["B3", "K3", dt.datetime(2024, 3, 1, 12, 0), 1234.25],
        ["B4", "K4", dt.datetime(2024, 3, 1, 13, 0), 7],
    ]:
        sheet.append(row)
    book.save(tmp_path / "bestellungen.xlsx")
    src = sources_file(
        tmp_path,
        f"""
version: 1
business: {{timezone: Europe/Berlin, currency: EUR}}
sources:
  orders:
    kind: excel
    format: {{decimal_separator: ",", thousands_separator: "."}}
    entities:
      orders:
        path: {tmp_path / "bestellungen.xlsx"}
        columns: {{order_id: Bestellung, customer_id: Kunde, ordered_at: Datum, amount: Betrag}}
      order_items: {{skip: true}}
""",
    )
    extract(tmp_path, fresh_db, "2024-03-31", src)
    assert {k: v[5] for k, v in orders(fresh_db).items()} == {
        "B1": Decimal("10.50"),
        "B2": Decimal("10.50"),
        "B3": Decimal("1234.25"),
        "B4": Decimal("7.00"),
    }
    assert quarantine(fresh_db) == {}
