"""Fixtures for the quality gates: a sample world landed and built, cloned per test.

The world (600 people, Jan–Mar 2024) is landed day by day by the real loader from
2024-03-20 (a full first load) to :data:`DAY`, so raw holds a week and more of one-day
batches to compare the day's row counts with. The marts of the day before are built and
published, and the marts of :data:`DAY` are built into ``marts__build`` but not yet
published: the state a daily run is in when the marts gate runs. That database is the
template every test clones (``create database ... template``), so each broken input is
applied to a fresh copy.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from lifecycle import warehouse as wh
from lifecycle.sample.world import WorldConfig, generate_world
from lifecycle.settings import Settings
from lifecycle.transform import transform
from tests.conftest import make_settings
from tests.transform.conftest import land

#: The logical date under test, the day before it, and the first (full) load.
DAY = dt.date(2024, 3, 31)
PREVIOUS = DAY - dt.timedelta(days=1)
FIRST = dt.date(2024, 3, 20)


def settings_for(home: Path, url: str, world: Path) -> Settings:
    """Settings that land `world` into the warehouse at `url`."""
    return make_settings(
        home,
        LIFECYCLE_WAREHOUSE_URL=url,
        LIFECYCLE_WORLD_DIR=str(world),
        LIFECYCLE_EXPORT_DIR=str(home / "exports"),
    )


@pytest.fixture(scope="session")
def quality_home() -> Iterator[Path]:
    """LIFECYCLE_HOME of the quality tests (dbt target, exports)."""
    home = Path(tempfile.mkdtemp(prefix="lifecycle-quality-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _drop(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def template(embedded_settings, quality_home, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(URL, world dir) of a warehouse at the marts gate of DAY; never modified by tests."""
    world = tmp_path_factory.mktemp("quality-world")
    generate_world(WorldConfig(customers=600, start=dt.date(2024, 1, 1), end=DAY, seed=5), world)
    server = wh.warehouse_url(embedded_settings, start=False)
    admin = wh.with_database(server, "postgres")
    name = f"t_quality_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = wh.with_database(server, name)
    try:
        wh.bootstrap(url)
        settings = settings_for(quality_home, url, world)
        day = FIRST
        while day <= DAY:
            land(settings, day, full=day == FIRST)
            if day == PREVIOUS:
                transform(day, settings, quiet=True)  # built and published
            day += dt.timedelta(days=1)
        transform(DAY, settings, quiet=True, publish=False)  # waiting for the gate
        yield url, world
    finally:
        _drop(admin, name)


@contextmanager
def cloned(template_url: str) -> Iterator[str]:
    """Yield the URL of a copy of the template database, dropped afterwards."""
    admin = wh.with_database(template_url, "postgres")
    source = psycopg.conninfo.conninfo_to_dict(template_url)["dbname"]
    name = f"t_qclone_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        # no session may be connected to a template while it is copied
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
            (source,),
        )
        conn.execute(f'create database "{name}" template "{source}"')
    try:
        yield wh.with_database(template_url, name)
    finally:
        _drop(admin, name)


@pytest.fixture
def warehouse(template, quality_home) -> Iterator[tuple[str, Settings]]:
    """(URL, settings) of a fresh copy of the template warehouse."""
    url, world = template
    with cloned(url) as clone:
        yield clone, settings_for(quality_home, clone, world)


def execute(url: str, statement: str, params: tuple = ()) -> int:
    """Run one statement (test data edits) and return the rows it touched."""
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params).rowcount


def marts_checksums(url: str) -> dict[str, tuple[int, str]]:
    """Return {relation: (oid, md5 of every row as text, in order)} of everything in marts."""
    with psycopg.connect(url) as conn:
        rels = conn.execute(
            "select c.relname, c.oid::int from pg_class c join pg_namespace n "
            "on n.oid = c.relnamespace where n.nspname = 'marts' and c.relkind in ('r', 'v') "
            "order by 1"
        ).fetchall()
        out = {}
        for name, oid in rels:
            digest = conn.execute(
                f"select md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
                f'from marts."{name}" as t'
            ).fetchone()[0]
            out[name] = (oid, digest)
        return out
