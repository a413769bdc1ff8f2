"""Shared fixtures: a real embedded PostgreSQL for the session, and the external server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from lifecycle import warehouse as wh
from lifecycle.settings import Settings, load_settings

#: The PostgreSQL server that machines with services run on 127.0.0.1:5432 (trust auth).
EXTERNAL_ADMIN_URL = os.environ.get(
    "LIFECYCLE_TEST_EXTERNAL_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def cli_env(**settings: str) -> dict[str, str]:
    """Return this process's environment without its LIFECYCLE_* settings, plus
    `settings`: what a CLI subprocess of a test runs with."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    return clean | settings


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path | str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``python -m lifecycle.cli <args>`` in a process of its own with exactly `env`;
    return it (output captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.cli", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def interruptible() -> None:
    """``preexec_fn`` of a process a test interrupts: it takes SIGINT as a terminal's
    foreground process takes Ctrl-C. A suite started in a background job (``make test &``)
    runs with SIGINT ignored, which its children inherit and Python keeps."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_once_dbt_connects(
    args: Sequence[str], env: Mapping[str, str], url: str, *, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``python -m lifecycle.cli <args>`` with exactly `env`, press Ctrl-C once a dbt
    session is connected to the database of `url` (its build is under way), and return
    the finished process (output captured as text)."""
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "lifecycle.cli", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + timeout
        with psycopg.connect(url, autocommit=True) as conn:
            while proc.poll() is None:
                [(n,)] = conn.execute(
                    "select count(*) from pg_stat_activity where application_name like 'dbt%' "
                    "and datname = current_database()"
                ).fetchall()
                if n:
                    break
                assert time.monotonic() < deadline, "dbt never connected"
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def make_settings(home: Path, **env: str) -> Settings:
    """Return settings for a private state folder, ignoring the caller's environment."""
    return load_settings({"LIFECYCLE_HOME": str(home), **env})


#: Columns that number or time builds (the identity links' generation and the watermark
#: of the identity resolution, int_identifier_links_unioned / int_identifiers_clustered;
#: the build that appended a web event, stg_web__events): a full refresh numbers its
#: build afresh, so they differ from the day-by-day builds by design. Left out wherever
#: tables of two builds are compared; what they drive is compared.
BUILD_NUMBERS = ("generation", "links_generation", "_built_at")

#: The orders CSV header of the built-in mapping (contract names as column names).
ORDERS_HEADER = "order_id,customer_id,email,ordered_at,updated_at,status,currency,amount,quantity\n"


#: A sources file with orders only (no CRM, web or spend): `{orders}` is the CSV's path.
ORDERS_ONLY_SOURCES = """\
version: 1
sources:
  orders:
    kind: csv
    entities:
      orders:
        path: {orders}
      order_items:
        skip: true
"""


def world_settings(tmp_path: Path, url: str, **env: str) -> Settings:
    """Return settings for a state folder and a world folder under `tmp_path`, on `url`."""
    return make_settings(
        tmp_path / "home",
        LIFECYCLE_WAREHOUSE_URL=url,
        LIFECYCLE_WORLD_DIR=str(tmp_path / "world"),
        **env,
    )


def write_file(path: Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path`, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def server_home() -> Iterator[Path]:
    """Yield a state folder for an embedded server, removed afterwards.

    Not under pytest's tmp_path: pytest resets its base folder to mode 0700 whenever
    another pytest session starts, and the embedded server runs as another system user
    (``pgserver``, when we are root) that must be able to traverse to its data.
    """
    home = Path(tempfile.mkdtemp(prefix="lifecycle-test-"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def embedded_server() -> Iterator[Settings]:
    """Yield settings of an embedded server started in a new state folder; stop and
    remove it afterwards."""
    for home in server_home():
        settings = make_settings(home)
        wh.up(settings)
        try:
            yield settings
        finally:
            wh.down(settings)


@pytest.fixture(scope="session")
def embedded_settings() -> Iterator[Settings]:
    """Settings whose embedded warehouse runs for the whole test session."""
    yield from embedded_server()


@pytest.fixture
def pg_home() -> Iterator[Path]:
    """A state folder of its own for a test that starts and stops an embedded server."""
    yield from server_home()


@pytest.fixture(scope="session")
def warehouse_url(embedded_settings: Settings) -> str:
    """URL of the bootstrapped embedded warehouse database."""
    return wh.warehouse_url(embedded_settings, start=False)


@pytest.fixture
def fresh_db(embedded_settings: Settings) -> Iterator[str]:
    """URL of a new, empty database on the embedded server, dropped afterwards."""
    with scratch_database(wh.warehouse_url(embedded_settings, start=False)) as url:
        yield url


@contextmanager
def scratch_database(server_url: str, prefix: str = "t") -> Iterator[str]:
    """Yield the URL of a new database on the server of `server_url`, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = wh.with_database(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield wh.with_database(server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def external_available() -> bool:
    """True when the PostgreSQL server on 127.0.0.1:5432 answers."""
    try:
        with psycopg.connect(EXTERNAL_ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def external_db() -> Iterator[str]:
    """URL of a new database on the external server (skipped where there is none)."""
    if not external_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (only the embedded path is tested)")
    with scratch_database(EXTERNAL_ADMIN_URL) as url:
        yield url
