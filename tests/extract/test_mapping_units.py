"""The mapping step and the CSV dialects, without a warehouse: chunks in, chunks out."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lifecycle.extract.files import file_batch
from lifecycle.extract.mapping import Mapper
from lifecycle.extract.readers import read_csv_chunks, read_jsonl
from lifecycle.parse import Checker, Chunk, Window
from lifecycle.raw import MARKETING_SPEND, ORDERS, WEB_EVENTS
from lifecycle.sources_file import CsvFormat, builtin_sources, parse_sources
from tests.conftest import make_settings
from tests.extract.test_mapping import utc

WINDOW = Window(None, utc(2030, 1, 1))


def mapper(entity_doc: dict, source_doc: dict | None = None, top: dict | None = None) -> Mapper:
    doc = {
        "version": 1,
        **(top or {}),
        "sources": {
            "orders": {
                "kind": "csv",
                "path": "/nowhere/orders.csv",
                **(source_doc or {}),
                "entities": {"orders": entity_doc},
            }
        },
    }
    sources = parse_sources(doc)
    src, emap = sources.entity(ORDERS)
    return Mapper(ORDERS, src, emap, sources)


def chunk(csv: str, fmt: CsvFormat | None = None, block_bytes: int = 1 << 20) -> list[Chunk]:
    return list(read_csv_chunks(io.BytesIO(csv.encode()), "mem.csv", block_bytes, fmt))


def checked(m: Mapper, chunks: list[Chunk]):
    """Return (loaded rows as dicts, quarantine {line: reason}) of mapped chunks."""
    checker = Checker(m.entity, WINDOW, None)
    rows, bad = [], {}
    for c in m.map_chunks(chunks):
        out = checker.check(c)
        rows += out.table.to_pylist()
        bad |= {line: reason for _, line, reason, _ in out.quarantine}
    return rows, bad


LINES = "".join(
    ["inv,cust,when,qty,price\n"]
    + [f"A{i // 3},c{i // 6},2024-01-0{1 + i // 6} 10:00,{1 + i % 3},1.10\n" for i in range(18)]
    + ["A0,c0,2024-01-01 10:00,5,2.00\n"]  # a late line of the first order
)
LINE_MAP = {
    "grain": "line",
    "columns": {
        "order_id": "inv",
        "customer_id": "cust",
        "ordered_at": "when",
        "amount": {"multiply": ["qty", "price"]},
        "quantity": "qty",
    },
}


@pytest.mark.parametrize("block", [64, 1 << 20], ids=["lines-span-chunks", "one-chunk"])
def test_order_lines_sum_per_order_across_chunks_and_out_of_order(block: int) -> None:
    chunks = chunk(LINES, block_bytes=block)
    assert len(chunks) > 1 or block > 64
    rows, bad = checked(mapper(LINE_MAP), chunks)
    assert not bad
    got = {r["order_id"]: (r["customer_id"], r["amount"], r["quantity"], r["_line"]) for r in rows}
    # each order: quantities 1, 2, 3 at 1.10; A0 also 5 at 2.00 from the last line
    assert got == {
        "A0": ("c0", "16.6", "11", 2),
        "A1": ("c0", "6.6", "6", 5),
        "A2": ("c1", "6.6", "6", 8),
        "A3": ("c1", "6.6", "6", 11),
        "A4": ("c2", "6.6", "6", 14),
        "A5": ("c2", "6.6", "6", 17),
    }
    assert [r["order_id"] for r in rows] == ["A0", "A1", "A2", "A3", "A4", "A5"]


@pytest.mark.parametrize("block", [64, 1 << 20], ids=["lines-span-chunks", "one-chunk"])
def test_an_order_whose_lines_name_two_customers_is_quarantined(block: int) -> None:
    """c4's line was summed into c3's order (the first line's customer), silently."""
    text = (
        "inv,cust,when,qty,price\n1003,c3,2024-01-01 10:00,1,3.00\n"
        "1004,c5,2024-01-01 10:00,1,9.00\n1003,c4,2024-01-01 10:00,1,4.00\n"
    )
    rows, bad = checked(mapper(LINE_MAP), chunk(text, block_bytes=block))
    assert [(r["order_id"], r["customer_id"]) for r in rows] == [("1004", "c5")]
    assert bad == {
        2: "customer_id: the lines of this order name more than one customer (c3, c4): a line "
        "mapped to the wrong order, or order ids reused"
    }


def test_a_thousands_separator_between_groups_of_three_digits_only() -> None:
    """Under decimal ',' and thousands '.', "5.00" loaded as 500.00 and "12.5" as 125.00:
    a separator that does not split groups of three digits makes the value no number."""
    m = mapper(
        {"columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"}},
        {"format": {"delimiter": ";", "decimal_separator": ",", "thousands_separator": "."}},
    )
    values = ["1.234,56", "12.345", "12,5", "5.00", "12.5", "1.2.3", "-1.234.567,1", "€ 1.234,50"]
    body = "id;c;t;a\n" + "".join(f"O{i};c;2024-01-01;{v}\n" for i, v in enumerate(values))
    rows, bad = checked(m, chunk(body, CsvFormat(delimiter=";")))
    assert {r["order_id"]: r["amount"] for r in rows} == {
        "O0": "1234.56", "O1": "12345", "O2": "12.5", "O7": "1234.50"
    }  # fmt: skip
    said = "is not a number (decimal separator ',', thousands separator '.')"
    assert bad == {
        5: f"amount: '5.00' {said}",
        6: f"amount: '12.5' {said}",
        7: f"amount: '1.2.3' {said}",
        8: "amount -1234567.1 is negative",
    }


def test_an_order_placed_long_after_its_update_is_quarantined() -> None:
    """updated_at 11 days before ordered_at: one of the two is wrong. Within a day (two
    clocks apart) the order loads."""
    m = mapper({"columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t",
                            "updated_at": "u", "amount": "a"}})  # fmt: skip
    body = (
        "id,c,t,u,a\nO1,c,2024-03-31T10:00:00Z,2024-03-20T10:00:00Z,1\n"
        "O2,c,2024-03-31T10:00:00Z,2024-03-31T09:00:00Z,1\n"
        "O3,c,2024-03-31T10:00:00Z,2024-03-30T11:00:00Z,1\n"
    )
    rows, bad = checked(m, chunk(body))
    assert [r["order_id"] for r in rows] == ["O2", "O3"]
    assert bad == {
        2: "ordered_at 2024-03-31T10:00:00Z is more than a day after the order's updated_at: "
        "an order is updated after it is placed (a column mapped to the wrong field?)"
    }


def test_negative_amounts_and_refund_of() -> None:
    m = mapper(
        {
            "columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"},
            "refunds": {"negative_amount": True, "refund_of": "of"},
        }
    )
    rows, bad = checked(
        m,
        chunk(
            "id,c,t,a,of\n"
            "O1,c1,2024-01-01T10:00:00Z,30.00,\n"
            "R1,c1,2024-01-05T09:00:00Z,-30.00,O1\n"  # a refund record naming its order
            "O2,c2,2024-01-02T10:00:00Z,12.50,\n"
            "R2,c2,2024-01-03T10:00:00Z,-4.00,\n"  # a negative row of its own
        ),
    )
    assert not bad
    got = [
        (r["order_id"], r["ordered_at"], r["updated_at"], r["status"], r["amount"]) for r in rows
    ]
    assert got == [
        ("O1", "2024-01-01T10:00:00Z", None, None, "30.00"),
        # the refunded version of O1: placed when O1 was, updated when refunded
        ("O1", "2024-01-01T10:00:00Z", "2024-01-05T09:00:00Z", "refunded", "30.00"),
        ("O2", "2024-01-02T10:00:00Z", None, None, "12.50"),
        ("R2", "2024-01-03T10:00:00Z", None, "refunded", "4.00"),
    ]


REFUNDED = {
    "columns": {
        "order_id": "Name",
        "customer_id": "Email",
        "ordered_at": "Created at",
        "amount": "Total",
        "status": {"column": "Financial Status", "values": {"paid": "completed"}},
    },
    "refunds": {"refunded_amount": "Refunded Amount"},
}


def test_a_refunded_amount_nets_a_partial_refund_and_refunds_a_whole_one() -> None:
    """Shopify's partially_refunded orders counted their whole total (mapped completed) or
    nothing (mapped refunded); its Refunded Amount column says how much went back."""
    m = mapper(REFUNDED)
    rows, bad = checked(
        m,
        chunk(
            "Name,Email,Financial Status,Created at,Total,Refunded Amount\n"
            "#1,a@x.io,paid,2024-01-01T10:00:00Z,45.00,0.00\n"
            "#2,b@x.io,completed,2024-01-01T10:00:00Z,45.00,10.50\n"  # part of it
            "#3,c@x.io,paid,2024-01-01T10:00:00Z,45.00,45.00\n"  # all of it
            "#4,d@x.io,paid,2024-01-01T10:00:00Z,20.00,-20.00\n"  # all, written negative
            "#5,e@x.io,paid,2024-01-01T10:00:00Z,20.00,\n"  # none said
            "#6,f@x.io,paid,2024-01-01T10:00:00Z,20.00,some\n"
        ),
    )
    got = [(r["order_id"], r["status"], r["amount"]) for r in rows]
    assert got == [
        ("#1", "completed", "45.00"),
        ("#2", "completed", "34.5"),
        ("#3", "refunded", "45.00"),
        ("#4", "refunded", "20.00"),
        ("#5", "completed", "20.00"),
    ]
    assert bad == {7: "refunded amount 'Refunded Amount': 'some' is not a number"}


@pytest.mark.parametrize("block", [64, 1 << 20], ids=["lines-span-chunks", "one-chunk"])
def test_a_refunded_amount_of_an_order_of_lines_nets_its_sum(block: int) -> None:
    """Shopify writes the order's Total and Refunded Amount on its first line only."""
    m = mapper({**REFUNDED, "grain": "line"})
    rows, bad = checked(
        m,
        chunk(
            "Name,Email,Financial Status,Created at,Total,Refunded Amount\n"
            "#1,a@x.io,paid,2024-01-01T10:00:00Z,60.00,15.00\n"
            "#2,b@x.io,paid,2024-01-02T10:00:00Z,8.00,8.00\n"
            "#1,,,,,\n"
            "#1,,,,,\n",
            block_bytes=block,
        ),
    )
    assert not bad
    got = [(r["order_id"], r["status"], r["amount"]) for r in rows]
    assert got == [("#1", "completed", "45"), ("#2", "refunded", "8")]


def test_constants_concat_defaults_and_special_formats() -> None:
    m = mapper(
        {
            "columns": {
                "order_id": {"concat": ["store", "no"], "separator": "-"},
                "customer_id": "cust",
                "ordered_at": {"column": "serial", "format": "excel_serial"},
                "updated_at": {"column": "epoch", "format": "epoch_s"},
                "status": {"column": "st", "values": {"OK": "completed"}, "default": "cancelled"},
                "amount": {"column": "cents", "scale": 0.01},
                "currency": {"constant": "EUR"},
            },
            "extra_columns": ["note"],
        }
    )
    rows, bad = checked(
        m,
        chunk(
            "store,no,cust,serial,epoch,st,cents,note,junk\n"
            "S1,7,c1,45356.5,1709647331,ok ,1999,hi,x\n"
            "S1,8,c2,45357,1709647331.25,lost,5,,x\n"
        ),
    )
    assert not bad
    assert [
        (r["order_id"], r["ordered_at"], r["updated_at"], r["status"], r["amount"], r["_extra"])
        for r in rows
    ] == [
        ("S1-7", "2024-03-05T12:00:00Z", "2024-03-05T14:02:11Z", "completed", "19.99",
         '{"note": "hi"}'),
        ("S1-8", "2024-03-06T00:00:00Z", "2024-03-05T14:02:11.250000Z", "cancelled", "0.05",
         "{}"),
    ]  # fmt: skip
    assert {r["currency"] for r in rows} == {"EUR"}


def test_day_numbers_from_an_origin_are_plain_dates_of_the_zone() -> None:
    """Dunnhumby's DAY 1..711 has no calendar: `epoch_days` from an `origin` reads it as
    the origin + N days, a plain date (midnight in the business zone); a fraction of a day
    or a word is quarantined naming the format."""
    m = mapper(
        {
            "columns": {
                "order_id": "basket",
                "customer_id": "household",
                "ordered_at": {"column": "DAY", "format": "epoch_days", "origin": "2019-12-31"},
                "amount": "value",
            }
        },
        top={"business": {"timezone": "America/Chicago"}},
    )
    rows, bad = checked(
        m,
        chunk("basket,household,DAY,value\nb1,h1,1,1.39\nb2,h1,711,2.00\nb3,h2,3.5,1\nb4,h2,x,1\n"),
    )
    assert [(r["order_id"], r["ordered_at"]) for r in rows] == [
        ("b1", "2020-01-01T06:00:00Z"),  # midnight in Chicago
        ("b2", "2021-12-11T06:00:00Z"),
    ]
    why = "is not a whole number of days since 2019-12-31 (format epoch_days)"
    assert bad == {4: f"ordered_at: '3.5' {why}", 5: f"ordered_at: 'x' {why}"}
    unix = mapper({"columns": {"ordered_at": {"column": "d", "format": "epoch_days"}}})
    rows, _ = checked(unix, chunk("order_id,customer_id,d,amount\no,c,19723,1\n"))
    assert rows[0]["ordered_at"] == "2024-01-01T00:00:00Z"  # days since 1970-01-01
    with pytest.raises(ValueError, match="origin applies to format: epoch_days"):
        mapper(
            {"columns": {"ordered_at": {"column": "d", "format": "iso", "origin": "2020-01-01"}}}
        )


def test_a_date_field_takes_its_format_and_stays_a_date() -> None:
    sources = parse_sources(
        {
            "version": 1,
            "sources": {
                "marketing": {
                    "kind": "csv",
                    "path": "/x.csv",
                    "format": {"decimal_separator": ","},
                    "entities": {
                        "spend": {
                            "columns": {
                                "date": {"column": "Tag", "format": "%d.%m.%Y"},
                                "channel": "Kanal",
                                "spend": "Kosten",
                            }
                        }
                    },
                }
            },
        }
    )
    src, emap = sources.entity(MARKETING_SPEND)
    m = Mapper(MARKETING_SPEND, src, emap, sources)
    rows, bad = checked(
        m, chunk('Tag,Kanal,Kosten\n05.03.2024,paid_search,"12,50"\n30.02.2024,email,1\n')
    )
    assert [(r["date"], r["spend"]) for r in rows] == [("2024-03-05", "12.50")]
    assert bad == {3: "date: '30.02.2024' does not match the format '%d.%m.%Y'"}


@pytest.mark.parametrize(
    ("fmt", "text", "day"),
    [
        ("%Y%m%d", "19970118", "1997-01-18"),  # no separators: %m must not eat the day
        ("%Y%m%d", "19971007", "1997-10-07"),
        ("%y%m%d", "970118", "1997-01-18"),
        ("%Y%j", "1997018", "1997-01-18"),
        ("%d%m%Y", "18011997", "1997-01-18"),
        ("%Y%m%d%H%M", "199701180930", "1997-01-18"),
    ],
)
def test_formats_without_separators_read_the_day(fmt: str, text: str, day: str) -> None:
    m = mapper(
        {
            "columns": {
                "order_id": "id",
                "customer_id": "c",
                "amount": "a",
                "ordered_at": {"column": "t", "format": fmt},
            }
        }
    )
    rows, bad = checked(m, chunk(f"id,c,t,a\n1,c,{text},1\n2,c,{text}9,1\n"))
    assert bad == {3: f"ordered_at: '{text}9' does not match the format '{fmt}'"}
    assert [r["ordered_at"][:10] for r in rows] == [day]


def test_a_day_of_the_year_past_the_years_end_is_no_date() -> None:
    """Day 366 of 2023 read as 1 February 2025 (Arrow rolls it over); of 2024 it is
    31 December."""
    m = mapper(
        {
            "columns": {
                "order_id": "id",
                "customer_id": "c",
                "amount": "a",
                "ordered_at": {"column": "t", "format": "%Y %j"},
            }
        }
    )
    rows, bad = checked(m, chunk("id,c,t,a\n1,c,2023 366,1\n2,c,2024 366,1\n3,c,2023 365,1\n"))
    assert bad == {2: "ordered_at: '2023 366' does not match the format '%Y %j'"}
    assert [r["ordered_at"][:10] for r in rows] == ["2024-12-31", "2023-12-31"]


def test_money_written_with_currency_signs_and_accounting_parentheses() -> None:
    m = mapper(
        {
            "refunds": {"negative_amount": True},
            "columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"},
        },
        {"format": {"thousands_separator": ","}},
    )
    text = (
        'id,c,t,a\n1,c,2024-01-01,"$1,234.56"\n2,c,2024-01-01,€12\n3,c,2024-01-01,12.00 £\n'
        "4,c,2024-01-01,(12.00)\n5,c,2024-01-01,-$3.50\n6,c,2024-01-01,($5)\n"
        "7,c,2024-01-01,12.00 USD\n8,c,2024-01-01,$\n9,c,2024-01-01,7\n"
    )
    rows, bad = checked(m, chunk(text))
    assert [(r["order_id"], r["amount"], r["status"]) for r in rows] == [
        ("1", "1234.56", None),
        ("2", "12", None),
        ("3", "12.00", None),
        ("4", "12.00", "refunded"),  # (12.00) is -12.00: a refund
        ("5", "3.50", "refunded"),
        ("6", "5", "refunded"),
        ("9", "7", None),
    ]
    assert bad == {
        8: "amount: '12.00 USD' is not a number (decimal separator '.', thousands separator ',')",
        9: "amount: '$' is not a number (decimal separator '.', thousands separator ',')",
    }
    # the default dialect too: the sign is dropped, a word still is not a number
    plain = mapper(
        {"columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"}}
    )
    rows, bad = checked(plain, chunk("id,c,t,a\n1,c,2024-01-01,$12.50\n2,c,2024-01-01,abc\n"))
    assert [r["amount"] for r in rows] == ["12.50"]
    assert bad == {3: "amount: 'abc' is not a number"}


def test_rejecting_ambiguous_local_times() -> None:
    m = mapper(
        {"columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"}},
        {"timezone": "America/New_York"},
        {"defaults": {"ambiguous_time": "reject", "nonexistent_time": "latest"}},
    )
    rows, bad = checked(
        m, chunk("id,c,t,a\n1,c,2024-11-03 01:30,1\n2,c,2024-03-10 02:30,1\n3,c,2024-03-05,1\n")
    )
    assert [(r["order_id"], r["ordered_at"]) for r in rows] == [
        ("2", "2024-03-10T07:00:00Z"),  # the first instant after the gap
        ("3", "2024-03-05T05:00:00Z"),  # a plain date: midnight in New York
    ]
    assert bad == {
        2: "ordered_at: '2024-11-03 01:30' happens twice in America/New_York (the clocks "
        "repeat it at a DST change; defaults.ambiguous_time: reject)"
    }


def test_the_built_in_mapping_passes_chunks_through_untouched(tmp_path: Path) -> None:
    sources = builtin_sources(make_settings(tmp_path))
    src, emap = sources.entity(ORDERS)
    m = Mapper(ORDERS, src, emap, sources)
    assert m.is_identity
    chunks = chunk("order_id,customer_id,ordered_at,amount\nO1,C1,2024-03-05,1\n")
    assert list(m.map_chunks(chunks)) == chunks


# --------------------------------------------------------------------- dialects


def test_dialect_headerless_skip_rows_quote_escape_and_nulls() -> None:
    fmt = CsvFormat(
        delimiter="|",
        quote_char="'",
        escape_char="\\",
        header=False,
        column_names=["id", "name", "note"],
        skip_rows=2,
        null_values=["", "NULL"],
    )
    text = "title line\nanother\n1|'Ann | Lee'|NULL\n2|O\\'Brien|'it\\'s'\n"
    (c,) = chunk(text, fmt)
    assert c.table.to_pylist() == [
        {"id": "1", "name": "Ann | Lee", "note": None},
        {"id": "2", "name": "O'Brien", "note": "it's"},
    ]
    assert c.lines.tolist() == [3, 4]


def test_whitespace_aligned_columns() -> None:
    fmt = CsvFormat(delimiter="whitespace", header=True)
    text = "  id   name  amount\n1  Ann    1.5  \n\n   \n2\tBob\t \t2\n3 Cy\n 4   Di   4.25\r\n"
    (c,) = chunk(text, fmt)
    assert c.table.to_pylist() == [
        {"id": "1", "name": "Ann", "amount": "1.5"},
        {"id": "2", "name": "Bob", "amount": "2"},
        {"id": "4", "name": "Di", "amount": "4.25"},
    ]
    assert c.lines.tolist() == [2, 5, 7]  # blank and blanks-only lines keep their numbers
    assert [(r.line, r.reason) for r in c.rejects] == [
        (6, "malformed row: expected 3 fields, got 2")
    ]


def test_whitespace_is_the_one_delimiter_word() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CsvFormat(delimiter="spaces")


def test_cp1252_bom_and_undefined_bytes(tmp_path: Path) -> None:
    data = "id;name\n1;Café – “quoted”\n".encode("cp1252") + b"2;bad \x81 byte\n3;ok\n"
    fmt = CsvFormat(delimiter=";", encoding="cp1252")
    (c,) = list(read_csv_chunks(io.BytesIO(data), "mem.csv", fmt=fmt))
    assert c.table.column("name").to_pylist() == ["Café – “quoted”", "ok"]
    assert c.lines.tolist() == [2, 4]
    assert [(r.line, r.reason) for r in c.rejects] == [
        (3, "broken encoding: byte 0x81 at position 6 is not valid cp1252")
    ]
    bom = "\ufeffid,name\n1,Zoë\n".encode()
    (c,) = list(read_csv_chunks(io.BytesIO(bom), "m", fmt=CsvFormat(encoding="utf-8-sig")))
    assert c.table.to_pylist() == [{"id": "1", "name": "Zoë"}]


def test_gzip_latin1_file_through_the_files_connector(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress("order_id;customer_id;Kunde\nO1;C1;Müller\n".encode("latin-1")))
    sources = parse_sources(
        {
            "version": 1,
            "sources": {
                "orders": {
                    "kind": "csv",
                    "path": str(tmp_path / "*.csv.gz"),
                    "format": {"delimiter": ";", "encoding": "latin-1"},
                }
            },
        }
    )
    src, emap = sources.entity(ORDERS)
    (c,) = list(file_batch(ORDERS, src, emap, sources).chunks)
    assert c.table.to_pylist() == [{"order_id": "O1", "customer_id": "C1", "Kunde": "Müller"}]
    assert isinstance(c.table.column("Kunde").type, pa.DataType)


def test_json_paths_pick_values_inside_nested_records() -> None:
    m = mapper(
        {
            "columns": {
                "order_id": "id",
                "customer_id": "customer.id",
                "email": "customer.contact.email",
                "ordered_at": "t",
                "amount": "a",
            }
        }
    )
    records = [
        {"id": "O1", "customer": {"id": 7, "contact": {"email": "a@x.io"}}, "t": "2024-01-01",
         "a": 1},
        {"id": "O2", "customer": {"id": 8}, "t": "2024-01-02", "a": 2},
    ]  # fmt: skip
    rows, bad = checked(m, [Chunk.from_records(records, "api", np.arange(1, 3))])
    assert not bad
    assert [(r["customer_id"], r["email"], r["_extra"]) for r in rows] == [
        ("7", "a@x.io", None),
        ("8", None, None),
    ]


def test_a_file_whose_every_line_is_broken_keeps_its_rejects() -> None:
    m = mapper(
        {"columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"}}
    )
    chunks = [read_jsonl(io.BytesIO(b"not json\n[1]\n"), "bad.jsonl", ORDERS.names)]
    assert chunks[0].table.num_columns == 0
    rows, bad = checked(m, chunks)
    assert rows == []
    assert bad == {
        1: "malformed JSON: Expecting value at column 1",
        2: "malformed JSON: a list, not an object",
    }


@pytest.mark.parametrize("all_nested", [False, True], ids=["mixed", "every-row"])
def test_a_json_id_that_is_an_array_object_or_boolean_is_quarantined(all_nested: bool) -> None:
    """`["c1"]`, `{"id": "c1"}` and `true` as a customer id loaded as their JSON text,
    a customer named `["c1"]`; a number is an id (7 is "7")."""
    m = mapper(
        {"columns": {"order_id": "id", "customer_id": "c", "ordered_at": "t", "amount": "a"}}
    )
    lines = [
        b'{"id": "O1", "c": ["c1"], "t": "2024-01-01", "a": 1}',
        b'{"id": "O2", "c": {"id": "c1"}, "t": "2024-01-01", "a": 1}',
        b'{"id": "O3", "c": true, "t": "2024-01-01", "a": 1}',
    ]
    if not all_nested:
        lines += [b'{"id": "O4", "c": 7, "t": "2024-01-01", "a": 1}']
    data = b"\n".join(lines) + b"\n"
    rows, bad = checked(m, [read_jsonl(io.BytesIO(data), "o.jsonl", ("id", "c", "t", "a"))])
    assert [r["customer_id"] for r in rows] == ([] if all_nested else ["7"])
    assert bad == {
        1: "customer_id: '[\"c1\"]' is a JSON array, not an id",
        2: 'customer_id: \'{"id": "c1"}\' is a JSON object, not an id',
        3: "customer_id: 'true' is a JSON boolean, not an id",
    }


def test_a_json_id_that_is_no_scalar_is_quarantined_without_a_mapping() -> None:
    """The built-in contract (web events as the sample world writes them) checks it too,
    also when small files are gathered into one chunk."""
    events = [
        b'{"event_id": "E1", "event": "page_view", "timestamp": "2024-01-01T00:00:00Z", '
        + b'"user_id": %s}\n' % v
        for v in (b'"u1"', b'["u1"]', b"false")
    ]
    chunks = [
        read_jsonl(io.BytesIO(e), f"f{i}.jsonl", WEB_EVENTS.names) for i, e in enumerate(events)
    ]
    out = Checker(WEB_EVENTS, WINDOW, None).check(Chunk.concat(chunks, "3 files"))
    assert out.table.column("user_id").to_pylist() == ["u1"]
    assert {(src, reason) for src, _, reason, _ in out.quarantine} == {
        ("f1.jsonl", "user_id: '[\"u1\"]' is a JSON array, not an id"),
        ("f2.jsonl", "user_id: 'false' is a JSON boolean, not an id"),
    }


def test_json_lines_in_latin1(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    path.write_bytes('{"order_id": "O1", "customer_id": "Müller"}\n'.encode("latin-1"))
    sources = parse_sources(
        {
            "version": 1,
            "sources": {
                "orders": {"kind": "jsonl", "path": str(path), "format": {"encoding": "latin-1"}}
            },
        }
    )
    src, emap = sources.entity(ORDERS)
    (c,) = list(file_batch(ORDERS, src, emap, sources).chunks)
    assert c.table.select(["order_id", "customer_id"]).to_pylist() == [
        {"order_id": "O1", "customer_id": "Müller"}
    ]


def test_order_lines_whose_sum_is_negative_are_a_refund() -> None:
    m = mapper({**LINE_MAP, "refunds": {"negative_amount": True}})
    rows, bad = checked(
        m,
        chunk(
            "inv,cust,when,qty,price\n"
            "R1,c1,2024-02-01 10:00,-2,5.00\n"
            "R1,c1,2024-02-01 10:00,1,1.50\n"
            "S1,c1,2024-02-02 10:00,2,5.00\n"
        ),
    )
    assert not bad
    assert [(r["order_id"], r["status"], r["amount"], r["quantity"]) for r in rows] == [
        ("R1", "refunded", "8.5", "1"),
        ("S1", None, "10", "2"),
    ]


# A quoted value over lines (Shopify notes and addresses), among the faults it must not hide.
NOTES = (
    "id,note,amount\n"
    '1,"first line\nsecond line",3\n'  # lines 2-3
    "2,plain,4\n"  # 4
    '3,"a ""quoted"" word,\n\nand a blank line",5\n'  # 5-7
    '4,TV 5" screen,6\n'  # 8: a quote inside an unquoted value is a character
    "5,too,many,fields\n"  # 9
    '6,"x\ny",7,8\n'  # 10-11: balanced over lines but 4 fields: line 10 alone
    "7,ok,9\n"  # 12
)


def _records(text: bytes, block_bytes: int = 1 << 20) -> tuple[list[tuple], dict[int, str]]:
    """Return ((line, id, note, amount) per record, {line: reason}) of a CSV text."""
    rows, bad = [], {}
    for c in read_csv_chunks(io.BytesIO(text), "mem.csv", block_bytes):
        t = c.table.to_pydict()
        rows += list(zip(c.lines.tolist(), t["id"], t["note"], t["amount"], strict=True))
        bad |= {r.line: r.reason for r in c.rejects}
    return rows, bad


@pytest.mark.parametrize("block", [16, 40, 1 << 20])
def test_a_quoted_value_over_lines_is_one_record_numbered_by_its_first_line(block: int) -> None:
    rows, bad = _records(NOTES.encode(), block)
    assert rows == [
        (2, "1", "first line\nsecond line", "3"),
        (4, "2", "plain", "4"),
        (5, "3", 'a "quoted" word,\n\nand a blank line', "5"),
        (8, "4", 'TV 5" screen', "6"),
        (12, "7", "ok", "9"),
    ]
    assert bad == {
        9: "malformed row: expected 3 fields, got 4",
        10: "malformed row: unbalanced double quote",
        11: "malformed row: unbalanced double quote",
    }


def test_a_stray_quote_does_not_swallow_the_rows_up_to_the_next_one() -> None:
    # Two stray quotes 50 lines apart: the rows between them load, each on its line.
    body = ['1,"open,1\n'] + [f"{i},n{i},{i}\n" for i in range(2, 52)] + ['52,"5,52\n']
    rows, bad = _records(("id,note,amount\n" + "".join(body)).encode(), 64)
    assert [r[1] for r in rows] == [str(i) for i in range(2, 52)]
    assert [r[0] for r in rows] == list(range(3, 53))
    assert bad == {
        2: "malformed row: unbalanced double quote",
        53: "malformed row: unbalanced double quote",
    }
    # Adjacent, the two would read as one record: each line is a row by its delimiters.
    rows, bad = _records(b'id,note,amount\n1,"open,1\n2,5",2\n3,x,3\n')
    assert rows == [(4, "3", "x", "3")]
    assert bad == {
        2: "malformed row: unbalanced double quote",
        3: "malformed row: unbalanced double quote",
    }


def test_a_quote_left_open_costs_its_line_past_the_record_limit(monkeypatch) -> None:
    from lifecycle.extract import readers

    monkeypatch.setattr(readers, "MAX_RECORD_LINES", 3)
    within = '1,"a\nb\nc",1\n2,x,2\n'
    beyond = '1,"a\nb\nc\nd",1\n2,x,2\n'
    assert _records(("id,note,amount\n" + within).encode(), 8)[0] == [
        (2, "1", "a\nb\nc", "1"),
        (5, "2", "x", "2"),
    ]
    rows, bad = _records(("id,note,amount\n" + beyond).encode(), 8)
    # the note's inner lines are read as what they are: rows of one field
    assert rows == [(6, "2", "x", "2")]
    assert bad == {
        2: "malformed row: unbalanced double quote",
        3: "malformed row: expected 3 fields, got 1",
        4: "malformed row: expected 3 fields, got 1",
        5: "malformed row: unbalanced double quote",
    }


def test_a_broken_byte_in_a_value_over_lines_quarantines_the_whole_record() -> None:
    rows, bad = _records(b'id,note,amount\n1,"ok\nbad \xff here",1\n2,x,2\n')
    assert rows == [(4, "2", "x", "2")]
    assert bad == {2: "broken encoding: byte 0xff at position 4 is not valid UTF-8"}


def test_a_quote_open_at_the_end_of_the_file_is_a_stray_one() -> None:
    rows, bad = _records(b'id,note,amount\n1,x,1\n2,"never closed,2\n3,y,3\n')
    assert [r[0] for r in rows] == [2, 4]
    assert bad == {3: "malformed row: unbalanced double quote"}
