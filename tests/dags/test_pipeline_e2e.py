"""The whole pipeline through Airflow, as `make demo` runs it: daily, train, daily with scores.

A first ``lifecycle_daily`` run lands a sample world and publishes the marts (no model
yet: scoring skips); ``lifecycle_train`` trains, registers and promotes the champions in
MLflow; the next daily runs score every eligible customer with them, export the audiences
and write the report. Rerunning a day leaves every table and export file as it was.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest

from lifecycle.orchestration.config import TRAIN_DAG_ID
from tests.dags.conftest import lifecycle_env, run_state, scratch_database

START, END = dt.date(2023, 1, 1), dt.date(2024, 3, 31)
FIRST, LATER = dt.date(2024, 3, 29), [dt.date(2024, 3, 30), dt.date(2024, 3, 31)]


@pytest.fixture(scope="module")
def pipeline(embedded_settings, airflow_cfg, tmp_path_factory):
    """A warehouse filled by daily → train → daily, daily, and what each run reported."""
    from lifecycle.orchestration.runner import run_dates
    from lifecycle.sample.world import WorldConfig, generate_world

    world = tmp_path_factory.mktemp("e2e-world") / "world"
    generate_world(WorldConfig(customers=500, start=START, end=END, seed=11), world)
    state = tmp_path_factory.mktemp("e2e-state")
    quiet = lambda _m: None  # noqa: E731
    with scratch_database(embedded_settings, "t_e2e") as url:
        env = {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(world),
        }
        with lifecycle_env(**env):
            first = run_dates([FIRST], cfg=airflow_cfg, echo=quiet)
            train = run_dates([FIRST], dag_id=TRAIN_DAG_ID, cfg=airflow_cfg, echo=quiet)
            later = run_dates(LATER, cfg=airflow_cfg, echo=quiet)
            before = run_state(url, state / "exports")
            [again] = run_dates([LATER[-1]], cfg=airflow_cfg, echo=quiet)
            after = run_state(url, state / "exports")
        yield {
            "url": url,
            "state": state,
            "first": first[0],
            "train": train[0],
            "later": later,
            "again": again,
            "before": before,
            "after": after,
        }


def _states(report) -> dict[str, str]:
    return {t.task_id: t.state for t in report.tasks}


def test_first_daily_run_publishes_marts_and_skips_scoring_without_a_champion(pipeline):
    states = _states(pipeline["first"])
    assert pipeline["first"].ok
    assert states["validate_marts"] == "success"
    assert states["score"] == "skipped"
    assert states["activate"] == "skipped"
    assert states["report"] == "success"


def test_training_dag_registers_and_promotes_champions(pipeline):
    report = pipeline["train"]
    assert report.ok, report.failure_message()
    states = _states(report)
    assert set(states.values()) == {"success"}, states
    results = {t.task_id: t.result for t in report.tasks}
    promoted = results["promote"]["promotions"]
    assert {name: p["promoted"] for name, p in promoted.items()} == {
        "lifecycle_churn": True,  # the first model of each kind becomes champion
        "lifecycle_clv": True,
        "lifecycle_segmentation": True,
    }


def test_later_runs_score_export_and_report_with_the_champions(pipeline):
    url = pipeline["url"]
    for report in pipeline["later"]:
        assert report.ok, report.failure_message()
        assert set(_states(report).values()) == {"success"}, _states(report)
    with psycopg.connect(url) as conn:
        for day in LATER:
            scored, versions = conn.execute(
                "select count(*), count(distinct (churn_model_version, clv_model_version, "
                "segmentation_model_version)) from ml.scores_history where score_date = %s",
                (day,),
            ).fetchone()
            assert scored > 0, day
            assert versions == 1  # every row stamped with the same champions
        # eligible on the last day: a completed order by that day, from the marts published
        # as of that day (independent of ml.features' SQL)
        eligible = conn.execute(
            "select count(*) from marts.customers where first_order_date <= %s", (LATER[-1],)
        ).fetchone()[0]
        last = conn.execute(
            "select count(*) from ml.scores_history where score_date = %s", (LATER[-1],)
        ).fetchone()[0]
        assert last == eligible, (last, eligible)
        customer_scores = conn.execute(
            "select count(*), count(churn_probability), max(as_of_date) "
            "from activation.customer_scores"
        ).fetchone()
        customers = conn.execute("select count(*) from marts.customers").fetchone()[0]
        exported = conn.execute(
            "select count(*) from activation.export_log where status = 'ok' and as_of_date = %s",
            (LATER[-1],),
        ).fetchone()[0]
    assert customer_scores[0] == customers
    assert customer_scores[1] > 0
    assert customer_scores[2] == LATER[-1]
    assert exported > 0
    day_folder = pipeline["state"] / "exports" / LATER[-1].isoformat()
    assert [p for p in day_folder.rglob("manifest.json")], f"no export manifest in {day_folder}"
    report = {t.task_id: t.result for t in pipeline["later"][-1].tasks}["report"]
    assert Path(report["path"]).is_file()


def test_rerunning_a_scored_day_changes_no_table_and_no_export_file(pipeline):
    assert pipeline["again"].ok, pipeline["again"].failure_message()
    before_tables, before_files = pipeline["before"]
    after_tables, after_files = pipeline["after"]
    assert after_tables.keys() == before_tables.keys()
    changed = [t for t in after_tables if after_tables[t] != before_tables[t]]
    assert not changed, f"a rerun changed {changed}"
    assert after_files == before_files
