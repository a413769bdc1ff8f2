"""The tasks of ``lifecycle_train``: thin TaskFlow wrappers around :mod:`ml.stages`.

A run for logical date ``D`` trains **as of D − 1**: the last day the daily DAG has
completed when the weekly schedule fires (Monday 06:00 UTC trains on data through
Sunday). ``as_of`` in the run's params overrides it. Tasks hand off MLflow run ids and
model versions through XCom; models live in MLflow, training sets in the warehouse.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from lifecycle.orchestration.daily import task

log = logging.getLogger(__name__)

TRAIN_TIMEOUT = dt.timedelta(hours=2)


def as_of_day(context: Any) -> dt.date:
    """Return the as-of date of a training run: its `as_of` param, else logical date − 1."""
    value = (context.get("params") or {}).get("as_of")
    if value:
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError as exc:
            raise AirflowFailException(f"param as_of={value!r} is not a YYYY-MM-DD date") from exc
    logical = context.get("logical_date")
    if logical is None:
        raise AirflowFailException("a training run needs a logical date or the as_of param")
    from lifecycle.orchestration.daily import business_zone

    return logical.astimezone(business_zone()).date() - dt.timedelta(days=1)


def _settings():
    from lifecycle.orchestration.connections import task_settings

    return task_settings()


def _guard(step: str, fn, *args):
    """Run an ml.stages function; turn data errors into a hard failure (a retry would
    give the same answer: missing marts, a wrong spec, data a model cannot be fitted on)."""
    from ml.churn import ChurnSpecError
    from ml.features import FeatureError
    from ml.train import TrainError

    try:
        return fn(*args)
    except (TrainError, FeatureError, ChurnSpecError) as exc:
        raise AirflowFailException(f"{step}: {exc}") from exc


@task(task_id="training_sets", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def training_sets() -> dict[str, Any]:
    """Write the point-in-time labelled snapshots to ml.training_set; return their sizes."""
    from ml import stages

    as_of = as_of_day(get_current_context())
    rows = _guard("training sets", stages.training_sets, as_of, _settings())
    return {"as_of": as_of.isoformat(), "rows": rows}


@task(task_id="train_churn", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def train_churn() -> str:
    """Fit the churn model (and its orders-only variant); return the MLflow run id."""
    from ml import stages

    return _guard("churn", stages.fit_churn, as_of_day(get_current_context()), _settings())


@task(task_id="train_clv", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def train_clv() -> str | None:
    """Fit BG/NBD + Gamma-Gamma; return the MLflow run id (None: the data cannot fit it, the
    log says what it lacks, and the rest is registered without it)."""
    from ml import stages

    return _guard("CLV", stages.fit_clv, as_of_day(get_current_context()), _settings())


@task(task_id="train_segmentation", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def train_segmentation() -> str:
    """Fit the segmentation with ids matched to the champion's; return the MLflow run id."""
    from ml import stages

    as_of = as_of_day(get_current_context())
    return _guard("segmentation", stages.fit_segmentation, as_of, _settings())


@task(task_id="evaluate", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def evaluate(churn_run_id: str) -> dict[str, Any]:
    """Evaluate the churn model against the baselines on the holdout; return the metrics."""
    from ml import stages

    as_of = as_of_day(get_current_context())
    result = _guard("evaluation", stages.evaluate, as_of, _settings(), churn_run_id)
    for scorer, m in result["metrics"].items():
        log.info("%-14s ROC AUC %.4f  PR AUC %.4f", scorer, m["roc_auc"], m["pr_auc"])
    return result


@task(task_id="register", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def register(churn_run_id: str, clv_run_id: str | None, segmentation_run_id: str) -> dict[str, Any]:
    """Register the three runs' models as new versions; return versions and run ids."""
    from ml import stages, tracking

    run_ids = {
        tracking.CHURN_MODEL: churn_run_id,
        tracking.CLV_MODEL: clv_run_id,
        tracking.SEGMENTATION_MODEL: segmentation_run_id,
    }
    as_of = as_of_day(get_current_context())
    return {"versions": stages.register(as_of, _settings(), run_ids), "run_ids": run_ids}


@task(task_id="promote", multiple_outputs=False, execution_timeout=TRAIN_TIMEOUT)
def promote(registered: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Make the new versions champion or challenger; return the decisions and their reasons."""
    from ml import stages

    as_of = as_of_day(get_current_context())
    decisions = stages.promote(
        as_of,
        _settings(),
        registered["versions"],
        registered["run_ids"],
        evaluation["metrics"]["churn_model"],
    )
    lines = [
        f"{name} v{d['version']} -> {'champion' if d['promoted'] else 'challenger'}: {d['reason']}"
        for name, d in decisions.items()
    ]
    log.info("%s", "\n".join(lines))
    return {"promotions": decisions, "summary": "; ".join(lines)}
