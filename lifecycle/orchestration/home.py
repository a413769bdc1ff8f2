"""The local Airflow home: point this process at it and migrate its metadata database.

:func:`activate` must run before the first ``import airflow`` of a process: Airflow reads
``AIRFLOW_HOME`` and its database URL once, when it is imported (importing it without
``AIRFLOW_HOME`` creates ``~/airflow``). :func:`ensure_initialized` runs
``airflow db migrate`` only when the metadata database (the SQLite file, or the database
of ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) is missing or was migrated by another Airflow
version, under a file lock so two processes never migrate at once.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from lifecycle.orchestration.config import OrchestrationSettings, airflow_env

#: Written after a successful migration: "<airflow version> <alembic revision>".
STAMP_FILE = ".lifecycle-migrated"


class OrchestrationError(RuntimeError):
    """The local Airflow cannot be set up or used; the message says what to do."""


def airflow_version() -> str:
    """Return the installed Airflow version (without importing Airflow)."""
    return importlib.metadata.version("apache-airflow-core")


def jwt_secret(cfg: OrchestrationSettings) -> str:
    """Return the local Airflow's JWT signing secret, created on first use (mode 0600)."""
    path = cfg.airflow_home / ".jwt_secret"
    if not path.exists():
        cfg.airflow_home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


def environment(cfg: OrchestrationSettings) -> dict[str, str]:
    """Return the environment variables that select the local Airflow home."""
    return airflow_env(cfg, jwt_secret(cfg))


def activate(cfg: OrchestrationSettings) -> dict[str, str]:
    """Point this process's (future) Airflow at the local home; return the variables set.

    Raises :class:`OrchestrationError` if Airflow was already imported with another home.
    """
    env = environment(cfg)
    if "airflow" in sys.modules or "airflow.configuration" in sys.modules:
        current = os.environ.get("AIRFLOW_HOME")
        try:
            from airflow.configuration import AIRFLOW_HOME as imported_home
        except ImportError:  # pragma: no cover - partially imported
            imported_home = current
        if imported_home and Path(imported_home).resolve() != cfg.airflow_home.resolve():
            raise OrchestrationError(
                f"Airflow was already imported in this process with AIRFLOW_HOME={imported_home}; "
                f"the local runner needs {cfg.airflow_home}. Run it in a fresh process."
            )
    for folder in (cfg.airflow_home, cfg.log_folder, cfg.run_log_folder):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    return env


def _db_revision(cfg: OrchestrationSettings) -> str | None:
    if cfg.metadata_db_url:
        return _server_db_revision(cfg.metadata_db_url)
    db = cfg.metadata_db
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("select version_num from alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _server_db_revision(url: str) -> str | None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("select version_num from alembic_version")).scalar()
    except sa.exc.OperationalError as exc:
        raise OrchestrationError(
            f"cannot connect to Airflow's metadata database (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN): "
            f"{str(exc.orig).strip().splitlines()[0]}"
        ) from exc
    finally:
        engine.dispose()


def is_initialized(cfg: OrchestrationSettings) -> bool:
    """True when the metadata DB exists and was migrated by the installed Airflow version."""
    stamp = cfg.airflow_home / STAMP_FILE
    if not stamp.exists():
        return False
    version, _, revision = stamp.read_text().strip().partition(" ")
    return version == airflow_version() and revision == _db_revision(cfg)


def _db_name(cfg: OrchestrationSettings) -> str:
    """Return the metadata DB for messages (a server URL without its password)."""
    if not cfg.metadata_db_url:
        return str(cfg.metadata_db)
    import sqlalchemy as sa

    return sa.make_url(cfg.metadata_db_url).render_as_string(hide_password=True)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_initialized(
    cfg: OrchestrationSettings, echo: Callable[[str], None] | None = None
) -> bool:
    """Migrate the local metadata DB if needed; return True if a migration ran."""
    env = activate(cfg)
    with _locked(cfg.airflow_home / ".init.lock"):
        if is_initialized(cfg):
            return False
        if echo:
            echo(f"airflow: migrating the metadata database {_db_name(cfg)}")
        log_file = cfg.log_folder / "db-migrate.log"
        started = time.perf_counter()
        with open(log_file, "w") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cfg.airflow_home,
                check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
            raise OrchestrationError(
                f"`airflow db migrate` failed (exit {proc.returncode}) for {_db_name(cfg)}; "
                f"full log: {log_file}\n{tail}"
            )
        revision = _db_revision(cfg)
        if revision is None:
            raise OrchestrationError(
                f"`airflow db migrate` left no alembic revision in {_db_name(cfg)}; see {log_file}"
            )
        (cfg.airflow_home / STAMP_FILE).write_text(f"{airflow_version()} {revision}\n")
        if echo:
            echo(
                f"airflow: metadata database ready ({revision}) in "
                f"{time.perf_counter() - started:.1f}s"
            )
        return True
