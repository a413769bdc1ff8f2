"""The real Airflow services (scheduler, DAG processor, API server) on loopback run the DAG.

Not ``dag.test()``: the scheduler picks up a run triggered through the REST API and its
LocalExecutor runs every task in a process of its own, as on a deployment.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from lifecycle.orchestration.server import LocalAirflow
from tests.dags.conftest import DAYS, lifecycle_env, scratch_database


@pytest.mark.slow
def test_scheduler_runs_the_daily_dag_triggered_through_the_rest_api(
    embedded_settings, airflow_cfg, tmp_path_factory, world
) -> None:
    state = tmp_path_factory.mktemp("served")
    day: dt.date = DAYS[0]
    with scratch_database(embedded_settings, "t_srv") as url:
        env = {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(world),
        }
        # Only the triggered run: unpausing would otherwise make the scheduler create the
        # run of the latest (wall-clock) interval too.
        services = {**env, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
        with lifecycle_env(**env), LocalAirflow(airflow_cfg, env=services) as airflow:
            api = airflow.client()
            dag = api.wait_for_dag("lifecycle_daily")
            assert api.import_errors() == []
            assert dag["is_paused"] is True  # DAGs start paused: nothing runs by surprise
            api.unpause("lifecycle_daily")
            run_id = api.trigger("lifecycle_daily", day)
            final = api.wait_for_run("lifecycle_daily", run_id, timeout_s=900)
            tasks = api.task_states("lifecycle_daily", run_id)
            run = api.request("GET", f"/dags/lifecycle_daily/dagRuns/{run_id}")
        assert final == "success", f"run {run_id} ended {final}: {tasks}"
        assert run["logical_date"].startswith(day.isoformat())
        assert tasks["extract_orders"] == "success"
        assert tasks["transform"] == "success"
        assert "failed" not in tasks.values()
        with psycopg.connect(url) as conn:
            landed = conn.execute(
                "select count(*) from raw.orders__orders where _batch_id = %s",
                (f"orders__orders:{day}",),
            ).fetchone()[0]
            customers = conn.execute("select count(*) from marts.customers").fetchone()[0]
        assert landed > 0
        assert customers > 0
