"""The training step as separate tasks that hand off through MLflow runs (the training DAG).

:func:`ml.train.train` runs the whole step in one process (``lifecycle train``). The
``lifecycle_train`` DAG runs it as tasks instead — training sets → churn, CLV,
segmentation → evaluation → register → promote — and tasks share no memory (on a
deployment they run on different workers), so every fitted model is logged to an MLflow
run as soon as it is trained and the later tasks load it from ``runs:/<run id>/model``.
Only run ids, versions and metrics travel between tasks (through XCom); the training sets
stay in the warehouse (``ml.training_set``). Each function is keyed on the as-of date, so
a retry of any task redoes exactly its part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle.settings import Settings
from ml import train as tr

log = logging.getLogger(__name__)

#: Artifact path of the orders-only variant in the churn run (evaluated beside the model).
ORDERS_ONLY_ARTIFACT = "orders_only_model"


def _specs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from ml.churn import load_churn_spec
    from ml.specs import load_spec

    return load_churn_spec(None), load_spec("clv"), load_spec("segmentation")


def _tags(as_of: dt.date) -> dict[str, str]:
    return {"as_of": as_of.isoformat(), "trained_by": "lifecycle_train"}


def training_sets(as_of: dt.date, settings: Settings) -> dict[str, int]:
    """Write the labelled snapshots of `as_of` to ml.training_set; return rows per snapshot."""
    spec, _, _ = _specs()
    rows = tr.build_training_sets(as_of, settings, spec)
    return {d.isoformat(): int(n) for d, n in rows.items()}


def fit_churn(as_of: dt.date, settings: Settings) -> str:
    """Fit the churn model and its orders-only variant, log both to a new run; return its id."""
    import mlflow

    from ml import tracking

    spec, _, _ = _specs()
    frames = tr.load_frames(as_of, settings, spec)
    model, orders_only = tr.train_churn(frames, spec)
    client = tracking.configure(settings)
    exp = tracking.experiment_id(settings, client, tracking.CHURN_MODEL)
    with mlflow.start_run(experiment_id=exp, run_name=f"churn-{as_of}", tags=_tags(as_of)) as run:
        mlflow.log_params(tr.churn_run_params(frames, spec, model))
        tracking.log_churn_model(model, frames.holdout[model.features].head(5))
        tracking.log_churn_model(
            orders_only,
            frames.holdout[orders_only.features].head(5),
            name=ORDERS_ONLY_ARTIFACT,
        )
        return run.info.run_id


def fit_clv(as_of: dt.date, settings: Settings) -> str | None:
    """Fit BG/NBD + Gamma-Gamma on the customers as of `as_of`, log it; return the run id,
    or None when the data cannot fit it (logged: what the data lacks; the champion stays,
    and churn and segmentation are registered without it)."""
    from ml import tracking

    spec, clv_spec, _ = _specs()
    frames = tr.load_current(as_of, settings, spec)  # CLV fits on today's customers alone
    try:
        model = tr.train_clv(frames, clv_spec)
    except tr.TrainError as exc:
        log.warning("CLV not trained, churn and segmentation are: %s", exc)
        return None
    example = tr.rfm_frame(frames.current).head(5)
    params = model.to_dict()
    return _log_pyfunc_run(settings, tracking.CLV_MODEL, as_of, model, example, params, frames)


def fit_segmentation(as_of: dt.date, settings: Settings) -> str:
    """Fit the segmentation (ids matched to the champion's), log it; return the run id."""

    from ml import tracking

    spec, _, base_seg_spec = _specs()
    # today's customers, and which segmentation features the training rows cannot feed
    frames = tr.load_current(as_of, settings, spec, base_seg_spec["features"])
    seg_spec, _ = tr.segmentation_spec(base_seg_spec, frames)
    previous = None
    with contextlib.suppress(tracking.NoChampionError):
        previous, _ = tracking.load_champion(settings, tracking.SEGMENTATION_MODEL)
    model = tr.train_segmentation(frames, seg_spec, previous=previous)
    example = tr.segmentation_frame(frames.current, seg_spec).head(5)
    params = tr._seg_params(model, seg_spec)
    return _log_pyfunc_run(
        settings, tracking.SEGMENTATION_MODEL, as_of, model, example, params, frames
    )


def _log_pyfunc_run(
    settings: Settings,
    name: str,
    as_of: dt.date,
    model: Any,
    example: Any,
    params: Mapping[str, Any],
    frames: tr.Frames,
) -> str:
    import mlflow

    from ml import tracking

    client = tracking.configure(settings)
    exp = tracking.experiment_id(settings, client, name)
    with mlflow.start_run(experiment_id=exp, run_name=f"{name}-{as_of}", tags=_tags(as_of)) as run:
        mlflow.log_params(tr._flat(params))
        mlflow.log_metric("customers", len(frames.current))
        tracking.log_pyfunc(model, example)
        return run.info.run_id


def evaluate(as_of: dt.date, settings: Settings, churn_run_id: str) -> dict[str, Any]:
    """Score the holdout with the churn run's models and the baselines; log metrics and plots
    to that run; return the metrics per scorer and the oracle comparison."""
    import mlflow

    from ml import tracking
    from ml.evaluate import save_plots

    spec, clv_spec, _ = _specs()
    frames = tr.load_frames(as_of, settings, spec, holdout_only=True)
    tracking.configure(settings)
    model = mlflow.sklearn.load_model(f"runs:/{churn_run_id}/model")
    orders_only = mlflow.sklearn.load_model(f"runs:/{churn_run_id}/{ORDERS_ONLY_ARTIFACT}")
    truth = settings.world_dir / "truth" / "customers.csv"
    metrics, oracle, curves = tr.evaluate(
        frames,
        model,
        orders_only,
        spec,
        clv_spec,
        truth if Path(truth).is_file() else None,
        settings,
    )
    with mlflow.start_run(run_id=churn_run_id):
        for scorer, values in metrics.items():
            mlflow.log_metrics({f"{scorer}.{k}": v for k, v in values.items()})
        mlflow.log_metrics(dict(metrics["churn_model"]))
        if oracle:
            mlflow.log_metrics({f"oracle.{k}": v for k, v in oracle.items()})
        tr.log_uncertainty_and_candidates(curves, model)
        plot_dir = tracking.artifacts_dir(settings) / churn_run_id
        y = frames.holdout["churned"].astype(int).to_numpy()
        for path in save_plots(y, curves["probabilities"], curves["scores"], plot_dir):
            mlflow.log_artifact(str(path), artifact_path="plots")
    return {"metrics": metrics, "oracle": oracle, "holdout_date": frames.holdout_date.isoformat()}


# Registering and promoting hold the lock `lifecycle train` holds: they take turns with a
# training run from the command line (the DAG itself runs one training at a time).
@tr.train_lock
def register(as_of: dt.date, settings: Settings, run_ids: Mapping[str, str]) -> dict[str, str]:
    """Register the model of each run (registered model name → run id); return the versions."""
    from ml import tracking

    client = tracking.configure(settings)
    return {
        name: tracking.register(client, name, f"runs:/{run_id}/model", run_id, _tags(as_of))
        for name, run_id in run_ids.items()
        if run_id is not None  # not trained this run (fit_clv on data it cannot fit)
    }


@tr.train_lock
def promote(
    as_of: dt.date,
    settings: Settings,
    versions: Mapping[str, str],
    run_ids: Mapping[str, str],
    churn_metrics: Mapping[str, float],
) -> dict[str, dict[str, Any]]:
    """Set the aliases: the churn version becomes champion only if it beats the current
    champion on the same holdout by the configured margin; return the decisions."""
    import mlflow

    from ml import tracking

    spec, _, _ = _specs()
    client = tracking.configure(settings)
    decisions: dict[str, dict[str, Any]] = {}
    frames = tr.load_frames(as_of, settings, spec, holdout_only=True)
    champion_version, champion_value, champion_p = tr.champion_holdout_scores(
        settings, frames.holdout
    )
    metric = spec["promotion"]["metric"]
    run_id = run_ids[tracking.CHURN_MODEL]
    new = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    with mlflow.start_run(run_id=run_id):
        gain_interval = tr.promotion_interval(
            spec,
            frames.holdout["churned"].astype(int).to_numpy(),
            new.churn_probability(frames.holdout),
            champion_p,
        )
    churn = tracking.decide(
        tracking.CHURN_MODEL,
        versions[tracking.CHURN_MODEL],
        metric=metric,
        value=float(churn_metrics[metric]),
        champion_version=champion_version,
        champion_value=champion_value,
        min_improvement=float(spec["promotion"]["min_improvement"]),
        gain_interval=gain_interval,
    )
    tracking.apply_promotion(client, churn, run_ids[tracking.CHURN_MODEL])
    if champion_value is not None:  # the report shows it beside the new model's metrics
        client.log_metric(
            run_ids[tracking.CHURN_MODEL], f"previous_champion.{metric}", champion_value
        )
    decisions[tracking.CHURN_MODEL] = churn.to_dict()
    # CLV and segmentation: a successful retrain replaces the champion (see docs/ml.md)
    for name in (tracking.CLV_MODEL, tracking.SEGMENTATION_MODEL):
        if name not in versions:  # not trained this run: its champion stays
            continue
        previous = tracking.version_by_alias(client, name, tracking.CHAMPION)
        decision = tracking.Promotion(
            name,
            versions[name],
            True,
            "first model: no champion yet"
            if previous is None
            else f"retrained as of {as_of}: replaces v{previous.version}",
            None if previous is None else str(previous.version),
        )
        tracking.apply_promotion(client, decision, run_ids[name])
        decisions[name] = decision.to_dict()
    return decisions
