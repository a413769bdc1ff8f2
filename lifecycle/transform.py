"""Transform: build the dbt project (raw → staging → intermediate → marts) for a logical date.

One entry point for the CLI (``lifecycle transform --date D``) and the DAGs:
:func:`transform` runs ``dbt build`` in-process with ``dbtRunner``. The connection comes
from the warehouse URL (``LIFECYCLE_WAREHOUSE_URL`` or the embedded server): it is split
into the ``LIFECYCLE_DBT_*`` variables that ``dbt_project/profiles.yml`` reads, so no
secret is ever written to a file. The logical date goes to dbt as the var
``as_of_date``; the models never read the wall clock, so a backfill of a past date gives
the same marts as the original run. The sources file's business block becomes the vars
``business_timezone`` (the zone whose midnights are the days of every derived date),
``reporting_currency`` and ``fx_rates`` (its planning rates); before building,
:func:`check_currencies` refuses a currency that has no rate at all, naming it. dbt's
``target/`` and ``logs/`` live under ``LIFECYCLE_HOME/dbt``, never in the repository.

Within one process the parsed manifest is kept and reused per warehouse database (dbt
parses in ~4 s cold), and re-parsed when a file of the project changes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifecycle import warehouse
from lifecycle.errors import print_error
from lifecycle.options import allow_future_option, parse_date, refuse_future
from lifecycle.settings import Settings, environment, get_settings

if TYPE_CHECKING:
    from lifecycle.sources_file import SourcesFile

log = logging.getLogger(__name__)

#: The dbt project (``dbt_project/`` at the top of the repository).
PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"

#: dbt threads by default: one per core, at most 4 (on a 2-core machine more threads only
#: make the warehouse's queries compete; measured in bench/bench_dbt.py).
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 2))

#: Node statuses that fail a run.
FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})

#: The schema BI tools read, and the one a run builds into before the gate (the dbt var
#: ``marts_schema``, read by ``macros/generate_schema_name.sql``): write-audit-publish.
MARTS_SCHEMA = "marts"
BUILD_SCHEMA = warehouse.BUILD_SCHEMA  # defined with the roles that may build there

_lock = threading.RLock()
_manifests: dict[tuple[str, ...], tuple[str, Any]] = {}


class TransformError(RuntimeError):
    """dbt could not build the warehouse; the message lists the failed nodes."""


class WarehouseUnavailable(TransformError):
    """The warehouse went away during dbt (stopped, restarting, the session ended).

    Not a data problem: nothing was published, and the same build succeeds once the
    warehouse is back (the daily DAG's task retries it instead of failing at once).
    """


#: What libpq says, in dbt's errors, when the warehouse is gone or cannot be reached.
CONNECTION_LOST = (
    "terminating connection",
    "server closed the connection",
    "connection refused",
    "could not connect to server",
    "connection to server",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "ssl syscall error",
    "connection already closed",
    "no connection to the server",
)


def _connection_lost(text: str) -> str | None:
    """Return the cause when `text` (a dbt error) says the connection was lost, else None."""
    lines = [" ".join(x.split()) for x in text.splitlines() if x.strip()]
    for n, line in enumerate(lines):
        if any(p in line.lower() for p in CONNECTION_LOST):
            # libpq: 'connection to server on socket "..." failed: FATAL:  the database
            # system is shutting down' (and a hint on the next line): the cause is what
            # follows "failed:"
            return " / ".join([line.split(" failed: ", 1)[-1], *lines[n + 1 : n + 2]])
    return None


def _unavailable(args: Sequence[str], day: dt.date | None, cause: str) -> WarehouseUnavailable:
    of = f" as of {day}" if day else ""
    return WarehouseUnavailable(
        f"the warehouse connection failed during dbt {args[0]}{of}: {cause} (is it running? "
        "see `lifecycle warehouse status`); nothing was published: rerun when it is back"
    )


@dataclass(frozen=True)
class NodeResult:
    """What dbt did with one node (model, seed, test, unit test)."""

    unique_id: str
    resource_type: str
    status: str
    execution_time_s: float
    message: str | None
    failures: int | None = None


@dataclass
class TransformResult:
    """The outcome of one dbt invocation."""

    logical_date: dt.date | None
    command: list[str]
    success: bool
    elapsed_s: float  # the dbt command itself
    nodes: list[NodeResult] = field(default_factory=list)
    parse_s: float = 0.0  # parsing the project first (0 when a parsed manifest was reused)
    marts_schema: str = MARTS_SCHEMA  # where the marts were built
    published: bool = False  # moved into `marts` after the build (write-audit-publish)
    listed: list[str] | None = None  # what `dbt ls` printed (None for other commands)
    warnings: list[str] = field(default_factory=list)  # e.g. a currency at a planning rate

    @property
    def failed(self) -> list[NodeResult]:
        """Return the nodes that errored or whose tests failed."""
        return [n for n in self.nodes if n.status in FAILED_STATUSES]

    def counts(self) -> dict[str, int]:
        """Return the number of nodes per status."""
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.status] = out.get(n.status, 0) + 1
        return dict(sorted(out.items()))

    def describe(self) -> str:
        """Return a one-line summary for logs and the CLI."""
        day = f" {self.logical_date}" if self.logical_date else ""
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items()) or "nothing to do"
        state = "ok" if self.success else "FAILED"
        parse = f" (+{self.parse_s:.1f}s parsing)" if self.parse_s else ""
        where = ""
        if self.marts_schema != MARTS_SCHEMA:
            where = (
                f"; marts published to {MARTS_SCHEMA}"
                if self.published
                else f"; marts built in {self.marts_schema}, not published"
            )
        return (
            f"dbt {self.command[0]}{day} {state}: {counts} in {self.elapsed_s:.1f}s{parse}{where}"
        )


# --------------------------------------------------------------------------- profile


def dbt_env(url: str, threads: int | None = None) -> dict[str, str]:
    """Return the ``LIFECYCLE_DBT_*`` variables profiles.yml reads, derived from `url`.

    The host may be a Unix-socket directory (the embedded server's); an absent host
    means libpq's default socket directory.
    """
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    if not params.get("dbname"):
        raise TransformError("the warehouse URL names no database")
    env = {
        "LIFECYCLE_DBT_HOST": str(params.get("host") or "/var/run/postgresql"),
        "LIFECYCLE_DBT_PORT": str(params.get("port") or 5432),
        "LIFECYCLE_DBT_USER": str(params.get("user") or os.environ.get("USER", "postgres")),
        "LIFECYCLE_DBT_PASSWORD": str(params.get("password") or ""),
        "LIFECYCLE_DBT_DBNAME": str(params["dbname"]),
        "LIFECYCLE_DBT_SSLMODE": str(params.get("sslmode") or "prefer"),
    }
    env["LIFECYCLE_DBT_THREADS"] = str(threads or DEFAULT_THREADS)
    return env


def dbt_paths(settings: Settings) -> tuple[Path, Path]:
    """Return (target path, log path) of dbt under LIFECYCLE_HOME."""
    base = settings.home / "dbt"
    return base / "target", base / "logs"


def _project_signature() -> str:
    """Return a cheap signature of the project's files (paths, sizes, mtimes)."""
    parts = []
    for path in sorted(PROJECT_DIR.rglob("*")):
        if path.is_file() and not any(p in ("target", "logs") for p in path.parts):
            st = path.stat()
            parts.append(f"{path.relative_to(PROJECT_DIR)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


# ------------------------------------------------------------------------- business


def business_sources(settings: Settings) -> SourcesFile:
    """Return the sources file of `settings`; a wrong file is a TransformError naming it."""
    from lifecycle.sources_file import SourcesFileError, load_sources

    try:
        return load_sources(settings)
    except SourcesFileError as exc:
        raise TransformError(str(exc)) from None


def business_vars(sources: SourcesFile) -> dict[str, Any]:
    """Return the dbt vars of the sources file's business block (time zone and money)."""
    business = sources.business
    return {
        "business_timezone": business.timezone,
        "reporting_currency": business.currency,
        "fx_rates": business.planning_rates,
    }


#: The raw tables whose amounts are converted, and their currency columns.
CONVERTED = (("orders__orders", "currency"), ("marketing__spend", "currency"))


def check_currencies(sources: SourcesFile, url: str) -> list[str]:
    """Raise :class:`TransformError` naming every currency of the raw orders and spend
    that has no rate to the reporting currency: not in the rates (raw.fx__rates) nor in
    the planning rates. Amounts in mixed currencies are never summed unconverted.

    Checked here, before dbt, so the message names the currency and where to add it
    (a dbt test on the converted amounts only says how many rows are null). Returns a
    warning per currency of a sources file converted at the sample world's planning
    rates (EUR 1.08, GBP 1.27 to USD) alone: near the truth, but nobody said so.
    """
    from lifecycle.warehouse import connect

    business = sources.business
    known = set(business.planning_rates)
    stated = set(business.stated_rates)
    found: dict[str, list[str]] = {}
    assumed: dict[str, list[str]] = {}
    with connect(url) as conn:
        fx: set[str] = set()
        if conn.execute("select to_regclass('raw.fx__rates')").fetchone()[0] is not None:
            fx = {
                row[0]
                for row in conn.execute(
                    "select distinct upper(btrim(currency)) from raw.fx__rates where rate > 0"
                )
            }
            known |= fx
        for table, column in CONVERTED:
            if conn.execute("select to_regclass(%s)", (f"raw.{table}",)).fetchone()[0] is None:
                continue
            query = (
                f"select upper(coalesce(nullif(btrim({column}), ''), %s)) as code, count(*) "
                f"from raw.{table} group by 1 order by 1"
            )
            for code, count in conn.execute(query, (business.currency,)):
                if code not in known:
                    found.setdefault(code, []).append(f"{count:,} rows of raw.{table}")
                elif code not in stated and code not in fx and sources.origin != "built-in":
                    assumed.setdefault(code, []).append(f"{count:,} rows of raw.{table}")
    if found:
        where = sources.origin if sources.origin != "built-in" else "a sources file"
        problems = "; ".join(
            f"currency {code!r} has no rate to {business.currency} ({', '.join(tables)})"
            for code, tables in sorted(found.items())
        )
        raise TransformError(
            f"{problems}: add it to the rates file (business.rates) or to "
            f"business.fixed_rates in {where}"
        )
    return [
        f"currency {code!r} converted to {business.currency} at the sample world's planning "
        f"rate {business.planning_rates[code]} ({', '.join(tables)}): no rate for it in the "
        f"rates file (business.rates) or business.fixed_rates of {sources.origin}"
        for code, tables in sorted(assumed.items())
    ]


# ------------------------------------------------------------------------ invocation


def run_dbt(
    args: Sequence[str],
    settings: Settings | None = None,
    *,
    logical_date: dt.date | None = None,
    url: str | None = None,
    vars: dict[str, Any] | None = None,
    threads: int | None = None,
    quiet: bool = False,
    raise_on_failure: bool = True,
) -> TransformResult:
    """Run one dbt command (e.g. ``["build"]``) in-process and return what it did.

    `logical_date` becomes the var ``as_of_date``. Raises :class:`TransformError` listing
    the failed nodes when the command fails (unless `raise_on_failure` is false).
    """
    from dbt.cli.main import dbtRunner

    from lifecycle.warehouse import warehouse_url

    settings = settings or get_settings()
    url = url or warehouse_url(settings)
    target_path, log_path = dbt_paths(settings)
    all_vars = {**business_vars(business_sources(settings)), **(vars or {})}
    if logical_date is not None:
        all_vars["as_of_date"] = logical_date.isoformat()
    common = [
        "--project-dir",
        str(PROJECT_DIR),
        "--profiles-dir",
        str(PROJECT_DIR),
        "--target-path",
        str(target_path),
    ]
    command = [
        *args,
        *common,
        "--vars",
        json.dumps(all_vars),
    ]
    flags = ["--log-path", str(log_path), "--no-use-colors"]
    if quiet:
        flags.append("--quiet")

    env = dbt_env(url, threads)
    with _lock, environment(env):
        started = time.perf_counter()
        parse_s = 0.0
        # the manifest names the database of every relation: one per warehouse
        key = (
            str(PROJECT_DIR),
            str(target_path),
            env["LIFECYCLE_DBT_HOST"],
            env["LIFECYCLE_DBT_PORT"],
            env["LIFECYCLE_DBT_DBNAME"],
            # schema names are resolved at parse time (generate_schema_name)
            str(all_vars.get("marts_schema") or MARTS_SCHEMA),
        )
        signature = _project_signature()
        cached = _manifests.get(key)
        manifest = cached[1] if cached and cached[0] == signature else None
        if manifest is None:
            parsed = dbtRunner().invoke([*flags, "parse", *common, "--vars", json.dumps(all_vars)])
            if not parsed.success or parsed.result is None:
                raise TransformError(
                    f"dbt could not parse {PROJECT_DIR}: {parsed.exception or 'see dbt logs'}"
                )
            manifest = parsed.result
            _manifests[key] = (signature, manifest)
            parse_s = time.perf_counter() - started
        started = time.perf_counter()
        with _interrupts() as interrupted:
            res = dbtRunner(manifest=manifest).invoke([*flags, *command])
        elapsed = time.perf_counter() - started
        if interrupted:
            # dbt's runner catches Ctrl-C where it lands (a node's thread, its own loop) and
            # at times runs on to the end: the caller must not publish what it built
            raise KeyboardInterrupt

    nodes = _node_results(res.result)
    result = TransformResult(
        logical_date=logical_date,
        command=list(args),
        success=bool(res.success),
        elapsed_s=elapsed,
        nodes=nodes,
        parse_s=parse_s,
    )
    if isinstance(res.result, list):
        result.listed = [str(x) for x in res.result]
    if res.exception is not None:
        origin = res.exception if isinstance(res.exception, BaseException) else None
        lost = _connection_lost(str(res.exception))
        if lost:  # e.g. a node could not open its connection: the server is down
            raise _unavailable(args, logical_date, lost) from origin
        # dbt's database errors put the cause on the lines after "Database Error": keep
        # them on the one line the CLI prints
        cause = " / ".join(x.strip() for x in str(res.exception).splitlines() if x.strip())
        raise TransformError(f"dbt {' '.join(args)} crashed: {cause}") from origin
    if not result.success and raise_on_failure:
        # a node whose session the server ended (a stop, a restart) failed for no fault
        # of the data: say so, once, rather than list every node the outage failed
        for node in result.failed:
            lost = _connection_lost(node.message or "")
            if lost:
                raise _unavailable(args, logical_date, lost)
        raise TransformError(_failure_message(result))
    return result


@contextlib.contextmanager
def _interrupts() -> Iterator[list[int]]:
    """Yield a list that holds the signal number once SIGINT or SIGTERM arrived meanwhile.

    Each signal still does what it did (KeyboardInterrupt in the main thread); the list
    says it came even when dbt caught it. Outside the main thread signals cannot be
    watched: the list stays empty.
    """
    import signal
    import threading

    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def noted(signum, frame):  # noqa: ANN001, ANN202
        if not seen:
            _no_crash_report_on_console()
        seen.append(signum)
        handler = previous[signum]
        if callable(handler):
            return handler(signum, frame)
        if handler == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        return None

    for s in previous:
        signal.signal(s, noted)
    try:
        yield seen
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


#: dbt's events of a crash: "Encountered an error:" and the stack trace of what ended it.
_CRASH_EVENTS = frozenset({"MainEncounteredError", "MainStackTrace"})


def _no_crash_report_on_console() -> None:
    """Keep dbt's console from printing the stack trace of the KeyboardInterrupt it gets.

    After Ctrl-C dbt cancels its queries and ends its run by re-raising the interrupt,
    which its command wrapper reports as a crash, trace and all, on standard output; the
    user asked for the stop, and the CLI ends with ``error: interrupted``. Only the
    console logger of this invocation (dbt's ``stdout_log``) is filtered: dbt's log file
    keeps the report. dbt offers no switch for it; its loggers' ``filter`` is the hook.
    """
    from dbt_common.events.event_manager_client import get_event_manager

    for logger in getattr(get_event_manager(), "loggers", []):
        if getattr(logger, "name", None) != "stdout_log":
            continue
        previous = logger.filter

        def keep(msg, previous=previous) -> bool:  # noqa: ANN001
            return msg.info.name not in _CRASH_EVENTS and previous(msg)

        logger.filter = keep


def _node_results(result: Any) -> list[NodeResult]:
    out: list[NodeResult] = []
    for r in getattr(result, "results", None) or []:
        node = getattr(r, "node", None)
        status = getattr(r, "status", "")
        out.append(
            NodeResult(
                unique_id=getattr(node, "unique_id", "?"),
                resource_type=str(getattr(node, "resource_type", "?")),
                status=str(getattr(status, "value", status)),
                execution_time_s=float(getattr(r, "execution_time", 0.0) or 0.0),
                message=getattr(r, "message", None),
                failures=getattr(r, "failures", None),
            )
        )
    return out


def _failure_message(result: TransformResult) -> str:
    lines = [result.describe()]
    failed = result.failed
    if not failed:
        lines.append("  (no node failed: see the dbt log under LIFECYCLE_HOME/dbt/logs)")
    for n in failed:
        detail = [line.strip() for line in (n.message or "").splitlines() if line.strip()]
        first = " / ".join(line for line in detail[:3] if not line.startswith(">"))
        failures = f" ({n.failures} failing rows)" if n.failures else ""
        lines.append(f"  {n.status}: {n.unique_id}{failures}: {first}")
    skipped = [n for n in result.nodes if n.status == "skipped"]
    if skipped:
        lines.append(f"  {len(skipped)} node(s) skipped because of the failures above")
    return "\n".join(lines)


def check_selection(select: Sequence[str], settings: Settings | None = None) -> int:
    """Return how many dbt nodes `select` picks; raise TransformError if it is not usable.

    Runs ``dbt ls`` with its logging off first: dbt reports a selection it cannot use
    (``path:/abs``, ``state:`` without a state, a bad graph operator) with its own stack
    trace on the console, and one that matches nothing with a build that does nothing.
    """
    shown = " ".join(select)
    try:
        listed = run_dbt(
            ["ls", "--select", *select, "--log-level", "none", "--output", "name"],
            settings,
            raise_on_failure=False,
        ).listed
    except TransformError as exc:
        cause = str(exc).split(" crashed: ", 1)[-1]
        cause = " ".join(cause.split())
        raise TransformError(f"--select {shown}: dbt cannot use this selection: {cause}") from None
    if not listed:
        raise TransformError(
            f"--select {shown}: matches no dbt model, seed or test "
            "(see `dbt ls` in dbt_project/ for the node names)"
        )
    return len(listed)


def transform(
    logical_date: dt.date,
    settings: Settings | None = None,
    *,
    full_refresh: bool = False,
    select: Sequence[str] | None = None,
    unit_tests: bool = False,
    threads: int | None = None,
    quiet: bool = False,
    publish: bool = True,
) -> TransformResult:
    """Build the warehouse as of `logical_date` (``dbt build``) and return what dbt did.

    Write-audit-publish: the marts are built into ``marts__build`` (dbt's own tests run
    there), then, when `publish` is true, moved into ``marts`` in one transaction
    (:func:`lifecycle.quality.publish.publish_marts`). With `publish` false the build
    waits in ``marts__build`` for the quality gate (:func:`lifecycle.quality.gate_and_publish`);
    a failed build or gate leaves the published marts untouched. Incremental models take
    only what changed since the last run unless `full_refresh`; both give the same marts.
    `select` narrows the build (dbt selection syntax; include the marts a selected mart
    reads, e.g. ``+customers``, since the build schema starts empty). dbt unit tests run
    only when `unit_tests` is true. Raises :class:`TransformError` listing the failed nodes.
    """
    from lifecycle.quality.publish import mark_built, prepare_build, publish_marts

    settings = settings or get_settings()
    if select:
        check_selection(select, settings)
    args = ["build"]
    if full_refresh:
        args.append("--full-refresh")
    # amounts in a currency without a rate must not reach the marts: refuse, naming it
    warnings = check_currencies(business_sources(settings), _warehouse_url(settings))
    for warning in warnings:
        log.warning("%s", warning)
    if select:
        args += ["--select", *select]
    if not unit_tests:
        args += ["--exclude-resource-type", "unit_test"]
    from lifecycle.locks import WAREHOUSE, run_lock
    from lifecycle.warehouse import warehouse_url

    # One build schema, one set of published marts: builds of any date take turns.
    with run_lock(
        warehouse_url(settings), "build", logical_date, scope=WAREHOUSE, wait_s=settings.lock_wait_s
    ):
        prepare_build(settings)
        result = run_dbt(
            args,
            settings,
            logical_date=logical_date,
            vars={"marts_schema": BUILD_SCHEMA},
            threads=threads,
            quiet=quiet,
        )
        result.marts_schema = BUILD_SCHEMA
        result.warnings = warnings
        mark_built(logical_date, settings)
        if publish:
            publish_marts(logical_date, settings)
            result.published = True
    log.info("%s", result.describe())
    return result


def _warehouse_url(settings: Settings) -> str:
    from lifecycle.warehouse import warehouse_url

    return warehouse_url(settings)


# ------------------------------------------------------------------------------- CLI


@click.command("transform")
@click.option(
    "--date",
    "day",
    required=True,
    callback=parse_date,
    help="Logical date: the marts are built as of this day (YYYY-MM-DD).",
)
@click.option(
    "--full-refresh", is_flag=True, help="Rebuild incremental models from scratch (same result)."
)
@click.option(
    "--select",
    "select",
    multiple=True,
    help="dbt selection (repeatable), e.g. --select +customers.",
)
@click.option("--unit-tests", is_flag=True, help="Also run the dbt unit tests.")
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Move the built marts into `marts`; --no-publish leaves them in marts__build for "
    "`lifecycle validate --layer marts --publish`.",
)
@allow_future_option
def transform_command(
    day: dt.date,
    full_refresh: bool,
    select: tuple[str, ...],
    unit_tests: bool,
    publish: bool,
    allow_future: bool,
) -> None:
    """Build staging, intermediate and marts with dbt as of a logical date (dbt build)."""
    refuse_future(day, allow_future)
    try:
        result = transform(
            day,
            get_settings(),
            full_refresh=full_refresh,
            select=list(select) or None,
            unit_tests=unit_tests,
            publish=publish,
        )
    except TransformError as exc:
        print_error(exc)
        sys.exit(1)
    click.echo(result.describe())
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
