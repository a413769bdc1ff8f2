"""Which stores a distributed executor needs shared, and a check that refuses local ones.

Under CeleryExecutor (or KubernetesExecutor) any task of a run may execute on any worker,
so everything one task hands to another must live in a service or a folder that every
worker reaches. These are the places where the project defaults to state on one machine
(the defaults suit one machine, ``lifecycle pipeline run`` and LocalExecutor):

- warehouse: embedded PostgreSQL on a Unix socket under ``$LIFECYCLE_HOME/pgdata`` ->
  ``LIFECYCLE_WAREHOUSE_URL`` with a TCP host;
- shop database (sample world): a socket URL -> ``LIFECYCLE_SHOP_DB_URL`` with a TCP host;
- Airflow metadata DB: SQLite in ``$LIFECYCLE_HOME/airflow`` ->
  ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (PostgreSQL);
- MLflow tracking and registry: SQLite in ``$LIFECYCLE_HOME/mlflow`` ->
  ``LIFECYCLE_MLFLOW_TRACKING_URI`` (a tracking server, or a PostgreSQL store);
- MLflow artifacts: ``$LIFECYCLE_HOME/mlflow/artifacts`` -> the tracking server's
  artifact store, or ``LIFECYCLE_MLFLOW_ARTIFACT_URI`` with a database store;
- audience exports: ``$LIFECYCLE_HOME/exports`` -> ``LIFECYCLE_EXPORT_DIR``;
- daily reports: ``$LIFECYCLE_HOME/reports`` -> ``LIFECYCLE_REPORT_DIR``;
- source files (CSV exports, web events): ``$LIFECYCLE_HOME/world`` -> ``LIFECYCLE_WORLD_DIR``.

A folder setting is accepted when it is set explicitly: that is the operator saying the
folder is shared (a volume every worker mounts, or simply this host when all workers run
here, as ``lifecycle airflow serve --executor celery`` does). A default under
``$LIFECYCLE_HOME`` is refused, as are stores that cannot be shared at all (a Unix
socket, a SQLite file). Scratch space that no other task reads (dbt's ``target/``,
MLflow's plot scratch folder, cosmos' cache) stays on the worker's disk; task logs are
written on the worker and read by the api-server from the same folder here, from the
workers' log servers or remote logging on a cluster (``AIRFLOW__LOGGING__*``).
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.orchestration.assets import socket_host
from lifecycle.orchestration.config import METADATA_DB_VAR, OrchestrationSettings
from lifecycle.orchestration.connections import env_name
from lifecycle.orchestration.home import OrchestrationError
from lifecycle.settings import Settings

#: Executors that may run the tasks of one run on different machines.
DISTRIBUTED_EXECUTORS = frozenset({"CeleryExecutor", "KubernetesExecutor", "EdgeExecutor"})


def _under_home(path: Path | None, settings: Settings) -> bool:
    if path is None:
        return True
    return path.resolve().is_relative_to(settings.home.resolve())


def machine_local_stores(settings: Settings, cfg: OrchestrationSettings) -> list[str]:
    """Return one line per store that only this machine reaches (empty: all shared)."""
    env = settings.environ
    problems = []
    if not settings.warehouse_url:
        problems.append(
            f"LIFECYCLE_WAREHOUSE_URL is not set, nor {env_name(settings.warehouse_conn_id)}: "
            f"the embedded warehouse listens on a Unix socket under {settings.pgdata.parent}; "
            "set a PostgreSQL URL (or Airflow Connection) with a TCP host"
        )
    elif socket := socket_host(settings.warehouse_url):
        problems.append(
            f"LIFECYCLE_WAREHOUSE_URL connects through the Unix socket {socket}; "
            "use a TCP host every worker reaches"
        )
    if settings.shop_db_url and (socket := socket_host(settings.shop_db_url)):
        problems.append(
            f"LIFECYCLE_SHOP_DB_URL connects through the Unix socket {socket}; "
            "use a TCP host every worker reaches"
        )
    if not cfg.metadata_db_url or cfg.metadata_db_url.startswith("sqlite"):
        problems.append(
            f"{METADATA_DB_VAR} is not a database server (Airflow's metadata is the SQLite "
            f"file {cfg.metadata_db}); set a postgresql+psycopg2:// URL"
        )
    tracking = settings.mlflow_tracking_uri
    if not tracking or tracking.startswith(("sqlite:", "file:", "/", "./")):
        where = tracking or f"sqlite under {settings.home / 'mlflow'}"
        problems.append(
            f"LIFECYCLE_MLFLOW_TRACKING_URI is a store on this machine ({where}); set a "
            "tracking server (http://...) or a database (postgresql://...)"
        )
    elif not tracking.startswith(("http:", "https:")) and not settings.mlflow_artifact_uri:
        problems.append(
            "LIFECYCLE_MLFLOW_ARTIFACT_URI is not set: with the database tracking store "
            f"{tracking.split('://')[0]}://... MLflow would keep artifacts in the worker's "
            "working directory; set an s3:// URL or a shared folder's file:// URL"
        )
    folders = {
        "LIFECYCLE_EXPORT_DIR": (settings.export_dir, "the audience exports"),
        "LIFECYCLE_REPORT_DIR": (settings.report_dir, "the daily reports"),
        "LIFECYCLE_WORLD_DIR": (settings.world_dir, "the source files"),
    }
    for name, (path, what) in folders.items():
        if not env.get(name) and _under_home(path, settings):
            problems.append(
                f"{name} is not set: {what} would go to {path} on each worker; set a "
                "folder every worker mounts"
            )
    return problems


def check_shared_state(settings: Settings, cfg: OrchestrationSettings) -> None:
    """Raise :class:`OrchestrationError` if `cfg`'s executor is distributed and some store
    is local to this machine; the message names each setting to change."""
    if cfg.executor not in DISTRIBUTED_EXECUTORS:
        return
    problems = machine_local_stores(settings, cfg)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise OrchestrationError(
            f"{cfg.executor} runs tasks on several workers, but {len(problems)} store(s) "
            f"are local to this machine:\n{lines}\n(see docs/operations.md, "
            '"Running distributed")'
        )
