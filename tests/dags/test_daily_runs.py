"""lifecycle_daily run through Airflow (dag.test) on a sample world, against real PostgreSQL.

Day by day, a rerun of a day, and a backfill of the same days in a second warehouse must
all leave the same tables. No model has been trained in these warehouses, so scoring and
the steps after it skip (saying why) and the report still runs; the end-to-end test with
a trained champion is tests/dags/test_pipeline_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from lifecycle.orchestration.config import OrchestrationSettings
from tests.dags.conftest import (
    DAYS,
    lifecycle_env,
    scratch_database,
    table_checksums,
)

RAW_TABLES = (
    "raw.crm__contacts",
    "raw.web__events",
    "raw.orders__orders",
    "raw.orders__order_items",
    "raw.marketing__spend",
    "raw.fx__rates",
)
EXTRACTS = {"extract_crm", "extract_web", "extract_orders", "extract_marketing", "extract_fx"}
#: Without a champion model: what runs, and what skips because scoring has nothing to use.
SUCCEEDED = EXTRACTS | {"apply_erasures", "validate_raw", "transform", "validate_marts", "report"}
SKIPPED = {"score", "validate_scores", "activate", "validate_activation"}
EXPECTED_TASKS = SUCCEEDED | SKIPPED


def _env(state: Path, url: str, world: Path) -> dict[str, str]:
    # One state folder (LIFECYCLE_HOME: dbt's target/) per warehouse. The Airflow home
    # stays the session's (cfg=airflow_cfg). lifecycle.transform caches dbt's parsed
    # manifest per process and target folder, and the manifest names the database: two
    # warehouses behind one target folder in one process would make dbt build against
    # the first one ("Cross-db references not allowed").
    return {
        "LIFECYCLE_HOME": str(state),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_WORLD_DIR": str(world),
    }


@pytest.fixture(scope="module")
def day_by_day(embedded_settings, airflow_cfg: OrchestrationSettings, tmp_path_factory, world):
    """A warehouse filled by one DAG run per day (as the scheduler would), and its checksums."""
    from lifecycle.orchestration.runner import run_dates

    state = tmp_path_factory.mktemp("day-by-day")
    with scratch_database(embedded_settings) as url:
        with lifecycle_env(**_env(state, url, world)):
            reports = [run_dates([day], cfg=airflow_cfg, echo=lambda _m: None)[0] for day in DAYS]
        yield {"url": url, "state": state, "reports": reports, "checksums": table_checksums(url)}


def test_daily_runs_succeed_and_land_every_source(day_by_day) -> None:
    reports = day_by_day["reports"]
    assert [r.logical_date for r in reports] == DAYS
    for report in reports:
        assert report.ok, report.failure_message()
        states = {t.task_id: t.state for t in report.tasks}
        assert set(states) == EXPECTED_TASKS
        assert {states[t] for t in SUCCEEDED} == {"success"}, states
        assert {states[t] for t in SKIPPED} == {"skipped"}, states
    with psycopg.connect(day_by_day["url"]) as conn:
        # the built-in mapping has no rates file: raw.fx__rates exists and stays empty
        assert conn.execute("select count(*) from raw.fx__rates").fetchone()[0] == 0
        for table in RAW_TABLES[:-1]:
            assert conn.execute(f"select count(*) from {table}").fetchone()[0] > 0, table
            # Each day's batch is the one the run of that day wrote, keyed on its date.
        batches = {
            r[0]
            for r in conn.execute("select distinct _batch_id from raw.orders__orders").fetchall()
        }
        assert batches <= {f"orders__orders:{d}" for d in DAYS}
        # The XCom row counts are what landed: the first run loads everything up to its day.
        first = {t.task_id: t.result for t in reports[0].tasks}
        landed = conn.execute(
            "select count(*) from raw.orders__orders where _batch_id = %s",
            (f"orders__orders:{DAYS[0]}",),
        ).fetchone()[0]
        assert first["extract_orders"]["raw.orders__orders"] == landed > 0
    marts = [k for k, (rows, _) in day_by_day["checksums"].items() if k.startswith("marts.")]
    assert marts, "the dbt step ran but published no mart table"
    # marts.audience_outcomes follows export days before the date: it has rows only after one
    lift = "marts.audience_outcomes"
    assert all(day_by_day["checksums"][m][0] > 0 for m in marts if m != lift), day_by_day[
        "checksums"
    ]
    with psycopg.connect(day_by_day["url"]) as conn:
        cohorts = 0
        if conn.execute("select to_regclass('activation.export_log')").fetchone()[0]:
            cohorts = conn.execute(
                "select count(distinct (audience, as_of_date)) from activation.export_log "
                "where status = 'ok' and as_of_date < (select max(as_of_date) from marts.customers)"
            ).fetchone()[0]
        assert day_by_day["checksums"][lift][0] == 2 * cohorts  # a treatment and a control row
        # every run's two gates stored their results, keyed on the Airflow run
        gated = conn.execute(
            "select count(distinct (run_id, layer)) from ops.dq_results "
            "where layer in ('raw', 'marts') and run_id like 'manual__%%'"
        ).fetchone()[0]
        published = conn.execute("select max(as_of_date) from marts.customers").fetchone()[0]
    assert gated == 2 * len(DAYS)
    assert published == DAYS[-1]
    report = {t.task_id: t.result for t in reports[-1].tasks}["report"]
    assert Path(report["path"]).is_file()


def test_runs_emit_raw_assets_with_row_counts(day_by_day) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run_ids = [r.run_id for r in day_by_day["reports"]]
    with create_session() as session:
        events = session.execute(
            select(AssetModel.name, AssetEvent.extra, AssetEvent.source_run_id)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_run_id.in_(run_ids))
        ).all()
    names = {name for name, _, _ in events}
    # raw tables, and the published marts; no scores or activation (scoring skipped)
    assert names == set(RAW_TABLES) | {"marts"}
    published = [e for e in events if e[0] == "marts"]
    assert len(published) == len(run_ids)
    assert {e[1]["logical_date"] for e in published} == {str(d) for d in DAYS}
    last = [e for e in events if e[2] == run_ids[-1] and e[0] == "raw.orders__orders"]
    assert len(last) == 1
    extra = last[0][1]
    assert extra["logical_date"] == str(DAYS[-1])
    assert extra["batch_id"] == f"orders__orders:{DAYS[-1]}"
    assert isinstance(extra["rows_loaded"], int)


def test_rerunning_a_day_leaves_identical_tables(day_by_day, airflow_cfg, world):
    from lifecycle.orchestration.runner import run_dates

    with lifecycle_env(**_env(day_by_day["state"], day_by_day["url"], world)):
        [again] = run_dates([DAYS[-1]], cfg=airflow_cfg, echo=lambda _m: None)
    assert again.ok, again.failure_message()
    assert again.run_id != day_by_day["reports"][-1].run_id  # a new Airflow run, same day
    assert table_checksums(day_by_day["url"]) == day_by_day["checksums"]


def test_backfill_equals_the_day_by_day_runs(
    day_by_day, embedded_settings, airflow_cfg, tmp_path, world
):
    from lifecycle.orchestration.runner import run_dates

    with (
        scratch_database(embedded_settings) as url,
        lifecycle_env(**_env(tmp_path / "state", url, world)),
    ):
        reports = run_dates(list(reversed(DAYS)), cfg=airflow_cfg, echo=lambda _m: None)
        checksums = table_checksums(url)
    assert [r.logical_date for r in reports] == DAYS  # oldest first, whatever the order given
    assert all(r.ok for r in reports)
    assert checksums.keys() == day_by_day["checksums"].keys()
    different = [t for t in checksums if checksums[t] != day_by_day["checksums"][t]]
    assert not different, f"backfill differs from the day-by-day runs in {different}"
