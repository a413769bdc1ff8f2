"""Credentials from Airflow Connections, asset URIs that name the warehouse, the retry delay.

A real task of ``lifecycle_daily`` (``extract_marketing``, run through Airflow with
``dag.test``) reaches a warehouse that only ``AIRFLOW_CONN_LIFECYCLE_WAREHOUSE`` names, and
fails at once, with one line naming the id, when ``LIFECYCLE_WAREHOUSE_CONN_ID`` names a
connection nobody defined. The DAG files are parsed under each warehouse setting: hosted
warehouses give the postgres provider's ``postgres://host:port/database/schema/table``
URIs, the embedded (Unix-socket) one the private ``x-lifecycle://`` scheme.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from lifecycle import warehouse as wh
from lifecycle.orchestration.config import DAILY_DAG_ID, TRAIN_DAG_ID, OrchestrationSettings
from lifecycle.orchestration.connections import with_connections
from lifecycle.settings import SettingsError, environment, load_settings
from tests.dags.conftest import DAYS, lifecycle_env, scratch_database

DAY = DAYS[0]
TASK = "extract_marketing"
WRONG_ID = "lifecycle_nowhere"


def _conn_json(url: str) -> str:
    """Return the Airflow Connection (JSON form) of a libpq URL."""
    info = conninfo_to_dict(url)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": info["host"],
            "port": int(info["port"]) if info.get("port") else None,
            "schema": info["dbname"],
            "login": info.get("user"),
            "password": info.get("password") or None,
        }
    )


def _spend_rows(world: Path, day: dt.date) -> int:
    """Rows a first load of `day` lands: everything up to the day (no watermark yet)."""
    with open(world / "marketing" / "spend.csv", newline="") as fh:
        return sum(1 for row in csv.DictReader(fh) if row["date"] <= day.isoformat())


def _run_task(cfg: OrchestrationSettings, lifecycle: dict, airflow: dict):
    """Run the one task TASK of lifecycle_daily for DAY through Airflow; return its report."""
    from lifecycle.orchestration import alerts, runner

    with lifecycle_env(**lifecycle), environment(airflow):
        dag = runner.load_dag(cfg).partial_subset(task_ids=[TASK], include_upstream=False)
        return runner._run_one(dag, DAY, None, cfg, lambda _m: None, False, alerts)


@pytest.fixture(scope="module")
def conn_warehouse(embedded_settings, tmp_path_factory, world):
    """A bootstrapped warehouse (schemas, roles) and the LIFECYCLE_* settings of its runs,
    without LIFECYCLE_WAREHOUSE_URL."""
    state = tmp_path_factory.mktemp("conn-state")
    with scratch_database(embedded_settings, "t_conn") as url:
        wh.up(load_settings({"LIFECYCLE_HOME": str(state), "LIFECYCLE_WAREHOUSE_URL": url}))
        yield url, {"LIFECYCLE_HOME": str(state), "LIFECYCLE_WORLD_DIR": str(world)}


def test_a_task_reaches_the_warehouse_of_its_airflow_connection(
    conn_warehouse, airflow_cfg, world
) -> None:
    url, env = conn_warehouse
    conn = {"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": _conn_json(url)}
    report = _run_task(airflow_cfg, env, conn)
    assert report.state == "success", report.failure_message()
    [task] = report.tasks
    expected = _spend_rows(world, DAY)
    assert expected > 0
    assert (task.task_id, task.try_number, task.result) == (
        TASK,
        1,
        {"raw.marketing__spend": expected},
    )
    with psycopg.connect(url) as db:
        rows = db.execute("select count(*) from raw.marketing__spend").fetchone()[0]
        status = db.execute(
            "select status, rows_loaded from ops.load_runs where source = 'marketing' "
            "and logical_date = %s",
            (DAY,),
        ).fetchall()
    assert rows == expected
    assert status == [("success", expected)]


def test_a_wrong_connection_id_fails_the_task_at_once_naming_it(
    conn_warehouse, airflow_cfg
) -> None:
    url, env = conn_warehouse
    with psycopg.connect(url) as db:
        before = db.execute("select count(*) from ops.load_runs").fetchone()[0]
    report = _run_task(
        airflow_cfg,
        {**env, "LIFECYCLE_WAREHOUSE_CONN_ID": WRONG_ID},
        {"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": _conn_json(url)},
    )
    assert report.state == "failed"
    assert [(t.task_id, t.state, t.try_number) for t in report.tasks] == [(TASK, "failed", 1)]
    [failure] = report.failures
    assert failure.error == (
        f"AirflowFailException: LIFECYCLE_WAREHOUSE_CONN_ID={WRONG_ID}: no Airflow "
        f"Connection {WRONG_ID!r} is defined (set AIRFLOW_CONN_LIFECYCLE_NOWHERE, or add it "
        "to the secrets backend)"
    )
    with psycopg.connect(url) as db:  # nothing was loaded anywhere else either
        assert db.execute("select count(*) from ops.load_runs").fetchone()[0] == before


def test_pipeline_run_with_a_wrong_connection_id_is_one_error_line(tmp_path: Path) -> None:
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "LIFECYCLE_HOME": str(tmp_path / "state"),
        "LIFECYCLE_WAREHOUSE_CONN_ID": WRONG_ID,
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lifecycle"), "pipeline", "run", "--date", str(DAY)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [
        f"error: LIFECYCLE_WAREHOUSE_CONN_ID={WRONG_ID}: no Airflow Connection {WRONG_ID!r} "
        "is defined (set AIRFLOW_CONN_LIFECYCLE_NOWHERE, or add it to the secrets backend)"
    ]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "pgdata").exists()  # no embedded warehouse instead


# --------------------------------------------------------------- resolving, no Airflow task


def test_the_connection_wins_over_the_url_and_gives_the_push_token(airflow_cfg) -> None:
    env = {
        "LIFECYCLE_WAREHOUSE_URL": "postgresql://old@old.example/old",
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": "postgres://etl:p%40ss@db.example:6543/wh?sslmode=require",
        "LIFECYCLE_PUSH_TOKEN": "from-the-variable",
        "AIRFLOW_CONN_LIFECYCLE_PUSH": json.dumps({"conn_type": "http", "password": "tok-123"}),
    }
    settings = with_connections(load_settings(env))
    assert settings.warehouse_url == "postgresql://etl:p%40ss@db.example:6543/wh?sslmode=require"
    assert conninfo_to_dict(settings.warehouse_url)["password"] == "p@ss"
    assert settings.push_token == "tok-123"
    # Without connections (default ids, nothing defined) the variables stay in charge.
    plain = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")}
    settings = with_connections(load_settings(plain))
    assert (settings.warehouse_url, settings.push_token) == (
        "postgresql://old@old.example/old",
        "from-the-variable",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": json.dumps({"conn_type": "http", "host": "h"})},
            "the Airflow Connection 'lifecycle_warehouse' (LIFECYCLE_WAREHOUSE_CONN_ID) is a "
            "http connection; the warehouse needs a postgres one",
        ),
        (
            {"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": '{"conn_type": "postgres", "host": '},
            "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE is not an Airflow connection URI or JSON: ",
        ),
        (
            {"LIFECYCLE_PUSH_CONN_ID": "campaigns", "AIRFLOW_CONN_CAMPAIGNS": "http://h"},
            "the Airflow Connection 'campaigns' (LIFECYCLE_PUSH_CONN_ID) has no password "
            "(the push token)",
        ),
    ],
)
def test_an_unusable_connection_is_refused_naming_it(airflow_cfg, env, message) -> None:
    with pytest.raises(SettingsError) as err:
        with_connections(load_settings(env))
    assert str(err.value).startswith(message)


# ------------------------------------------------------------------ DAG parse: asset URIs


def _parse(cfg: OrchestrationSettings, lifecycle: dict, airflow: dict | None = None):
    from lifecycle.orchestration import runner

    with lifecycle_env(**lifecycle), environment(airflow):
        return runner.load_dag(cfg, DAILY_DAG_ID), runner.load_dag(cfg, TRAIN_DAG_ID)


def _outlets(dag) -> dict[str, str]:
    """Return table -> URI of the DAG's outlets (a server's assets are named by their URI,
    an embedded warehouse's by their table; the table is in the extra either way)."""
    from lifecycle.orchestration.assets import PRIVATE_LOCATION, TABLE_KEY

    outlets = [o for t in dag.tasks for o in t.outlets]
    assert all(o.name == o.uri or o.uri.startswith(PRIVATE_LOCATION) for o in outlets)
    return {o.extra[TABLE_KEY]: o.uri for o in outlets}


HOSTED = {
    "raw.crm__contacts": "/raw/crm__contacts",
    "raw.web__events": "/raw/web__events",
    "raw.orders__orders": "/raw/orders__orders",
    "raw.orders__order_items": "/raw/orders__order_items",
    "raw.marketing__spend": "/raw/marketing__spend",
    "raw.fx__rates": "/raw/fx__rates",
    "marts": "/marts/*",
    "ml.scores_history": "/ml/scores_history",
    "activation.customer_scores": "/activation/customer_scores",
}


@pytest.mark.parametrize(
    ("lifecycle", "airflow", "location"),
    [
        # the URL's host, port and database; never its user or password
        (
            {"LIFECYCLE_WAREHOUSE_URL": "postgresql://etl:s3cret-pw@wh.example:6543/lc"},
            None,
            "postgres://wh.example:6543/lc",
        ),
        # no port: the provider's default is written, as its sanitizer does
        (
            {"LIFECYCLE_WAREHOUSE_URL": "postgresql://etl@10.0.0.7/lc"},
            None,
            "postgres://10.0.0.7:5432/lc",
        ),
        # the Airflow Connection (URI form) wins over the URL
        (
            {"LIFECYCLE_WAREHOUSE_URL": "postgresql://etl@old.example/old"},
            {"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": "postgres://etl:pw@db.example:5433/wh"},
            "postgres://db.example:5433/wh",
        ),
    ],
)
def test_a_hosted_warehouse_gives_standard_postgres_asset_uris(
    airflow_cfg, tmp_path, lifecycle, airflow, location
) -> None:
    daily, _ = _parse(airflow_cfg, {"LIFECYCLE_HOME": str(tmp_path), **lifecycle}, airflow)
    uris = _outlets(daily)
    assert uris == {name: location + path for name, path in HOSTED.items()}
    for uri in uris.values():
        parts = urlsplit(uri)
        # what the postgres provider's sanitizer accepts unchanged: a host and a port, no
        # user info, and /database/schema/table
        assert (parts.scheme, parts.username, parts.password) == ("postgres", None, None)
        assert parts.port is not None and len(parts.path.split("/")) == 4


@pytest.mark.parametrize(
    "lifecycle",
    [
        {},  # the embedded warehouse
        {"LIFECYCLE_WAREHOUSE_URL": "postgresql://postgres@/lc?host=/tmp/lc-socket"},
    ],
)
def test_the_embedded_socket_keeps_the_private_scheme(airflow_cfg, tmp_path, lifecycle) -> None:
    daily, _ = _parse(airflow_cfg, {"LIFECYCLE_HOME": str(tmp_path), **lifecycle})
    uris = _outlets(daily)
    expected = {name: "x-lifecycle://warehouse" + path for name, path in HOSTED.items()}
    expected["marts"] = "x-lifecycle://warehouse/marts"
    assert uris == expected


# ------------------------------------------------------------------------- retry delay


def _retry_delays(dag) -> set[dt.timedelta]:
    return {t.retry_delay for t in dag.tasks}


def test_the_retry_delay_is_a_setting(airflow_cfg, tmp_path) -> None:
    daily, train = _parse(airflow_cfg, {"LIFECYCLE_HOME": str(tmp_path)})
    assert _retry_delays(daily) == {dt.timedelta(minutes=2)}
    assert _retry_delays(train) == {dt.timedelta(minutes=5)}
    env = {"LIFECYCLE_HOME": str(tmp_path), "LIFECYCLE_RETRY_DELAY_SECONDS": "7.5"}
    daily, train = _parse(airflow_cfg, env)
    assert _retry_delays(daily) == _retry_delays(train) == {dt.timedelta(seconds=7.5)}
    assert {t.retries for t in daily.tasks} == {2}  # only the delay changes


def test_a_bad_retry_delay_is_refused_naming_it() -> None:
    with pytest.raises(SettingsError, match=r"^LIFECYCLE_RETRY_DELAY_SECONDS must be a number, "):
        load_settings({"LIFECYCLE_RETRY_DELAY_SECONDS": "soon"})
    with pytest.raises(SettingsError, match=r"^LIFECYCLE_RETRY_DELAY_SECONDS must be between 0"):
        load_settings({"LIFECYCLE_RETRY_DELAY_SECONDS": "-1"})
