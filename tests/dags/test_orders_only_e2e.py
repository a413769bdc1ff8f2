"""Orders alone carry the whole pipeline through Airflow (issue 13, item 4).

A generated sample world keeps only its orders file; the sources file configures only
``orders`` (no CRM, no web events, no marketing spend, no order lines). The daily DAG,
the training DAG and the daily DAG again run as ``make demo`` runs them; the features of
the absent sources are dropped from the models with a stated reason, the scores,
exports and report exist, and the report says "no such source" where a source is absent.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from pathlib import Path

import psycopg
import pytest

from lifecycle.orchestration.config import TRAIN_DAG_ID
from tests.conftest import ORDERS_ONLY_SOURCES
from tests.dags.conftest import lifecycle_env, scratch_database

START, END = dt.date(2023, 1, 1), dt.date(2024, 3, 31)
FIRST, LATER = dt.date(2024, 3, 30), dt.date(2024, 3, 31)


@pytest.fixture(scope="module")
def pipeline(embedded_settings, airflow_cfg, tmp_path_factory):
    """A warehouse filled by daily → train → daily from an orders file alone."""
    from lifecycle.orchestration.runner import run_dates
    from lifecycle.sample.world import WorldConfig, generate_world

    world = tmp_path_factory.mktemp("orders-only-world") / "world"
    generate_world(WorldConfig(customers=400, start=START, end=END, seed=5), world)
    orders = world / "orders" / "orders.csv"
    for name in ("crm", "web", "marketing", "truth"):  # nothing but the orders file is left
        shutil.rmtree(world / name, ignore_errors=True)
    (world / "orders" / "order_items.csv").unlink()
    sources = world.parent / "sources.yml"
    sources.write_text(ORDERS_ONLY_SOURCES.format(orders=orders), encoding="utf-8")
    state = tmp_path_factory.mktemp("orders-only-state")
    quiet = lambda _m: None  # noqa: E731
    with scratch_database(embedded_settings, "t_orders_only") as url:
        env = {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(world),
            "LIFECYCLE_SOURCES_FILE": str(sources),
        }
        with lifecycle_env(**env):
            first = run_dates([FIRST], cfg=airflow_cfg, echo=quiet)
            train = run_dates([FIRST], dag_id=TRAIN_DAG_ID, cfg=airflow_cfg, echo=quiet)
            later = run_dates([LATER], cfg=airflow_cfg, echo=quiet)
        yield {
            "url": url,
            "state": state,
            "first": first[0],
            "train": train[0],
            "later": later[0],
            "sources": sources,
            "orders": orders,
        }


def _states(report) -> dict[str, str]:
    return {t.task_id: t.state for t in report.tasks}


def test_daily_run_builds_the_marts_from_orders_alone(pipeline):
    report = pipeline["first"]
    assert report.ok, report.failure_message()
    states = _states(report)
    assert states["validate_raw"] == "success"
    assert states["validate_marts"] == "success"
    assert states["score"] == "skipped"


def test_training_uses_only_order_features_and_says_why(pipeline):
    import mlflow

    from ml.churn import load_churn_spec

    report = pipeline["train"]
    assert report.ok, report.failure_message()
    assert set(_states(report).values()) == {"success"}, _states(report)
    orders_only = load_churn_spec()["features"]["orders_only"]
    run_id = {t.task_id: t.result for t in report.tasks}["train_churn"]
    with lifecycle_env(
        LIFECYCLE_HOME=str(pipeline["state"]),
        LIFECYCLE_WAREHOUSE_URL="postgresql://unused@127.0.0.1/x",
    ):
        from lifecycle.settings import load_settings
        from ml import tracking

        tracking.configure(load_settings())
        params = mlflow.get_run(run_id).data.params
    dropped = params["dropped_features"].split(",")
    assert "sessions_90d" in dropped and "acquisition_channel" in dropped
    # the orders-only features, less those this world cannot feed, each with its reason
    kept = params["features"].split(",")
    assert kept == [f for f in orders_only if f not in dropped], (kept, dropped)
    assert all(params.get(f"dropped_reason.{f}") for f in orders_only if f not in kept), params
    sources = pipeline["sources"]
    assert params["dropped_reason.sessions_90d"] == (
        f"no such source: web events (raw.web__events) is not configured in {sources}"
    )
    assert params["dropped_reason.is_marketing_opt_in"] == (
        f"no such source: CRM contacts (raw.crm__contacts) is not configured in {sources}"
    )


def test_next_daily_run_scores_exports_and_reports(pipeline):
    report = pipeline["later"]
    assert report.ok, report.failure_message()
    assert set(_states(report).values()) == {"success"}, _states(report)
    with psycopg.connect(pipeline["url"]) as conn:
        scored = conn.execute(
            "select count(*) from ml.scores_history where score_date = %s", (LATER,)
        ).fetchone()[0]
        eligible = conn.execute(
            "select count(*) from marts.customers where first_order_date <= %s", (LATER,)
        ).fetchone()[0]
        members = dict(
            conn.execute(
                "select audience, count(*) from activation.audience_membership "
                "where entered_date <= %(d)s and (exited_date is null or exited_date > %(d)s) "
                "group by 1",
                {"d": LATER},
            ).fetchall()
        )
    assert scored == eligible > 0
    shop_ids = {r["customer_id"] for r in csv.DictReader(pipeline["orders"].open(encoding="utf-8"))}
    day_folder = pipeline["state"] / "exports" / LATER.isoformat()
    assert members and sum(members.values()) > 0
    for audience, count in members.items():
        folder = day_folder / audience
        ids = list(csv.DictReader((folder / "customer_ids.csv").open(encoding="utf-8")))
        assert len(ids) == count, audience
        assert {r["customer_id"] for r in ids} <= shop_ids
        assert all(r["customer_id"] for r in ids)
        # no CRM: nobody has consent or an email, so no send list has a row
        generic = list(csv.DictReader((folder / "generic_full.csv").open(encoding="utf-8")))
        assert generic == []
    results = {t.task_id: t.result for t in report.tasks}
    unavailable = results["report"]["unavailable"]
    sources = pipeline["sources"]
    assert unavailable["funnel"] == (
        f"no such source: web events (raw.web__events) is not configured in {sources}; "
        f"no such source: CRM contacts (raw.crm__contacts) is not configured in {sources}"
    )
    html = Path(results["report"]["path"]).read_text(encoding="utf-8")
    assert (
        f"LTV/CAC by channel: no such source: CRM contacts (raw.crm__contacts) is not "
        f"configured in {sources}; no such source: marketing spend (raw.marketing__spend) "
        f"is not configured in {sources}."
    ) in html


def test_ctrl_c_in_a_task_ends_the_run_as_asked(pipeline):
    """Ctrl-C while `lifecycle pipeline run` is inside a task: the task fails without a
    retry, and the command ended as a fault does ("fix the cause", exit 1). It ends as the
    stop the user asked for: exit 130 and the command that resumes the day. Runs last in
    this module: it leaves the day's run failed."""
    from tests.conftest import cli_env, interrupt_once_dbt_connects

    env = {
        k: v
        for k, v in cli_env(
            LIFECYCLE_HOME=str(pipeline["state"]),
            LIFECYCLE_WAREHOUSE_URL=pipeline["url"],
            LIFECYCLE_WORLD_DIR=str(pipeline["orders"].parent.parent),
            LIFECYCLE_SOURCES_FILE=str(pipeline["sources"]),
        ).items()
        if not k.startswith("AIRFLOW")  # the CLI's own Airflow home, not the session's
    }
    # Ctrl-C once the transform task's dbt is connected
    run = ["pipeline", "run", "--date", str(LATER)]
    proc = interrupt_once_dbt_connects(run, env, pipeline["url"], timeout=300)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    lines = err.splitlines()
    assert lines[-1] == f"interrupted; resume with: lifecycle pipeline run --date {LATER}"
    assert "transform: AirflowFailException: interrupted (SIGINT): not retried" in err
    assert "Traceback" not in out + err and "fix the cause" not in err
