"""Secrets never reach a stored or printed error: one helper, lifecycle.redact.redact.

Unit cases cover each shape a secret takes (bearer credentials, URL and conninfo
passwords, known tokens, role passwords from the environment) and the logging filter.
The end-to-end cases run ``lifecycle extract`` and ``lifecycle status`` against a CRM
server on loopback that echoes the Authorization header (and the bare token) in its
error bodies, then search stdout, stderr and every row of the warehouse for the token.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import psycopg
import pytest

from lifecycle.redact import MASK, RedactingFilter, redact, remember
from tests.adversarial.hostile_http import Request, serve
from tests.conftest import run_cli

TOKEN = "crm-tok-7Hq2-echo-me"
ROLE_PASSWORD = "loader-pw-K3x9!z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123_x", "Authorization: Bearer ***"),
        ("authorization=bearer%20abcdef123", "authorization=bearer ***"),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic ***"),
        (
            "postgresql://loader:s3cr%40t@db:5432/lifecycle",
            "postgresql://loader:***@db:5432/lifecycle",
        ),
        ("host=db user=bi password=hunter2 dbname=x", "host=db user=bi password=*** dbname=x"),
        (
            "https://api.example/v1?api_key=abcdef&limit=5",
            "https://api.example/v1?api_key=***&limit=5",
        ),
        ('{"token": "crm-tok-7Hq2-echo-me"}', '{"token": "***"}'),
        ("echo crm-tok-7Hq2-echo-me twice crm-tok-7Hq2-echo-me", "echo *** twice ***"),
        ("role lifecycle_loader password loader-pw-K3x9!z", "role lifecycle_loader password ***"),
        ("refused the token (401): check LIFECYCLE_CRM_TOKEN", None),  # nothing secret
        ("the -2 stage and 'Basic' plan", None),
        ("", None),
    ],
)
def test_redact(monkeypatch, text, expected) -> None:
    remember(TOKEN)
    monkeypatch.setenv("LIFECYCLE_LOADER_PASSWORD", ROLE_PASSWORD)
    assert redact(text) == (text if expected is None else expected)


def test_the_log_filter_masks_messages_arguments_and_tracebacks() -> None:
    remember(TOKEN)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sent %s to %s", f"Bearer {TOKEN}", "postgresql://u:pw123456@h/d")
        try:
            raise RuntimeError(f"server said {TOKEN}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert TOKEN not in out and "pw123456" not in out
    assert f"sent Bearer {MASK} to postgresql://u:{MASK}@h/d" in out
    assert f"RuntimeError: server said {MASK}" in out


def _echo(status: int):
    def answer(r: Request):
        body = {"auth": r.headers["Authorization"], "token": TOKEN, "you_sent": r.headers}
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return answer


def _cli(tmp_path: Path, db: str, url: str, *args: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "AIRFLOW"))}
    env |= {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": db,
        "LIFECYCLE_CRM_API_URL": url,
        "LIFECYCLE_CRM_TOKEN": TOKEN,
        "LIFECYCLE_HTTP_RETRIES": "0",
        "LIFECYCLE_HTTP_BACKOFF_S": "0",
    }
    return run_cli(args, env, cwd=tmp_path, timeout=180)


def _warehouse_rows_with(db: str, needle: str) -> list[str]:
    """Return the tables of schemas raw and ops holding `needle` in any row."""
    with psycopg.connect(db) as conn:
        tables = conn.execute(
            "select table_schema || '.' || table_name from information_schema.tables "
            "where table_schema in ('raw', 'ops') and table_type = 'BASE TABLE'"
        ).fetchall()
        return [
            t
            for (t,) in tables
            if conn.execute(
                f"select exists (select 1 from {t} as x where x::text like %s)", (f"%{needle}%",)
            ).fetchone()[0]
        ]


@pytest.mark.parametrize("status", [500, 400, 422])
def test_a_crm_echoing_the_token_never_gets_it_stored_or_printed(tmp_path, fresh_db, status):
    with serve(_echo(status)) as (url, seen):
        done = _cli(
            tmp_path, fresh_db, url, "-v", "extract", "--source", "crm", "--date", "2024-01-01"
        )
        status_out = _cli(tmp_path, fresh_db, url, "status")
    assert seen.requests and seen.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    if status == 500:
        assert "too many 500 error responses" in error
    else:
        assert f"answered {status} at GET {url}" in error
        assert '{"auth": "Bearer ***", "token": "***", "you_sent"' in error
    for text in (done.stdout, done.stderr, status_out.stdout, status_out.stderr):
        assert TOKEN not in text
    assert _warehouse_rows_with(fresh_db, TOKEN) == []
    assert _warehouse_rows_with(fresh_db, "CrmApiError") == ["ops.load_runs"]  # it was stored
