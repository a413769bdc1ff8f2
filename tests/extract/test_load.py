"""The loader on hand-built inputs: windows, quarantine reasons, idempotency, drift, crashes."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from lifecycle.extract import extract
from lifecycle.load import LoadError
from tests.conftest import ORDERS_HEADER, ORDERS_ONLY_SOURCES, cli_env, interruptible
from tests.conftest import world_settings as _settings
from tests.conftest import write_file as _write

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _snapshot(url: str, table: str) -> list[tuple]:
    """Every column but the load time, in a stable order."""
    with psycopg.connect(url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_schema = 'raw' "
                "and table_name = %s and column_name <> '_loaded_at' order by ordinal_position",
                (table,),
            )
        ]
        quoted = ", ".join(f'"{c}"::text' for c in cols)
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        return conn.execute(f"select {quoted} from raw.{table} order by {order}").fetchall()


CLEAN_ORDERS = ORDERS_HEADER + (
    "O1,C1,a@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,10.50,1\n"
    "O2,C2,b@x.com,2024-01-01T11:00:00Z,2024-01-01T11:00:00Z,completed,USD,20.00,2\n"
    # O2 refunded the next day: a second version of the row, placed by updated_at
    "O2,C2,b@x.com,2024-01-01T11:00:00Z,2024-01-02T09:00:00Z,refunded,USD,20.00,2\n"
    "O3,C3,c@x.com,2024-01-02T00:00:00Z,2024-01-02T00:00:00Z,completed,USD,5.25,1\n"
    "O4,C4,,2024-01-02T23:59:59Z,2024-01-02T23:59:59Z,cancelled,EUR,7,\n"
    "O5,C5,e@x.com,2024-01-03T08:00:00Z,2024-01-03T08:00:00Z,completed,USD,1.00,1\n"
)


def test_orders_csv_full_then_incremental_loads_exact_rows(tmp_path: Path, fresh_db: str) -> None:
    _write(tmp_path / "world/orders/orders.csv", CLEAN_ORDERS)
    s = _settings(tmp_path, fresh_db)

    [first] = extract("orders", D1, s)[:1]
    # First load: everything up to the end of D1, i.e. (-inf, 2024-01-02 00:00).
    # O3's updated_at is exactly 2024-01-02T00:00:00Z: the interval end is exclusive (a
    # day holds its own midnight, as a plain date 2024-01-02 is), so O3 is D2's.
    assert (first.rows_loaded, first.rows_quarantined, first.rows_out_of_window) == (2, 0, 4)
    assert first.window.start is None
    [second] = extract("orders", D2, s)[:1]
    assert (second.rows_loaded, second.rows_out_of_window) == (3, 3)
    [third] = extract("orders", D3, s)[:1]
    assert third.rows_loaded == 1

    rows = _rows(
        fresh_db,
        "select order_id, status, amount::text, _batch_id from raw.orders__orders "
        "order by order_id, updated_at",
    )
    assert rows == [
        ("O1", "completed", "10.50", "orders__orders:2024-01-01"),
        ("O2", "completed", "20.00", "orders__orders:2024-01-01"),
        ("O2", "refunded", "20.00", "orders__orders:2024-01-02"),
        ("O3", "completed", "5.25", "orders__orders:2024-01-02"),
        ("O4", "cancelled", "7.00", "orders__orders:2024-01-02"),
        ("O5", "completed", "1.00", "orders__orders:2024-01-03"),
    ]
    # Empty CSV fields are NULL, not empty strings.
    assert _rows(
        fresh_db, "select email, quantity from raw.orders__orders where order_id='O4'"
    ) == [(None, None)]
    watermark = _rows(fresh_db, "select value, batch_id from ops.watermarks")
    assert watermark == [(dt.datetime(2024, 1, 4, tzinfo=dt.UTC), "orders__orders:2024-01-03")]


def test_rerunning_a_day_changes_nothing(tmp_path: Path, fresh_db: str) -> None:
    _write(tmp_path / "world/orders/orders.csv", CLEAN_ORDERS)
    s = _settings(tmp_path, fresh_db)
    for day in (D1, D2, D3):
        extract("orders", day, s)
    before = _snapshot(fresh_db, "orders__orders")
    for _ in range(3):
        extract("orders", D2, s)
        extract("orders", D1, s)  # the first (full) load's window is kept on rerun
    assert _snapshot(fresh_db, "orders__orders") == before
    assert len(before) == 6
    runs = _rows(fresh_db, "select status, count(*) from ops.load_runs group by 1 order by 1")
    assert dict(runs)["success"] == 3 + 6  # three days, then six reruns
    assert dict(runs)["skipped"] == 9


def test_skipped_days_are_caught_up_from_the_watermark(tmp_path: Path, fresh_db: str) -> None:
    _write(tmp_path / "world/orders/orders.csv", CLEAN_ORDERS)
    s = _settings(tmp_path, fresh_db)
    extract("orders", D1, s)
    [late] = extract("orders", D3, s)[:1]  # D2 was never run
    assert late.window.start == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert late.rows_loaded == 4  # D2's and D3's: O2's refund, O3 (D2 00:00), O4, O5
    assert _rows(fresh_db, "select count(*) from raw.orders__orders") == [(6,)]


DIRTY_ORDERS = ORDERS_HEADER.encode() + (
    b"O1,C1,a@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,10.50,1\n"
    b"O2,C2,b@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,12,5x,1\n"
    b"O3,C3,c@x.com,not-a-date,2024-01-01T10:00:00Z,completed,USD,3.00,1\n"
    b"O4,C4,d@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,-5.00,1\n"
    b"O5,C5,e@x.com,2031-06-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,5.00,1\n"
    b"O6,C6,\xff\xfename@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,1,1\n"
    b"O1,C1,a@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,10.50,1\n"
    b'O7,"C7,x@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,1,1\n'
    b"O8,C8,h@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,abc,1\n"
    b"O9,,i@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,1,1\n"
    b"O10,C10,j@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,2.00,1.5\n"
    b"O11,C11,k@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,2.00,1\n"
)


def test_every_kind_of_bad_row_is_quarantined_with_a_readable_reason(
    tmp_path: Path, fresh_db: str
) -> None:
    _write(tmp_path / "world/orders/orders.csv", DIRTY_ORDERS)
    s = _settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="0.9")
    [res] = extract("orders", D1, s)[:1]
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (12, 2, 10)
    reasons = dict(
        _rows(
            fresh_db,
            "select _line, reason from raw.quarantine where entity = 'orders' order by _line",
        )
    )
    assert reasons == {
        3: "malformed row: expected 9 fields, got 10",
        4: "ordered_at: 'not-a-date' is not a valid timestamp",
        5: "amount -5.00 is negative",
        6: "ordered_at 2031-06-01T10:00:00Z is in the future "
        "(after the end of the load interval, 2024-01-02T00:00:00+00:00)",
        7: "broken encoding: byte 0xff at position 6 is not valid UTF-8",
        8: "duplicate of an earlier row of this batch (order_id=O1, "
        "updated_at=2024-01-01T10:00:00Z)",
        9: "malformed row: unbalanced double quote",
        10: "amount: 'abc' is not a valid numeric",
        11: "customer_id is empty",
        12: "quantity: '1.5' is not a valid integer",
    }
    payload = _rows(fresh_db, "select payload from raw.quarantine where _line = 10")[0][0]
    assert json.loads(payload)["amount"] == "abc"
    assert sorted(r[0] for r in _rows(fresh_db, "select order_id from raw.orders__orders")) == [
        "O1",
        "O11",
    ]


def test_too_many_rejects_fail_the_batch_and_keep_what_was_published(
    tmp_path: Path, fresh_db: str
) -> None:
    path = _write(tmp_path / "world/orders/orders.csv", CLEAN_ORDERS)
    s = _settings(tmp_path, fresh_db)
    extract("orders", D1, s)
    published = _snapshot(fresh_db, "orders__orders")
    path.write_bytes(DIRTY_ORDERS)
    with pytest.raises(
        LoadError, match=r"10 of 12 rows rejected \(83\.3%\), more than the allowed"
    ):
        extract("orders", D1, s)
    assert _snapshot(fresh_db, "orders__orders") == published
    # The failed attempt is diagnosable: its quarantine and a failed run.
    assert _rows(fresh_db, "select count(*) from raw.quarantine") == [(10,)]
    last = _rows(
        fresh_db,
        "select status, rows_quarantined, error from ops.load_runs "
        "where entity = 'orders' order by started_at desc limit 1",
    )[0]
    assert last[0] == "failed" and last[1] == 10 and "LoadError" in last[2]


def test_schema_drift_new_column_kept_missing_required_column_named(
    tmp_path: Path, fresh_db: str
) -> None:
    path = _write(
        tmp_path / "world/orders/orders.csv",
        "order_id,customer_id,ordered_at,amount,coupon_code\n"
        "O1,C1,2024-01-01T10:00:00Z,9.99,WELCOME10\n"
        "O2,C2,2024-01-01T11:00:00Z,5.00,\n",
    )
    s = _settings(tmp_path, fresh_db)
    [res] = extract("orders", D1, s)[:1]
    assert res.rows_loaded == 2 and res.extra_columns == ["coupon_code"]
    assert _rows(
        fresh_db, "select order_id, _extra->>'coupon_code' from raw.orders__orders order by 1"
    ) == [("O1", "WELCOME10"), ("O2", None)]
    assert _rows(fresh_db, "select extra_columns from ops.load_runs where status='success'") == [
        (["coupon_code"],)
    ]

    path.write_text("order_id,ordered_at,total\nO1,2024-01-01T10:00:00Z,9.99\n")
    with pytest.raises(
        LoadError, match="required column.s. missing for raw.orders__orders: customer_id, amount"
    ):
        extract("orders", D1, s)
    assert _rows(fresh_db, "select count(*) from raw.orders__orders") == [(2,)]


def test_minimal_orders_csv_is_placed_by_ordered_at(tmp_path: Path, fresh_db: str) -> None:
    _write(
        tmp_path / "world/orders/orders.csv",
        "customer_id,order_id,ordered_at,amount\n"
        "C1,O1,2024-01-01T10:00:00Z,9.99\n"
        "C1,O2,2024-01-02T10:00:00Z,19.99\n",
    )
    s = _settings(tmp_path, fresh_db)
    assert extract("orders", D1, s)[0].rows_loaded == 1
    assert extract("orders", D2, s)[0].rows_loaded == 1
    assert _rows(fresh_db, "select order_id, _batch_id from raw.orders__orders order by 1") == [
        ("O1", "orders__orders:2024-01-01"),
        ("O2", "orders__orders:2024-01-02"),
    ]


def _events(*records: dict | str) -> bytes:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def _event(eid: str, ts: str, **kw: str) -> dict:
    return {
        "event_id": eid,
        "anonymous_id": "a1",
        "user_id": None,
        "event": "page_viewed",
        "timestamp": ts,
        "session_id": "s1",
    } | kw


def test_web_events_late_files_duplicates_and_bad_lines(tmp_path: Path, fresh_db: str) -> None:
    root = tmp_path / "world/web/events"
    _write(
        root / "dt=2024-01-01/part-0000-arrived-20240101.jsonl.gz",
        _events(
            _event("e1", "2024-01-01T10:00:00Z"),
            _event(
                "e2", "2024-01-01T11:00:00Z", user_id="C1", email="Ａ@例え.jp", event="logged_in"
            ),
            _event("e2", "2024-01-01T11:00:00Z", user_id="C1", event="logged_in"),  # repeat
            "{not json",
        ),
    )
    _write(
        root / "dt=2024-01-02/part-0000-arrived-20240102.jsonl.gz",
        _events(
            _event("e3", "2024-01-02T10:00:00Z", new_field="x"),
        ),
    )
    # One bad line in a tiny file is a big share: allow it here.
    # Late: events of D1 that only arrived on D3, in D1's partition.
    _write(
        root / "dt=2024-01-01/part-0000-arrived-20240103.jsonl.gz",
        _events(
            _event("e4", "2024-01-01T23:00:00Z"),
            _event("e1", "2024-01-01T10:00:00Z"),  # delivered again, in another batch
        ),
    )
    s = _settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="0.5")

    d1 = extract("web", D1, s)[0]
    assert (d1.rows_loaded, d1.rows_duplicate, d1.rows_quarantined) == (2, 1, 1)
    d2 = extract("web", D2, s)[0]
    assert d2.rows_loaded == 1 and d2.extra_columns == ["new_field"]
    d3 = extract("web", D3, s)[0]
    assert d3.rows_loaded == 2 and len(d3.files) == 1 and "arrived-20240103" in d3.files[0]
    for _ in range(2):  # reruns take the same files again, and only those
        assert extract("web", D1, s)[0].rows_loaded == 2
        assert extract("web", D3, s)[0].rows_loaded == 2

    rows = _rows(fresh_db, "select event_id, _batch_id from raw.web__events order by 1, 2")
    assert rows == [
        ("e1", "web__events:2024-01-01"),
        ("e1", "web__events:2024-01-03"),  # across batches: staging keeps one
        ("e2", "web__events:2024-01-01"),
        ("e3", "web__events:2024-01-02"),
        ("e4", "web__events:2024-01-03"),
    ]
    assert _rows(fresh_db, "select email from raw.web__events where event_id = 'e2'") == [
        ("Ａ@例え.jp",)
    ]
    [(reason, line)] = _rows(fresh_db, "select reason, _line from raw.quarantine")
    assert reason.startswith("malformed JSON:") and line == 4


def test_a_raw_table_of_an_earlier_release_gets_its_load_time_index(
    tmp_path: Path, fresh_db: str
) -> None:
    """dbt's incremental staging selects each run's rows by `_loaded_at`: every raw table
    has a block-range index on it, created by the next load on a table made without it,
    and the day's rows are found through it rather than by reading every row."""
    root = tmp_path / "world/web/events"
    _write(
        root / "dt=2024-01-01/part-0000-arrived-20240101.jsonl.gz",
        _events(*(_event(f"a{i}", "2024-01-01T10:00:00Z") for i in range(3))),
    )
    s = _settings(tmp_path, fresh_db)
    extract("web", D1, s)
    index = (
        "select indexdef from pg_indexes where schemaname = 'raw' "
        "and tablename = 'web__events' and indexdef like '%%brin%%'"
    )
    assert _rows(fresh_db, index) == [
        ("CREATE INDEX web__events_loaded_idx ON raw.web__events USING brin (_loaded_at)",)
    ]
    with psycopg.connect(fresh_db) as conn:  # as an earlier release left it
        conn.execute("drop index raw.web__events_loaded_idx")
    _write(
        root / "dt=2024-01-02/part-0000-arrived-20240102.jsonl.gz",
        _events(_event("b1", "2024-01-02T10:00:00Z")),
    )
    assert extract("web", D2, s)[0].rows_loaded == 1
    assert len(_rows(fresh_db, index)) == 1
    with psycopg.connect(fresh_db) as conn:
        tables = conn.execute(
            "select count(*) from pg_indexes where schemaname = 'raw' "
            "and indexdef like '%%USING brin (_loaded_at)'"
        ).fetchone()[0]
        assert tables == 6  # every entity of lifecycle.raw.ENTITIES
        conn.execute("set enable_seqscan = off")  # a three-row table: ask whether it can
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "explain select event_id from raw.web__events "
                "where _loaded_at > '2024-01-01'::timestamptz"
            )
        )
        assert "Bitmap Index Scan on web__events_loaded_idx" in plan, plan


def _many_orders(tmp_path: Path, n: int) -> None:
    """Write an orders file of `n` rows of 2023-12-31: a COPY that lasts a while."""
    lines = [ORDERS_HEADER]
    lines += [
        f"O{i},C{i % 5000},c{i}@x.com,2023-12-31T10:00:00Z,2023-12-31T10:00:00Z,completed,USD,"
        f"{i % 100}.50,1\n"
        for i in range(n)
    ]
    _write(tmp_path / "world/orders/orders.csv", "".join(lines))


def _wait_until_copying(proc: subprocess.Popen, url: str) -> None:
    """Return once the load `proc` is streaming rows into raw.orders__orders."""
    deadline = time.monotonic() + 60
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            copying = conn.execute(
                "select count(*) from pg_stat_progress_copy p join pg_class c "
                "on c.oid = p.relid where c.relname = 'orders__orders' and p.tuples_processed > 0"
            ).fetchone()[0]
            if copying:
                return
            assert proc.poll() is None, "the load finished before it started copying"
            time.sleep(0.02)
    pytest.fail("the load never started copying")


KILL_SCRIPT = """
import datetime as dt, sys
from lifecycle.extract import extract
from lifecycle.settings import load_settings
s = load_settings({"LIFECYCLE_HOME": sys.argv[1], "LIFECYCLE_WAREHOUSE_URL": sys.argv[2],
                   "LIFECYCLE_WORLD_DIR": sys.argv[3]})
extract("orders", dt.date(2024, 1, 1), s)
"""


def test_a_load_killed_midway_leaves_nothing_and_the_rerun_completes(
    tmp_path: Path, fresh_db: str
) -> None:
    n = 400_000
    _many_orders(tmp_path, n)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            str(tmp_path / "home"),
            fresh_db,
            str(tmp_path / "world"),
        ],
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])},
    )
    _wait_until_copying(proc, fresh_db)  # kill it while its COPY streams rows
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert _rows(fresh_db, "select count(*) from raw.orders__orders") == [(0,)]
    assert _rows(fresh_db, "select count(*) from ops.load_batches") == [(0,)]
    assert _rows(fresh_db, "select count(*) from ops.watermarks") == [(0,)]
    assert _rows(fresh_db, "select status from ops.load_runs") == [("running",)]

    s = _settings(tmp_path, fresh_db)
    [res] = extract("orders", D1, s)[:1]
    assert res.rows_loaded == n
    assert _rows(fresh_db, "select count(*), count(distinct order_id) from raw.orders__orders") == [
        (n, n)
    ]
    assert _rows(
        fresh_db,
        "select status, error from ops.load_runs where entity = 'orders' order by started_at",
    ) == [
        ("failed", "abandoned: the process ended before the run finished"),
        ("success", None),
    ]


def test_marketing_spend_csv(tmp_path: Path, fresh_db: str) -> None:
    _write(
        tmp_path / "world/marketing/spend.csv",
        "date,channel,spend,currency\n"
        "2024-01-01,paid_search,120.50,USD\n2024-01-01,social,80,USD\n"
        "2024-01-02,paid_search,99.99,USD\n2024-01-02,social,-1,USD\n",
    )
    s = _settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    assert extract("marketing", D1, s)[0].rows_loaded == 2
    d2 = extract("marketing", D2, s)[0]
    assert (d2.rows_loaded, d2.rows_quarantined) == (1, 1)
    assert _rows(fresh_db, "select reason from raw.quarantine") == [("spend -1 is negative",)]


def test_sources_without_data_are_skipped_and_logged(tmp_path: Path, fresh_db: str) -> None:
    s = _settings(tmp_path, fresh_db)
    for source in ("crm", "web", "orders", "marketing"):
        assert {r.status for r in extract(source, D1, s)} == {"skipped"}
    assert _rows(fresh_db, "select count(*) from ops.load_runs where status = 'skipped'") == [(5,)]


def test_values_with_commas_and_quotes_round_trip(tmp_path: Path, fresh_db: str) -> None:
    # Chunks without such values are streamed unquoted; this one must be quoted.
    _write(
        tmp_path / "world/orders/orders.csv",
        "order_id,customer_id,email,ordered_at,amount\n"
        'O1,C1,"Lee, ""Ann"" <ann@x.com>",2024-01-01T10:00:00Z,1.00\n'
        "O2,C2,plain@x.com,2024-01-01T11:00:00Z,2.00\n",
    )
    extract("orders", D1, _settings(tmp_path, fresh_db))
    assert _rows(fresh_db, "select order_id, email from raw.orders__orders order by 1") == [
        ("O1", 'Lee, "Ann" <ann@x.com>'),
        ("O2", "plain@x.com"),
    ]


def test_an_interrupt_during_the_copy_ends_the_load_at_once(tmp_path: Path, fresh_db: str) -> None:
    """Ctrl-C while COPY streams rows: the COPY was left open, and the rollback waited on a
    server waiting for more COPY data, for ever (the process held the batch's lock). The
    COPY is now ended with CopyFail: one error line, exit 130, nothing published."""
    n = 400_000
    _many_orders(tmp_path, n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")} | {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": fresh_db,
        "LIFECYCLE_WORLD_DIR": str(tmp_path / "world"),
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "lifecycle"), "extract", "--date", "2024-01-01",
         "--source", "orders"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )  # fmt: skip
    _wait_until_copying(proc, fresh_db)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the interrupted load hung")
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in err
    assert _rows(fresh_db, "select count(*) from raw.orders__orders") == [(0,)]
    assert _rows(fresh_db, "select count(*) from ops.load_batches") == [(0,)]


def test_a_load_waits_for_an_erasure_being_applied(tmp_path: Path, fresh_db: str) -> None:
    """`privacy forget` while a batch was loading reported the request applied to 0 rows
    and the batch committed the person's rows after it (its check of the ledger ran before
    the erasure committed). A load and an erasure now exclude each other: the batch holds
    the erasure's lock shared for its transaction, the erasure takes it alone."""
    _many_orders(tmp_path, 1_000)
    env = cli_env(
        LIFECYCLE_HOME=str(tmp_path / "home"),
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_WORLD_DIR=str(tmp_path / "world"),
    )
    with psycopg.connect(fresh_db) as erasure:
        # what lifecycle.privacy.apply holds while it resolves, sweeps and writes the ledger
        erasure.execute("select pg_advisory_xact_lock(hashtext('lifecycle.erasure_apply'))")
        load = subprocess.Popen(
            [str(Path(sys.executable).parent / "lifecycle"), "extract", "--date", "2024-01-01",
             "--source", "orders"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            waiting = (
                "select count(*) from pg_locks where locktype = 'advisory' and not granted "
                "and objid = (select hashtext('lifecycle.erasure_apply')::oid)"
            )
            while _rows(fresh_db, waiting) == [(0,)]:
                assert load.poll() is None, "the load did not wait for the erasure"
                assert time.monotonic() < deadline, "the load never reached the lock"
                time.sleep(0.05)
            assert _rows(fresh_db, "select count(*) from ops.load_batches") == [(0,)]
            erasure.commit()  # the erasure is done: the load goes on
            _, err = load.communicate(timeout=120)
        finally:
            load.kill()
    assert load.returncode == 0, err[-2000:]
    assert _rows(fresh_db, "select count(*) from raw.orders__orders") == [(1_000,)]


def test_a_file_rewritten_while_it_is_read_publishes_nothing(
    tmp_path: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export rewritten mid-read loaded rows that were in neither version of it."""
    from lifecycle.extract import readers

    src = tmp_path / "orders.csv"
    _many_orders(tmp_path, 2_000)
    src.write_bytes((tmp_path / "world/orders/orders.csv").read_bytes())
    sources = tmp_path / "sources.yml"
    sources.write_text(ORDERS_ONLY_SOURCES.format(orders=src))
    real = readers.read_csv_chunks

    def rewritten_after_the_first_chunk(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            yield chunk
            if i == 0:  # the export job writes the file again meanwhile
                src.write_text(ORDERS_HEADER + "O1,C1,a@x.com,2023-12-31T10:00:00Z,,,,1.00,1\n")

    monkeypatch.setattr(readers, "read_csv_chunks", rewritten_after_the_first_chunk)
    s = _settings(tmp_path, fresh_db, LIFECYCLE_SOURCES_FILE=str(sources))
    with pytest.raises(LoadError, match=r"orders\.csv: the file changed while it was read"):
        extract("orders", dt.date(2024, 1, 1), s)
    assert _rows(fresh_db, "select count(*) from raw.orders__orders") == [(0,)]
