"""HTTP push and redirects: members' data never follows a redirect to a host not allowed.

Two real servers on loopback: the campaign tool's endpoint answers 307/308/302 pointing
at a second server (another port, or ``localhost`` for another host name). The second
server must receive nothing unless its host is allow-listed; every refusal is recorded
in ``activation.push_log`` and raised as one PushError naming both URLs.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest

from lifecycle.activation.audiences import Push
from lifecycle.activation.push import MAX_REDIRECTS, PushError, push_audience, redirect_refusal
from lifecycle.activation.tables import ensure_activation_tables
from tests.adversarial.hostile_http import Request, serve

DAY = dt.date(2024, 6, 30)
TOKEN = "push-tok-9Jx2-secret"
ROWS = [
    {"customer_key": f"k{i:03d}", "email": f"p{i}@example.com", "first_name": "Zoë"}
    for i in range(12)
]
HOSTS = "LIFECYCLE_PUSH_REDIRECT_HOSTS"
OK = (200, {"Content-Type": "application/json"}, b'{"ok": true}')


def redirect(status: int, location: str):
    return lambda r: (status, {"Location": location}, b"")


def push(conn, url: str, **kw):
    return push_audience(
        conn,
        "vip",
        DAY,
        Push(url, 5),
        send_rows=ROWS,
        add_rows=ROWS,
        remove_rows=[],
        run_id="r",
        token=TOKEN,
        retries=0,
        backoff_s=0.0,
        **kw,
    )


@pytest.fixture
def conn(fresh_db):
    with psycopg.connect(fresh_db, autocommit=True) as c:
        ensure_activation_tables(c)
        yield c


def _log(conn) -> list[tuple]:
    return conn.execute(
        "select batch_no, status, http_status, error from activation.push_log order by 1"
    ).fetchall()


@pytest.mark.parametrize(
    ("status", "host", "why"),
    [
        (307, "127.0.0.1", "127.0.0.1:{port} is another host, not listed in " + HOSTS),
        (308, "127.0.0.1", "127.0.0.1:{port} is another host, not listed in " + HOSTS),
        (307, "localhost", "localhost:{port} is another host, not listed in " + HOSTS),
        (302, "127.0.0.1", "a 302 redirect would turn the POST into a GET"),
        (303, "127.0.0.1", "a 303 redirect would turn the POST into a GET"),
        (301, "127.0.0.1", "a 301 redirect would turn the POST into a GET"),
    ],
)
def test_a_redirect_to_another_host_sends_nothing_there(conn, status, host, why) -> None:
    with serve(lambda r: OK) as (other, got):
        port = other.rsplit(":", 1)[1]
        target = f"http://{host}:{port}/steal"
        with serve(redirect(status, target)) as (url, asked), pytest.raises(PushError) as err:
            push(conn, f"{url}/import")
    assert got.requests == []  # not one member's email reached the other server
    assert len(asked.requests) == 1  # the first batch was refused, nothing more was tried
    assert str(err.value) == (
        f"push refused to follow the redirect ({status}) from {url}/import to {target}: "
        f"{why.format(port=port)} (audience vip {DAY} batch 0 to POST {url}/import)"
    )
    [(batch, state, http_status, error)] = _log(conn)
    assert (batch, state, http_status) == (0, "failed", status)
    assert error.startswith(f"push refused to follow the redirect ({status})")


def test_a_redirect_within_the_endpoint_is_followed(conn) -> None:
    def answer(r: Request):
        if r.path == "/import":
            return 307, {"Location": "/v2/import"}, b""
        return OK

    with serve(answer) as (url, asked):
        facts = push(conn, f"{url}/import")
    assert (facts.delivered, facts.rows_delivered) == (3, 12)
    posted = [r for r in asked.requests if r.path == "/v2/import"]
    assert len(posted) == 3 and all(json.loads(r.body)["members"] for r in posted)
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in posted)


def test_an_allow_listed_host_is_followed(conn) -> None:
    with serve(lambda r: OK) as (other, got):
        port = other.rsplit(":", 1)[1]
        with serve(redirect(307, f"{other}/import")) as (url, _):
            facts = push(conn, f"{url}/import", redirect_hosts=(f"127.0.0.1:{port}",))
    assert facts.delivered == 3 and len(got.requests) == 3
    assert sorted(
        m["customer_key"] for r in got.requests for m in json.loads(r.body)["members"]
    ) == [r["customer_key"] for r in ROWS]


def test_a_redirect_loop_stops(conn) -> None:
    with serve(redirect(307, "/import")) as (url, asked), pytest.raises(PushError) as err:
        push(conn, f"{url}/import")
    assert str(err.value).startswith(f"push stopped after {MAX_REDIRECTS} redirects at {url}")
    assert len(asked.requests) == MAX_REDIRECTS + 1


def test_the_redirect_rules() -> None:
    allowed = ("api.tool.example",)
    assert redirect_refusal("https://a.example/x", "https://a.example/y", ()) is None
    assert redirect_refusal("https://a.example/x", "https://a.example:443/y", ()) is None
    assert redirect_refusal("https://a.example/x", "http://a.example/y", ()) == (
        "the redirect leaves https"
    )
    assert redirect_refusal("https://a.example/x", "https://api.tool.example/y", allowed) is None
    assert redirect_refusal("https://a.example/x", "https://b.example/y", allowed) == (
        "b.example:443 is another host, not listed in LIFECYCLE_PUSH_REDIRECT_HOSTS"
    )
    assert redirect_refusal("https://a.example/x", "https://a.example:8443/y", ()) is not None
    assert "not to an http(s) URL" in redirect_refusal("https://a.example/x", "file:///etc/p", ())


def test_an_endpoint_that_echoes_the_token_gets_it_masked(conn) -> None:
    def answer(r: Request):
        body = {"error": "bad", "auth": r.headers["Authorization"], "raw": TOKEN}
        return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()

    with serve(answer) as (url, _), pytest.raises(PushError) as err:
        push(conn, f"{url}/import")
    assert TOKEN not in str(err.value)
    assert '"auth": "Bearer ***", "raw": "***"' in str(err.value)
    [(_, _, status, error)] = _log(conn)
    assert status == 400 and TOKEN not in error and "***" in error
