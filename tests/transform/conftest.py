"""Fixtures for the dbt project's tests: scratch warehouses, raw data landed by the real loader."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from lifecycle import warehouse as wh
from lifecycle.extract import extract
from lifecycle.settings import Settings
from tests.conftest import BUILD_NUMBERS, make_settings, write_file
from tests.conftest import scratch_database as shared_scratch

SOURCES = ("crm", "web", "orders", "marketing")


@pytest.fixture(scope="session")
def dbt_home() -> Iterator[Path]:
    """LIFECYCLE_HOME shared by the dbt tests: one dbt target/ (and parsed manifest) per session."""
    home = Path(tempfile.mkdtemp(prefix="lifecycle-dbt-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def scratch_database(embedded_settings: Settings) -> Iterator[str]:
    """Yield the URL of a new database on the embedded server, dropped afterwards."""
    with shared_scratch(wh.warehouse_url(embedded_settings, start=False), "t_dbt") as url:
        yield url


def settings_for(home: Path, url: str, world: Path) -> Settings:
    """Settings that land `world`'s files in the warehouse at `url`."""
    return make_settings(home, LIFECYCLE_WAREHOUSE_URL=url, LIFECYCLE_WORLD_DIR=str(world))


def land(settings: Settings, day: dt.date, *, full: bool = False, sources=SOURCES) -> None:
    """Extract every source for `day` into raw with the real loader."""
    for source in sources:
        extract(source, day, settings, full=full)


def write(path: Path, text: str) -> Path:
    """Write `text` to `path`, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_events(path: Path, *events: dict) -> None:
    """Write tracker events as a gzipped JSON-lines file: each needs event_id and `at`
    (its timestamp); `received` defaults to `at`, `event` to page_viewed, and the ids and
    UTM fields (anonymous_id, user_id, session_id, utm_source, utm_medium) to null."""
    lines = [
        json.dumps(
            {
                "event_id": e["event_id"],
                "anonymous_id": e.get("anonymous_id"),
                "user_id": e.get("user_id"),
                "event": e.get("event", "page_viewed"),
                "timestamp": e["at"],
                "received_at": e.get("received", e["at"]),
                "session_id": e.get("session_id"),
                "utm_source": e.get("utm_source"),
                "utm_medium": e.get("utm_medium"),
            }
        )
        for e in events
    ]
    write_file(path, gzip.compress(("\n".join(lines) + "\n").encode()))


def rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Return the rows of a query."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def snapshot(
    url: str, relation: str, exclude: tuple[str, ...] = (), *, by_name: bool = False
) -> list[tuple]:
    """Every row of `relation` (schema.table) as text, in a stable order (build numbers
    left out); `by_name`: columns in name order, not the table's (an upgraded table has
    the columns a release added last)."""
    schema, table = relation.split(".")
    with psycopg.connect(url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns "
                "where table_schema = %s and table_name = %s order by ordinal_position",
                (schema, table),
            )
            if r[0] not in (*exclude, *BUILD_NUMBERS)
        ]
        assert cols, f"{relation} has no columns (does it exist?)"
        if by_name:
            cols.sort()
        select = ", ".join(f'"{c}"::text' for c in cols)
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        return conn.execute(f"select {select} from {relation} order by {order}").fetchall()
