"""HTTP push on its own: batches and keys, an endpoint that keeps failing, resuming after it."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from lifecycle.activation.audiences import Push
from lifecycle.activation.push import PushError, make_batches, push_audience
from lifecycle.activation.tables import ensure_activation_tables
from tests.activation.flaky_server import flaky_server

DAY = dt.date(2024, 6, 30)
ROWS = [
    {"customer_key": f"k{i:03d}", "email": f"p{i}@example.com", "first_name": "美咲"}
    for i in range(23)
]


def test_batches_are_deterministic_and_keyed_by_content() -> None:
    first = make_batches("vip", DAY, "add", ROWS, 10)
    again = make_batches("vip", DAY, "add", list(reversed(ROWS)), 10)
    assert [b.key for b in first] == [b.key for b in again]
    assert [b.rows for b in first] == [10, 10, 3]
    assert len({b.key for b in first}) == 3
    assert make_batches("vip", DAY + dt.timedelta(days=1), "add", ROWS, 10)[0].key != first[0].key
    assert "美咲".encode() in first[0].body


def test_a_failing_endpoint_fails_the_run_and_a_rerun_resumes(fresh_db) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_activation_tables(conn)
        common = dict(
            send_rows=ROWS, add_rows=ROWS, remove_rows=[], run_id="r", token=None, backoff_s=0.0
        )
        with flaky_server(failure_rate=1.0) as (url, got), pytest.raises(PushError) as err:
            push_audience(conn, "vip", DAY, Push(url, 10), retries=2, **common)
        assert str(err.value).startswith(
            f"push failed after 2 retries: audience vip {DAY} batch 0 to POST {url}"
        )
        assert got.requests == 3  # first try and two retries
        assert conn.execute("select status, attempts from activation.push_log").fetchall() == [
            ("failed", 3)
        ]
        with flaky_server(failure_rate=0.0) as (url2, got2):
            done = push_audience(conn, "vip", DAY, Push(url2, 10), retries=2, **common)
            again = push_audience(conn, "vip", DAY, Push(url2, 10), retries=2, **common)
        assert (done.delivered, done.rows_delivered, done.attempts) == (3, 23, 3)
        assert (again.delivered, again.skipped) == (0, 3)
        assert sorted(got2.members("add")) == [r["customer_key"] for r in ROWS]
        assert conn.execute(
            "select status, count(*), sum(count_rows) from activation.push_log group by 1"
        ).fetchall() == [("delivered", 3, 23)]
