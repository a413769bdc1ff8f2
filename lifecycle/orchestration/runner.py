"""Run a DAG through Airflow, in this process, for one logical date or a range of them.

This is the local way to operate the pipeline (and what ``lifecycle pipeline run`` /
``backfill`` do): no scheduler or API server, just Airflow's ``dag.test()`` on the local
Airflow home (``$LIFECYCLE_HOME/airflow``, SQLite metadata). Every DAG run is a real
Airflow run: task instances, XComs, asset events, params, retries and the failure
callback all go through Airflow, and the runs are visible afterwards to any Airflow
component pointed at the same home (``eval "$(lifecycle airflow env)"``).

A date range runs one day after the other, oldest first, as the scheduler with
``max_active_runs=1`` would; the first failed day stops the range. Each run's full
output goes to ``$LIFECYCLE_HOME/airflow/logs/local-runs/<dag_id>/<date>.log``.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lifecycle.orchestration import home, logs
from lifecycle.orchestration.config import (
    DAILY_DAG_ID,
    INTERRUPTED,
    OrchestrationSettings,
    load_orchestration_settings,
)
from lifecycle.orchestration.connections import airflow_settings
from lifecycle.orchestration.home import OrchestrationError
from lifecycle.settings import environment

Echo = Callable[[str], None]


@dataclass(frozen=True)
class TaskReport:
    """The outcome of one task instance of a run."""

    task_id: str
    state: str
    try_number: int
    duration_s: float | None
    result: Any = None  # the task's XCom return value (small: row counts, node counts)

    def describe(self) -> str:
        """Return one line for the console."""
        duration = f"{self.duration_s:7.1f}s" if self.duration_s is not None else "       -"
        tries = f" (try {self.try_number})" if self.try_number > 1 else ""
        result = f"  {_short(self.result)}" if self.result not in (None, {}) else ""
        return f"  {self.task_id:<24} {self.state:<16}{duration}{tries}{result}"


@dataclass
class RunReport:
    """The outcome of one DAG run."""

    dag_id: str
    logical_date: dt.date
    run_id: str
    state: str
    duration_s: float
    log_file: str
    tasks: list[TaskReport] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)  # alerts.FailureReport of this run

    @property
    def ok(self) -> bool:
        """True when the run succeeded."""
        return self.state == "success"

    @property
    def failed_tasks(self) -> list[TaskReport]:
        """Return the tasks that failed (not those that were skipped because of them)."""
        return [t for t in self.tasks if t.state == "failed"]

    def describe(self) -> str:
        """Return a multi-line summary: one line per task, then the outcome."""
        lines = [f"{self.dag_id} {self.logical_date}: {self.state} in {self.duration_s:.1f}s"]
        lines += [t.describe() for t in self.tasks]
        # what a task says the results should be read with (e.g. a score date past the
        # data), in full: the task's line above is cut short
        lines += [
            f"  warning: {t.task_id}: {w}"
            for t in self.tasks
            if isinstance(t.result, dict)
            for w in t.result.get("warnings") or ()
        ]
        return "\n".join(lines)

    @property
    def interrupted(self) -> bool:
        """True when a task failed because it was stopped with Ctrl-C (not by a fault)."""
        return any(INTERRUPTED in str(f.error) for f in self.failures)

    def failure_message(self) -> str:
        """Return what failed, for which date, why, and where the log is."""
        failed = ", ".join(t.task_id for t in self.failed_tasks) or "(no task failed; see the log)"
        lines = [
            f"{self.dag_id} failed for logical date {self.logical_date}: task(s) {failed}.",
        ]
        for f in self.failures:
            lines.append(f"  {f.task_id}: {f.error}")
        lines.append(f"  log: {self.log_file}")
        lines.append(f"  run: {self.run_id}")
        return "\n".join(lines)


class PipelineRunError(RuntimeError):
    """A DAG run failed; ``report`` says which task, and ``remaining`` the dates not run."""

    def __init__(self, report: RunReport, remaining: Sequence[dt.date] = ()):
        self.report = report
        self.remaining = list(remaining)
        message = report.failure_message()
        if self.remaining:
            message += (
                f"\n  not run: {len(self.remaining)} later date(s), "
                f"{self.remaining[0]} .. {self.remaining[-1]}"
            )
        super().__init__(message)


def _short(value: Any, limit: int = 100) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items())
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Return the days from `start` to `end`, both included."""
    if end < start:
        raise ValueError(f"the end date {end} is before the start date {start}")
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def prepare(
    cfg: OrchestrationSettings | None = None, echo: Echo | None = None
) -> OrchestrationSettings:
    """Activate and (if needed) migrate the local Airflow home; return its settings."""
    cfg = cfg or load_orchestration_settings()
    home.ensure_initialized(cfg, echo=echo)
    return cfg


def load_dag(cfg: OrchestrationSettings, dag_id: str = DAILY_DAG_ID):
    """Parse the DAG folder and return the DAG `dag_id` (import errors are raised)."""
    home.activate(cfg)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(cfg.dags_folder), collect_dags=True)
    if bag.import_errors:
        details = "\n".join(f"  {path}: {err}" for path, err in bag.import_errors.items())
        raise OrchestrationError(f"the DAG folder {cfg.dags_folder} has import errors:\n{details}")
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise OrchestrationError(
            f"no DAG {dag_id!r} in {cfg.dags_folder} (found: {', '.join(sorted(bag.dags)) or '-'})"
        )
    return dag


def _task_reports(dag_run) -> list[TaskReport]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = sorted(
            dag_run.get_task_instances(session=session),
            key=lambda ti: (ti.start_date is None, ti.start_date or dt.datetime.max, ti.task_id),
        )
        values = {
            x.task_id: XComModel.deserialize_value(x)
            for x in session.scalars(
                XComModel.get_many(
                    run_id=dag_run.run_id, dag_ids=dag_run.dag_id, key="return_value"
                )
            )
        }
        return [
            TaskReport(
                task_id=ti.task_id,
                state=str(getattr(ti.state, "value", ti.state) or "none"),
                try_number=int(ti.try_number or 0),
                duration_s=float(ti.duration) if ti.duration is not None else None,
                result=values.get(ti.task_id),
            )
            for ti in tis
        ]


def run_dates(
    dates: Sequence[dt.date],
    *,
    dag_id: str = DAILY_DAG_ID,
    conf: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    echo: Echo = print,
    verbose: bool = False,
    cfg: OrchestrationSettings | None = None,
) -> list[RunReport]:
    """Run `dag_id` through Airflow for each date (oldest first); return one report per run.

    `conf` becomes the runs' params (e.g. ``{"full_reload": True}``); `env` is set in the
    environment while the runs execute (the tasks read their settings from it). Raises
    :class:`PipelineRunError` at the first failed run, naming the task, date and log.
    """
    if not dates:
        return []
    dates = sorted(set(dates))
    with environment(env):
        # Settings (LIFECYCLE_HOME) may come from `env`: resolve them inside the block.
        cfg = cfg or load_orchestration_settings()
        # Start the warehouse before any capture: an embedded server started inside it
        # would inherit the capture's pipes.
        from lifecycle import warehouse
        from lifecycle.locks import WAREHOUSE, run_lock
        from lifecycle.settings import load_settings

        # The tasks connect to the warehouse of its Airflow Connection when one is
        # defined: start, bootstrap and lock that one (Airflow's home first).
        # The DAG files read the sources file when Airflow imports them: a mistake in it
        # would come back as the DAG folder's import error, a traceback. Said here, first
        # (before Airflow is imported at all).
        from lifecycle.sources_file import SourcesFileError, load_sources

        try:
            load_sources(load_settings())
        except SourcesFileError as exc:
            raise OrchestrationError(str(exc)) from None
        home.activate(cfg)
        settings = airflow_settings(load_settings())
        url = warehouse.up(settings)
        # One pipeline run at a time per warehouse, Airflow's metadata included: a second
        # waits (bounded) or fails naming the first.
        with run_lock(url, "pipeline", dates[0], scope=WAREHOUSE, wait_s=settings.lock_wait_s):
            prepare(cfg, echo=echo)
            return _run_all(dates, dag_id, conf, cfg, echo, verbose)


def _run_all(dates, dag_id: str, conf, cfg, echo: Echo, verbose: bool) -> list[RunReport]:
    # Importing Airflow and parsing the DAGs is chatty: keep it in a log of its own.
    setup_log = cfg.run_log_folder / dag_id / "setup.log"
    with logs.capture(setup_log, echo=verbose):
        try:
            dag = load_dag(cfg, dag_id)
        except OrchestrationError as exc:
            raise OrchestrationError(f"{exc}\n(log: {setup_log})") from exc
    unknown = sorted(set(conf or {}) - set(dag.params.keys()))
    if unknown:
        raise OrchestrationError(
            f"unknown param(s) {', '.join(unknown)} for {dag_id}; its params are: "
            f"{', '.join(sorted(dag.params.keys()))}"
        )
    first = dag.start_date.date() if dag.start_date else None
    if first and dates[0] < first:
        raise OrchestrationError(
            f"{dates[0]} is before the start_date of {dag_id} ({first}): Airflow would "
            "create the run without any task"
        )
    from lifecycle.orchestration import alerts

    reports = []
    for index, day in enumerate(dates):
        report = _run_one(dag, day, conf, cfg, echo, verbose, alerts)
        reports.append(report)
        if not report.ok:
            raise PipelineRunError(report, dates[index + 1 :])
    return reports


def _run_one(dag, day: dt.date, conf, cfg, echo: Echo, verbose: bool, alerts) -> RunReport:
    from lifecycle.orchestration.daily import business_zone

    # the run for day D starts at D's midnight in the business zone (the DAG's timetable)
    logical_date = dt.datetime.combine(day, dt.time(), tzinfo=business_zone())
    log_file = cfg.run_log_folder / dag.dag_id / f"{day.isoformat()}.log"
    echo(f"{dag.dag_id} {day}: running (log: {log_file})")
    alerts.RECENT_FAILURES.clear()
    started = time.perf_counter()
    with logs.capture(log_file, echo=verbose):
        header = f"\n===== {dag.dag_id} logical date {day} conf={dict(conf or {})} =====\n"
        os.write(1, header.encode())
        try:
            dag_run = dag.test(logical_date=logical_date, run_conf=dict(conf or {}))
        except Exception as exc:  # Airflow itself failed (not a task): keep the traceback
            import traceback

            os.write(2, traceback.format_exc().encode())
            raise OrchestrationError(
                f"Airflow could not run {dag.dag_id} for {day}: {exc} (log: {log_file})"
            ) from exc
    elapsed = time.perf_counter() - started
    tasks = _task_reports(dag_run)
    state = str(getattr(dag_run.state, "value", dag_run.state))
    if not tasks and state == "success":
        state = "failed"  # a run without task instances did nothing: never report success
    report = RunReport(
        dag_id=dag.dag_id,
        logical_date=day,
        run_id=dag_run.run_id,
        state=state,
        duration_s=elapsed,
        log_file=str(log_file),
        tasks=tasks,
        failures=list(alerts.RECENT_FAILURES),
    )
    echo(report.describe())
    return report
