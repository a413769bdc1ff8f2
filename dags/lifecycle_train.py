"""
### lifecycle_train — train, evaluate, register and promote the models

Weekly (Monday 06:00 UTC) and triggerable. A run for logical date D trains **as of
D − 1** (the last day `lifecycle_daily` has completed); the `as_of` param overrides it.

1. `training_sets`: point-in-time features and churn labels of past snapshot dates into
   `ml.training_set` (features strictly from data visible at each snapshot).
2. `train_churn`, `train_clv`, `train_segmentation`: each fits its model (specs in
   `models/*.yaml`) and logs it to an MLflow run of its experiment.
3. `evaluate`: the churn model against its baselines (recency rule, BG/NBD expected
   purchases) and the orders-only variant on the time-based holdout: ROC AUC, PR AUC,
   Brier, log loss, calibration error, top-decile lift, plots.
4. `register`: new versions of `lifecycle_churn`, `lifecycle_clv`,
   `lifecycle_segmentation` in the MLflow registry.
5. `promote`: the churn version becomes `champion` only when it beats the current
   champion on the same holdout by the margin of `models/churn.yaml` (otherwise
   `challenger`, with the reason tagged); CLV and segmentation retrains replace theirs.

`lifecycle_daily` scores with whatever is `champion` when it runs. Locally:
`lifecycle pipeline run --dag lifecycle_train --date D` (or `lifecycle train` without
Airflow).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronTriggerTimetable, Param, dag

from lifecycle.orchestration import alerts, config, training


@dag(
    dag_id="lifecycle_train",
    description="Weekly: training sets, churn/CLV/segmentation, evaluation, registry, promotion",
    schedule=CronTriggerTimetable("0 6 * * 1", timezone="UTC"),
    # Any day of a company's history can be run (a 1990s export too); with catchup off
    # the start date only bounds explicit runs and backfills.
    start_date=dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # two trainings must not promote over each other
    dagrun_timeout=dt.timedelta(hours=8),
    default_args={
        "owner": "data-science",
        "retries": 2,
        "retry_delay": config.retry_delay(dt.timedelta(minutes=5)),
        "on_failure_callback": alerts.on_task_failure,
    },
    params={
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Train as of this day (YYYY-MM-DD); default: the logical date - 1.",
        ),
    },
    tags=["lifecycle", "ml", "training", "mlflow"],
    doc_md=__doc__,
)
def lifecycle_train():
    sets = training.training_sets()
    churn = training.train_churn()
    clv = training.train_clv()
    segmentation = training.train_segmentation()
    sets >> [churn, clv, segmentation]
    evaluation = training.evaluate(churn)
    registered = training.register(churn, clv, segmentation)
    evaluation >> registered
    training.promote(registered, evaluation)


lifecycle_train()
