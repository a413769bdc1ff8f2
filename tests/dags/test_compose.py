"""docker-compose.yml: valid for Compose, complete, and free of secrets.

No Docker engine runs on the machines of this project, so the file is validated by
``docker-compose config`` (skipped where no Compose binary is installed) and by reading it;
the PostgreSQL init script runs for real against the embedded server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from lifecycle import warehouse as wh

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
INIT_SCRIPT = REPO / "docker" / "postgres" / "init-databases.sh"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
LONG_RUNNING = ("postgres", "redis", "mlflow", "flower", *AIRFLOW_SERVICES)
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_CONN$|_URL$|BACKEND_STORE_URI")


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _config(env_file: Path) -> subprocess.CompletedProcess:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "no docker-compose binary nor `docker compose` plugin on this machine "
            "(install Debian's docker-compose to run this validation)"
        )
    # Only the env file: variables of the caller's shell would override it.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run(
        [*command, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_validates_with_the_example_env_file() -> None:
    proc = _config(ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    lines = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if not line.startswith("AIRFLOW_FERNET_KEY=")
    ]
    env_file = tmp_path / "incomplete.env"
    env_file.write_text("\n".join(lines) + "\n")
    proc = _config(env_file)
    assert proc.returncode != 0
    assert "set AIRFLOW_FERNET_KEY in .env" in proc.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_every_service_with_health_checks(compose: dict) -> None:
    services = compose["services"]
    assert set(LONG_RUNNING) | {"airflow-init"} == set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
    # One PostgreSQL serves the warehouse, Airflow's metadata and MLflow's backend.
    env = services["airflow-apiserver"]["environment"]
    assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    # the tasks' warehouse is the Airflow Connection (JSON), on the same server
    warehouse = json.loads(env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"])
    assert (warehouse["conn_type"], warehouse["host"], warehouse["port"]) == (
        "postgres",
        "postgres",
        5432,
    )
    assert "@postgres:5432/mlflow" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Published ports listen on loopback only.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert set(compose["volumes"]) >= {"pgdata", "airflow-logs", "mlflow-artifacts"}


def _walk(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def test_compose_holds_no_secret_and_every_variable_is_documented(compose: dict) -> None:
    for path, value in _walk(compose):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key) and not key.endswith("_FILE") and isinstance(value, str):
            # A secret (or a URL that carries one) always comes from the env file.
            assert "${" in value or ("@" not in value and "PASSWORD" not in key), (path, value)
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))  # $${X}: the container's
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    for name in required:
        assert name in example, f"{name} is required by docker-compose.yml but commented out"
        assert "change-me" in example[name], f".env.example must not carry a real {name}"


@pytest.mark.skipif(shutil.which("psql") is None, reason="no psql binary on this machine")
def test_postgres_init_script_creates_one_database_and_owner_per_service(
    embedded_settings,
) -> None:
    server = wh.warehouse_url(embedded_settings, start=False)
    admin = wh.with_database(server, "postgres")
    params = conninfo_to_dict(admin)
    tag = uuid.uuid4().hex[:8]
    names = {
        "WAREHOUSE_DB": f"t_wh_{tag}",
        "WAREHOUSE_USER": f"t_whu_{tag}",
        "AIRFLOW_DB": f"t_af_{tag}",
        "AIRFLOW_DB_USER": f"t_afu_{tag}",
        "MLFLOW_DB": f"t_ml_{tag}",
        "MLFLOW_DB_USER": f"t_mlu_{tag}",
    }
    env = {
        **os.environ,
        **names,
        "PGHOST": str(params.get("host") or ""),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "WAREHOUSE_PASSWORD": 'it\'s "quoted"',
        "AIRFLOW_DB_PASSWORD": "pw-airflow",
        "MLFLOW_DB_PASSWORD": "pw-mlflow",
    }
    try:
        proc = subprocess.run(
            ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        with psycopg.connect(admin) as conn:
            owners = dict(
                conn.execute(
                    "select datname, pg_get_userbyid(datdba) from pg_database "
                    "where datname = any(%s)",
                    ([names["WAREHOUSE_DB"], names["AIRFLOW_DB"], names["MLFLOW_DB"]],),
                ).fetchall()
            )
            creates_roles = conn.execute(
                "select rolcreaterole from pg_roles where rolname = %s", (names["WAREHOUSE_USER"],)
            ).fetchone()[0]
        assert owners == {
            names["WAREHOUSE_DB"]: names["WAREHOUSE_USER"],
            names["AIRFLOW_DB"]: names["AIRFLOW_DB_USER"],
            names["MLFLOW_DB"]: names["MLFLOW_DB_USER"],
        }
        assert creates_roles  # `lifecycle warehouse up` creates the loader/BI roles as it
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for key in ("WAREHOUSE_DB", "AIRFLOW_DB", "MLFLOW_DB"):
                conn.execute(f'drop database if exists "{names[key]}" with (force)')
            for key in ("WAREHOUSE_USER", "AIRFLOW_DB_USER", "MLFLOW_DB_USER"):
                conn.execute(f'drop role if exists "{names[key]}"')
