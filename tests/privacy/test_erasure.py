"""Erasure requests on hand-built inputs: the load-time filter in every load mode, the
hash in Python and SQL, and the CLI's one-line errors.

The whole loop (forget three people, full reload, backfill, retrain, exports) runs
through Airflow in tests/dags/test_erasure.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from lifecycle.cli import main
from lifecycle.extract import extract
from lifecycle.privacy import (
    Request,
    _sql_hash,
    apply_pending,
    file_requests,
    identifier_hash,
)
from tests.conftest import ORDERS_HEADER
from tests.conftest import world_settings as _settings
from tests.conftest import write_file as _write

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
KEY = "unit-test-site-key-0123456789abcdef"

ORDERS = ORDERS_HEADER + (
    "O1,C1,a@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,10.50,1\n"
    "O2,C2,b@x.com,2024-01-01T11:00:00Z,2024-01-01T11:00:00Z,completed,USD,20.00,2\n"
    # C2's order refunded the next day, and a bad line of theirs (negative amount)
    "O2,C2,b@x.com,2024-01-01T11:00:00Z,2024-01-02T09:00:00Z,refunded,USD,20.00,2\n"
    "O9,C2,B@X.com,2024-01-02T12:00:00Z,2024-01-02T12:00:00Z,completed,USD,-3.00,1\n"
    # another person's bad line stays in quarantine
    "O8,C3,c@x.com,2024-01-02T13:00:00Z,2024-01-02T13:00:00Z,completed,USD,-1.00,1\n"
    "O3,C3,c@x.com,2024-01-02T00:00:00Z,2024-01-02T00:00:00Z,completed,USD,5.25,1\n"
    "O4,C4,,2024-01-02T23:59:59Z,2024-01-02T23:59:59Z,cancelled,EUR,7,\n"
    "O5,C5,e@x.com,2024-01-03T08:00:00Z,2024-01-03T08:00:00Z,completed,USD,1.00,1\n"
)


def _rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def test_python_and_sql_hash_agree(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        for value in ("a@x.com", "C2", "Ünïcödé-名前", ""):
            [(digest,)] = conn.execute(
                sql.SQL("select {}").format(_sql_hash(sql.Literal(value))), {"key": KEY}
            ).fetchall()
            assert digest == identifier_hash(KEY, value)
    assert identifier_hash(KEY, "a@x.com") != identifier_hash(KEY + "x", "a@x.com")


def test_forgotten_rows_never_land_in_any_load_mode(
    tmp_path: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_ERASURE_SECRET", KEY)
    _write(tmp_path / "world/orders/orders.csv", ORDERS)
    s = _settings(tmp_path, fresh_db, LIFECYCLE_MAX_REJECT_SHARE="0.5")
    [first] = extract("orders", D1, s)[:1]  # first load: everything up to D1
    assert (first.rows_loaded, first.rows_erased) == (2, 0)  # O1, O2 (O3 is of D2 00:00)

    with psycopg.connect(fresh_db) as conn:
        file_requests(conn, KEY, [Request("email", "b@x.com")])
    applied = apply_pending(fresh_db, {"LIFECYCLE_ERASURE_SECRET": KEY}, None)
    assert applied.removed == {"raw.orders__orders": ("deleted", 1)}
    assert _rows(fresh_db, "select order_id from raw.orders__orders order by 1") == [("O1",)]

    # incremental: C2's refund version and bad line are dropped, C3's bad line quarantined,
    # O3 and O4 loaded
    [second] = extract("orders", D2, s)[:1]
    assert (second.rows_loaded, second.rows_erased, second.rows_quarantined) == (2, 2, 1)
    # a rerun of a day replaces its batch: same counts, same rows
    [again] = extract("orders", D2, s)[:1]
    assert (again.rows_loaded, again.rows_erased, again.rows_quarantined) == (2, 2, 1)
    # a full reload of the file that still holds them: O1, O3, O4, O5 land; C3's bad
    # line stays the quarantine row of D2's batch (each bad line is held once), counted
    # as a duplicate
    [full] = extract("orders", D3, s, full=True)[:1]
    assert (full.rows_loaded, full.rows_erased, full.rows_quarantined) == (4, 3, 0)
    assert full.rows_duplicate == 1
    assert "3 row(s) of forgotten people dropped" in full.describe()

    held = _rows(fresh_db, "select distinct customer_id, email from raw.orders__orders")
    assert ("C2", "b@x.com") not in held and len(held) == 4
    quarantined = _rows(fresh_db, "select payload from raw.quarantine order by payload")
    assert quarantined and all("C2" not in p and "b@x.com" not in p.lower() for (p,) in quarantined)
    assert {json.loads(p)["order_id"] for (p,) in quarantined} == {"O8"}
    assert _rows(
        fresh_db,
        "select batch_id, location, count_rows from ops.erasure_log where batch_id is not null "
        "order by batch_id",
    ) == [
        ("orders__orders:2024-01-02", "raw.orders__orders", 2),
        ("orders__orders:2024-01-03", "raw.orders__orders", 3),
    ]
    # nothing in the ledger is a plain identifier
    ledger = _rows(fresh_db, "select identifier_hash, identifier_type from ops.erasure_identifiers")
    assert sorted(t for _, t in ledger) == ["email", "order_id"]
    assert all(len(h) == 64 and h != "b@x.com" for h, _ in ledger)


def _invoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], *args: str):
    from lifecycle.settings import get_settings

    for name in ("LIFECYCLE_WAREHOUSE_URL", "LIFECYCLE_ERASURE_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        get_settings.cache_clear()


def test_cli_errors_are_one_line(
    tmp_path: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = {"LIFECYCLE_WAREHOUSE_URL": fresh_db, "LIFECYCLE_ERASURE_SECRET": KEY}
    bad_header = _write(tmp_path / "bad_header.csv", "email\na@x.com\n")
    bad_kind = _write(tmp_path / "bad_kind.csv", "kind,identifier\nemail,a@x.com\nphone,123\n")
    empty = _write(tmp_path / "empty.csv", "kind,identifier\n")
    cases = [
        (ok, ["--email", "  "], "error: --email: empty email: nothing to forget"),
        (ok, ["--email", "not-an-email"], "error: --email: 'not-an-email' is not an email address"),
        (ok, [], "error: nothing to forget: give --email, --customer-id, --crm-contact-id, "),
        (ok, ["--file", str(tmp_path / "missing.csv")], f"error: {tmp_path}/missing.csv: cannot "),
        (ok, ["--file", str(bad_header)], f"error: {bad_header}: the first line must be the "),
        (ok, ["--file", str(bad_kind)], f"error: {bad_kind}:3: unknown identifier kind 'phone'"),
        (ok, ["--file", str(empty)], f"error: {empty}: no request in the file"),
        (
            {"LIFECYCLE_WAREHOUSE_URL": fresh_db},
            ["--customer-id", "C1"],
            "error: LIFECYCLE_ERASURE_SECRET is not set",
        ),
        (
            {**ok, "LIFECYCLE_ERASURE_SECRET": "short"},
            ["--customer-id", "C1"],
            "error: LIFECYCLE_ERASURE_SECRET is too short",
        ),
        (
            {**ok, "LIFECYCLE_WAREHOUSE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            ["--customer-id", "C1"],
            "error: cannot connect to postgresql://nobody@127.0.0.1:1/none",
        ),
    ]
    for env, args, expected in cases:
        result = _invoke(monkeypatch, tmp_path, env, "privacy", "forget", *args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), (args, result.stderr)
        assert KEY not in result.output


def test_cli_forgets_and_reports_and_refuses_another_key(
    tmp_path: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = {"LIFECYCLE_WAREHOUSE_URL": fresh_db, "LIFECYCLE_ERASURE_SECRET": KEY}
    report = _invoke(monkeypatch, tmp_path, ok, "privacy", "report")
    assert report.exit_code == 0 and report.output == "erasure requests: 0 (0 applied, 0 pending)\n"
    requests = _write(tmp_path / "r.csv", "kind,identifier\nemail,A@X.com\ncustomer_id,C7\n")
    first = _invoke(monkeypatch, tmp_path, ok, "privacy", "forget", "--file", str(requests))
    assert first.exit_code == 0, first.output
    assert first.output.startswith("2 request(s) on file: er-")
    assert "erasure ea-" in first.output and "2 request(s), 0 customer(s)" in first.output
    # filing the same person again is the same request, already applied
    again = _invoke(monkeypatch, tmp_path, ok, "privacy", "forget", "--email", " a@x.COM")
    assert again.exit_code == 0 and "erasure: no pending request" in again.output
    report = _invoke(monkeypatch, tmp_path, ok, "privacy", "report")
    assert report.output.startswith("erasure requests: 2 (2 applied, 0 pending)\n")
    assert "a@x.com" not in report.output.lower() and "C7" not in report.output
    other = {**ok, "LIFECYCLE_ERASURE_SECRET": KEY[::-1]}
    refused = _invoke(monkeypatch, tmp_path, other, "privacy", "forget", "--customer-id", "C8")
    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        "error: LIFECYCLE_ERASURE_SECRET is not the key the erasure ledger was written with"
    )


def _event(eid: str, anonymous_id: str, user_id: str | None = None, **kw: str) -> str:
    return json.dumps(
        {
            "event_id": eid,
            "anonymous_id": anonymous_id,
            "user_id": user_id,
            "event": "logged_in" if user_id else "page_viewed",
            "timestamp": "2024-01-01T10:00:00Z",
            "session_id": f"s-{eid}",
        }
        | kw
    )


def test_a_shared_device_keeps_the_other_persons_events(
    tmp_path: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_ERASURE_SECRET", KEY)
    events = [
        _event("e1", "dev-1"),  # the forgotten person's device, before they log in
        _event("e2", "dev-1", "C1"),  # their login
        _event("e3", "dev-1", "C2"),  # someone else logs in on the same device
        _event("e4", "dev-2", None, email="c1@x.com"),  # their identify on another device
        _event("e5", "dev-3", "C2"),
    ]
    _write(
        tmp_path / "world/web/events/dt=2024-01-01/part-0000-arrived-20240101.jsonl",
        "\n".join(events) + "\n",
    )
    s = _settings(tmp_path, fresh_db)
    with psycopg.connect(fresh_db) as conn:
        file_requests(
            conn,
            KEY,
            [
                Request("customer_id", "C1"),
                Request("anonymous_id", "dev-1"),
                Request("email", "c1@x.com"),
            ],
        )
    apply_pending(fresh_db, {"LIFECYCLE_ERASURE_SECRET": KEY}, None)
    [web] = extract("web", D1, s)
    assert (web.rows_loaded, web.rows_erased) == (2, 3)
    assert _rows(
        fresh_db, "select event_id, anonymous_id, user_id from raw.web__events order by 1"
    ) == [
        ("e3", "dev-1", "C2"),
        ("e5", "dev-3", "C2"),
    ]
