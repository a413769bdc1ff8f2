"""docker-compose.yml and the image configure what the code reads, with the same names.

The variables compose sets on the Airflow services are compared with those that
:mod:`lifecycle.settings` and :mod:`lifecycle.orchestration.config` read; its resolved
environment must pass the distributed-executor check of
:mod:`lifecycle.orchestration.shared_state`; the image installs the same ``celery`` extra
as ``make install`` (through requirements.lock).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from lifecycle.orchestration import config as orch_config
from lifecycle.orchestration.assets import warehouse_location
from lifecycle.orchestration.config import load_orchestration_settings
from lifecycle.orchestration.connections import env_name, with_connections
from lifecycle.orchestration.server import LocalAirflow
from lifecycle.orchestration.shared_state import check_shared_state, machine_local_stores
from lifecycle.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
READERS = (
    REPO / "lifecycle" / "settings.py",
    REPO / "lifecycle" / "orchestration" / "config.py",
    REPO / "lifecycle" / "privacy" / "__init__.py",  # the erasure ledger's site key
)
#: ${NAME:-default}, ${NAME:?message}, ${NAME}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*)|:\?[^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _resolved(env: dict) -> dict[str, str]:
    """Return the environment as a container sees it, secrets replaced by placeholders."""
    return {
        key: INTERPOLATION.sub(lambda m: m.group(2) if m.group(2) is not None else "x", str(v))
        for key, v in env.items()
    }


def _read_by_code() -> set[str]:
    pattern = re.compile(r'"(LIFECYCLE_[A-Z0-9_]+)"')
    return {name for path in READERS for name in pattern.findall(path.read_text())}


def test_every_lifecycle_variable_compose_sets_is_read_by_the_code(compose: dict) -> None:
    env = compose["services"]["airflow-worker"]["environment"]
    set_by_compose = {k for k in env if k.startswith("LIFECYCLE_")}
    assert set_by_compose, "compose sets no LIFECYCLE_* variable"
    unknown = set_by_compose - _read_by_code()
    assert not unknown, f"compose sets variables no code reads: {sorted(unknown)}"


def test_compose_sets_the_airflow_variables_the_deployment_code_reads(compose: dict) -> None:
    read = {
        orch_config.EXECUTOR_VAR,
        orch_config.METADATA_DB_VAR,
        orch_config.BROKER_VAR,
        orch_config.RESULT_BACKEND_VAR,
    }
    for name in ("airflow-scheduler", "airflow-worker", "airflow-apiserver"):
        env = compose["services"][name]["environment"]
        assert read <= set(env), (name, sorted(read - set(env)))
    env = _resolved(compose["services"]["airflow-worker"]["environment"])
    cfg = load_orchestration_settings(load_settings(env), env)
    assert cfg.executor == "CeleryExecutor"
    # The result backend compose sets is the default the code derives from the metadata DB.
    assert env[orch_config.RESULT_BACKEND_VAR] == "db+" + env[orch_config.METADATA_DB_VAR]
    assert cfg.celery_result_backend == env[orch_config.RESULT_BACKEND_VAR]
    assert orch_config.airflow_env(cfg)[orch_config.BROKER_VAR] == env[orch_config.BROKER_VAR]


def test_the_compose_environment_passes_the_distributed_check(compose: dict, airflow_cfg) -> None:
    for name in ("airflow-worker", "airflow-scheduler"):
        env = _resolved(compose["services"][name]["environment"])
        settings = with_connections(load_settings(env))
        cfg = load_orchestration_settings(settings, env)
        assert machine_local_stores(settings, cfg) == [], name
        check_shared_state(settings, cfg)  # does not raise


def test_compose_gives_the_tasks_the_warehouse_as_an_airflow_connection(
    compose: dict, airflow_cfg
) -> None:
    services = compose["services"]
    init = _resolved(services["airflow-init"]["environment"])
    for name in ("airflow-worker", "airflow-scheduler", "airflow-dag-processor"):
        env = _resolved(services[name]["environment"])
        conn_id = env["LIFECYCLE_WAREHOUSE_CONN_ID"]
        assert conn_id == load_settings(env).warehouse_conn_id == "lifecycle_warehouse"
        conn = json.loads(env[env_name(conn_id)])
        assert conn == {
            "conn_type": "postgres",
            "host": "postgres",
            "port": 5432,
            "schema": "lifecycle",
            "login": "lifecycle",
            "password": "x",  # ${WAREHOUSE_PASSWORD:?...}
        }
        # the Airflow services have no URL to fall back on: the Connection or an error
        assert "LIFECYCLE_WAREHOUSE_URL" not in env, name
        settings = with_connections(load_settings(env))
        # the warehouse airflow-init bootstraps (`lifecycle warehouse up`, outside Airflow)
        assert settings.warehouse_url == init["LIFECYCLE_WAREHOUSE_URL"], name
        assert warehouse_location(settings) == "postgres://postgres:5432/lifecycle"


def test_celery_with_local_defaults_is_refused_naming_each_setting(tmp_path: Path) -> None:
    env = {
        "LIFECYCLE_HOME": str(tmp_path),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "LIFECYCLE_MLFLOW_TRACKING_URI": "postgresql://db.example:5432/mlflow",
        "LIFECYCLE_EXPORT_DIR": "/mnt/shared/exports",
        "LIFECYCLE_SHOP_DB_URL": "postgresql://postgres@/shop?host=/tmp/sock",
    }
    settings = load_settings(env)
    cfg = load_orchestration_settings(settings, env)
    problems = machine_local_stores(settings, cfg)
    named = [p.split()[0] for p in problems]
    assert named == [
        "LIFECYCLE_WAREHOUSE_URL",
        "LIFECYCLE_SHOP_DB_URL",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "LIFECYCLE_MLFLOW_ARTIFACT_URI",
        "LIFECYCLE_REPORT_DIR",
        "LIFECYCLE_WORLD_DIR",
    ]
    assert "Unix socket /tmp/sock" in problems[1]
    with pytest.raises(Exception, match=r"CeleryExecutor runs tasks on several workers, but 6"):
        check_shared_state(settings, cfg)
    # The same stores are fine on one machine.
    local = {**env, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    check_shared_state(settings, load_orchestration_settings(load_settings(local), local))


def test_the_image_installs_the_celery_extra_of_the_lock() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [provider] = [
        r for r in project["optional-dependencies"]["celery"] if r.startswith("apache-airflow-")
    ]
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(rf"^{re.escape(provider)}$", lock, re.MULTILINE), provider
    assert "--extra celery" in lock.splitlines()[1]  # the header: how it was compiled
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "-r requirements.lock" in dockerfile
    assert "apache-airflow-providers-celery" not in dockerfile.replace(
        "(apache-airflow-providers-celery", ""
    ), "the image pins the provider itself instead of taking the lock's"


def test_local_celery_workers_run_the_compose_worker_command(compose: dict, tmp_path) -> None:
    env = {"LIFECYCLE_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    cfg = load_orchestration_settings(load_settings(env), env)
    commands = LocalAirflow(cfg, workers=2).commands()
    workers = {k: v for k, v in commands.items() if k.startswith("celery-")}
    assert list(workers) == ["celery-worker1", "celery-worker2"]
    compose_cmd = compose["services"]["airflow-worker"]["command"]
    for name, (args, extra) in workers.items():
        assert ["airflow", *args[:2]] == compose_cmd
        worker = name.removeprefix("celery-")
        assert args[args.index("--celery-hostname") + 1] == f"{worker}@%h"
        assert extra["LIFECYCLE_AIRFLOW_WORKER_NAME"] == worker
