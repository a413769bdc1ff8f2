"""
### lifecycle_daily — land yesterday's data, build and gate the warehouse, score, export

One run per **day D** of the business time zone (the sources file's `business.timezone`,
UTC without one; D is its logical date, and the run starts after D has ended, at 00:00
of D+1 in that zone) and everything in it reads and writes the partition of D:

0. `apply_erasures`: pending erasure requests (`lifecycle privacy forget`) applied: the
   people deleted everywhere, so the loads after it already drop their rows.
1. `extract_crm`, `extract_web`, `extract_orders`, `extract_marketing`, `extract_fx` (in parallel):
   land what each source delivered for D in `raw.<source>__<entity>`; a rerun of D
   replaces D's batches, never adds to them. Sources that are not configured are skipped
   and say so in `ops.load_runs`. Each emits an asset event per raw table, with row counts.
2. `validate_raw`: the Great Expectations suites of `expectations/raw/` on D's batches.
3. `transform`: `dbt build` of staging, intermediate and marts **as of D**, the marts
   into `marts__build` (write-audit-publish: BI tools do not see them yet).
4. `validate_marts`: the marts suites on the build; only when they pass is the build
   swapped into `marts` in one transaction (asset `marts`). A failed gate leaves the
   previously published marts untouched and lists the failing expectations.
5. `score`: every eligible customer scored as of D with the `champion` models from MLflow
   into `ml.scores_history` (asset); skipped, saying why, while no champion exists.
6. `validate_scores` → `activate` (customer scores, audiences, CSV exports, HTTP push;
   asset `activation.customer_scores`) → `validate_activation`.
7. `report`: the day's HTML lifecycle report (also when scoring skipped).

**Params** (Trigger DAG w/ config, or `lifecycle pipeline run --conf '{...}'`):
`full_reload` reloads every source from the beginning up to D instead of D alone;
`dbt_full_refresh` rebuilds incremental models from scratch (same result, slower);
`dbt_select` narrows the dbt build (dbt selection syntax).

**Operate it**: rerun a day with *Clear* (or `lifecycle pipeline run --date D`);
backfill with `lifecycle pipeline backfill --start D1 --end D2`, or on a deployment
`airflow backfill create --dag-id lifecycle_daily --from-date D1 --to-date D2
--max-active-runs 1` (an Airflow backfill runs 10 days at once unless told, and the
incremental windows need one day at a time, oldest first; never `--run-backwards`).
That gives the same warehouse as the original daily runs.
A failed task posts its task, date and log location to `LIFECYCLE_ALERT_WEBHOOK_URL`.
Data errors (a batch over its reject threshold, a failing dbt test or quality gate) fail
at once; other errors are retried.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, chain, dag

from lifecycle.orchestration import alerts, config, daily


@dag(
    dag_id="lifecycle_daily",
    description="Extract and load one day, build and gate the marts, score, export audiences",
    # A data-interval timetable: the run for day D has logical date D and interval [D, D+1).
    # Its midnights are the business zone's: a day of the pipeline is the company's day.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=daily.business_zone().key),
    # Any day of a company's history can be run (a 1990s export too); with catchup off
    # the start date only bounds explicit runs and backfills.
    start_date=dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    catchup=False,  # past days are loaded by explicit backfills, not on first deploy
    max_active_runs=1,  # day D+1's incremental windows start where D's ended
    dagrun_timeout=dt.timedelta(hours=6),
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": config.retry_delay(dt.timedelta(minutes=2)),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=20),
        "on_failure_callback": alerts.on_task_failure,
    },
    params={
        "full_reload": Param(
            False,
            type="boolean",
            description="Reload every source up to the day, not just the day.",
        ),
        "dbt_full_refresh": Param(
            False, type="boolean", description="Rebuild incremental dbt models from scratch."
        ),
        "dbt_select": Param(
            [], type="array", items={"type": "string"}, description="dbt selection; empty: all."
        ),
    },
    tags=["lifecycle", "daily", "elt", "dbt", "ml", "activation"],
    doc_md=__doc__,
)
def lifecycle_daily():
    chain(
        daily.apply_erasures(),
        [daily.extract(source) for source in daily.SOURCES],
        daily.validate_raw(),
        daily.transform(),
        daily.validate_marts.override(outlets=[daily.marts_asset()])(),
        daily.score.override(outlets=[daily.scores_asset()])(),
        daily.validate_scores(),
        daily.activate.override(outlets=[daily.activation_asset()])(),
        daily.validate_activation(),
        daily.report(),
    )


lifecycle_daily()
