"""The incremental web aggregates: a day recomputes only the sessions with new events and
merges the new events into their devices' identities and visitor rows, with a full
refresh's result."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from lifecycle.privacy import Request, apply_pending, file_requests
from lifecycle.transform import transform
from tests.transform.conftest import (
    land,
    rows,
    scratch_database,
    settings_for,
    snapshot,
    write,
    write_events,
)

D1, D2 = dt.date(2024, 6, 29), dt.date(2024, 6, 30)
ORDERS = "customer_id,order_id,ordered_at,amount\nU1,O1,2024-06-01T10:00:00Z,10.00\n"
SESSION_DAYS = "intermediate.int_web_session_days_aggregated"
IDENTITIES = "intermediate.int_web_identities_observed"
VISITORS = "intermediate.int_web_visitors_aggregated"
TABLES = (SESSION_DAYS, IDENTITIES, VISITORS)


def _xmins(url: str, table: str, where: str) -> list[tuple]:
    """Return the rows' transaction ids: a row a build did not rewrite keeps its own."""
    return rows(url, f"select xmin::text::bigint from {table} where {where} order by 1")


@pytest.fixture(scope="module")
def world(embedded_settings, dbt_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("web_aggregates")
    write(root / "orders/orders.csv", ORDERS)
    web = root / "web/events"
    write_events(
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
        {
            "event_id": "e11",
            "anonymous_id": "A3",
            "session_id": "S5",
            "utm_source": "newsletter",
            "utm_medium": "email",
            "at": "2024-06-29T12:00:00Z",
        },
    )
    with scratch_database(embedded_settings) as url:
        settings = settings_for(dbt_home, url, root)
        land(settings, D1, full=True, sources=("orders", "web"))
        assert transform(D1, settings, quiet=True).success
        before = {
            "untouched": _xmins(url, SESSION_DAYS, "session_key in ('S2', 'S3', 'e4')"),
            "device_less": _xmins(url, IDENTITIES, "device_key = 'event:e5'"),
            "other_visitor": _xmins(url, VISITORS, "anonymous_id = 'A2'"),
        }
        write_events(
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
                "event": "signed_up",
                "utm_source": "google",
                "utm_medium": "cpc",
                "at": "2024-06-29T09:00:00Z",
                "received": "2024-06-30T08:00:00Z",
            },
            # late too, at the very time of A3's first event: the first by event_id
            {
                "event_id": "e0",
                "anonymous_id": "A3",
                "session_id": "S5",
                "utm_source": "partner",
                "at": "2024-06-29T12:00:00Z",
                "received": "2024-06-30T07:00:00Z",
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
        built = {t: snapshot(url, t) for t in TABLES}
        after = {
            "untouched": _xmins(url, SESSION_DAYS, "session_key in ('S2', 'S3', 'e4')"),
            "device_less": _xmins(url, IDENTITIES, "device_key = 'event:e5'"),
            "other_visitor": _xmins(url, VISITORS, "anonymous_id = 'A2'"),
        }
        assert transform(D2, settings, quiet=True).success
        rerun = {t: snapshot(url, t) for t in TABLES}
        assert transform(D2, settings, full_refresh=True, quiet=True).success
        full = {t: snapshot(url, t) for t in TABLES}
        yield url, before, after, built, rerun, full, settings


def test_a_day_gives_the_full_refresh_rows_and_a_rerun_changes_nothing(world) -> None:
    _, _, _, built, rerun, full, _ = world
    assert built == full
    assert rerun == full


def test_a_day_rewrites_only_the_sessions_with_newwrite_events(world) -> None:
    """Sessions S2 and e4 of device A1, which had new events in S1 and S4, and the other
    device's session S3 keep the rows an earlier build wrote; so does the identity of a
    device without new events."""
    _, before, after, *_ = world
    assert len(before["untouched"]) == 3 and len(before["device_less"]) == 1
    assert after == before


def test_the_session_days_count_late_and_device_lesswrite_events(world) -> None:
    url = world[0]
    got = rows(
        url,
        f"select device_key, session_key, event_date, visible_date, user_id, has_session_id, "
        f"count_events, count_product_views, count_carts from {SESSION_DAYS} "
        f"order by 1, 2, 3, 4",
    )
    assert got == [
        ("A1", "S1", D1, D1, "U1", True, 2, 0, 0),
        ("A1", "S1", D1, D2, "U1", True, 2, 0, 1),  # the late cart and the late sign-up
        ("A1", "S2", D1, D1, None, True, 1, 1, 0),
        ("A1", "S4", D2, D2, None, True, 1, 0, 0),
        ("A1", "e4", D1, D1, None, False, 1, 0, 0),
        ("A2", "S3", D1, D1, None, True, 1, 0, 0),
        ("A3", "S5", D1, D1, None, True, 1, 0, 0),
        ("A3", "S5", D1, D2, None, True, 1, 0, 0),
        ("session:S9", "S9", D1, D1, "U1", True, 1, 0, 0),
        ("session:S9", "S9", D2, D2, None, True, 1, 0, 0),
    ]


def test_a_visitor_row_takes_a_late_earlier_first_touch_and_counts_sessions(world) -> None:
    url = world[0]
    got = rows(
        url,
        f"select anonymous_id, first_event_at, first_event_id, last_event_at, count_events, "
        f"count_sessions, signed_up_at, first_utm_source from {VISITORS} order by 1",
    )
    at = lambda day, h, m=0: dt.datetime(2024, 6, day, h, m, tzinfo=dt.UTC)  # noqa: E731
    assert got == [
        # e8 arrived a day late but happened first; e4 (no session) is not a session
        ("A1", at(29, 9), "e8", at(30, 9), 7, 3, at(29, 9), "google"),
        ("A2", at(29, 18), "e6", at(29, 18), 1, 1, None, None),
        # e0 happened at the very time of e11: the first by event_id
        ("A3", at(29, 12), "e0", at(29, 12), 2, 1, None, "partner"),
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


def test_tables_of_the_release_before_are_rebuilt_whole_once(world) -> None:
    """Session days without has_session_id and visitors without first_event_id (as the
    release before built them, here with stale counts): the next build rebuilds both whole,
    and the build after merges again."""
    url, *_, settings = world
    full = {t: snapshot(url, t, by_name=True) for t in TABLES}
    with psycopg.connect(url) as conn:
        conn.execute(f"alter table {SESSION_DAYS} drop column has_session_id")
        conn.execute(f"alter table {VISITORS} drop column first_event_id")
        conn.execute(f"update {VISITORS} set count_events = 0, count_sessions = 0")
    assert transform(D2, settings, quiet=True).success
    assert {t: snapshot(url, t, by_name=True) for t in TABLES} == full
    untouched = _xmins(url, VISITORS, "true")
    assert transform(D2, settings, quiet=True).success
    assert _xmins(url, VISITORS, "true") == untouched  # no new events: nothing rewritten


def test_an_erasure_of_web_events_gives_the_full_refresh_rows(world) -> None:
    """U2 signs in on A1, U1's device, on a third day, another device has events on a fourth;
    then U1 is forgotten. The sweep
    removes U1's events and the aggregate rows that name U1 or their devices, while U2's
    event on A1 stays: a build merging A1's rows would have lost or kept what a full
    refresh rebuilds from the remaining events. The aggregates are dropped instead and the
    next build rebuilds them whole. Runs last: it changes the world."""
    url, *_, settings = world
    d3 = D2 + dt.timedelta(days=1)
    write_events(
        settings.world_dir / f"web/events/dt={d3}/part-0000-arrived-20240701.jsonl.gz",
        {
            "event_id": "e12",
            "anonymous_id": "A1",
            "session_id": "S6",
            "user_id": "U2",
            "event": "logged_in",
            "at": "2024-07-01T10:00:00Z",
        },
    )
    land(settings, d3, sources=("web",))
    assert transform(d3, settings, quiet=True).success
    # a later load elsewhere: the builds' watermarks are past U2's event from now on
    d4 = d3 + dt.timedelta(days=1)
    write_events(
        settings.world_dir / f"web/events/dt={d4}/part-0000-arrived-20240702.jsonl.gz",
        {"event_id": "e13", "anonymous_id": "A2", "session_id": "S7", "at": "2024-07-02T10:00:00Z"},
    )
    land(settings, d4, sources=("web",))
    assert transform(d4, settings, quiet=True).success
    key = "web-aggregates-erasure-key-0123456789"
    with psycopg.connect(url) as conn:
        file_requests(conn, key, [Request("customer_id", "U1")])
    applied = apply_pending(url, {"LIFECYCLE_ERASURE_SECRET": key}, None)
    assert applied.rebuilt == list(TABLES)
    assert "3 web aggregate table(s) dropped" in applied.summary()
    assert transform(d4, settings, quiet=True).success
    built = {t: snapshot(url, t) for t in TABLES}
    assert rows(url, f"select anonymous_id, count_events from {VISITORS} order by 1") == [
        ("A1", 1),  # U2's sign-in alone
        ("A2", 2),
        ("A3", 2),
    ]
    assert transform(d4, settings, full_refresh=True, quiet=True).success
    assert built == {t: snapshot(url, t) for t in TABLES}
