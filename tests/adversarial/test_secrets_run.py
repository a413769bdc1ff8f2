"""Secrets after a real Airflow run: nowhere in MLflow, Airflow's task logs, tables or files.

One small world goes through ``lifecycle pipeline run`` (Airflow's ``dag.test`` in a
process of its own: daily, train, daily with scores, exports and a push to a loopback
server) with every secret set: the CRM token, the push token, two role passwords (one
from a secrets file). Then each secret is searched for in MLflow's params and tags of
every run (through the MLflow client), in the Airflow task logs of every run, in every
file under the state folder (MLflow's store and artifacts, reports, exports, Data Docs),
in every row of every schema of the warehouse (the session's embedded server: the role
passwords make roles LOGIN cluster-wide, which a shared server must not see), and in
what the commands and ``lifecycle status`` printed. The push server must have received
the push token: the secret was in use, not merely set.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.adversarial.hostile_http import serve
from tests.conftest import run_cli, scratch_database

START, END = dt.date(2023, 7, 1), dt.date(2024, 3, 31)
D0, D1 = END - dt.timedelta(days=1), END
SECRETS = {
    "LIFECYCLE_CRM_TOKEN": "crm-TOKEN-s3cr3t-4f1d",
    "LIFECYCLE_PUSH_TOKEN": "push-TOKEN-s3cr3t-9b2e",
    "LIFECYCLE_LOADER_PASSWORD": "loader-PW-s3cr3t-77aa",
}
FILE_SECRET = "bi-PW-s3cr3t-from-file-0c3d"  # LIFECYCLE_BI_PASSWORD_FILE
ALL_SECRETS = [*SECRETS.values(), FILE_SECRET]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = run_cli(args, env, timeout=900)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_settings) -> Iterator[dict]:
    from lifecycle import warehouse as wh
    from lifecycle.sample.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("secrets-run")
    world = root / "world"
    generate_world(WorldConfig(customers=200, start=START, end=END, seed=5), world)
    secret_file = root / "bi_password"
    secret_file.write_text(FILE_SECRET + "\n")
    audiences = yaml.safe_load((Path(__file__).resolve().parents[2] / "audiences.yml").read_text())
    with (
        serve(lambda _r: (200, {"Content-Type": "application/json"}, b"{}")) as (url, seen),
        scratch_database(wh.warehouse_url(embedded_settings, start=False), "t_secrets") as db,
    ):
        for audience in audiences["audiences"]:
            audience["push"] = {"url": f"{url}/lists/{audience['name']}"}
        (root / "audiences.yml").write_text(yaml.safe_dump(audiences))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "AIRFLOW"))}
        env = (
            base
            | SECRETS
            | {
                "LIFECYCLE_HOME": str(root / "home"),
                "LIFECYCLE_WAREHOUSE_URL": db,
                "LIFECYCLE_WORLD_DIR": str(world),
                "LIFECYCLE_AUDIENCES_FILE": str(root / "audiences.yml"),
                "LIFECYCLE_BI_PASSWORD_FILE": str(secret_file),
            }
        )
        printed = [
            _cli(env, "pipeline", "run", "--date", str(D0)),
            _cli(env, "pipeline", "run", "--dag", "lifecycle_train", "--date", str(D0)),
            _cli(env, "pipeline", "run", "--date", str(D1)),
            _cli(env, "status"),
        ]
        yield {"env": env, "home": root / "home", "db": db, "seen": seen, "printed": printed}


def test_the_secrets_were_in_use(run) -> None:
    auth = {r.headers.get("Authorization") for r in run["seen"].requests}
    assert auth == {f"Bearer {SECRETS['LIFECYCLE_PUSH_TOKEN']}"}
    with psycopg.connect(run["db"]) as conn:
        logins = dict(
            conn.execute(
                "select rolname, rolcanlogin from pg_roles "
                "where rolname in ('lifecycle_loader', 'lifecycle_bi')"
            ).fetchall()
        )
    assert logins == {"lifecycle_loader": True, "lifecycle_bi": True}


def _mlflow_values(home: Path) -> tuple[int, int, list[str]]:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    client = MlflowClient()
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    texts: list[str] = []
    params = 0
    for r in runs:
        params += len(r.data.params)
        texts += [f"{k}={v}" for k, v in r.data.params.items()]
        texts += [f"{k}={v}" for k, v in r.data.tags.items()]
    for model in client.search_registered_models():
        texts += [f"{k}={v}" for k, v in model.tags.items()]
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts += [f"{k}={v}" for k, v in version.tags.items()]
            texts.append(version.source or "")
    return len(runs), params, texts


@pytest.mark.parametrize("secret", list(range(len(ALL_SECRETS))))
def test_no_secret_in_mlflow_params_or_tags(run, secret: int, figures) -> None:
    runs, params, texts = _mlflow_values(run["home"])
    assert runs >= 3 and params >= 10  # churn, CLV and segmentation were trained and logged
    assert [t for t in texts if ALL_SECRETS[secret] in t] == []
    figures["MLflow params/tags searched for secrets"] += len(texts) if secret == 0 else 0


def _task_logs(home: Path) -> list[Path]:
    return sorted(p for p in (home / "airflow" / "logs").rglob("*") if p.is_file())


@pytest.mark.parametrize("secret", list(range(len(ALL_SECRETS))))
def test_no_secret_in_airflow_task_logs(run, secret: int) -> None:
    logs = _task_logs(run["home"])
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    for task in ("extract_crm", "transform", "train_churn", "register", "activate", "report"):
        assert task in text  # the logs of every DAG's tasks are there
    assert ALL_SECRETS[secret] not in text


@pytest.mark.parametrize("secret", list(range(len(ALL_SECRETS))))
def test_no_secret_in_any_file_row_or_output(run, secret: int, figures) -> None:
    needle = ALL_SECRETS[secret].encode()
    files = [p for p in run["home"].rglob("*") if p.is_file()]
    assert [str(p) for p in files if needle in p.read_bytes()] == []
    for done in run["printed"]:
        assert ALL_SECRETS[secret] not in done.stdout + done.stderr
    found, rows = [], 0
    with psycopg.connect(run["db"]) as conn:
        tables = conn.execute(
            "select table_schema || '.' || table_name from information_schema.tables "
            "where table_schema not in ('pg_catalog', 'information_schema') "
            "and table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            n, hit = conn.execute(
                f"select count(*), bool_or(x::text like %s) from {table} as x",
                (f"%{ALL_SECRETS[secret]}%",),
            ).fetchone()
            rows += n
            if hit:
                found.append(table)
    assert found == []
    if secret == 0:
        figures["files searched for secrets"] += len(files)
        figures["warehouse rows searched for secrets"] += rows
