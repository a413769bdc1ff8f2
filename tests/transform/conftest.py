"""Fixtures for the dbt project's tests: scratch warehouses, raw data landed by the real loader."""

from __future__ import annotations

import datetime as dt
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
from tests.conftest import BUILD_NUMBERS, make_settings
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


def rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Return the rows of a query."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def snapshot(url: str, relation: str, exclude: tuple[str, ...] = ()) -> list[tuple]:
    """Every row of `relation` (schema.table) as text, in a stable order (build numbers
    left out)."""
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
        select = ", ".join(f'"{c}"::text' for c in cols)
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        return conn.execute(f"select {select} from {relation} order by {order}").fetchall()
