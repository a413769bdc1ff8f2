"""Hostile input on the "own data" path, as a newcomer meets it: an orders-only
sources.yml and a small file, through `lifecycle sources check` and `lifecycle extract`
(full and daily). Every failure is one ``error:`` line naming the file, key or setting
and a non-zero exit; every malformed row is quarantined with its reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifecycle.cli import main
from lifecycle.settings import get_settings
from tests.hostile.helpers import rows, write

HEADER = "order_id,customer_id,ordered_at,amount\n"

ORDERS_YML = """\
version: 1
sources:
  orders:
    kind: csv
{format}    entities:
      orders:
        path: {path}
        columns:
          status: {{constant: completed}}
      order_items:
        skip: true
"""


def _sources(tmp_path: Path, path: str = "orders.csv", fmt: str = "") -> Path:
    return write(tmp_path / "sources.yml", ORDERS_YML.format(path=tmp_path / path, format=fmt))


def _invoke(tmp_path: Path, args: list[str], **env: str):
    """Run the CLI in-process with only the given LIFECYCLE_* settings."""
    clean = {k: None for k in os.environ if k.startswith("LIFECYCLE_")}
    environ = {
        **clean,
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_SOURCES_FILE": str(tmp_path / "sources.yml"),
        **env,
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, args, env=environ, catch_exceptions=True)
    finally:
        get_settings.cache_clear()


def _one_error(result) -> str:
    """Assert a clean failure (no escaped exception, no traceback, exit 1 or 2, exactly
    one ``error:`` line on stderr); return that line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output + result.stderr
    assert result.exit_code in (1, 2), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- sources.yml ----------------------------------------------------------------------

#: A sources file and the end of the one error line it must give (after "error: <file>: ").
BAD_SOURCES = {
    "duplicate-top-key": (
        "version: 1\nversion: 1\nsources: {}\n",
        "not valid YAML: key 'version' is written twice in one mapping, lines 1 and 2",
    ),
    "duplicate-entity": (
        "version: 1\nsources:\n  orders:\n    kind: csv\n    entities:\n"
        "      orders: {path: orders.csv}\n      orders: {path: other.csv}\n",
        "not valid YAML: key 'orders' is written twice in one mapping, lines 6 and 7",
    ),
    "empty": ("", "expected a mapping with version: 1, got None"),
    "a-list": ("- a\n- b\n", "expected a mapping with version: 1, got ['a', 'b']"),
    "tabs": ("version: 1\nsources:\n\torders: {}\n", "not valid YAML: "),
    "alias": (
        "version: 1\nx: &a {kind: csv}\nsources:\n  orders:\n    <<: *a\n",
        "not valid YAML: aliases (*a) are not allowed, line 5",
    ),
    "unknown-entity": (
        "version: 1\nsources:\n  orders:\n    kind: csv\n    entities:\n"
        "      orderz: {path: orders.csv}\n",
        "sources.orders.entities.orderz: orders has no entity 'orderz' "
        "(it has: orders, order_items)",
    ),
    "delimiter-a-number": (
        ORDERS_YML.format(path="orders.csv", format="    format: {delimiter: 5}\n"),
        "sources.orders.format.delimiter: Input should be a valid string",
    ),
    "null-values-a-string": (
        ORDERS_YML.format(path="orders.csv", format="    format: {null_values: NULL}\n"),
        "sources.orders.format.null_values: Input should be a valid list",
    ),
    "unknown-encoding": (
        ORDERS_YML.format(path="orders.csv", format="    format: {encoding: klingon}\n"),
        "sources.orders.format.encoding: 'klingon' is not a known text encoding",
    ),
    "a-folder-as-path": (
        ORDERS_YML.format(path="{tmp}/folder", format=""),
        "sources.orders.entities.orders.path: no file at {tmp}/folder (a folder: name the "
        "file or a glob)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
@pytest.mark.parametrize("command", [["sources", "check"], ["extract", "--date", "2024-01-01"]])
def test_a_bad_sources_file_is_one_error_line(
    case: str, command: list[str], tmp_path: Path, fresh_db: str
):
    text, message = BAD_SOURCES[case]
    write(tmp_path / "sources.yml", text.replace("{tmp}", str(tmp_path)))
    write(tmp_path / "orders.csv", HEADER + "O1,C1,2024-01-01,10\n")
    (tmp_path / "folder").mkdir()
    # the test's warehouse: an extract that gets as far as the path would otherwise start
    # an embedded server in tmp_path, left running after the test
    line = _one_error(_invoke(tmp_path, command, LIFECYCLE_WAREHOUSE_URL=fresh_db))
    message = message.replace("{tmp}", str(tmp_path))
    assert line.startswith(f"error: {tmp_path / 'sources.yml'}: {message}"), line


# --- data files that cannot be read at all ----------------------------------------------

#: File bytes and the end of the one error line naming the file.
BAD_FILES = {
    "utf-16-with-bom": (
        (HEADER + "O1,C1,2024-01-01,10\n").encode("utf-16"),
        "line 1: the file starts with a UTF-16 byte order mark, but format.encoding is "
        "utf-8: set format.encoding: utf-16",
    ),
    "utf-16-be-with-bom": (
        (HEADER + "O1,C1,2024-01-01,10\n").encode("utf-16-be").join([b"\xfe\xff", b""]),
        "line 1: the file starts with a UTF-16 byte order mark, but format.encoding is "
        "utf-8: set format.encoding: utf-16",
    ),
    "cr-only-line-ends": (
        (HEADER + "O1,C1,2024-01-01,10\n").replace("\n", "\r").encode(),
        "line 1: the header holds a carriage return (CR)",
    ),
    "duplicate-column": (
        b"order_id,order_id,customer_id,ordered_at,amount\nO1,O1,C1,2024-01-01,10\n",
        "line 1: column 'order_id' appears twice in the header (columns 1 and 2); "
        "each column needs its own name",
    ),
    "trailing-delimiter": (
        b"order_id,customer_id,ordered_at,amount,\nO1,C1,2024-01-01,10,\n",
        "line 1: column 5 of the header has no name (a delimiter at the end of the header, "
        "as a spreadsheet saves empty columns?): name every column in the sources file with "
        "format: {header: false, skip_rows: 1, column_names: [...]}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
@pytest.mark.parametrize("full", [True, False])
def test_an_unreadable_file_is_one_error_line_naming_it(
    case: str, full: bool, tmp_path: Path, fresh_db: str
) -> None:
    data, message = BAD_FILES[case]
    _sources(tmp_path)
    path = write(tmp_path / "orders.csv", data)
    args = ["extract", "--date", "2024-01-01"] + (["--full"] if full else [])
    line = _one_error(_invoke(tmp_path, args, LIFECYCLE_WAREHOUSE_URL=fresh_db))
    assert line == f"error: {path}: {message}", line
    assert rows(fresh_db, "select count(*) from raw.orders__orders") == [(0,)]
    checked = _one_error(_invoke(tmp_path, ["sources", "check"]))
    assert checked.endswith(f"{path}: {message}"), checked


def test_a_utf_16_file_reads_when_its_encoding_is_set(tmp_path: Path, fresh_db: str) -> None:
    _sources(tmp_path, fmt="    format: {encoding: utf-16}\n")
    write(tmp_path / "orders.csv", (HEADER + "O1,C1,2024-01-01,10\n").encode("utf-16"))
    result = _invoke(
        tmp_path, ["extract", "--date", "2024-01-01", "--full"], LIFECYCLE_WAREHOUSE_URL=fresh_db
    )
    assert result.exit_code == 0, result.output
    assert rows(fresh_db, "select order_id, amount::text from raw.orders__orders") == [
        ("O1", "10.00")
    ]


# --- rows: each bad one quarantined with its reason -------------------------------------

#: A bad orders row (order id Q) and the reason its quarantine row holds.
BAD_ROWS = {
    "amount-1e309": ("Q,C9,2024-01-01,1e309", "amount: '1e309' is not a valid numeric"),
    "amount-nan": ("Q,C9,2024-01-01,NaN", "amount: 'NaN' is not a valid numeric"),
    "amount-inf": ("Q,C9,2024-01-01,inf", "amount: 'inf' is not a valid numeric"),
    "amount-decimal-comma": (
        'Q,C9,2024-01-01,"1,5"',
        "amount: '1,5' is not a number in the file's dialect: set format.decimal_separator: ','",
    ),
    "amount-unicode-minus": ("Q,C9,2024-01-01,\u22125", "amount: '\u22125' is not a valid numeric"),
    "date-0000-00-00": ("Q,C9,0000-00-00,10", "ordered_at: '0000-00-00' is not an ISO-8601"),
    "date-2024-02-30": ("Q,C9,2024-02-30,10", "ordered_at: '2024-02-30' is not an ISO-8601"),
    "date-epoch": ("Q,C9,4102444800,10", "ordered_at: '4102444800' is not an ISO-8601"),
    "nul-in-id": ("Q,C\x009,2024-01-01,10", "customer_id: 'C\\x009' is not a valid text"),
    "too-many-fields": ("Q,C9,2024-01-01,10,extra", "malformed row: expected 4 fields, got 5"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
@pytest.mark.parametrize("full", [True, False])
def test_a_bad_row_is_quarantined_with_its_reason(
    case: str, full: bool, tmp_path: Path, fresh_db: str
) -> None:
    bad, reason = BAD_ROWS[case]
    good = "".join(f"O{i},C{i},2024-01-01T10:{i:02d}:00Z,10\n" for i in range(30))
    _sources(tmp_path)
    write(tmp_path / "orders.csv", HEADER + good + bad + "\n")
    args = ["extract", "--date", "2024-01-01"] + (["--full"] if full else [])
    result = _invoke(tmp_path, args, LIFECYCLE_WAREHOUSE_URL=fresh_db)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output + result.stderr
    assert rows(fresh_db, "select count(*) from raw.orders__orders") == [(30,)]
    quarantined = rows(fresh_db, "select reason from raw.quarantine")
    assert len(quarantined) == 1, quarantined
    assert reason in quarantined[0][0], quarantined


def test_a_ten_thousand_character_id_is_quarantined_and_emoji_load_as_written(
    tmp_path: Path, fresh_db: str
) -> None:
    """An id of 256 characters loads as written, and so do emoji; one of 10,000 is no id
    (it loaded here, then failed the transform's identity indexes, whose entries are
    capped at 2,704 bytes): quarantined with its length."""
    long_id, longest = "C" * 10_000, "D" * 256
    _sources(tmp_path)
    write(
        tmp_path / "orders.csv",
        HEADER + f"O1,{long_id},2024-01-01,10\nO2,\U0001f600,2024-01-01,10\n"
        f"\U0001f600,C3,2024-01-01,10\nO4,{longest},2024-01-01,10\n",
    )
    result = _invoke(
        tmp_path,
        ["extract", "--date", "2024-01-01", "--full"],
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_MAX_REJECT_SHARE="0.5",
    )
    assert result.exit_code == 0, result.output
    assert rows(fresh_db, "select order_id, customer_id from raw.orders__orders order by 1") == [
        ("O2", "\U0001f600"),
        ("O4", longest),
        ("\U0001f600", "C3"),
    ]
    assert rows(fresh_db, "select _line, reason from raw.quarantine") == [
        (
            2,
            f"customer_id: {'C' * 40!r}... is 10,000 characters long, more than the 256 an id "
            "may have (a shifted column?)",
        )
    ]


# --- JSON lines and Parquet ---------------------------------------------------------------

RECORDS = [
    {"order_id": "O1", "customer_id": "C1", "ordered_at": "2024-01-01", "amount": 10},
    {"order_id": "O2", "customer_id": "C2", "ordered_at": "2024-01-01", "amount": 20},
]


def _kind_sources(tmp_path: Path, kind: str, name: str) -> None:
    text = ORDERS_YML.format(path=tmp_path / name, format="").replace("kind: csv", f"kind: {kind}")
    write(tmp_path / "sources.yml", text)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_json_lines_in_utf_16_with_a_bom_load(encoding: str, tmp_path: Path, fresh_db: str):
    import json

    text = "".join(json.dumps(r) + "\n" for r in RECORDS)
    data = {
        "utf-16": text.encode("utf-16"),
        "utf-16-le-bom": b"\xff\xfe" + text.encode("utf-16-le"),
        "utf-16-be-bom": b"\xfe\xff" + text.encode("utf-16-be"),
    }[encoding]
    _kind_sources(tmp_path, "jsonl", "orders.jsonl")
    write(tmp_path / "orders.jsonl", data)
    result = _invoke(
        tmp_path, ["extract", "--date", "2024-01-01", "--full"], LIFECYCLE_WAREHOUSE_URL=fresh_db
    )
    assert result.exit_code == 0, result.output
    assert rows(fresh_db, "select order_id, amount::text from raw.orders__orders order by 1") == [
        ("O1", "10.00"),
        ("O2", "20.00"),
    ]


def test_a_broken_utf_16_json_lines_file_is_one_error_line(tmp_path: Path, fresh_db: str):
    _kind_sources(tmp_path, "jsonl", "orders.jsonl")
    path = write(tmp_path / "orders.jsonl", b"\xff\xfe{\x00\x00\xd8")  # a lone surrogate
    result = _invoke(
        tmp_path, ["extract", "--date", "2024-01-01", "--full"], LIFECYCLE_WAREHOUSE_URL=fresh_db
    )
    line = _one_error(result)
    assert line.startswith(
        f"error: {path}: cannot be read: it starts with a UTF-16 byte order mark but is not UTF-16"
    ), line


@pytest.mark.parametrize("command", [["sources", "check"], ["extract", "--date", "2024-01-01"]])
def test_a_parquet_file_with_a_column_twice_is_one_error_line(
    command: list[str], tmp_path: Path, fresh_db: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _kind_sources(tmp_path, "parquet", "orders.parquet")
    path = tmp_path / "orders.parquet"
    names = ["order_id", "order_id", "customer_id", "ordered_at", "amount"]
    values = ["O1", "O9", "C1", "2024-01-01", "10"]
    pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in values], names=names), path)
    line = _one_error(_invoke(tmp_path, command, LIFECYCLE_WAREHOUSE_URL=fresh_db))
    assert line.endswith(
        f"{path}: line 1: column 'order_id' appears twice in the header (columns 1 and 2); "
        "each column needs its own name"
    ), line
    if command[0] == "extract":
        assert rows(fresh_db, "select count(*) from raw.orders__orders") == [(0,)]


def test_parquet_bytes_that_are_not_utf8_quarantine_their_row(
    tmp_path: Path, fresh_db: str
) -> None:
    """A binary column with a non-UTF-8 value failed the file with "Invalid UTF8
    payload", naming nothing; the row is quarantined, the others load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _kind_sources(tmp_path, "parquet", "orders.parquet")
    table = pa.table(
        {
            "order_id": ["O1", "O2", "O3"],
            "customer_id": pa.array([b"C1", b"\xff\xfe", b"C3"], pa.binary()),
            "ordered_at": ["2024-01-01"] * 3,
            "amount": [1.0, 2.0, 3.0],
            "note": pa.array([b"ok", b"ok", b"caf\xe9"], pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "orders.parquet")
    result = _invoke(
        tmp_path,
        ["extract", "--date", "2024-01-01", "--full"],
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_MAX_REJECT_SHARE="0.9",
    )
    assert result.exit_code == 0, result.output
    assert rows(fresh_db, "select order_id, _extra::text from raw.orders__orders") == [
        ("O1", '{"note": "ok"}')
    ]
    assert rows(fresh_db, "select _line, reason from raw.quarantine order by 1") == [
        (2, "customer_id: not valid UTF-8 text (byte 0: b'\\xff\\xfe')"),
        (3, "note: not valid UTF-8 text (byte 3: b'caf\\xe9')"),
    ]


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_parquet_nanosecond_timestamps_as_pandas_writes_them_load(
    tz: str | None, tmp_path: Path, fresh_db: str
) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    _kind_sources(tmp_path, "parquet", "orders.parquet")
    when = [dt.datetime(2024, 1, 1, 10), dt.datetime(2024, 1, 1, 11, 0, 0, 123456)]
    table = pa.table(
        {
            "order_id": ["O1", "O2"],
            "customer_id": ["C1", "C2"],
            "ordered_at": pa.array(when, pa.timestamp("ns", tz=tz)),
            "amount": [1.0, 2.5],
        }
    )
    pq.write_table(table, tmp_path / "orders.parquet")
    result = _invoke(
        tmp_path, ["extract", "--date", "2024-01-01", "--full"], LIFECYCLE_WAREHOUSE_URL=fresh_db
    )
    assert result.exit_code == 0, result.output
    got = rows(
        fresh_db,
        "select order_id, to_char(ordered_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') "
        "from raw.orders__orders order by 1",
    )
    assert got == [("O1", "2024-01-01 10:00:00.000000"), ("O2", "2024-01-01 11:00:00.123456")]


def test_a_zip_archive_must_hold_one_file(tmp_path: Path, fresh_db: str) -> None:
    """Only an archive's first entry was read: a second file was dropped without a word,
    and a folder entry first read as an empty file (replacing the date's batch)."""
    import zipfile

    body = HEADER + "O1,C1,2024-01-01,10.00\n"
    _kind_sources(tmp_path, "csv", "orders.csv.zip")
    args = ["extract", "--date", "2024-01-01", "--full"]
    with zipfile.ZipFile(tmp_path / "orders.csv.zip", "w") as z:
        z.writestr("sub/", b"")
        z.writestr("sub/orders.csv", body)
    result = _invoke(tmp_path, args, LIFECYCLE_WAREHOUSE_URL=fresh_db)
    assert result.exit_code == 0, result.output
    assert rows(fresh_db, "select order_id from raw.orders__orders") == [("O1",)]
    with zipfile.ZipFile(tmp_path / "orders.csv.zip", "w") as z:
        z.writestr("a.csv", body)
        z.writestr("b.csv", body.replace("O1", "O2"))
    line = _one_error(_invoke(tmp_path, args, LIFECYCLE_WAREHOUSE_URL=fresh_db))
    assert line.endswith(
        "orders.csv.zip: the zip archive holds 2 files (a.csv, b.csv): it must hold one "
        "(unzip it and point the path at a glob of its files)"
    ), line
    assert rows(fresh_db, "select order_id from raw.orders__orders") == [("O1",)]
