"""What the warehouse benches share: a scratch state folder and database, a world, landing.

``scratch_warehouse(name)`` makes a temporary state folder, starts the embedded
PostgreSQL there (or uses the server of LIFECYCLE_WAREHOUSE_URL when it is set) and
creates a database of its own on it; on exit it drops the database, stops the embedded
server and removes the folder, whatever happened inside. ``kept_warehouse(state)`` opens
instead the kept state folder of ``bench/bench_pipeline.py --keep`` as it was built.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.extract import SOURCES, extract  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)


@contextlib.contextmanager
def scratch_warehouse(name: str) -> Iterator[tuple[Path, str]]:
    """Yield (a scratch folder, the URL of a new database) and clean both up after."""
    tmp = Path(tempfile.mkdtemp(prefix=f"lifecycle-bench-{name}-"))
    tmp.chmod(0o755)
    external = os.environ.get("LIFECYCLE_WAREHOUSE_URL")
    server = load_settings(
        {"LIFECYCLE_HOME": str(tmp / "home")}
        | ({"LIFECYCLE_WAREHOUSE_URL": external} if external else {})
    )
    dbname = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    admin = None
    try:
        base = wh.up(server)
        admin = wh.with_database(base, "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'create database "{dbname}"')
        yield tmp, wh.with_database(base, dbname)
    finally:
        if admin:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{dbname}" with (force)')
        if not external:
            wh.down(server)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def kept_warehouse(state: Path) -> Iterator:
    """Yield the settings of a kept bench_pipeline state folder, its embedded PostgreSQL
    started (and stopped on exit) and its environment set."""
    from lifecycle.settings import environment

    env = {"LIFECYCLE_HOME": str(state / "home"), "LIFECYCLE_WORLD_DIR": str(state / "world")}
    with environment(env):
        settings = load_settings()
        wh.up(settings)
        try:
            yield settings
        finally:
            wh.down(settings)


def bench_env(tmp: Path, url: str, world: Path) -> dict[str, str]:
    """The settings environment of a bench: its state folder, database and world."""
    return {
        "LIFECYCLE_HOME": str(tmp / "home"),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_WORLD_DIR": str(world),
    }


def make_world(customers: int, out: Path) -> Path:
    """Generate a sample world of `customers` people over START..END into `out`."""
    from lifecycle.sample.world import WorldConfig, generate_world

    t0 = time.perf_counter()
    summary = generate_world(WorldConfig(customers=customers, start=START, end=END), out)
    print(f"generated   {summary} in {time.perf_counter() - t0:.1f}s")
    return out


def land(settings, day: dt.date, full: bool, verbose: bool = False) -> float:
    """Extract every source for `day` (`full`: everything up to it); return the seconds."""
    t0 = time.perf_counter()
    for source in SOURCES:
        for res in extract(source, day, settings, full=full):
            if verbose:
                print(f"  {res.describe()}")
    return time.perf_counter() - t0
