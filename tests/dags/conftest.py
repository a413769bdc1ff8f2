"""Fixtures for the DAG tests: a real local Airflow home, scratch warehouses, a sample world.

Airflow reads ``AIRFLOW_HOME`` once, when it is first imported, so the session fixture
:func:`airflow_cfg` points this process at a private Airflow home (SQLite metadata,
migrated once per session) before anything imports Airflow. The DAG runs themselves go
through :func:`lifecycle.orchestration.runner.run_dates` (``dag.test()``), in-process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from lifecycle import warehouse as wh
from lifecycle.orchestration.config import OrchestrationSettings, load_orchestration_settings
from lifecycle.settings import Settings, load_settings
from tests.conftest import BUILD_NUMBERS
from tests.conftest import scratch_database as shared_scratch

#: The small sample world of these tests and the three days the DAG runs for.
WORLD_START, WORLD_END = dt.date(2024, 1, 1), dt.date(2024, 3, 31)
DAYS = [dt.date(2024, 3, 29), dt.date(2024, 3, 30), dt.date(2024, 3, 31)]
#: Schemas compared between runs (``ops`` holds run logs with wall-clock times).
COMPARED_SCHEMAS = ("raw", "staging", "intermediate", "marts", "ml", "activation")


@pytest.fixture(scope="session")
def lifecycle_home() -> Iterator[Path]:
    """LIFECYCLE_HOME of the DAG tests: holds the local Airflow home and dbt's target/."""
    home = Path(tempfile.mkdtemp(prefix="lifecycle-dags-"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_cfg(lifecycle_home: Path) -> Iterator[OrchestrationSettings]:
    """The local Airflow of this session: activated in this process and migrated."""
    import logging

    from lifecycle.orchestration import home

    handlers = list(logging.getLogger().handlers)
    cfg = load_orchestration_settings(load_settings({"LIFECYCLE_HOME": str(lifecycle_home)}), {})
    home.ensure_initialized(cfg)
    yield cfg
    # Airflow points the root logger at the stdout pytest captured, which pytest closes
    # before exit hooks (the embedded server's) log: drop the handlers Airflow added.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@contextmanager
def lifecycle_env(**values: str) -> Iterator[dict[str, str]]:
    """Set exactly `values` as the LIFECYCLE_* environment (others removed) and cwd to a
    folder without a ``.env``; restore both afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("LIFECYCLE_")}
    cwd = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="lifecycle-cwd-")
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    os.chdir(scratch)
    try:
        yield values
    finally:
        os.chdir(cwd)
        for key in [k for k in os.environ if k.startswith("LIFECYCLE_")]:
            del os.environ[key]
        os.environ.update(saved)
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def scratch_database(embedded_settings: Settings, prefix: str = "t_dag") -> Iterator[str]:
    """Yield the URL of a new database on the embedded server, dropped afterwards."""
    with shared_scratch(wh.warehouse_url(embedded_settings, start=False), prefix) as url:
        yield url


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated sample world (300 people, Q1 2024)."""
    from lifecycle.sample.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("dag-world") / "world"
    generate_world(WorldConfig(customers=300, start=WORLD_START, end=WORLD_END, seed=7), out)
    return out


def compared_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """Return the columns of `schema.table` that runs must reproduce: all but load times
    and build numbers."""
    return [
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = %s "
            "and table_name = %s and column_name not like '%%loaded\\_at' "
            "and column_name <> all(%s) order by ordinal_position",
            (schema, table, list(BUILD_NUMBERS)),
        )
    ]


def table_checksums(url: str, schemas: tuple[str, ...] = COMPARED_SCHEMAS) -> dict[str, tuple]:
    """Return (row count, md5 of all rows) per table of `schemas`.

    Load-time columns (``_loaded_at``, and dbt's ``max_loaded_at`` derived from it) are left
    out: they say when a row was loaded, which by design differs between a backfill and the
    original runs. Everything else must be equal.
    """
    out: dict[str, tuple] = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema = any(%s) and table_type = 'BASE TABLE' order by 1, 2",
            (list(schemas),),
        ).fetchall()
        for schema, table in tables:
            cols = compared_columns(conn, schema, table)
            select = ", ".join(f'"{c}"' for c in cols)
            out[f"{schema}.{table}"] = conn.execute(
                f"select count(*), md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
                f'from (select {select} from "{schema}"."{table}") t'
            ).fetchone()
    return out


#: Append-only logs of attempts (every rerun adds its row, by design): not compared.
LOG_TABLES = ("activation.export_log", "activation.push_log")


def file_digests(root: Path) -> dict[str, str]:
    """Return the sha256 of every file under `root`, by its relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_state(url: str, exports: Path) -> tuple[dict, dict]:
    """Return what a run must reproduce: the tables' checksums (logs aside) and the exports."""
    sums = {k: v for k, v in table_checksums(url).items() if k not in LOG_TABLES}
    return sums, file_digests(exports)
