"""Issue 20 §1: in a daily (incremental) load, a row whose date cannot be read is
quarantined with its reason, never counted "outside"; the reject share gates the batch."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest

from lifecycle.extract import extract
from lifecycle.load import LoadError
from tests.hostile.helpers import (
    D1,
    D2,
    D3,
    ORDERS_HEADER,
    balanced,
    checksum,
    day_orders,
    rows,
    settings,
    write,
)

ORDERS = "world/orders/orders.csv"

#: Bad lines whose date cannot be read, and the reason each must be quarantined with.
UNREADABLE = {
    "too many fields": (
        b"X1,CX,x@x.com,2024-01-02T10:00:00Z,2024-01-02T10:00:00Z,completed,USD,1,1,extra\n",
        "malformed row: expected 9 fields, got 10",
    ),
    "too few fields": (
        b"X1,CX,x@x.com,2024-01-02T10:00:00Z\n",
        "malformed row: expected 9 fields, got 4",
    ),
    "latin-1 bytes": (
        b"X1,CX,Jos\xe9@x.com,2024-01-02T10:00:00Z,2024-01-02T10:00:00Z,completed,USD,1,1\n",
        "broken encoding: byte 0xe9 at position 9 is not valid UTF-8",
    ),
    "unbalanced quote": (
        b'X1,"CX,x@x.com,2024-01-02T10:00:00Z,2024-01-02T10:00:00Z,completed,USD,1,1\n',
        "malformed row: unbalanced double quote",
    ),
    "bare CR": (
        b"X1,CX,x@x\r.com,2024-01-02T10:00:00Z,2024-01-02T10:00:00Z,completed,USD,1,1\n",
        "malformed row: a carriage return (CR) inside the line, at position 9",
    ),
    "unparseable timestamps": (
        b"X1,CX,x@x.com,yesterday,02/01/2024 10:00,completed,USD,1,1\n",
        "ordered_at: 'yesterday' is not a valid timestamp; "
        "updated_at: '02/01/2024 10:00' is not a valid timestamp",
    ),
    "empty cursor and fallback": (
        b"X1,CX,x@x.com,,,completed,USD,1,1\n",
        "ordered_at is empty",
    ),
    "year zero": (
        b"X1,CX,x@x.com,0000-01-01T00:00:00Z,0000-01-01T00:00:00Z,completed,USD,1,1\n",
        "ordered_at: '0000-01-01T00:00:00Z' is not a valid timestamp; "
        "updated_at: '0000-01-01T00:00:00Z' is not a valid timestamp",
    ),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_row_in_a_daily_load_is_quarantined_with_its_reason(
    case: str, tmp_path: Path, fresh_db: str
) -> None:
    line, reason = UNREADABLE[case]
    path = write(tmp_path / ORDERS, ORDERS_HEADER + day_orders("2024-01-01", 5, "A"))
    s = settings(tmp_path, fresh_db)
    extract("orders", D1, s)  # the first load: everything up to D1
    # D2's file: D1's rows again, 30 new rows of D2 and one bad row in the middle.
    body = ORDERS_HEADER.encode() + day_orders("2024-01-01", 5, "A").encode()
    body += day_orders("2024-01-02", 15, "B").encode() + line
    body += day_orders("2024-01-02", 15, "C").encode()
    path.write_bytes(body)
    [res] = extract("orders", D2, s)[:1]
    assert res.status == "success"
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (36, 30, 1)
    assert (res.rows_duplicate, res.rows_out_of_window) == (0, 5)  # only D1's readable rows
    assert balanced(res)
    assert rows(fresh_db, "select _line, reason from raw.quarantine") == [(22, reason)]
    # The next day reads the same old bad line: counted once, not quarantined again.
    [d3] = extract("orders", D3, s)[:1]
    assert (d3.rows_loaded, d3.rows_quarantined, d3.rows_duplicate) == (0, 0, 1)
    assert d3.rows_out_of_window == 35 and balanced(d3)
    # A rerun of D2 reproduces its quarantine.
    [again] = extract("orders", D2, s)[:1]
    assert (again.rows_loaded, again.rows_quarantined) == (30, 1)
    assert rows(fresh_db, "select count(*) from raw.quarantine") == [(1,)]


def test_a_latin1_file_in_a_daily_utf8_load_is_quarantined_and_rejected(
    tmp_path: Path, fresh_db: str
) -> None:
    path = write(tmp_path / ORDERS, ORDERS_HEADER + day_orders("2024-01-01", 5, "A"))
    s = settings(tmp_path, fresh_db)
    extract("orders", D1, s)
    before = checksum(fresh_db)
    latin = (ORDERS_HEADER + day_orders("2024-01-02", 30, "B")).replace("@x", "\xe9@x")
    path.write_bytes(latin.encode("latin-1"))
    with pytest.raises(LoadError, match=r"30 of 30 rows rejected \(100\.0%\)"):
        extract("orders", D2, s)
    assert checksum(fresh_db) == before  # nothing published, no watermark moved
    reasons = rows(fresh_db, "select distinct left(reason, 32) from raw.quarantine")
    assert reasons == [("broken encoding: byte 0xe9 at po",)]
    run = rows(
        fresh_db,
        "select status, rows_read, rows_quarantined, rows_out_of_window from ops.load_runs "
        "where entity = 'orders' order by started_at desc limit 1",
    )
    assert run == [("failed", 30, 30, 0)]


def test_rows_of_other_days_with_readable_dates_stay_outside(tmp_path: Path, fresh_db: str) -> None:
    # A defect in a row of another day is that day's business: outside, not quarantined.
    path = write(tmp_path / ORDERS, ORDERS_HEADER + day_orders("2024-01-01", 3, "A"))
    s = settings(tmp_path, fresh_db)
    extract("orders", D1, s)
    path.write_bytes(
        (
            ORDERS_HEADER
            + day_orders("2024-01-01", 3, "A")
            + "Z1,,z@x.com,2024-01-01T09:00:00Z,2024-01-01T09:00:00Z,completed,USD,abc,1\n"
            + day_orders("2024-01-02", 2, "B")
        ).encode()
    )
    [res] = extract("orders", D2, s)[:1]
    assert (res.rows_loaded, res.rows_quarantined, res.rows_out_of_window) == (2, 0, 4)
    assert balanced(res)


def test_an_empty_file_is_a_warning_counted_in_the_run_log(tmp_path: Path, fresh_db: str) -> None:
    write(tmp_path / ORDERS, b"")
    write(tmp_path / "world/marketing/spend.csv", b"\n\n")
    s = settings(tmp_path, fresh_db)
    [res] = extract("orders", D1, s)[:1]
    assert res.status == "success" and res.rows_read == 0
    assert res.warnings == [f"{tmp_path / ORDERS}: empty file (0 bytes), no rows read"]
    assert "1 warning(s): " in res.describe()
    [spend] = extract("marketing", D1, s)
    assert spend.warnings[0].endswith("no header line (blank first line), no rows read")
    assert rows(
        fresh_db,
        "select entity, warnings from ops.load_runs where status = 'success' order by entity",
    ) == [("orders", res.warnings), ("spend", spend.warnings)]


def test_a_duplicated_header_column_fails_the_batch_with_the_file_and_column(
    tmp_path: Path, fresh_db: str
) -> None:
    write(
        tmp_path / ORDERS,
        ORDERS_HEADER.replace("status", "email") + day_orders("2024-01-01", 2, "A"),
    )
    s = settings(tmp_path, fresh_db)
    with pytest.raises(LoadError) as err:
        extract("orders", D1, s)
    assert str(err.value) == (
        f"{tmp_path / ORDERS}: line 1: column 'email' appears twice in the header "
        "(columns 3 and 6); each column needs its own name"
    )


def _event(eid: str, ts: str, **kw) -> dict:
    return {"event_id": eid, "event": "page_viewed", "timestamp": ts} | kw


def _jsonl(*records) -> bytes:
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
    return b"".join(line + b"\n" for line in lines)


def test_web_partition_files_each_have_a_stated_outcome(tmp_path: Path, fresh_db: str) -> None:
    part = tmp_path / "world/web/events/dt=2024-01-01"
    write(part / "a-arrived-20240101.jsonl", _jsonl(_event("e1", "2024-01-01T10:00:00Z")))
    write(
        part / "b-arrived-20240101.csv",
        "event_id,event,timestamp\ne2,page_viewed,2024-01-01T11:00:00Z\n"
        "e3,page_viewed,2024-01-01T12:00:00Z\n",
    )
    write(part / "c-arrived-20240101.txt", "hello\n")
    write(part / "_SUCCESS", "")
    write(part / "d-arrived-20240101.jsonl.gz", gzip.compress(_jsonl(_event("e4", "x")))[:25])
    write(part / "e-arrived-20240101.jsonl.gz", b"not gzip at all\n")
    write(part / "f-arrived-20240101.jsonl", b"")
    s = settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    [res] = extract("web", D1, s)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (5, 3, 2) and balanced(res)
    loaded = rows(fresh_db, "select event_id from raw.web__events order by 1")
    assert loaded == [("e1",), ("e2",), ("e3",)]
    files = dict(rows(fresh_db, "select locator, outcome from ops.load_files"))
    assert len(files) == 6  # every file but the writer's marker, each claimed once
    txt = next(v for k, v in files.items() if k.endswith(".txt"))
    assert txt.startswith("not read: c-arrived-20240101.txt is neither JSON lines")
    reasons = dict(rows(fresh_db, "select right(_source, 27), reason from raw.quarantine"))
    assert reasons["d-arrived-20240101.jsonl.gz"].endswith(
        "cannot be read: the compressed file is truncated (it ends before its end-of-stream marker)"
    )
    assert "not a gzip file" in reasons["e-arrived-20240101.jsonl.gz"]
    outcomes = {k.rsplit("/", 1)[-1]: v for k, v in files.items()}
    assert outcomes["a-arrived-20240101.jsonl"] == "read"
    assert outcomes["b-arrived-20240101.csv"] == "read"
    assert outcomes["d-arrived-20240101.jsonl.gz"].startswith("file not read: ")
    assert "not a gzip file" in outcomes["e-arrived-20240101.jsonl.gz"]
    assert len(res.warnings) == 2  # the .txt file, and the empty one


def test_a_partition_or_arrival_that_is_no_date_is_claimed_not_read_and_said(
    tmp_path: Path, fresh_db: str
) -> None:
    """dt=2024-02-30 or arrived-20249999 stopped every web load with "day is out of range
    for month" (naming neither file nor folder). Their files are claimed by the batch
    that meets them, not read, with the reason in ops.load_files and the run's warnings."""
    web = tmp_path / "world/web/events"
    write(
        web / "dt=2024-01-01/a-arrived-20240101.jsonl", _jsonl(_event("e1", "2024-01-01T10:00:00Z"))
    )
    write(
        web / "dt=2023-02-30/x-arrived-20240101.jsonl", _jsonl(_event("e2", "2024-01-01T10:00:00Z"))
    )
    write(
        web / "dt=2024-01-01/y-arrived-20249999.jsonl", _jsonl(_event("e3", "2024-01-01T10:00:00Z"))
    )
    [res] = extract("web", D1, settings(tmp_path, fresh_db))
    assert (res.rows_read, res.rows_loaded) == (1, 1)
    outcomes = {
        k.rsplit("/", 1)[-1]: v
        for k, v in rows(fresh_db, "select locator, outcome from ops.load_files")
    }
    assert outcomes == {
        "a-arrived-20240101.jsonl": "read",
        "x-arrived-20240101.jsonl": "not read: its folder dt=2023-02-30 is not a date "
        "(day is out of range for month)",
        "y-arrived-20249999.jsonl": "not read: the arrival date in y-arrived-20249999.jsonl is "
        "not a date (unconverted data remains: 99)",
    }
    assert len(res.warnings) == 2


def test_hostile_json_lines_are_quarantined(tmp_path: Path, fresh_db: str) -> None:
    deep = b'{"event_id": "d", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_obj = b'{"event_id": "o", "x": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}"
    write(
        tmp_path / "world/web/events/dt=2024-01-01/p-arrived-20240101.jsonl",
        _jsonl(
            _event("e1", "2024-01-01T10:00:00Z"),
            b'{"event_id": "e2", "event": "a", "timestamp": "2024-01-01T10:00:00Z", "event": "b"}',
            deep,
            deep_obj,
            # brackets inside strings are not nesting
            _event("e3", "2024-01-01T10:00:00Z", page_url="/" + "[{" * 100),
            b"[1, 2]",
            b'"just a string"',
        ),
    )
    s = settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="1")
    [res] = extract("web", D1, s)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (7, 2, 5)
    assert rows(fresh_db, "select _line, reason from raw.quarantine order by 1") == [
        (2, "malformed JSON: key 'event' appears more than once in the object"),
        (3, "malformed JSON: nested more than 64 levels deep"),
        (4, "malformed JSON: nested more than 64 levels deep"),
        (6, "malformed JSON: a list, not an object"),
        (7, "malformed JSON: a str, not an object"),
    ]
    assert len(rows(fresh_db, "select payload from raw.quarantine where _line = 3")[0][0]) < 20_000


@pytest.mark.parametrize("full", [False, True])
def test_carriage_returns_inside_fields_cost_their_row_only(
    full: bool, tmp_path: Path, fresh_db: str
) -> None:
    # A CR inside a field, then more rows (pyarrow would split the row and misnumber the
    # rest); CRLF line ends are fine; a CR inside quotes is a CR inside the line too.
    body = (
        ORDERS_HEADER.replace("\n", "\r\n")
        + day_orders("2024-01-01", 10, "A").replace("\n", "\r\n")
        + "X1,CX,x\r@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,1,1\r\n"
        + 'X2,CX,"x\r@x.com",2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,1,1\n'
        + day_orders("2024-01-01", 30, "B")
    )
    write(tmp_path / ORDERS, body)
    s = settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="0.1")
    [res] = extract("orders", D1, s, full=full)[:1]
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (42, 40, 2)
    assert balanced(res)
    assert rows(fresh_db, "select _line, left(reason, 45) from raw.quarantine order by 1") == [
        (12, "malformed row: a carriage return (CR) inside "),
        (13, "malformed row: a carriage return (CR) inside "),
    ]
    lines = rows(fresh_db, "select min(_line), max(_line) from raw.orders__orders")
    assert lines == [(2, 43)]


def test_every_row_read_is_counted_once_in_a_dirty_world(tmp_path: Path, fresh_db: str) -> None:
    from lifecycle.sample.world import WorldConfig, generate_world

    config = WorldConfig(customers=150, start=D1, end=dt.date(2024, 2, 15), seed=7, dirty_rate=0.05)
    generate_world(config, tmp_path / "world")
    s = settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="1")
    results = []
    for day in (dt.date(2024, 2, 1), dt.date(2024, 2, 2), dt.date(2024, 2, 3)):
        for source in ("crm", "web", "orders", "marketing"):
            results += [r for r in extract(source, day, s) if r.status == "success"]
    assert len(results) == 15
    assert [r.describe() for r in results if not balanced(r)] == []
    assert sum(r.rows_quarantined for r in results[:5]) > 0
    # an old bad line is quarantined once, by the first batch that met it
    again = rows(
        fresh_db,
        "select _source, _line, count(*) from raw.quarantine where _line is not null "
        "and reason not like '%%duplicate%%' group by 1, 2 having count(*) > 1",
    )
    assert again == []
