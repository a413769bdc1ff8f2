"""The tasks of ``lifecycle_daily``: thin TaskFlow wrappers around the pipeline's functions.

Each task reads and writes the partition of its run's **logical date** (a day ``D`` in
the business time zone of the sources file, UTC without one; the daily timetable runs on
that zone's midnights and gives the run for ``D`` the data interval ``[D, D+1)``), so a rerun
or a backfill of ``D`` reproduces what the original run of ``D`` did. Tasks return small
summaries (row and node counts) through XCom; data stays in the warehouse.

Adding a step to the DAG is one task function here plus one line in the ``chain(...)`` of
``dags/lifecycle_daily.py``. Heavy modules (pyarrow, dbt, pandas, ...) are imported inside
the tasks: importing this module costs only ``airflow.sdk`` and ``lifecycle.raw``.

Error policy: a *data* problem (a batch over its reject threshold, a failing dbt test)
fails the task at once (``AirflowFailException``) because a retry would give the same
answer; anything else (a dropped connection, an API hiccup) goes through the task's
retries.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import zoneinfo
from collections.abc import Callable
from typing import Any

from airflow.sdk import Asset, get_current_context
from airflow.sdk import task as airflow_task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from lifecycle.orchestration.assets import warehouse_asset
from lifecycle.orchestration.config import INTERRUPTED
from lifecycle.raw import CRM_CONTACTS, FX_RATES, MARKETING_SPEND, ORDER_ITEMS, ORDERS, WEB_EVENTS

#: The raw tables each source lands in (must match ``lifecycle.extract.SOURCES``, which
#: cannot be imported here: it pulls in the loader and pyarrow).
RAW_TABLES: dict[str, tuple[str, ...]] = {
    "crm": (CRM_CONTACTS.table,),
    "web": (WEB_EVENTS.table,),
    "orders": (ORDERS.table, ORDER_ITEMS.table),
    "marketing": (MARKETING_SPEND.table,),
    "fx": (FX_RATES.table,),
}
SOURCES: tuple[str, ...] = tuple(RAW_TABLES)

EXTRACT_TIMEOUT = dt.timedelta(hours=1)
TRANSFORM_TIMEOUT = dt.timedelta(hours=2)
GATE_TIMEOUT = dt.timedelta(minutes=30)
SCORE_TIMEOUT = dt.timedelta(hours=1)
ACTIVATE_TIMEOUT = dt.timedelta(hours=1)

log = logging.getLogger(__name__)

#: The assets the DAG publishes (by name): the marts (after the gate), the scores, the
#: activation. Their URIs name the warehouse (lifecycle.orchestration.assets).
MARTS = "marts"
SCORES = "ml.scores_history"
ACTIVATION = "activation.customer_scores"


# ------------------------------------------------------------------------------ assets


def marts_asset() -> Asset:
    """Return the asset of the published marts (the whole `marts` schema)."""
    return warehouse_asset(MARTS, "marts", None)


def scores_asset() -> Asset:
    """Return the asset of ``ml.scores_history``."""
    return warehouse_asset(SCORES, "ml", "scores_history")


def activation_asset() -> Asset:
    """Return the asset of ``activation.customer_scores``."""
    return warehouse_asset(ACTIVATION, "activation", "customer_scores")


def raw_asset(table: str) -> Asset:
    """Return the Airflow asset of the raw table `table` (e.g. ``orders__orders``)."""
    return warehouse_asset(f"raw.{table}", "raw", table)


def raw_assets(source: str) -> list[Asset]:
    """Return the assets of the raw tables `source` lands in."""
    return [raw_asset(table) for table in RAW_TABLES[source]]


# ----------------------------------------------------------------------------- helpers


def logical_day(context: Any) -> dt.date:
    """Return the day a run processes: its logical date in the business time zone (the
    sources file's business.timezone; fails without a logical date)."""
    value = context.get("logical_date")
    if value is None:
        raise AirflowFailException(
            f"{context['dag'].dag_id} processes one day per run and needs a logical date: "
            "trigger it with one (the day to load), e.g. `lifecycle pipeline run --date D`"
        )
    return value.astimezone(business_zone()).date()


def business_zone() -> zoneinfo.ZoneInfo:
    """Return the business time zone of the sources file (UTC without one): its midnights
    are the days of the pipeline, and the daily DAG's schedule runs on them."""
    from lifecycle.settings import load_settings
    from lifecycle.sources_file import business_zone as zone_of

    return zone_of(load_settings())


def _settings():
    # The task's environment with its Airflow Connections' credentials, read per task.
    from lifecycle.orchestration.connections import task_settings

    return task_settings()


def _annotate_assets(context: Any, extras: dict[str, dict[str, Any]]) -> None:
    """Attach small facts (row counts, date) to the asset events this task emits."""
    from lifecycle.orchestration.assets import TABLE_KEY

    events = context["outlet_events"]
    for asset in context["task"].outlets:
        name = (getattr(asset, "extra", None) or {}).get(TABLE_KEY, getattr(asset, "name", None))
        if name in extras:
            events[asset].extra = extras[name]


# ------------------------------------------------------------------------------- tasks


def task(**kwargs: Any) -> Callable:
    """Airflow's ``@task``, with an interrupt (Ctrl-C) failing the task without a retry.

    A KeyboardInterrupt raised in a task was its failure like any other: up for retry,
    and a `lifecycle pipeline run` stopped with Ctrl-C went on (and succeeded) minutes
    later. Stopping the run is what the signal asks.
    """

    def wrap(fn: Callable) -> Any:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except KeyboardInterrupt as exc:
                raise AirflowFailException(INTERRUPTED) from exc

        return airflow_task(**kwargs)(run)

    return wrap


@task(multiple_outputs=False, execution_timeout=EXTRACT_TIMEOUT)
def _extract_source(source: str) -> dict[str, int]:
    """Land `source` for the run's logical date in raw; return rows loaded per raw table."""
    from lifecycle.extract import extract
    from lifecycle.load import LoadError

    context = get_current_context()
    day = logical_day(context)
    full = bool(context["params"].get("full_reload", False))
    try:
        results = extract(source, day, _settings(), full=full)
    except LoadError as exc:
        raise AirflowFailException(f"{source} for {day}: {exc}") from exc
    loaded: dict[str, int] = {}
    extras: dict[str, dict[str, Any]] = {}
    for result in results:  # the loader logs each batch's summary itself
        table = f"raw.{result.source}__{result.entity}"
        loaded[table] = result.rows_loaded
        extras[table] = {
            "logical_date": day.isoformat(),
            "batch_id": result.batch_id,
            "status": result.status,
            "rows_loaded": result.rows_loaded,
            "rows_quarantined": result.rows_quarantined,
        }
    _annotate_assets(context, extras)
    return loaded


def extract(source: str):
    """Add the task ``extract_<source>`` to the DAG being defined; return its output."""
    if source not in RAW_TABLES:
        raise ValueError(f"unknown source {source!r}; one of: {', '.join(SOURCES)}")
    return _extract_source.override(task_id=f"extract_{source}", outlets=raw_assets(source))(
        source=source
    )


@task(task_id="apply_erasures", multiple_outputs=False, execution_timeout=EXTRACT_TIMEOUT)
def apply_erasures() -> dict[str, Any]:
    """Apply pending erasure requests (lifecycle.privacy) before anything is loaded."""
    from lifecycle import warehouse
    from lifecycle.activation.run import export_root
    from lifecycle.privacy import ErasureError, apply_pending

    settings = _settings()
    try:
        result = apply_pending(
            warehouse.warehouse_url(settings), settings.environ, export_root(settings)
        )
    except ErasureError as exc:
        raise AirflowFailException(f"erasure requests not applied: {exc}") from exc
    log.info("%s", result.summary())
    return result.facts()


def _run_id(context: Any) -> str:
    return str(context.get("run_id") or f"manual__{logical_day(context).isoformat()}")


def _facts(result: Any) -> dict[str, Any]:
    """Return the small JSON-able facts of a step's result for XCom (and its summary)."""
    for name in ("facts", "to_dict"):
        method = getattr(result, name, None)
        if callable(method):
            facts = dict(method())
            break
    else:
        facts = {}
    summary = getattr(result, "summary", None)
    if callable(summary):
        facts.setdefault("summary", summary())
    return facts


def _gate_failed(exc: Exception) -> AirflowFailException:
    # The verdict's summary lists every failing expectation: put it in the task log.
    verdict = getattr(exc, "verdict", None)
    text = verdict.summary() if verdict is not None else str(exc)
    return AirflowFailException(f"quality gate failed:\n{text}")


def _gate(layer: str) -> dict[str, Any]:
    """Run the suites of `layer` on the run's day; fail the task listing what failed."""
    from lifecycle.quality.gate import GateFailed, run_validate

    context = get_current_context()
    day = logical_day(context)
    try:
        verdict = run_validate(day, _settings(), layer=layer, run_id=_run_id(context))
    except GateFailed as exc:
        raise _gate_failed(exc) from exc
    log.info("%s", verdict.summary())
    return _facts(verdict)


@task(task_id="validate_raw", multiple_outputs=False, execution_timeout=GATE_TIMEOUT)
def validate_raw() -> dict[str, Any]:
    """Run the raw suites on the day's batches; fail the run (nothing built) if they fail."""
    return _gate("raw")


@task(task_id="transform", multiple_outputs=False, execution_timeout=TRANSFORM_TIMEOUT)
def transform() -> dict[str, Any]:
    """Build staging, intermediate and marts (into marts__build) as of the day; return counts."""
    from lifecycle.transform import TransformError, WarehouseUnavailable
    from lifecycle.transform import transform as build

    context = get_current_context()
    day = logical_day(context)
    params = context["params"]
    select = list(params.get("dbt_select") or []) or None
    try:
        result = build(
            day,
            _settings(),
            full_refresh=bool(params.get("dbt_full_refresh", False)),
            select=select,
            publish=False,  # write-audit-publish: validate_marts publishes
        )
    except WarehouseUnavailable:
        raise  # not the data: the task's retries wait for the warehouse to come back
    except TransformError as exc:
        raise AirflowFailException(f"dbt build as of {day} failed:\n{exc}") from exc
    facts = {
        "as_of_date": day.isoformat(),
        **result.counts(),
        "seconds": round(result.elapsed_s, 1),
    }
    if result.warnings:  # printed whole under the task's line by `lifecycle pipeline run`
        facts["warnings"] = result.warnings
    return facts


@task(task_id="validate_marts", multiple_outputs=False, execution_timeout=GATE_TIMEOUT)
def validate_marts() -> dict[str, Any]:
    """Gate the day's marts build and publish it into `marts` only when it passes."""
    from lifecycle.quality.gate import GateFailed, gate_and_publish

    context = get_current_context()
    day = logical_day(context)
    try:
        result = gate_and_publish(day, _settings(), run_id=_run_id(context))
    except GateFailed as exc:
        raise _gate_failed(exc) from exc
    log.info("%s", result.summary())
    facts = _facts(result)
    _annotate_assets(context, {MARTS: {"logical_date": day.isoformat()}})
    return facts


@task(task_id="score", multiple_outputs=False, execution_timeout=SCORE_TIMEOUT)
def score() -> dict[str, Any]:
    """Score every eligible customer as of the day with the champion models."""
    from ml.score import ScoreError
    from ml.score import score as score_customers
    from ml.tracking import NoChampionError

    context = get_current_context()
    day = logical_day(context)
    try:
        # the scores' run id stays the default, keyed on the day: a rerun or a backfill
        # writes exactly the rows the original run wrote
        result = score_customers(day, _settings())
    except (ScoreError, NoChampionError) as exc:
        if isinstance(exc, NoChampionError) or isinstance(exc.__cause__, NoChampionError):
            raise AirflowSkipException(
                f"no champion model yet, so nothing is scored or exported for {day}: {exc} "
                "(trigger lifecycle_train, or `lifecycle pipeline run --dag lifecycle_train`)"
            ) from exc
        raise AirflowFailException(f"scoring as of {day} failed: {exc}") from exc
    log.info("%s", result.summary())
    facts = _facts(result)
    _annotate_assets(context, {SCORES: {"logical_date": day.isoformat()}})
    return facts


@task(task_id="validate_scores", multiple_outputs=False, execution_timeout=GATE_TIMEOUT)
def validate_scores() -> dict[str, Any]:
    """Gate the day's scores (probabilities in [0, 1], one row per customer) before export."""
    return _gate("scores")


@task(task_id="activate", multiple_outputs=False, execution_timeout=ACTIVATE_TIMEOUT)
def activate() -> dict[str, Any]:
    """Write customer scores and audiences for the day, export them and push where set."""
    from lifecycle.activation.run import run_activation

    context = get_current_context()
    day = logical_day(context)
    result = run_activation(day, _settings())  # run id keyed on the day, as for scores
    log.info("%s", result.summary())
    _annotate_assets(context, {ACTIVATION: {"logical_date": day.isoformat()}})
    return _facts(result)


@task(task_id="validate_activation", multiple_outputs=False, execution_timeout=GATE_TIMEOUT)
def validate_activation() -> dict[str, Any]:
    """Check what was exported: no contact without marketing consent, scores in range."""
    return _gate("activation")


@task(
    task_id="report",
    multiple_outputs=False,
    execution_timeout=GATE_TIMEOUT,
    # also when scoring skipped (no champion yet): the marts part of the report stands
    trigger_rule="none_failed",
)
def report() -> dict[str, Any]:
    """Write the day's HTML lifecycle report; return its path."""
    from lifecycle.report.build import build_report

    context = get_current_context()
    day = logical_day(context)
    result = build_report(day, _settings())
    log.info("%s", result.summary())
    facts = _facts(result)
    facts["path"] = str(result.path)
    return facts
