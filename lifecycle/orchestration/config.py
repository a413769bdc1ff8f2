"""Settings of the orchestration layer: the local Airflow home and the alert webhook.

The local ("embedded") Airflow lives in ``$LIFECYCLE_HOME/airflow``: a SQLite metadata
database, task logs, and the DAGs of this repository (``dags/``). Everything is passed to
Airflow as ``AIRFLOW__*`` environment variables (see :func:`airflow_env`), so no
``airflow.cfg`` needs editing and ``eval "$(lifecycle airflow env)"`` gives a shell the
same Airflow the runner uses.

Two knobs are new settings of this layer. Until they move into
:class:`lifecycle.settings.Settings` they are read here, from the same environment
(including ``.env``), with the same ``LIFECYCLE_`` prefix:

``LIFECYCLE_ALERT_WEBHOOK_URL``
    where the on-failure callback POSTs a JSON report (unset: log only);
``LIFECYCLE_AIRFLOW_PARALLELISM``
    task slots of the local Airflow (default: the number of CPUs, at most 8).

A distributed deployment (``lifecycle airflow serve --executor celery``, and
``docker-compose.yml``) is configured with Airflow's own variable names, read from the
same environment: ``AIRFLOW__CORE__EXECUTOR`` (what ``lifecycle airflow serve`` starts
unless ``--executor`` says), ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (the metadata DB; unset: the
local SQLite file), ``AIRFLOW__CELERY__BROKER_URL`` and ``AIRFLOW__CELERY__RESULT_BACKEND``
(default: ``db+`` and the metadata DB URL, as compose sets it).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.settings import Settings, load_settings

#: The repository's DAG folder (``dags/`` next to the package).
DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
#: Id of the daily DAG.
DAILY_DAG_ID = "lifecycle_daily"
#: How a task stopped by Ctrl-C fails (never retried), and how the runner recognizes it.
INTERRUPTED = "interrupted (SIGINT): not retried"
#: Id of the training DAG.
TRAIN_DAG_ID = "lifecycle_train"
#: The executors `lifecycle airflow serve` runs, by their CLI name.
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
#: Airflow variables of a deployment, shared with docker-compose.yml.
EXECUTOR_VAR = "AIRFLOW__CORE__EXECUTOR"
METADATA_DB_VAR = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
BROKER_VAR = "AIRFLOW__CELERY__BROKER_URL"
RESULT_BACKEND_VAR = "AIRFLOW__CELERY__RESULT_BACKEND"


@dataclass(frozen=True)
class OrchestrationSettings:
    """Where the local Airflow lives and how the DAGs report failures."""

    home: Path  # LIFECYCLE_HOME
    airflow_home: Path
    dags_folder: Path
    alert_webhook_url: str | None = field(repr=False)
    alert_timeout_s: float = 10.0
    parallelism: int = 2
    executor: str = "LocalExecutor"
    metadata_db_url: str | None = field(default=None, repr=False)  # None: the SQLite file
    broker_url: str | None = field(default=None, repr=False)  # CeleryExecutor's broker
    result_backend: str | None = field(default=None, repr=False)  # None: db+metadata DB

    @property
    def metadata_db(self) -> Path:
        """SQLite file of Airflow's metadata database (when no metadata DB URL is set)."""
        return self.airflow_home / "airflow.db"

    @property
    def sql_alchemy_conn(self) -> str:
        """Return the metadata database's SQLAlchemy URL."""
        return self.metadata_db_url or f"sqlite:///{self.metadata_db}"

    @property
    def celery_result_backend(self) -> str | None:
        """Return Celery's result backend: the setting, else the metadata DB (``db+``)."""
        if self.result_backend:
            return self.result_backend
        if self.metadata_db_url:
            return "db+" + self.metadata_db_url
        return None

    @property
    def log_folder(self) -> Path:
        """Airflow's base log folder (task logs, and the runner's per-run logs)."""
        return self.airflow_home / "logs"

    @property
    def run_log_folder(self) -> Path:
        """Folder of the runner's per-run log files (``<dag_id>/<date>.log``)."""
        return self.log_folder / "local-runs"


def retry_delay(default: dt.timedelta) -> dt.timedelta:
    """Return the DAGs' retry delay: ``LIFECYCLE_RETRY_DELAY_SECONDS`` when set, else
    `default` (read when the DAG file is parsed, like every default_args value)."""
    seconds = load_settings().retry_delay_s
    return default if seconds is None else dt.timedelta(seconds=seconds)


def _env_value(settings: Settings, env: dict[str, str] | None, name: str) -> str | None:
    # Prefer the attribute once lifecycle.settings carries it; until then, the environment.
    attr = name.removeprefix("LIFECYCLE_").lower()
    if hasattr(settings, attr):
        return getattr(settings, attr)
    source = os.environ if env is None else env
    return source.get(name) or None


def load_orchestration_settings(
    settings: Settings | None = None, env: dict[str, str] | None = None
) -> OrchestrationSettings:
    """Return the orchestration settings for `settings` (default: the environment)."""
    settings = settings or load_settings(env)
    cpus = os.cpu_count() or 2
    parallelism = _env_value(settings, env, "LIFECYCLE_AIRFLOW_PARALLELISM")
    source = settings.environ if env is None else env
    return OrchestrationSettings(
        home=settings.home,
        airflow_home=settings.home / "airflow",
        dags_folder=DAGS_FOLDER,
        alert_webhook_url=_env_value(settings, env, "LIFECYCLE_ALERT_WEBHOOK_URL"),
        parallelism=int(parallelism) if parallelism else max(2, min(cpus, 8)),
        executor=source.get(EXECUTOR_VAR) or "LocalExecutor",
        metadata_db_url=source.get(METADATA_DB_VAR) or None,
        broker_url=source.get(BROKER_VAR) or None,
        result_backend=source.get(RESULT_BACKEND_VAR) or None,
    )


def airflow_env(cfg: OrchestrationSettings, jwt_secret: str | None = None) -> dict[str, str]:
    """Return the ``AIRFLOW_HOME`` and ``AIRFLOW__*`` variables of the local Airflow."""
    env = {
        "AIRFLOW_HOME": str(cfg.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        METADATA_DB_VAR: cfg.sql_alchemy_conn,
        # Small machines: a handful of task slots, not the default 32 pre-forked workers.
        "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(cfg.parallelism),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(cfg.log_folder),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(
            cfg.log_folder / "dag_processor"
        ),
        # Loopback only, for `airflow standalone` / api-server on this machine.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:8080/execution/",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # astronomer-cosmos is installed (its Airflow plugin loads in every process): keep
        # its cache here and its usage telemetry (calls to scarf.sh) off. See dags/README.md.
        "AIRFLOW__COSMOS__CACHE_DIR": str(cfg.airflow_home / "cosmos"),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
    }
    if jwt_secret:
        env["AIRFLOW__API_AUTH__JWT_SECRET"] = jwt_secret
    if cfg.broker_url:
        env[BROKER_VAR] = cfg.broker_url
    if cfg.celery_result_backend and cfg.executor == "CeleryExecutor":
        env[RESULT_BACKEND_VAR] = cfg.celery_result_backend
    return env
