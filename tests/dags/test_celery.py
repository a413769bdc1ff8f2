"""The DAGs on CeleryExecutor with two workers, on loopback, end as an in-process run does.

``lifecycle airflow serve --executor celery --workers 2`` runs as a subprocess, as a
person runs it: api-server, scheduler, dag-processor and two ``airflow celery worker``
processes (``worker1``, ``worker2``), Airflow's metadata and Celery's results in a scratch
database of the PostgreSQL on 127.0.0.1:5432, the broker on the Redis of 127.0.0.1:6379
(a database number of its own), MLflow on a PostgreSQL store with artifacts, exports and
reports in folders both workers reach. The warehouse is given only as the Airflow
Connection ``AIRFLOW_CONN_LIFECYCLE_WAREHOUSE``. ``lifecycle_daily`` → ``lifecycle_train`` →
``lifecycle_daily`` are triggered over the REST API; during the last run the worker that
runs ``transform`` is killed (SIGKILL of its process group), so the scheduler's heartbeat
timeout hands the task to the other worker after ``LIFECYCLE_RETRY_DELAY_SECONDS``. The
warehouse and the export files must end identical to the same three runs executed
in-process (``dag.test``); the assets carry the warehouse's ``postgres://`` URIs, and
``lifecycle status`` reads the runs from the PostgreSQL metadata DB.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from lifecycle.orchestration.assets import TABLE_KEY
from lifecycle.orchestration.config import DAILY_DAG_ID, TRAIN_DAG_ID
from lifecycle.orchestration.connections import env_name
from lifecycle.orchestration.server import API_USER, AirflowClient, free_port
from tests.conftest import (
    EXTERNAL_ADMIN_URL,
    external_available,
    interruptible,
    scratch_database,
)
from tests.dags.conftest import lifecycle_env, table_checksums

REDIS_URL = os.environ.get("LIFECYCLE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
START, END = dt.date(2023, 1, 1), dt.date(2024, 3, 31)
FIRST, SECOND = dt.date(2024, 3, 29), dt.date(2024, 3, 30)
#: What the runs hand over and publish (raw/staging are inputs; ops holds wall-clock logs).
COMPARED = ("marts", "ml", "activation")
#: Append-only logs of attempts (a retried task adds its row, by design): not compared.
LOG_TABLES = ("activation.export_log", "activation.push_log")
KILLED_TASK = "transform"
RUN_TIMEOUT_S = 900
#: The tasks' Airflow Connection of the warehouse, and their retry delay (default 2 min).
CONN_ID = "lifecycle_warehouse"
RETRY_DELAY_S = 5


def _redis_db() -> int | None:
    """Return a free Redis database number (empty keyspace), or None without Redis."""
    try:
        import redis
    except ImportError:
        return None
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        used = set(client.info("keyspace"))
        client.close()
    except redis.RedisError:
        return None
    return next((n for n in range(15, 1, -1) if f"db{n}" not in used), None)


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _state(url: str, exports: Path) -> tuple[dict, dict]:
    sums = {k: v for k, v in table_checksums(url, COMPARED).items() if k not in LOG_TABLES}
    return sums, _files(exports)


def _stop(serve: subprocess.Popen, services: Path) -> None:
    """Ctrl-C the serve command (it stops its services); then kill whatever is left."""
    if serve.poll() is None:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(90)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    for pid_file in services.glob("*.pid"):
        with suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _status(env: dict[str, str], cwd: Path) -> dict:
    """Return `lifecycle status --json` as the deployment's operator sees it."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lifecycle"), "status", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _wait_running(api: AirflowClient, run_id: str, task_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ti = api.request("GET", f"/dags/{DAILY_DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
        if ti["state"] == "running" and ti.get("hostname"):
            return ti
        if ti["state"] in ("success", "failed"):
            pytest.fail(f"{task_id} ended {ti['state']} before it could be killed")
        time.sleep(0.5)
    pytest.fail(f"{task_id} did not start within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def scratch() -> Iterator[Callable[[str], Path]]:
    """Folders for this module, outside pytest's base folder: a pytest session started
    meanwhile (another checkout's) may prune that one while the deployment runs."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"lifecycle-{prefix}-")))
        made[-1].chmod(0o755)
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(embedded_settings, airflow_cfg, scratch, celery_world):
    """The three runs in-process (``dag.test``): the end state the deployment must reach."""
    from lifecycle.orchestration.runner import run_dates

    state = scratch("celery-ref")
    quiet = lambda _m: None  # noqa: E731
    with scratch_database(EXTERNAL_ADMIN_URL, "t_cel_ref") as url:
        env = {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(celery_world),
        }
        started = time.perf_counter()
        with lifecycle_env(**env):
            run_dates([FIRST], cfg=airflow_cfg, echo=quiet)
            run_dates([FIRST], dag_id=TRAIN_DAG_ID, cfg=airflow_cfg, echo=quiet)
            run_dates([SECOND], cfg=airflow_cfg, echo=quiet)
        print(f"in-process runs: {time.perf_counter() - started:.0f}s")
        yield _state(url, state / "exports")


@pytest.fixture(scope="module")
def celery_world(scratch):
    if not external_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432: the Celery deployment needs one")
    if _redis_db() is None:
        pytest.skip(f"no Redis at {REDIS_URL} (or no free database number): Celery's broker")
    from lifecycle.sample.world import WorldConfig, generate_world

    world = scratch("celery-world") / "world"
    generate_world(WorldConfig(customers=500, start=START, end=END, seed=11), world)
    return world


@pytest.fixture(scope="module")
def deployment(scratch, celery_world, reference):
    """Run daily → train → daily on the Celery deployment; yield what the runs reported."""
    state = scratch("celery-home")
    shared = scratch("celery-shared")
    redis_db = _redis_db()
    with (
        scratch_database(EXTERNAL_ADMIN_URL, "t_cel_wh") as warehouse,
        scratch_database(EXTERNAL_ADMIN_URL, "t_cel_af") as metadata,
        scratch_database(EXTERNAL_ADMIN_URL, "t_cel_ml") as mlflow_db,
    ):
        airflow_db = metadata.replace("postgresql://", "postgresql+psycopg2://", 1)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "AIRFLOW"))}
        env.update(
            {
                "LIFECYCLE_HOME": str(state),
                # The warehouse only as an Airflow Connection (URI form), as a deployment
                # with a secrets backend has it: serve bootstraps it, the DAG processor
                # names the assets after it, the tasks connect to it.
                "LIFECYCLE_WAREHOUSE_CONN_ID": CONN_ID,
                env_name(CONN_ID): warehouse.replace("postgresql://", "postgres://", 1),
                "LIFECYCLE_WORLD_DIR": str(celery_world),
                "LIFECYCLE_EXPORT_DIR": str(shared / "exports"),
                "LIFECYCLE_REPORT_DIR": str(shared / "reports"),
                "LIFECYCLE_MLFLOW_TRACKING_URI": mlflow_db.replace(
                    "postgresql://", "postgresql+psycopg2://", 1
                ),
                "LIFECYCLE_MLFLOW_ARTIFACT_URI": (shared / "mlflow").as_uri(),
                "LIFECYCLE_AIRFLOW_PARALLELISM": "4",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
                "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{redis_db}",
                # Only the triggered runs, and a killed worker's task retried in seconds.
                "LIFECYCLE_RETRY_DELAY_SECONDS": str(RETRY_DELAY_S),
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            }
        )
        services = state / "airflow" / "logs" / "services"
        out = open(state / "serve.log", "wb")  # noqa: SIM115 - closed in finally
        started = time.perf_counter()
        serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "lifecycle"), "airflow", "serve"]
            + ["--executor", "celery", "--workers", "2", "--port", str(port)],
            env=env,
            cwd=state,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=interruptible,  # _stop's Ctrl-C reaches it in a background job too
        )
        try:
            password_file = state / "airflow" / "simple_auth_manager_passwords.json"
            deadline = time.monotonic() + 300
            while b"Ctrl-C stops" not in (state / "serve.log").read_bytes():
                assert serve.poll() is None, (state / "serve.log").read_text()
                assert time.monotonic() < deadline, "the deployment did not start in 300s"
                time.sleep(1)
            startup_s = time.perf_counter() - started
            password = json.loads(password_file.read_text())[API_USER]
            api = AirflowClient(f"http://127.0.0.1:{port}", API_USER, password)
            for dag_id in (DAILY_DAG_ID, TRAIN_DAG_ID):
                api.wait_for_dag(dag_id)
                api.unpause(dag_id)
            runs = []
            for dag_id, day in ((DAILY_DAG_ID, FIRST), (TRAIN_DAG_ID, FIRST)):
                run_id = api.trigger(dag_id, day)
                runs.append((dag_id, run_id, api.wait_for_run(dag_id, run_id, RUN_TIMEOUT_S)))
            run_id = api.trigger(DAILY_DAG_ID, SECOND)
            victim = _wait_running(api, run_id, KILLED_TASK, RUN_TIMEOUT_S)
            worker = victim["hostname"].split("@")[0]
            os.killpg(int((services / f"celery-{worker}.pid").read_text()), signal.SIGKILL)
            runs.append((DAILY_DAG_ID, run_id, api.wait_for_run(DAILY_DAG_ID, run_id, 900)))
            instances = {
                (dag_id, rid): api.request("GET", f"/dags/{dag_id}/dagRuns/{rid}/taskInstances")[
                    "task_instances"
                ]
                for dag_id, rid, _ in runs
            }
            elapsed = time.perf_counter() - started
            print(f"celery deployment: started in {startup_s:.0f}s, three runs in {elapsed:.0f}s")
            assets = api.request("GET", "/assets", params={"limit": 100})["assets"]
            # `lifecycle status` is a command outside Airflow: it reads the URL variable
            status_env = {**env, "LIFECYCLE_WAREHOUSE_URL": warehouse}
            yield {
                "warehouse": warehouse,
                "metadata": airflow_db,
                # named by their URIs (one active asset per name), known by their table
                "assets": {(a.get("extra") or {}).get(TABLE_KEY): a["uri"] for a in assets},
                "status": _status(status_env, state),
                "runs": runs,
                "instances": instances,
                "killed": (run_id, victim, worker),
                "state": _state(warehouse, shared / "exports"),
                "reports": sorted(p.name for p in (shared / "reports").glob("*.html")),
            }
        finally:
            _stop(serve, services)
            out.close()
            if redis_db is not None:
                import redis

                redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()


@pytest.mark.slow
@pytest.mark.external
def test_the_three_runs_succeed_on_celery(deployment) -> None:
    failed = {
        (dag_id, rid): {ti["task_id"]: ti["state"] for ti in deployment["instances"][dag_id, rid]}
        for dag_id, rid, state in deployment["runs"]
        if state != "success"
    }
    assert not failed, failed
    assert deployment["reports"] == [
        f"lifecycle-report-{FIRST}.html",
        f"lifecycle-report-{SECOND}.html",
    ]


@pytest.mark.slow
@pytest.mark.external
def test_tasks_ran_on_both_workers(deployment) -> None:
    hosts = {
        ti["hostname"].split("@")[0]
        for tis in deployment["instances"].values()
        for ti in tis
        if ti["state"] == "success"
    }
    assert {"worker1", "worker2"} <= hosts, hosts


@pytest.mark.slow
@pytest.mark.external
def test_a_task_of_a_killed_worker_is_retried_on_the_other(deployment) -> None:
    run_id, victim, killed = deployment["killed"]
    [ti] = [t for t in deployment["instances"][DAILY_DAG_ID, run_id] if t["task_id"] == KILLED_TASK]
    assert ti["state"] == "success"
    assert ti["try_number"] == victim["try_number"] + 1
    assert ti["hostname"].split("@")[0] == ({"worker1", "worker2"} - {killed}).pop()


@pytest.mark.slow
@pytest.mark.external
def test_the_warehouse_and_exports_end_as_in_process(deployment, reference) -> None:
    tables, files = deployment["state"]
    ref_tables, ref_files = reference
    assert tables.keys() == ref_tables.keys()
    assert tables["ml.scores_history"][0] > 0
    differ = {t: (tables[t], ref_tables[t]) for t in tables if tables[t] != ref_tables[t]}
    assert not differ, differ
    assert files and files == ref_files


@pytest.mark.slow
@pytest.mark.external
def test_assets_name_the_warehouse_of_the_connection(deployment) -> None:
    info = conninfo_to_dict(deployment["warehouse"])
    location = f"postgres://{info['host']}:{info['port']}/{info['dbname']}"
    assets = deployment["assets"]
    assert assets["marts"] == f"{location}/marts/*"
    assert assets["ml.scores_history"] == f"{location}/ml/scores_history"
    assert assets["activation.customer_scores"] == f"{location}/activation/customer_scores"
    assert assets["raw.orders__orders"] == f"{location}/raw/orders__orders"
    assert len(assets) == 9, sorted(assets)


@pytest.mark.slow
@pytest.mark.external
def test_status_reads_the_runs_from_the_postgresql_metadata_db(deployment) -> None:
    status = deployment["status"]
    rows = {r["dag"]: r for r in status["airflow"]["rows"]}
    assert status["airflow"]["note"] is None
    assert {d: (r["logical_date"], r["state"], r["failed_tasks"]) for d, r in rows.items()} == {
        DAILY_DAG_ID: (str(SECOND), "success", None),
        TRAIN_DAG_ID: (str(FIRST), "success", None),
    }
    assert all(r["started"] and r["ended"] for r in rows.values())
    assert status["warehouse"]["rows"][0]["mode"] == "external"
    assert status["report"]["rows"][0]["latest"].endswith(f"lifecycle-report-{SECOND}.html")


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "AIRFLOW"))}
    return subprocess.run(
        [str(Path(sys.executable).parent / "lifecycle"), "airflow", "serve", "--executor"]
        + ["celery", "--workers", "2"],
        env={**base, "LIFECYCLE_HOME": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_serve_with_celery_needs_a_broker(tmp_path: Path) -> None:
    proc = _serve(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: --executor celery needs AIRFLOW__CELERY__BROKER_URL (e.g. redis://127.0.0.1:6379/0)"
    )
    assert not (tmp_path / "airflow" / "logs" / "services").exists()  # nothing started


def test_serve_with_celery_refuses_machine_local_stores(tmp_path: Path) -> None:
    proc = _serve(tmp_path, AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:6379/15")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0] == (
        "error: CeleryExecutor runs tasks on several workers, but 6 store(s) are local to "
        "this machine:"
    )
    assert [line.split()[1] for line in lines[1:7]] == [
        "LIFECYCLE_WAREHOUSE_URL",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "LIFECYCLE_MLFLOW_TRACKING_URI",
        "LIFECYCLE_EXPORT_DIR",
        "LIFECYCLE_REPORT_DIR",
        "LIFECYCLE_WORLD_DIR",
    ]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pgdata").exists()  # the embedded warehouse was not started


def test_serve_with_a_connection_id_defined_nowhere_is_one_error_line(tmp_path: Path) -> None:
    proc = _serve(
        tmp_path,
        AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:6379/15",
        LIFECYCLE_WAREHOUSE_CONN_ID="lifecycle_nowhere",
        LIFECYCLE_WAREHOUSE_URL="postgresql://postgres@127.0.0.1:5432/postgres",
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: LIFECYCLE_WAREHOUSE_CONN_ID=lifecycle_nowhere: no Airflow Connection "
        "'lifecycle_nowhere' is defined (set AIRFLOW_CONN_LIFECYCLE_NOWHERE, or add it to "
        "the secrets backend)"
    ]
    assert not (tmp_path / "airflow" / "logs" / "services").exists()  # nothing started
