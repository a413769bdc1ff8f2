"""The daily path's incremental builds give exactly the full refresh's answer (issue 14).

A sample world is landed by a first ``lifecycle_daily`` run, the champions are trained,
and then five more days run one by one through Airflow, as the scheduler runs them: each
day's dbt build is incremental, each scores and exports. Then the last day is run again
with ``dbt_full_refresh``: every dbt model is rebuilt from raw, and scoring and activation
run again on what it built. Every table (marts, the incremental intermediate models,
scores, customer scores, audiences) and every export file must be exactly what the
incremental days left.

The full refresh runs in the same warehouse, on purpose: activation's audience
memberships, export deltas and lift follow the export history of the earlier days by
design, which a fresh warehouse would not have; what must not depend on the path is what
the days built from raw.

Among the five days there must be one on which a customer changes stage only because
time passed (a 30/90/180-day threshold, or the typical-gap rule) with no new row about
them that day: the case an incremental build that only looked at new rows would miss.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from lifecycle.orchestration.config import TRAIN_DAG_ID
from tests.dags.conftest import lifecycle_env, run_state, scratch_database

START, END = dt.date(2023, 1, 1), dt.date(2024, 3, 31)
FIRST = dt.date(2024, 3, 26)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(1, 6)]
#: Stages a customer enters only by time passing (DESIGN.md §6), never by an order.
TIMED_STAGES = ("active", "at_risk", "churned")

# Customers with no raw row about them in a day's batches: none of their identifiers
# (customer id, e-mail, CRM contact id, device id) appears in any identifying column of a
# row that day landed. Over-approximates "touched", so "untouched" is safe.
UNTOUCHED_TRANSITIONS = """
with

landed as (
    select unnest(array[customer_id, email, order_id]) as value
    from raw.orders__orders where _batch_id = 'orders__orders:' || %(day)s
    union all
    select order_id from raw.orders__order_items
    where _batch_id = 'orders__order_items:' || %(day)s
    union all
    select unnest(array[id, email]) from raw.crm__contacts
    where _batch_id = 'crm__contacts:' || %(day)s
    union all
    select unnest(array[anonymous_id, user_id, email, order_id]) from raw.web__events
    where _batch_id = 'web__events:' || %(day)s
),

touched as (
    select distinct ids.customer_key
    from intermediate.int_identifiers_clustered as ids
    inner join landed on lower(trim(landed.value)) = lower(trim(ids.identifier_value))
)

select h.customer_key, h.previous_stage, h.stage
from marts.customer_stage_history as h
where h.valid_from = %(day)s::date
    and h.previous_stage is not null
    and h.stage = any(%(stages)s)
    and h.customer_key not in (select customer_key from touched)
order by 1
"""


@pytest.fixture(scope="module")
def runs(embedded_settings, airflow_cfg, tmp_path_factory):
    """Five days run one by one after training, then the last day with a full refresh."""
    from lifecycle.orchestration.runner import run_dates
    from lifecycle.sample.world import WorldConfig, generate_world

    world = tmp_path_factory.mktemp("incr-world") / "world"
    generate_world(WorldConfig(customers=500, start=START, end=END, seed=11), world)
    state = tmp_path_factory.mktemp("incr-state")
    quiet = lambda _m: None  # noqa: E731
    with scratch_database(embedded_settings, "t_incr") as url:
        env = {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(world),
        }
        with lifecycle_env(**env):
            first = run_dates([FIRST], cfg=airflow_cfg, echo=quiet)[0]
            train = run_dates([FIRST], dag_id=TRAIN_DAG_ID, cfg=airflow_cfg, echo=quiet)[0]
            daily = [run_dates([day], cfg=airflow_cfg, echo=quiet)[0] for day in DAYS]
            with psycopg.connect(url) as conn:
                params = {"stages": list(TIMED_STAGES)}
                crossings = {
                    day: conn.execute(
                        UNTOUCHED_TRANSITIONS, {**params, "day": day.isoformat()}
                    ).fetchall()
                    for day in DAYS
                }
            incremental = run_state(url, state / "exports")
            [refreshed] = run_dates(
                [DAYS[-1]], conf={"dbt_full_refresh": True}, cfg=airflow_cfg, echo=quiet
            )
            full = run_state(url, state / "exports")
        yield {
            "url": url,
            "first": first,
            "train": train,
            "daily": daily,
            "refreshed": refreshed,
            "crossings": crossings,
            "incremental": incremental,
            "full": full,
        }


def test_every_run_succeeded_and_the_days_were_scored_and_exported(runs) -> None:
    for report in [runs["first"], runs["train"], *runs["daily"], runs["refreshed"]]:
        assert report.ok, report.failure_message()
    for report in [*runs["daily"], runs["refreshed"]]:
        states = {t.task_id: t.state for t in report.tasks}
        assert set(states.values()) == {"success"}, states
    transform = {t.task_id: t.result for t in runs["refreshed"].tasks}["transform"]
    assert transform["as_of_date"] == DAYS[-1].isoformat()
    tables, files = runs["incremental"]
    scored = [k for k in tables if k.startswith("ml.")]
    assert "ml.scores_history" in scored and tables["ml.scores_history"][0] > 0
    assert tables["activation.customer_scores"][0] > 0
    # an export folder per incremental day, each with its manifest
    for day in DAYS:
        folder = f"{day.isoformat()}/"
        assert any(f.startswith(folder) and f.endswith("manifest.json") for f in files), day


def test_some_customer_only_crosses_a_threshold_on_one_of_the_days(runs) -> None:
    crossed = {day: found for day, found in runs["crossings"].items() if found}
    assert crossed, "no day on which a customer changed stage without new data"
    for found in crossed.values():
        assert {stage for _, _, stage in found} <= set(TIMED_STAGES)


def test_full_refresh_gives_exactly_the_incremental_days_tables_and_exports(runs) -> None:
    before_tables, before_files = runs["incremental"]
    after_tables, after_files = runs["full"]
    marts = [t for t in before_tables if t.startswith("marts.")]
    assert len(marts) >= 10, marts
    assert "marts.customer_stage_history" in marts and "marts.customers" in marts
    assert {"ml.scores_history", "activation.customer_scores"} <= before_tables.keys()
    assert after_tables.keys() == before_tables.keys()
    different = [t for t in before_tables if after_tables[t] != before_tables[t]]
    assert not different, f"the full refresh differs from the incremental days in {different}"
    assert after_files == before_files
