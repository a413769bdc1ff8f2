"""A CRM REST API of another shape, described by the sources file's endpoint block
(dlt's rest_api words: path, params, data_selector, paginator, incremental)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest

from lifecycle.extract import extract
from lifecycle.sources_file import parse_sources
from tests.conftest import cli_env, interruptible, make_settings

PEOPLE = [
    {"person_id": f"P{i}", "contact": {"email": f"p{i}@example.com"},
     "address": {"country": "PT"}, "modified": f"2024-01-0{1 + i % 3}T12:00:00Z"}
    for i in range(5)
]  # fmt: skip
PAGE = 2
TOKEN = "tok-rest-test"


class _Api(BaseHTTPRequestHandler):
    """GET /api/v2/people?since&until&page_token, bearer token, two records a page."""

    seen: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).seen.append(query)
        if url.path != "/api/v2/people" or self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(404 if url.path != "/api/v2/people" else 401)
            self.end_headers()
            return
        rows = [
            p
            for p in PEOPLE
            if query.get("since", "") < p["modified"] <= query["until"].replace(".000000", "")
        ]
        start = int(query.get("page_token", 0))
        body: dict = {"data": {"items": rows[start : start + PAGE]}}
        if start + PAGE < len(rows):
            body["meta"] = {"next": str(start + PAGE)}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Api.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _sources(base_url: str):
    return parse_sources(
        {
            "version": 1,
            "connections": {"crm": {"token_env": "CRM_TOKEN"}},
            "sources": {
                "crm": {
                    "kind": "rest",
                    "base_url": base_url,
                    "connection": "crm",
                    "endpoint": {
                        "path": "api/v2/people",
                        "params": {"fields": "all"},
                        "data_selector": "data.items",
                        "paginator": {"cursor_path": "meta.next", "cursor_param": "page_token"},
                        "incremental": {"start_param": "since", "end_param": "until"},
                    },
                    "entities": {
                        "contacts": {
                            "columns": {
                                "id": "person_id",
                                "email": "contact.email",
                                "country": "address.country",
                                "updated_at": "modified",
                            }
                        }
                    },
                }
            },
        },
        "sources.yml",
    )


def test_rest_endpoint_block_drives_paths_pages_and_window(
    tmp_path: Path, fresh_db: str, api: str
) -> None:
    s = make_settings(tmp_path / "home", LIFECYCLE_WAREHOUSE_URL=fresh_db, CRM_TOKEN=TOKEN)
    sources = _sources(api)
    first = extract("crm", dt.date(2024, 1, 2), s, sources=sources)[0]
    # Up to the end of Jan 2: P0, P1, P3, P4 (P2 is of Jan 3), two records a page.
    assert first.rows_loaded == 4
    assert [q.get("page_token") for q in _Api.seen] == [None, "2"]
    assert all(q["fields"] == "all" and "since" not in q for q in _Api.seen)
    _Api.seen = []
    second = extract("crm", dt.date(2024, 1, 3), s, sources=sources)[0]
    assert second.rows_loaded == 1
    # the window [Jan 3, Jan 4) asked as (since, until] = (start - 1 us, end - 1 us]
    assert _Api.seen[0]["since"] == "2024-01-02T23:59:59.999999Z"
    assert _Api.seen[0]["until"] == "2024-01-03T23:59:59.999999Z"
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute(
            "select id, email, country, _extra::text from raw.crm__contacts order by id"
        ).fetchall()
    assert rows == [(f"P{i}", f"p{i}@example.com", "PT", None) for i in range(5)]


def test_ctrl_c_while_an_api_that_is_down_is_retried_ends_the_load_at_once(
    tmp_path: Path, fresh_db: str
) -> None:
    """The retries' backoff (about 90 s against a closed port) ran on the reader's thread,
    which the interrupted load waited for: Ctrl-C took effect 87 s later."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    doc = {
        "version": 1,
        "connections": {"crm": {"token_env": "CRM_TOKEN"}},
        "sources": {
            "crm": {
                "kind": "rest",
                "base_url": "http://127.0.0.1:1",
                "connection": "crm",
                "endpoint": {"path": "people", "data_selector": "items"},
                "entities": {"contacts": {"columns": {"id": "id", "updated_at": "modified"}}},
            }
        },
    }
    (tmp_path / "sources.yml").write_text(yaml.safe_dump(doc))
    env = cli_env(
        LIFECYCLE_HOME=str(tmp_path / "home"),
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_SOURCES_FILE=str(tmp_path / "sources.yml"),
        CRM_TOKEN="tok-123456",
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "lifecycle"), "extract", "--date", "2024-03-31",
         "--source", "crm"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )  # fmt: skip
    try:
        time.sleep(6)  # started, and retrying
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert waited < 10, waited
