"""The append-only web staging table: each build's data tests read the rows it appended."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from lifecycle.transform import TransformResult, transform
from tests.transform.conftest import (
    land,
    rows,
    scratch_database,
    settings_for,
    write,
    write_events,
)

D1, D2 = dt.date(2024, 6, 29), dt.date(2024, 6, 30)
ORDERS = "customer_id,order_id,ordered_at,amount\nC1,O1,2024-06-01T10:00:00Z,10.00\n"


def _events(path, *names: tuple[str, str]) -> None:
    """Events of device A1 and session S1 at 10:00 of the day of the file's folder."""
    day = path.parent.name[3:]
    write_events(
        path,
        *(
            {
                "event_id": event_id,
                "anonymous_id": "A1",
                "event": name,
                "at": f"{day}T10:00:00Z",
                "received": f"{day}T10:00:05Z",
                "session_id": "S1",
            }
            for event_id, name in names
        ),
    )


def _event_names_test(result: TransformResult):
    [node] = [
        n
        for n in result.nodes
        if n.unique_id.startswith("test.lifecycle.accepted_values_stg_web__events_event_name")
    ]
    return node


@pytest.fixture(scope="module")
def world(embedded_settings, dbt_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("web_staging")
    write(root / "orders/orders.csv", ORDERS)
    web = root / "web/events"
    _events(
        web / f"dt={D1}/part-0000-arrived-20240629.jsonl.gz",
        ("e1", "page_viewed"),
        ("e2", "signed_up"),
    )
    with scratch_database(embedded_settings) as url:
        settings = settings_for(dbt_home, url, root)
        land(settings, D1, full=True, sources=("orders", "web"))
        yield url, settings, web


def test_a_daily_build_checks_the_events_it_appended_and_a_full_refresh_every_one(world):
    url, settings, web = world
    first = transform(D1, settings, quiet=True)
    assert first.success
    assert (_event_names_test(first).status, _event_names_test(first).failures) == ("pass", 0)
    # a row kept by an earlier build (as if an older release had let it through)
    with psycopg.connect(url) as conn:
        conn.execute("update raw.web__events set event = 'teleported' where event_id = 'e1'")
        conn.execute(
            "update staging.stg_web__events set event_name = 'teleported' where event_id = 'e1'"
        )
    _events(
        web / f"dt={D2}/part-0000-arrived-20240630.jsonl.gz",
        ("e3", "beamed_up"),
        ("e4", "page_viewed"),
    )
    land(settings, D2, sources=("web",))

    day = transform(D2, settings, quiet=True)
    node = _event_names_test(day)
    assert (node.status, node.failures) == ("warn", 1)  # beamed_up alone: this build's rows
    built = rows(
        url, "select event_id, _built_at is not null from staging.stg_web__events order by 1"
    )
    assert built == [("e1", True), ("e2", True), ("e3", True), ("e4", True)]
    assert rows(url, "select count(distinct _built_at) from staging.stg_web__events") == [(2,)]

    rerun = transform(D2, settings, quiet=True)  # nothing new to append: nothing to check
    node = _event_names_test(rerun)
    assert (node.status, node.failures) == ("pass", 0)

    full = transform(D2, settings, full_refresh=True, quiet=True)
    node = _event_names_test(full)
    assert (node.status, node.failures) == ("warn", 2)  # every row: teleported, beamed_up
    assert rows(url, "select count(distinct _built_at) from staging.stg_web__events") == [(1,)]


def test_a_table_of_the_release_before_gains_the_build_column_on_its_next_build(world):
    """A web staging table built before `_built_at` existed: the next daily build adds the
    column (null on the rows kept before), appends and checks the day's rows, and the
    build after it has the column's index too."""
    url, settings, web = world
    assert transform(D2, settings, full_refresh=True, quiet=True).success
    with psycopg.connect(url) as conn:  # as the release before left it
        conn.execute("alter table staging.stg_web__events drop column _built_at")
    _events(web / f"dt={D2}/part-0001-arrived-20240630.jsonl.gz", ("e5", "beamed_up"))
    land(settings, D2, sources=("web",))

    day = transform(D2, settings, quiet=True)
    assert day.success, [n.message for n in day.failed]
    node = _event_names_test(day)
    assert (node.status, node.failures) == ("warn", 1)  # e5 alone
    assert rows(
        url, "select event_id from staging.stg_web__events where _built_at is not null"
    ) == [("e5",)]
    assert transform(D2, settings, quiet=True).success
    indexed = rows(
        url,
        "select count(*) from pg_indexes where schemaname = 'staging' "
        "and tablename = 'stg_web__events' and indexdef like '%%btree (_built_at)'",
    )
    assert indexed == [(1,)]


def test_the_device_index_of_the_release_before_gives_way_to_the_session_index(world):
    """An upgraded warehouse has the (anonymous_id) index of the release before: the next
    build creates the (anonymous_id, session_id) index and drops the one it supersedes."""
    url, settings, _ = world
    indexes = (
        "select regexp_replace(indexdef, '.* USING ', '') from pg_indexes "
        "where schemaname = 'staging' and tablename = 'stg_web__events' "
        "and indexdef like '%%anonymous_id%%' order by 1"
    )
    with psycopg.connect(url) as conn:
        conn.execute("create index on staging.stg_web__events (anonymous_id)")
        conn.execute("create unique index on staging.stg_web__events (anonymous_id, event_id)")
    assert len(rows(url, indexes)) == 3
    assert transform(D2, settings, quiet=True).success
    # the old index is gone; an index of somebody else's (here a unique one) is kept
    assert rows(url, indexes) == [
        ("btree (anonymous_id, event_id)",),
        ("btree (anonymous_id, session_id)",),
    ]


def test_the_block_range_index_of_the_release_before_gives_way_to_a_btree(world):
    """The release before indexed `_built_at` by block range, which matched most of the
    table (a day's narrow rows land in the free space of earlier pages): one build of an
    upgraded warehouse creates the btree index and drops the block-range one."""
    url, settings, _ = world
    indexes = (
        "select regexp_replace(indexdef, '.* USING ', '') from pg_indexes "
        "where schemaname = 'staging' and tablename = 'stg_web__events' "
        "and indexdef like '%%(_built_at)' order by 1"
    )
    assert rows(url, indexes) == [("btree (_built_at)",)]
    with psycopg.connect(url) as conn:  # as the release before left it
        for (name,) in conn.execute(
            "select indexname from pg_indexes where schemaname = 'staging' "
            "and tablename = 'stg_web__events' and indexdef like '%%(_built_at)'"
        ).fetchall():
            conn.execute(f'drop index staging."{name}"')
        conn.execute("create index on staging.stg_web__events using brin (_built_at)")
    assert rows(url, indexes) == [("brin (_built_at)",)]
    assert transform(D2, settings, quiet=True).success
    assert rows(url, indexes) == [("btree (_built_at)",)]
