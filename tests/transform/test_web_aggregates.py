"""The incremental web aggregates: a day recomputes only the sessions with new events and
merges the new events into their devices' identities, with a full refresh's result."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from lifecycle.transform import transform
from tests.conftest import write_file
from tests.transform.conftest import land, rows, scratch_database, settings_for, snapshot, write

D1, D2 = dt.date(2024, 6, 29), dt.date(2024, 6, 30)
ORDERS = "customer_id,order_id,ordered_at,amount\nU1,O1,2024-06-01T10:00:00Z,10.00\n"
SESSION_DAYS = "intermediate.int_web_session_days_aggregated"
IDENTITIES = "intermediate.int_web_identities_observed"


def _events(path, *events: dict) -> None:
    """Write tracker events (event_id, at, received, and what differs from the defaults)."""
    lines = []
    for e in events:
        row = {
            "event_id": e["event_id"],
            "anonymous_id": e.get("anonymous_id"),
            "user_id": e.get("user_id"),
            "event": e.get("event", "page_viewed"),
            "timestamp": e["at"],
            "received_at": e.get("received", e["at"]),
            "session_id": e.get("session_id"),
        }
        lines.append(json.dumps(row))
    write_file(path, gzip.compress(("\n".join(lines) + "\n").encode()))


def _xmins(url: str, table: str, where: str) -> list[tuple]:
    """Return the rows' transaction ids: a row a build did not rewrite keeps its own."""
    return rows(url, f"select xmin::text::bigint from {table} where {where} order by 1")


@pytest.fixture(scope="module")
def world(embedded_settings, dbt_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("web_aggregates")
    write(root / "orders/orders.csv", ORDERS)
    web = root / "web/events"
    _events(
        web / f"dt={D1}/part-0000-arrived-20240629.jsonl.gz",
        # device A1: a signed-in session S1 and a product view in session S2
        {"event_id": "e1", "anonymous_id": "A1", "session_id": "S1", "at": "2024-06-29T10:00:00Z"},
        {
            "event_id": "e2",
            "anonymous_id": "A1",
            "session_id": "S1",
            "user_id": "U1",
            "event": "logged_in",
            "at": "2024-06-29T10:05:00Z",
        },
        {
            "event_id": "e3",
            "anonymous_id": "A1",
            "session_id": "S2",
            "event": "product_viewed",
            "at": "2024-06-29T15:00:00Z",
        },
        # an event without a session, one without a device, and another device
        {"event_id": "e4", "anonymous_id": "A1", "at": "2024-06-29T16:00:00Z"},
        {"event_id": "e5", "session_id": "S9", "user_id": "U1", "at": "2024-06-29T17:00:00Z"},
        {"event_id": "e6", "anonymous_id": "A2", "session_id": "S3", "at": "2024-06-29T18:00:00Z"},
    )
    with scratch_database(embedded_settings) as url:
        settings = settings_for(dbt_home, url, root)
        land(settings, D1, full=True, sources=("orders", "web"))
        assert transform(D1, settings, quiet=True).success
        before = {
            "untouched": _xmins(url, SESSION_DAYS, "session_key in ('S2', 'S3', 'e4')"),
            "device_less": _xmins(url, IDENTITIES, "device_key = 'event:e5'"),
        }
        _events(
            web / f"dt={D2}/part-0000-arrived-20240630.jsonl.gz",
            # late: S1 went on before midnight, received the next day; an earlier login too
            {
                "event_id": "e7",
                "anonymous_id": "A1",
                "session_id": "S1",
                "event": "added_to_cart",
                "at": "2024-06-29T23:50:00Z",
                "received": "2024-06-30T00:10:00Z",
            },
            {
                "event_id": "e8",
                "anonymous_id": "A1",
                "session_id": "S1",
                "user_id": "U1",
                "event": "logged_in",
                "at": "2024-06-29T09:00:00Z",
                "received": "2024-06-30T08:00:00Z",
            },
            # a new session on A1, the device-less session goes on, and a re-delivered event
            {
                "event_id": "e9",
                "anonymous_id": "A1",
                "session_id": "S4",
                "at": "2024-06-30T09:00:00Z",
            },
            {"event_id": "e10", "session_id": "S9", "at": "2024-06-30T09:30:00Z"},
            {
                "event_id": "e1",
                "anonymous_id": "A1",
                "session_id": "S1",
                "at": "2024-06-29T10:00:00Z",
            },
        )
        land(settings, D2, sources=("web",))
        day = transform(D2, settings, quiet=True)
        assert day.success
        built = {t: snapshot(url, t) for t in (SESSION_DAYS, IDENTITIES)}
        after = {
            "untouched": _xmins(url, SESSION_DAYS, "session_key in ('S2', 'S3', 'e4')"),
            "device_less": _xmins(url, IDENTITIES, "device_key = 'event:e5'"),
        }
        assert transform(D2, settings, quiet=True).success
        rerun = {t: snapshot(url, t) for t in (SESSION_DAYS, IDENTITIES)}
        assert transform(D2, settings, full_refresh=True, quiet=True).success
        full = {t: snapshot(url, t) for t in (SESSION_DAYS, IDENTITIES)}
        yield url, before, after, built, rerun, full


def test_a_day_gives_the_full_refresh_rows_and_a_rerun_changes_nothing(world) -> None:
    _, _, _, built, rerun, full = world
    assert built == full
    assert rerun == full


def test_a_day_rewrites_only_the_sessions_with_new_events(world) -> None:
    """Sessions S2 and e4 of device A1, which had new events in S1 and S4, and the other
    device's session S3 keep the rows an earlier build wrote; so does the identity of a
    device without new events."""
    _, before, after, *_ = world
    assert len(before["untouched"]) == 3 and len(before["device_less"]) == 1
    assert after == before


def test_the_session_days_count_late_and_device_less_events(world) -> None:
    url = world[0]
    got = rows(
        url,
        f"select device_key, session_key, event_date, visible_date, user_id, count_events, "
        f"count_product_views, count_carts from {SESSION_DAYS} order by 1, 2, 3, 4",
    )
    assert got == [
        ("A1", "S1", D1, D1, "U1", 2, 0, 0),
        ("A1", "S1", D1, D2, "U1", 2, 0, 1),  # the late cart and the late login
        ("A1", "S2", D1, D1, None, 1, 1, 0),
        ("A1", "S4", D2, D2, None, 1, 0, 0),
        ("A1", "e4", D1, D1, None, 1, 0, 0),
        ("A2", "S3", D1, D1, None, 1, 0, 0),
        ("session:S9", "S9", D1, D1, "U1", 1, 0, 0),
        ("session:S9", "S9", D2, D2, None, 1, 0, 0),
    ]


def test_a_late_identified_event_moves_the_first_sighting_not_the_known_date(world) -> None:
    url = world[0]
    got = rows(
        url,
        f"select device_key, user_id, first_observed_at, last_observed_at, known_date "
        f"from {IDENTITIES} order by 1, 2",
    )
    utc = dt.UTC
    assert got == [
        (
            "A1",
            "U1",
            dt.datetime(2024, 6, 29, 9, 0, tzinfo=utc),  # the login received a day late
            dt.datetime(2024, 6, 29, 10, 5, tzinfo=utc),
            D1,  # known since the first login arrived, on the 29th
        ),
        (
            "event:e5",
            "U1",
            dt.datetime(2024, 6, 29, 17, 0, tzinfo=utc),
            dt.datetime(2024, 6, 29, 17, 0, tzinfo=utc),
            D1,
        ),
    ]
