"""A hostile CRM API: every bad answer ends in one clear CrmApiError, never a loop or a leak.

The client talks to a real HTTP server on loopback (tests/adversarial/hostile_http.py)
that answers HTML with 200, JSON of the wrong shape, 4xx/5xx bodies that echo the bearer
token, and cursors that never advance, repeat in a cycle or run past ``max_pages``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from lifecycle.extract.crm import CrmApiError, iter_contact_pages
from lifecycle.parse import Window
from lifecycle.sources_file import Endpoint
from tests.adversarial.hostile_http import Request, serve

TOKEN = "tok-Q7rX-hostile-crm-secret"
WINDOW = Window(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
JSON = {"Content-Type": "application/json"}
CONTACT = {
    "id": "1",
    "properties": {"email": "a@example.com", "updated_at": "2024-01-01T10:00:00Z"},
    "updatedAt": "2024-01-01T10:00:00Z",
}


def page(results: object, after: object = None) -> tuple[int, dict, bytes]:
    body: dict = {"results": results}
    if after is not None:
        body["paging"] = {"next": {"after": after}}
    return 200, JSON, json.dumps(body).encode()


def echo(status: int):
    def answer(r: Request):
        return (
            status,
            JSON,
            json.dumps(
                {"you_sent": {"Authorization": r.headers["Authorization"], **r.headers}}
            ).encode(),
        )

    return answer


def cycle(*cursors: str):
    """Answer page after page whose next cursor follows `cursors` in a loop."""

    def answer(r: Request):
        at = r.query.get("after")
        i = 0 if at is None else (cursors.index(at) + 1) % len(cursors)
        return page([CONTACT], cursors[i])

    return answer


CASES = {
    "html_with_200": (
        lambda r: (200, {"Content-Type": "text/html"}, b"<html><body>Login</body></html>"),
        r"answered 200 with text/html, not JSON, at GET http://127\.0\.0\.1:\d+/crm/v3/objects/"
        r"contacts\?limit=100&updatedBefore=.*: <html><body>Login</body></html>$",
    ),
    "empty_body_200": (lambda r: (200, JSON, b""), r"answered 200 with application/json, not JSON"),
    "truncated_json": (lambda r: (200, JSON, b'{"results": [{"id": "1"'), r"not JSON"),
    "deeply_nested_json": (lambda r: (200, JSON, b"[" * 200_000 + b"]" * 200_000), r"not JSON"),
    "json_array_body": (lambda r: (200, JSON, b"[1, 2]"), r"answered 200 with an array, not an"),
    "json_string_body": (lambda r: (200, JSON, b'"ok"'), r"answered 200 with a string, not an"),
    "results_missing": (
        lambda r: (200, JSON, b'{"data": []}'),
        r"answer has no 'results' array \(keys: data\).*endpoint\.data_selector",
    ),
    "results_a_string": (lambda r: page("abc"), r"'results' is a string, not an array"),
    "results_an_object": (lambda r: page({"id": 1}), r"'results' is an object, not an array"),
    "results_numbers": (lambda r: page([1, 2]), r"results\[0\] is a number, not an object"),
    "results_null_item": (
        lambda r: page([CONTACT, None]),
        r"results\[1\] is null, not an object",
    ),
    "properties_an_array": (
        lambda r: page([{"id": "1", "properties": ["x"]}]),
        r"results\[0\]\.properties is an array, not an object",
    ),
    "cursor_an_object": (
        lambda r: page([CONTACT], {"x": 1}),
        r"'paging\.next\.after' is an object, not a cursor",
    ),
    "status_400": (
        lambda r: (400, JSON, b'{"message": "limit must be <= 100"}'),
        r"answered 400 at GET .*: \{\"message\": \"limit must be <= 100\"\}$",
    ),
    "status_401": (lambda r: (401, JSON, b"{}"), r"refused the token \(401\) at GET http://"),
    "status_403": (lambda r: (403, {}, b""), r"refused the token \(403\)"),
    "status_404_html": (
        lambda r: (404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>\n" * 50),
        r"answered 404 at GET .*: <h1>Not Found</h1> <h1>Not Found</h1>.*\.\.\.$",
    ),
    "status_418_echoes_token": (
        echo(418),
        r'answered 418 at GET .*: \{"you_sent": \{"Authorization": "Bearer \*\*\*"',
    ),
    "status_500_echoes_token": (
        echo(500),
        r"kept failing after 1 retries at GET .*too many 500 error responses",
    ),
    "cursor_never_advances": (
        cycle("same"),
        r"cursor 'same' repeated after page 2 at GET .*after=same: the walk would never end",
    ),
    "cursor_cycles": (cycle("a", "b", "c"), r"cursor 'a' repeated after page 4"),
    "cursor_advances_forever": (
        lambda r: page([CONTACT], str(int(r.query.get("after", "0")) + 1)),
        r"walk stopped after endpoint\.max_pages=7 pages at GET .*after=7: raise max_pages",
    ),
}


def walk(url: str, **endpoint) -> list[dict]:
    pages = iter_contact_pages(
        url, TOKEN, WINDOW, endpoint=Endpoint(**endpoint), retries=1, backoff_s=0.0, timeout_s=10
    )
    return [c for _, contacts in pages for c in contacts]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_answer_is_one_clear_error_without_the_token(case) -> None:
    answer, message = CASES[case]
    with serve(answer) as (url, seen), pytest.raises(CrmApiError) as err:
        walk(url, max_pages=7)
    text = str(err.value)
    assert re.search(message, text), text
    assert "\n" not in text and len(text) < 1200
    assert TOKEN not in text
    assert err.value.__context__ is None or err.value.__suppress_context__  # no chained trace
    assert len(seen.requests) <= 8  # bounded: no endless walk, no retry storm


def test_a_good_api_still_walks_every_page() -> None:
    def answer(r: Request):
        n = int(r.query.get("after", "0"))
        contact = {**CONTACT, "id": str(n)}
        return page([contact], str(n + 1) if n < 4 else None)

    with serve(answer) as (url, seen):
        contacts = walk(url, max_pages=5)
    assert [c["id"] for c in contacts] == ["0", "1", "2", "3", "4"]
    assert seen.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_endpoint_settings_of_the_sources_file_are_used() -> None:
    def answer(r: Request):
        assert r.path == "/v1/people"
        n = int(r.query.get("page", "0"))
        body = {"data": {"items": [{**CONTACT, "id": str(n)}]}, "next": n + 1 if n < 2 else None}
        return 200, JSON, json.dumps(body).encode()

    with serve(answer) as (url, seen):
        contacts = walk(
            url,
            path="/v1/people",
            params={"limit": 10},
            data_selector="data.items",
            paginator={"cursor_path": "next", "cursor_param": "page"},
            incremental={"start_param": "since", "end_param": "until"},
        )
    assert [c["id"] for c in contacts] == ["0", "1", "2"]
    assert {"limit", "since", "until"} <= set(seen.requests[0].query)


# --------------------------------------------------------------- through the CLI


def _cli(tmp_path: Path, db: str, url: str, *, max_pages: int | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "AIRFLOW"))} | {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": db,
        "LIFECYCLE_CRM_API_URL": url,
        "LIFECYCLE_CRM_TOKEN": TOKEN,
        "LIFECYCLE_HTTP_RETRIES": "1",
        "LIFECYCLE_HTTP_BACKOFF_S": "0",
    }
    if max_pages is not None:
        sources = tmp_path / "sources.yml"
        sources.write_text(
            "version: 1\n"
            "connections: {crm_api: {token_env: LIFECYCLE_CRM_TOKEN}}\n"
            f"sources: {{crm: {{kind: rest, base_url: '{url}', connection: crm_api,"
            f" endpoint: {{max_pages: {max_pages}}}}}}}\n"
        )
        env["LIFECYCLE_SOURCES_FILE"] = str(sources)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycle.cli",
            "extract",
            "--source",
            "crm",
            "--date",
            "2024-01-01",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("case", "max_pages"),
    [
        ("html_with_200", None),
        ("status_418_echoes_token", None),
        ("cursor_never_advances", None),
        ("cursor_advances_forever", 3),
    ],
)
def test_cli_prints_one_error_line_and_stores_no_token(tmp_path, fresh_db, case, max_pages):
    answer, message = CASES[case]
    message = message.replace("max_pages=7", "max_pages=3").replace("after=7", "after=3")
    with serve(answer) as (url, _):
        done = _cli(tmp_path, fresh_db, url, max_pages=max_pages)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: CRM API "), done.stderr
    assert re.search(message, errors[0]), errors[0]
    assert TOKEN not in done.stderr + done.stdout
    with psycopg.connect(fresh_db) as conn:
        runs = conn.execute("select status, error from ops.load_runs").fetchall()
        loaded = conn.execute("select count(*) from raw.crm__contacts").fetchone()[0]
    assert [status for status, _ in runs] == ["failed"]
    assert runs[0][1].startswith("CrmApiError: CRM API ") and TOKEN not in runs[0][1]
    assert loaded == 0
