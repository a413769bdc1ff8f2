"""One run at a time: PostgreSQL advisory locks per stage, taken by every entry point.

Two runs of the same work at once (two `lifecycle transform --date D`, two
`lifecycle pipeline run --date D`, a DAG run and a manual run) would interleave in the
warehouse: both write the one build schema, both publish. Each stage therefore holds a
session-level advisory lock on the warehouse while it runs:

- ``extract`` per date (two extracts of one date; batches of other dates are separate);
- ``build`` per warehouse: there is one build schema (``marts__build``) and one set of
  published marts, so builds and publishing of any date take turns;
- ``pipeline`` per warehouse: a pipeline run drives every stage and the local Airflow's
  metadata, one run at a time;
- ``score`` per date (one day's rows of ``ml.scores_history`` are replaced at once);
- ``train`` per warehouse: `lifecycle train`, and the training DAG's register and promote
  tasks, since both set the one registry's aliases.

A second run waits for the lock, bounded by ``LIFECYCLE_LOCK_WAIT_S`` (default 30 s),
then fails with :class:`RunInProgress`: ``another run of D is in progress (pid, host,
since)``, read from the holder's connection (its ``application_name`` and start). The
lock is the server's: a process that dies releases it with its connection, so nothing
is ever left locked. Within one process the same lock is re-entrant (a pipeline task
that transforms, a transform that publishes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

WAREHOUSE = "warehouse"

_held: dict[tuple[str, int, int], int] = {}
_held_guard = threading.Lock()


class RunInProgress(RuntimeError):
    """Another process holds the lock of this stage (the message says who and since when)."""


def _key(stage: str, scope: dt.date | str) -> tuple[int, int]:
    """Return the two non-negative int4 keys of the lock of `stage` over `scope`."""
    first = zlib.crc32(f"lifecycle:{stage}".encode()) & 0x7FFFFFFF
    if isinstance(scope, dt.date):
        return first, scope.toordinal()
    return first, zlib.crc32(scope.encode()) & 0x7FFFFFFF


def _label(stage: str, day: dt.date | None) -> str:
    """Return the holder's application_name: what runs, for which date, where (<= 63 bytes)."""
    what = f"lifecycle {stage} {day.isoformat() if day else '-'}"
    host = socket.gethostname()
    return f"{what} pid={os.getpid()} host={host}"[:63]


@contextlib.contextmanager
def run_lock(
    url: str,
    stage: str,
    day: dt.date | None,
    *,
    scope: dt.date | str | None = None,
    wait_s: float | None = None,
) -> Iterator[None]:
    """Hold the lock of `stage` (over `scope`: `day` by default) while the block runs.

    `day` is the logical date being run (named in the message another run gets).
    Raises :class:`RunInProgress` when another process holds it for longer than `wait_s`.
    """
    scope = scope if scope is not None else (day or WAREHOUSE)
    k1, k2 = _key(stage, scope)
    ident = (url, k1, k2)
    with _held_guard:
        if _held.get(ident):
            _held[ident] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _held_guard:
                _held[ident] -= 1
        return
    if wait_s is None:
        from lifecycle.settings import get_settings

        wait_s = get_settings().lock_wait_s
    conn = psycopg.connect(url, autocommit=True, application_name=_label(stage, day))
    try:
        deadline = time.monotonic() + wait_s
        announced = False
        while not conn.execute("select pg_try_advisory_lock(%s, %s)", (k1, k2)).fetchone()[0]:
            holder = _holder(conn, k1, k2)
            if time.monotonic() >= deadline:
                raise RunInProgress(_message(holder, stage, day, wait_s))
            if not announced:
                log.warning("%s; waiting up to %.0fs", _message(holder, stage, day, None), wait_s)
                announced = True
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        with _held_guard:
            _held[ident] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(ident, None)
            with contextlib.suppress(psycopg.Error):
                conn.execute("select pg_advisory_unlock(%s, %s)", (k1, k2))
    finally:
        conn.close()


def _holder(conn: psycopg.Connection, k1: int, k2: int) -> tuple[str, dt.datetime] | None:
    row = conn.execute(
        "select a.application_name, a.backend_start from pg_locks l "
        "join pg_stat_activity a on a.pid = l.pid "
        "where l.locktype = 'advisory' and l.granted and l.objsubid = 2 "
        "and l.classid::bigint = %s and l.objid::bigint = %s",
        (k1, k2),
    ).fetchone()
    return (row[0] or "", row[1]) if row else None


def _message(
    holder: tuple[str, dt.datetime] | None, stage: str, day: dt.date | None, wait_s: float | None
) -> str:
    name, since = holder or ("", None)
    parts = dict(p.split("=", 1) for p in name.split() if "=" in p)
    words = name.split()
    held_day = words[2] if len(words) > 2 and words[0] == "lifecycle" else None
    held_stage = words[1] if len(words) > 1 and words[0] == "lifecycle" else stage
    of = held_day if held_day and held_day != "-" else (day.isoformat() if day else "the warehouse")
    when = since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if since else "unknown"
    who = f"pid {parts.get('pid', 'unknown')}, host {parts.get('host', 'unknown')}, since {when}"
    text = f"another run of {of} is in progress ({who}; {held_stage} holds the lock)"
    if wait_s is not None:
        text += f"; waited {wait_s:.0f}s (LIFECYCLE_LOCK_WAIT_S): try again when it ends"
    return text


def holds_lock(
    stage: str, *, date_arg: str, scope: dt.date | str | None = None
) -> Callable[[F], F]:
    """Decorate a function that takes `settings`: every call holds :func:`run_lock` of
    `stage` on the settings' warehouse, for the call's argument `date_arg` (over `scope`,
    by default that date), while it runs."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            from lifecycle.warehouse import warehouse_url

            arguments = signature.bind(*args, **kwargs).arguments
            settings = arguments["settings"]
            day = arguments.get(date_arg)
            url = warehouse_url(settings)
            with run_lock(url, stage, day, scope=scope, wait_s=settings.lock_wait_s):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
