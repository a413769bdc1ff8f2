"""Fault injection: each task of lifecycle_daily SIGKILLed mid-step, the warehouse stopped mid-step.

A small world runs on an embedded PostgreSQL this module owns (it stops it on purpose):
``lifecycle pipeline run`` for D0, ``lifecycle_train``, then scores and exports of D0, so
that D1 has a champion, a previous export and every table already in place. The warehouse
is then cloned (``create database ... template``) and the reference is one clean
``lifecycle pipeline run`` of D1.

On the clone, every task of D1 runs in a process of its own as Airflow runs it (a fork of
:mod:`tests.adversarial.task_runner`, Airflow's ``_run_task`` as ``airflow tasks test``),
in the DAG's order. The kill moment is not a sleep: the test holds a PostgreSQL lock on a
table the step writes (or reads) late, waits until the task's backend is seen waiting on
that lock in ``pg_locks``/``pg_stat_activity`` (so the step is provably mid-way: its
transaction open, its rows written but not committed, or half of dbt's models built), and
SIGKILLs the task's process while it is alive there. Then:

- every table is either as it was before the task or exactly as the clean run left it
  (no half-written table, marts never partly replaced), export folders are whole or
  absent, and the killed process's sessions and locks are gone within seconds;
- the task is rerun (with ``LIFECYCLE_LOCK_WAIT_S`` short, so a stale lock would fail it)
  and must succeed.

After the last task, every table of raw, staging, intermediate, marts, ml, activation and
ops (wall-clock and append-only log columns aside), the export files and their manifests
equal the clean run's, and the run log says which loads were abandoned.

Then the warehouse goes away mid-step: stopped (``pg_ctl stop``) while ``lifecycle
extract`` is loading and while ``lifecycle transform`` runs dbt, and the step's session
ended by the server (``pg_terminate_backend``) during the load and during the Airflow
transform task. Each ends with one ``error:`` line naming the warehouse and no traceback
(the Airflow task is left up for retry, not failed), and once the warehouse is back the
rerun reaches the clean run's checksums again.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest

from lifecycle import warehouse as wh
from tests.conftest import embedded_server, run_cli
from tests.dags.conftest import table_checksums

REPO = Path(__file__).resolve().parents[2]
START, END = dt.date(2023, 7, 1), dt.date(2024, 3, 31)
D0, D1 = END - dt.timedelta(days=1), END


def dag_tasks() -> tuple[str, ...]:
    """Return the task ids of lifecycle_daily in the order of its ``chain(...)``.

    Read from the DAG file and lifecycle/orchestration/daily.py (importing them would
    import Airflow into the test process); the clean run checks that these are the tasks
    Airflow ran.
    """
    dag = ast.parse((REPO / "dags" / "lifecycle_daily.py").read_text())
    chain = next(
        n for n in ast.walk(dag) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "chain"
    )
    daily = ast.parse((REPO / "lifecycle" / "orchestration" / "daily.py").read_text())
    raw_tables = next(
        n.value
        for n in ast.walk(daily)
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "RAW_TABLES"
    )
    sources = [ast.literal_eval(k) for k in raw_tables.keys]
    tasks: list[str] = []
    for step in chain.args:
        if isinstance(step, ast.ListComp):  # [daily.extract(source) for source in SOURCES]
            tasks += [f"extract_{source}" for source in sources]
        else:  # daily.<task>() or daily.<task>.override(...)()
            tasks.append(re.match(r"daily\.(\w+)", ast.unparse(step)).group(1))
    return tuple(tasks)


TASKS = dag_tasks()
SCHEMAS = ("raw", "staging", "intermediate", "marts", "ml", "activation")
#: Append-only logs of attempts (a rerun adds its row, by design): counted, not compared.
LOG_TABLES = ("activation.export_log", "activation.push_log")
#: ops tables compared, without their wall-clock columns (load_runs is checked apart).
OPS = {
    "ops.load_batches": "batch_id, source, entity, logical_date, window_start, window_end, "
    "rows_loaded, rows_quarantined",
    "ops.load_files": "locator, batch_id, source, entity, outcome",
    "ops.watermarks": "source, entity, value, batch_id",
    "ops.marts_publications": "distinct logical_date, relations",  # one row per publish
    "ops.dq_results": "*",
    "ops.dq_runs": "run_id, logical_date, layer, schema_name, passed, count_suites, "
    "count_skipped_suites, count_expectations, count_failed_critical, count_failed_warning",
}
RUN_TIMEOUT_S = 600
BLOCK_TIMEOUT_S = 180
ABANDONED = "abandoned: the process ended before the run finished"


@dataclass(frozen=True)
class Trigger:
    """Where a task is caught mid-step: the lock the test holds and what then waits on it."""

    lock: str  # SQL run in the test's open transaction while the task runs
    relation: str  # the task's backend must be seen waiting for a lock on this relation
    query: str  # ... running a statement that starts like this (lower case)
    wrote: str | None = None  # a relation the waiting transaction must already have written
    # The task's transaction first takes an exclusive lock on `relation` (an ALTER TABLE
    # ... IF NOT EXISTS) and commits before the write to catch: the test holds a read lock
    # until that DDL (starting like this) waits, queues `lock` behind it and lets go, so
    # `lock` is granted when that transaction commits and the later write waits.
    ddl: str | None = None


def _load(table: str) -> Trigger:
    # after the COPY of the batch, at its bookkeeping: every row sent, nothing committed
    return Trigger(
        "lock table ops.load_batches in share mode",
        "ops.load_batches",
        "insert into ops.load_batches",
        f"raw.{table}",
    )


_GATE = Trigger(  # after Great Expectations ran, while its results are being stored
    "lock table ops.dq_runs in share mode", "ops.dq_runs", "delete from ops.dq_runs"
)
TRIGGERS = {
    # mid-sweep: one erasure request pending (filed before D1), its transaction has deleted
    # the person from the activation and marts tables, the raw orders' delete waits
    "apply_erasures": Trigger(
        "lock table raw.orders__orders in share mode",
        "raw.orders__orders",
        "delete from",
        "marts.customers",
    ),
    "extract_crm": _load("crm__contacts"),
    "extract_web": _load("web__events"),
    "extract_orders": _load("orders__orders"),
    "extract_marketing": _load("marketing__spend"),
    # fx has no source in the built-in mapping: the step only records its skip in the run
    # log, after making sure the raw and ops tables exist (caught in that DDL)
    "extract_fx": Trigger(
        "lock table ops.load_runs in share mode", "ops.load_runs", "create schema if not exists raw"
    ),
    "validate_raw": _GATE,
    # dbt half-way: the stage engine's incremental merge waits, other models are built
    "transform": Trigger(
        "lock table intermediate.int_stage_intervals_projected in share mode",
        "intermediate.int_stage_intervals_projected",
        "",
    ),
    # mid-publish: a BI session reading marts.customers makes the swap wait after it
    # has dropped and moved other relations in its transaction
    "validate_marts": Trigger(
        "select count(*) from marts.customers", "marts.customers", "drop table"
    ),
    # mid-scoring: the partition deleted and the COPY open, the features query waits (from
    # the start: the test waits until the partition is deleted too)
    "score": Trigger(
        "lock table intermediate.int_identifiers_clustered in access exclusive mode",
        "intermediate.int_identifiers_clustered",
        "",
        "ml.scores_history",
    ),
    "validate_scores": _GATE,
    # scores and membership committed, the first audience's export in flight
    "activate": Trigger(
        "lock table activation.export_log in share mode",
        "activation.export_log",
        "insert into activation.export_log",
        "activation.export_members",
        ddl="alter table activation.export_log",
    ),
    "validate_activation": _GATE,
    # mid-report: its read-only snapshot open, a section's query waits
    "report": Trigger(
        "lock table marts.cohort_retention in access exclusive mode", "marts.cohort_retention", ""
    ),
}


# ---------------------------------------------------------------------------- helpers


def _env(home: Path, url: str, world: Path, name: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "AIRFLOW"))}
    return base | {
        "LIFECYCLE_HOME": str(home),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_WORLD_DIR": str(world),
        "LIFECYCLE_EXPORT_DIR": str(home / f"exports-{name}"),
        "LIFECYCLE_REPORT_DIR": str(home / f"reports-{name}"),
        "LIFECYCLE_LOCK_WAIT_S": "10",  # a lock nobody releases fails a rerun fast
        "LIFECYCLE_ERASURE_SECRET": "faults-test-site-key",  # the ledger's hash key
        "PYTHONPATH": str(REPO),
    }


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = run_cli(args, env, cwd=env["LIFECYCLE_HOME"], timeout=RUN_TIMEOUT_S)  # no .env there
    if check:
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done


def snapshot(url: str) -> dict[str, tuple]:
    """Return (rows, md5 of the ordered rows) per table of the compared schemas and ops."""
    sums = {k: v for k, v in table_checksums(url, SCHEMAS).items() if k not in LOG_TABLES}
    with psycopg.connect(url) as conn:
        for table, columns in OPS.items():
            sums[table] = conn.execute(
                f"select count(*), md5(coalesce(string_agg(t::text, E'\\n' order by t::text), "
                f"'')) from (select {columns} from {table}) t"
            ).fetchone()
    return sums


def export_files(root: Path, day: dt.date = D1) -> dict[str, str]:
    """Return sha256 per file under the export folder of `day` (manifests included)."""
    folder = root / day.isoformat()
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def folders(files: dict[str, str]) -> dict[str, dict[str, str]]:
    """Group `files` (path: digest) by their top folder (an audience's export)."""
    out: dict[str, dict[str, str]] = {}
    for name, digest in files.items():
        top, _, rest = name.partition("/")
        out.setdefault(top, {})[rest] = digest
    return out


def _others(conn: psycopg.Connection, holders: tuple[int, ...]) -> list[tuple]:
    """Return (pid, state, query) of the sessions on this database but the test's own."""
    return conn.execute(
        "select pid, state, left(query, 120) from pg_stat_activity "
        "where datname = current_database() and pid <> all(%s)",
        (list(holders),),
    ).fetchall()


def wait_gone(url: str, timeout: float = 30.0) -> float:
    """Wait until no session but this one is left on the database; return the seconds."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        me = conn.execute("select pg_backend_pid()").fetchone()[0]
        while left := _others(conn, (me,)):
            assert time.monotonic() - started < timeout, (
                f"sessions of a killed process still open after {timeout:.0f}s: {left}"
            )
            time.sleep(0.05)
        locks = conn.execute(
            "select count(*) from pg_locks l join pg_database d on d.oid = l.database "
            "where d.datname = current_database() and l.locktype = 'advisory'"
        ).fetchone()[0]
    assert locks == 0, "an advisory lock outlived the process that took it"
    return time.monotonic() - started


class TaskRunner:
    """The fork server of tests/adversarial/task_runner.py: one process per task run."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.adversarial.task_runner", "lifecycle_daily"]
            + [str(D1), str(logs)],
            env=env,
            cwd=env["LIFECYCLE_HOME"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.logs = logs

    def ready(self) -> None:
        """Wait until the runner has imported everything (it warms up in the background)."""
        assert self._line() == ["ready"], f"the task runner did not start (see {self.logs})"

    def _line(self) -> list[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().split()

    def start(self, task: str) -> tuple[int, Path]:
        """Start `task` in a process of its own; return its pid and log file."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(task + "\n")
        self.proc.stdin.flush()
        word, pid, log = self._line()
        assert word == "started"
        return int(pid), Path(log)

    def wait(self, pid: int) -> int:
        """Wait for the task process `pid`; return its exit code (-9: killed)."""
        word, ended, code = self._line()
        assert (word, int(ended)) == ("ended", pid)
        return int(code)

    def run(self, task: str) -> None:
        """Run `task` to its end; fail, quoting its log, unless it succeeded."""
        pid, log = self.start(task)
        code = self.wait(pid)
        assert code == 0, f"{task} failed (exit {code}):\n{log.read_text()[-4000:]}"

    def close(self) -> None:
        """End the runner (and whatever it still runs)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Caught:
    """What the task was doing when it was caught."""

    backend: int
    query: str
    written: set[str]  # relations its sessions' open transactions had written
    build: int  # relations in marts__build at that moment


def wait_blocked(
    monitor: psycopg.Connection,
    trigger: Trigger,
    holders: tuple[int, ...],
    alive,
    written_first: str | None = None,
) -> Caught:
    """Wait until a session of the task waits on the trigger's lock and, given
    `written_first`, until the task's sessions have written that relation too (scoring's
    feature query waits from the start, in a thread, while another session deletes the
    partition and opens the COPY); return what it did."""
    deadline = time.monotonic() + BLOCK_TIMEOUT_S
    while time.monotonic() < deadline:
        row = monitor.execute(
            # pg_locks and pg_stat_activity are read at two moments of one query: the
            # activity row must show the wait too, or its statement text can be the one
            # the session ran just before the statement that waits
            "select a.pid, a.query from pg_locks l join pg_stat_activity a on a.pid = l.pid "
            "where not l.granted and l.relation = %s::regclass and a.pid <> all(%s) "
            "and a.datname = current_database() and a.wait_event_type = 'Lock'",
            (trigger.relation, list(holders)),
        ).fetchone()
        if row is not None:
            written = {
                r[0]
                for r in monitor.execute(
                    "select l.relation::regclass::text from pg_locks l "
                    "join pg_database d on d.oid = l.database "
                    "where d.datname = current_database() and l.pid <> all(%s) "
                    "and l.granted and l.mode = 'RowExclusiveLock'",
                    (list(holders),),
                )
            }
            if written_first and written_first not in written:
                assert alive(), "the task ended before it wrote what it was to be killed in"
                time.sleep(0.02)
                continue
            build = monitor.execute(
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'marts__build' and c.relkind in ('r', 'v')"
            ).fetchone()[0]
            return Caught(row[0], " ".join(row[1].split()).lower(), written, build)
        assert alive(), "the task ended before it reached the point it was to be killed at"
        time.sleep(0.02)
    raise AssertionError(f"the task never waited on {trigger.relation} in {BLOCK_TIMEOUT_S}s")


def queue_behind(
    monitor: psycopg.Connection, first: psycopg.Connection, holder: psycopg.Connection, trigger
) -> None:
    """Queue `holder`'s lock behind the task's waiting DDL, then release `first`'s lock."""
    waiting = threading.Thread(target=holder.execute, args=(trigger.lock,), daemon=True)
    waiting.start()
    deadline = time.monotonic() + 30
    while not monitor.execute(
        "select count(*) from pg_locks where pid = %s and not granted and relation = %s::regclass",
        (holder.info.backend_pid, trigger.relation),
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "the test's lock was never queued"
        time.sleep(0.01)
    first.rollback()  # the DDL goes on; its transaction's commit hands `lock` to `holder`
    waiting.join(timeout=BLOCK_TIMEOUT_S)
    assert not waiting.is_alive(), "the task's first transaction never committed"


def kill(caught: Caught, pid: int, monitor: psycopg.Connection) -> None:
    """SIGKILL the task's process (as the OOM killer or a lost worker would)."""
    os.kill(pid, signal.SIGKILL)


def terminate(caught: Caught, pid: int, monitor: psycopg.Connection) -> None:
    """End the task's waiting session from the server side (``pg_terminate_backend``)."""
    assert monitor.execute("select pg_terminate_backend(%s)", (caught.backend,)).fetchone()[0]


def fault_mid_step(runner: TaskRunner, url: str, task: str, fault=kill) -> tuple[Caught, int, Path]:
    """Run `task`, inject `fault` while it is caught mid-step; return what it was doing,
    how its process ended and its log."""
    trigger = TRIGGERS[task]
    with (
        psycopg.connect(url, autocommit=True) as monitor,
        psycopg.connect(url) as first,
        psycopg.connect(url) as holder,
    ):
        holders = tuple(c.info.backend_pid for c in (monitor, first, holder))
        if trigger.ddl:
            first.execute(f"lock table {trigger.relation} in access share mode")
        else:
            holder.execute(trigger.lock)
        pid, log = runner.start(task)
        try:
            if trigger.ddl:
                ddl = wait_blocked(monitor, trigger, holders, lambda: _running(pid))
                assert ddl.query.startswith(trigger.ddl), ddl
                queue_behind(monitor, first, holder, trigger)
            caught = wait_blocked(
                monitor, trigger, holders, lambda: _running(pid), written_first=trigger.wrote
            )
        except AssertionError as exc:
            code = runner.wait(pid) if not _running(pid) else None
            raise AssertionError(f"{exc} (exit {code}); log:\n{log.read_text()[-3000:]}") from exc
        assert _running(pid), "the task's process was not alive at the fault"
        # the waiting statement is still the task's: its backend has not moved on
        still = monitor.execute(
            "select state, wait_event_type from pg_stat_activity where pid = %s",
            (caught.backend,),
        ).fetchone()
        fault(caught, pid, monitor)
        holder.rollback()
        code = runner.wait(pid)
    assert still == ("active", "Lock"), still
    return caught, code, log


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator:
    """An embedded PostgreSQL of this module's own (the tests stop and restart it)."""
    yield from embedded_server()


def _create_database(admin: str, name: str, template: str | None = None) -> str:
    deadline = time.monotonic() + 30
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        while True:
            try:
                conn.execute(
                    f'create database "{name}"' + (f' template "{template}"' if template else "")
                )
                break
            except psycopg.errors.ObjectInUse:  # the template's last sessions are closing
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return wh.with_database(admin, name)


@pytest.fixture(scope="module")
def world(server) -> Iterator[dict]:
    """D0, a champion and D0's exports in one warehouse; its clone; the clean run of D1."""
    from lifecycle.sample.world import WorldConfig, generate_world

    root = Path(tempfile.mkdtemp(prefix="lifecycle-faults-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        generate_world(WorldConfig(customers=200, start=START, end=END, seed=5), root / "world")
        home = root / "home"
        home.mkdir()
        admin = wh.with_database(wh.warehouse_url(server, start=False), "postgres")
        ref_url = _create_database(admin, "faults_reference")
        ref = _env(home, ref_url, root / "world", "reference")
        _cli(ref, "pipeline", "run", "--date", str(D0))
        _cli(ref, "pipeline", "run", "--dag", "lifecycle_train", "--date", str(D0))
        # the task runner of the clone warms up meanwhile (it needs the DAG in Airflow's
        # metadata, not the clone)
        env = _env(home, wh.with_database(admin, "faults_run"), root / "world", "faulty")
        runner = stack.enter_context(closing(TaskRunner(env, home / "task-logs")))
        _cli(ref, "score", "--date", str(D0))
        _cli(ref, "export", "--date", str(D0))
        # a pending erasure request (filed, not applied): D1's apply_erasures has a person
        # to sweep, in the clean run and on the clone alike
        from lifecycle.privacy import Request, file_requests, site_key

        with psycopg.connect(ref_url) as conn:
            (someone,) = conn.execute("select min(customer_id) from raw.orders__orders").fetchone()
            file_requests(conn, site_key(ref), [Request("customer_id", someone)])
        url = _create_database(admin, "faults_run", template="faults_reference")
        runner.ready()  # before the clean run: one writer of Airflow's metadata at a time
        done = _cli(ref, "pipeline", "run", "--date", str(D1))
        # the DAG's real tasks, all of them run (scoring and exports too: nothing skipped)
        states = dict(re.findall(r"^  (\w+) +(\w+) ", done.stdout, re.M))
        assert states == dict.fromkeys(TASKS, "success"), done.stdout
        yield {
            "server": server,
            "admin": admin,
            "home": home,
            "ref_url": ref_url,
            "ref": snapshot(ref_url),
            "ref_files": export_files(Path(ref["LIFECYCLE_EXPORT_DIR"])),
            "url": url,
            "env": env,
            "exports": Path(env["LIFECYCLE_EXPORT_DIR"]),
            "reports": Path(env["LIFECYCLE_REPORT_DIR"]),
            "runner": runner,
            "done": [],  # the tasks of D1 run to their end on the clone
            "abandoned": [],  # the batches whose load was killed
            "forgotten": someone,  # the customer id of the pending erasure request
        }


@pytest.fixture(scope="module")
def runner(world) -> Iterator[TaskRunner]:
    """The task runner on the clone (started once: Airflow and the libraries imported)."""
    return world["runner"]


def _catch_up(world: dict, runner: TaskRunner, task: str) -> None:
    """Run, to their end, the tasks before `task` that an earlier case left undone."""
    for earlier in TASKS[: TASKS.index(task)]:
        if earlier not in world["done"]:
            runner.run(earlier)
            world["done"].append(earlier)


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("task", TASKS)
def test_a_task_killed_mid_step_leaves_nothing_half_written_and_reruns(
    task: str, world: dict, runner: TaskRunner, figures
) -> None:
    url = world["url"]
    _catch_up(world, runner, task)
    before = snapshot(url)
    files_before = export_files(world["exports"]) if (world["exports"] / str(D1)).exists() else {}

    caught, code, _ = fault_mid_step(runner, url, task, kill)
    trigger = TRIGGERS[task]
    assert code == -signal.SIGKILL
    assert caught.query.startswith(trigger.query), caught
    if trigger.wrote:
        assert trigger.wrote in caught.written, caught  # its rows were sent, not committed
        if trigger.wrote.startswith("raw."):  # its run-log row stays `running` for now
            world["abandoned"].append(f"{trigger.wrote.removeprefix('raw.')}:{D1}")
    if task == "transform":  # half of the marts were built when it died
        assert 0 < caught.build < sum(1 for t in world["ref"] if t.startswith("marts.")), caught
    figures["faults: tasks SIGKILLed mid-step"] += 1

    # The killed process's sessions end with it; none of its locks stays behind.
    gone = "faults: ms until a killed task's sessions were gone (max)"
    figures[gone] = max(figures[gone], round(wait_gone(url) * 1000))
    after = snapshot(url)
    assert set(after) >= set(before), f"tables gone after the kill: {set(before) - set(after)}"
    half = sorted(
        t
        for t in after
        if not t.startswith("ops.") and t != "raw.quarantine"
        if after[t] != before.get(t) and after[t] != world["ref"].get(t)
    )
    assert half == [], f"half-written after killing {task}: {half}"
    # the marts are published by validate_marts, whole or not at all
    assert {t: v for t, v in after.items() if t.startswith("marts.")} == {
        t: v for t, v in before.items() if t.startswith("marts.")
    }
    files = export_files(world["exports"]) if (world["exports"] / str(D1)).exists() else {}
    clean, earlier = folders(world["ref_files"]), folders(files_before)
    for folder, content in folders(files).items():  # an audience's export: whole or absent
        # (a hidden .<audience>.tmp-* folder of the killed export is removed by the next)
        assert folder.startswith(".") or content in (earlier.get(folder), clean[folder]), folder
    report = world["reports"] / f"lifecycle-report-{D1}.html"
    assert not report.exists() or report.read_text().rstrip().endswith("</html>")

    runner.run(task)  # LIFECYCLE_LOCK_WAIT_S=10: a lock left behind would fail this
    world["done"].append(task)
    if task == "apply_erasures":
        # what it swept, the day's later tasks load and rebuild again: its rerun is judged
        # by the request applied and the person gone (the day's end is compared below)
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "select status, count_customers from ops.erasure_requests"
            ).fetchall() == [("applied", 1)]
            assert conn.execute(
                "select count(*) from raw.orders__orders where customer_id = %s",
                (world["forgotten"],),
            ).fetchone() == (0,)
        return
    rerun = snapshot(url)
    differ = sorted(
        t
        for t in rerun
        if not t.startswith("ops.") and t != "raw.quarantine"
        if rerun[t] != world["ref"].get(t) and rerun[t] != before.get(t)
    )
    assert differ == [], f"after the rerun of {task}, differs from the clean run: {differ}"


def test_after_every_kill_and_rerun_the_day_equals_a_clean_run(world: dict, runner) -> None:
    _catch_up(world, runner, TASKS[-1])
    if TASKS[-1] not in world["done"]:
        runner.run(TASKS[-1])
        world["done"].append(TASKS[-1])
    got = snapshot(world["url"])
    assert got.keys() == world["ref"].keys()
    assert [t for t in got if got[t] != world["ref"][t]] == []
    assert export_files(world["exports"]) == world["ref_files"]
    assert any(name.endswith("manifest.json") for name in world["ref_files"])
    assert (world["reports"] / f"lifecycle-report-{D1}.html").is_file()
    # Nothing lost: the same rows as the clean run, and the run log owns up to the kills.
    with psycopg.connect(world["url"]) as conn, psycopg.connect(world["ref_url"]) as ref:
        runs = "select batch_id, status, error from ops.load_runs where logical_date = %s"
        faulty = conn.execute(runs + " order by 1, 2, 3", (D1,)).fetchall()
        clean = ref.execute(runs + " order by 1, 2, 3", (D1,)).fetchall()
        logs = "select audience, status, count(*) from activation.export_log where as_of_date = %s"
        exports = conn.execute(logs + " group by 1, 2 order by 1, 2", (D1,)).fetchall()
        clean_exports = ref.execute(logs + " group by 1, 2 order by 1, 2", (D1,)).fetchall()
    abandoned = sorted(r for r in faulty if r[1] == "failed")
    assert sorted(r for r in faulty if r[1] != "failed") == clean
    assert abandoned == sorted((b, "failed", ABANDONED) for b in world["abandoned"])
    assert exports == clean_exports  # the killed export committed no log row


# ---------------------------------------------------------------- warehouse stopped

#: How the warehouse goes away mid-step: the server stopped (``pg_ctl stop -m fast``, every
#: session ends, nothing answers until it is started again), or only the step's session
#: ended by an administrator (``pg_terminate_backend``; the server stays up).
OUTAGES = ("stop", "terminate")


def _outage_mid_step(
    world: dict, trigger: Trigger, how: str, *args: str
) -> subprocess.CompletedProcess:
    """Run the CLI `args`; end its warehouse session (`how`) while it waits on the lock."""
    url = world["url"]
    monitor = psycopg.connect(url, autocommit=True)
    holder = psycopg.connect(url)
    try:
        holder.execute(trigger.lock)
        holders = (monitor.info.backend_pid, holder.info.backend_pid)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lifecycle.cli", *args],
            env=world["env"],
            cwd=world["env"]["LIFECYCLE_HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            caught = wait_blocked(monitor, trigger, holders, lambda: proc.poll() is None)
        except AssertionError as exc:
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            raise AssertionError(f"{args}: {exc}:\n{out[-2000:]}\n{err[-3000:]}") from exc
        assert proc.poll() is None
        if how == "stop":
            assert wh.down(world["server"])  # pg_ctl stop: every session ends
        else:
            ended = monitor.execute("select pg_terminate_backend(%s)", (caught.backend,))
            assert ended.fetchone() == (True,)
    finally:
        for conn in (holder, monitor):
            with suppress(psycopg.Error):
                conn.close()
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if how == "stop":
            wh.up(world["server"])
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    text = done.stdout + done.stderr
    assert done.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-5000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("how", OUTAGES)
def test_the_warehouse_gone_mid_load(how: str, world: dict, runner, figures) -> None:
    _catch_up(world, runner, "report")
    runs = "select status, error from ops.load_runs where batch_id = %s order by started_at"
    batch = f"orders__orders:{D1}"
    with psycopg.connect(world["url"]) as conn:
        earlier = len(conn.execute(runs, (batch,)).fetchall())
    done = _outage_mid_step(
        world, TRIGGERS["extract_orders"], how, "extract", "--source", "orders", "--date", str(D1)
    )
    line = _one_error_line(done)
    assert re.fullmatch(
        r"error: the warehouse connection failed: terminating connection due to "
        r"administrator command \(is it running\? see `lifecycle warehouse status`\)",
        line,
    ), line
    figures[f"faults: warehouse {how} mid-step"] += 1
    _cli(world["env"], "extract", "--source", "orders", "--date", str(D1))
    got = snapshot(world["url"])
    assert [t for t in got if got[t] != world["ref"][t]] == []
    with psycopg.connect(world["url"]) as conn:
        statuses = conn.execute(runs, (batch,)).fetchall()[earlier:]
    if how == "stop":  # the cut-short run could not record its end; its rerun marked it
        assert statuses == [("failed", ABANDONED), ("success", None)]
    else:  # the server was up: the run recorded its own failure
        assert statuses[1:] == [("success", None)]
        assert statuses[0][0] == "failed"
        assert statuses[0][1].startswith("AdminShutdown: terminating connection"), statuses


def test_the_warehouse_stopped_mid_transform(world: dict, runner, figures) -> None:
    # (its session ended by the server instead: the Airflow retry test below)
    how = "stop"
    _catch_up(world, runner, "report")
    before = snapshot(world["url"])
    done = _outage_mid_step(world, TRIGGERS["transform"], how, "transform", "--date", str(D1))
    line = _one_error_line(done)
    assert re.fullmatch(
        rf"error: the warehouse connection failed during dbt build as of {D1}: .+ "
        r"\(is it running\? see `lifecycle warehouse status`\); nothing was published: "
        r"rerun when it is back",
        line,
    ), line
    figures[f"faults: warehouse {how} mid-step"] += 1
    marts = {t: v for t, v in snapshot(world["url"]).items() if t.startswith("marts.")}
    assert marts == {t: v for t, v in before.items() if t.startswith("marts.")}
    # rerun as the DAG does after a failed transform: the task, then its gate and publish
    runner.run("transform")
    runner.run("validate_marts")
    got = snapshot(world["url"])
    assert [t for t in got if got[t] != world["ref"][t]] == []


def test_airflow_retries_a_transform_whose_warehouse_session_ended(
    world: dict, runner, figures
) -> None:
    _catch_up(world, runner, "report")
    _, code, log = fault_mid_step(runner, world["url"], "transform", terminate)
    text = log.read_text()
    assert code == 1, text[-3000:]
    # not a data problem: the task is up for retry (a failing dbt test fails at once)
    assert "task_runner: transform ended up_for_retry" in text, text[-3000:]
    assert f"the warehouse connection failed during dbt build as of {D1}: " in text
    figures["faults: warehouse terminate mid-step"] += 1
    runner.run("transform")  # the retry, once the warehouse answers
    runner.run("validate_marts")
    got = snapshot(world["url"])
    assert [t for t in got if got[t] != world["ref"][t]] == []


def test_a_marts_gate_retried_after_its_publish_committed_succeeds(world: dict, runner) -> None:
    # A kill after the publish's commit but before Airflow records the task's success
    # leaves nothing pending in marts__build: the retry gates the published marts again.
    # (Last: the gate's rows in ops then name `marts`, which the other cases compare.)
    _catch_up(world, runner, "report")
    runner.run("validate_marts")
    got = snapshot(world["url"])
    gates = ("ops.dq_runs", "ops.dq_results")  # the gate's rows now name the schema `marts`
    assert [t for t in got if t not in gates and got[t] != world["ref"][t]] == []
    with psycopg.connect(world["url"]) as conn:
        runs = conn.execute(
            "select schema_name, passed from ops.dq_runs where layer = 'marts' "
            "and logical_date = %s",
            (D1,),
        ).fetchall()
    assert runs == [("marts", True)]
