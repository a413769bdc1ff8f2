"""The real Airflow services on this machine: scheduler, DAG processor and API server.

``lifecycle pipeline run`` executes a DAG in-process (``dag.test()``), which is the quick
way to operate one day. :class:`LocalAirflow` instead starts Airflow as it runs in a
deployment — ``airflow scheduler`` (LocalExecutor: each task in its own process),
``airflow dag-processor`` and ``airflow api-server`` — on the local Airflow home
(``$LIFECYCLE_HOME/airflow``), bound to loopback only, in a process group of their own so
that stopping it stops every child (the scheduler ignores a lone SIGTERM to its parent).
:class:`AirflowClient` talks to its REST API (``/api/v2``) with a JWT from ``/auth/token``.

It is what ``lifecycle airflow serve`` runs for a person (open the UI, trigger, watch), and
what the integration test uses to trigger ``lifecycle_daily`` through the REST API.
``airflow standalone`` would do the same but always pre-forks a triggerer and serves task
logs on 0.0.0.0; starting the components ourselves keeps everything on 127.0.0.1.

With ``CeleryExecutor`` (``lifecycle airflow serve --executor celery --workers N``) the
scheduler queues tasks on the broker (``AIRFLOW__CELERY__BROKER_URL``) and N
``airflow celery worker`` processes run them, each under its own Celery hostname
(``worker<i>@<host>``) and recording that name as the task instances' hostname, so that a
run shows which worker ran what. The metadata DB must then be a server
(``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``), and every store the tasks share must be
reachable by every worker: :mod:`lifecycle.orchestration.shared_state` checks that
before anything starts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.orchestration import home
from lifecycle.orchestration.config import OrchestrationSettings
from lifecycle.orchestration.home import OrchestrationError

#: The components started, in order; each runs as ``python -m airflow <args>``.
COMPONENTS: dict[str, list[str]] = {
    "dag-processor": ["dag-processor"],
    "scheduler": ["scheduler", "--skip-serve-logs"],  # task logs are read from local disk
    "api-server": ["api-server", "--workers", "1"],
}
#: The REST API user of the local Airflow (simple auth manager); its password is generated
#: once into the Airflow home (mode 0600).
API_USER = "admin"
TERMINAL_STATES = frozenset({"success", "failed"})
#: Environment variable naming a Celery worker of this machine (read by worker_hostname).
WORKER_NAME_VAR = "LIFECYCLE_AIRFLOW_WORKER_NAME"


def worker_hostname() -> str:
    """Return the hostname a task instance records: ``<worker name>@<host>`` on a worker.

    Airflow's ``[core] hostname_callable``: the Celery workers of one machine would all
    record the machine's FQDN, so each worker started here names itself. Read from the
    environment (not :mod:`lifecycle.settings`): Airflow calls it inside the task process.
    """
    host = socket.getfqdn()
    name = os.environ.get(WORKER_NAME_VAR)
    return f"{name}@{host}" if name else host


def worker_names(count: int) -> list[str]:
    """Return the names of `count` local Celery workers."""
    return [f"worker{i}" for i in range(1, count + 1)]


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_password(cfg: OrchestrationSettings) -> str:
    """Return the local API user's password, created on first use in the Airflow home."""
    path = password_file(cfg)
    if not path.exists():
        cfg.airflow_home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({API_USER: secrets.token_urlsafe(18)}, fh)
    return json.loads(path.read_text())[API_USER]


def password_file(cfg: OrchestrationSettings) -> Path:
    """Return the simple auth manager's password file of the local Airflow."""
    return cfg.airflow_home / "simple_auth_manager_passwords.json"


def server_env(cfg: OrchestrationSettings, port: int) -> dict[str, str]:
    """Return the ``AIRFLOW__*`` variables of the services on `port` (loopback only)."""
    base = f"http://127.0.0.1:{port}"
    return {
        **home.environment(cfg),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__EXECUTOR": cfg.executor,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{API_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file(cfg)),
        # Pick up DAG files quickly (a person editing a DAG, a test triggering one).
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    }


@dataclass
class LocalAirflow:
    """Airflow's scheduler, DAG processor and API server on 127.0.0.1, as child processes.

    Use as a context manager: ``with LocalAirflow(cfg, env=...) as af: af.client()``.
    `env` is added to the services' environment (the tasks read their LIFECYCLE_*
    settings from it).
    """

    cfg: OrchestrationSettings
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    start_timeout_s: float = 180.0
    workers: int = 0  # Celery workers (CeleryExecutor only)
    worker_concurrency: int = 1  # task slots of each Celery worker
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)
    _log_offsets: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def url(self) -> str:
        """Return the base URL of the API server (and UI)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        """Return the folder of the services' own logs."""
        return self.cfg.log_folder / "services"

    def commands(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Return each service's ``airflow`` arguments and extra environment, in order."""
        out = {name: (args, {}) for name, args in COMPONENTS.items()}
        if self.cfg.executor != "CeleryExecutor":
            return out
        for name in worker_names(self.workers):
            args = [
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--concurrency",
                str(self.worker_concurrency),
                # Every worker of this machine writes task logs into the same log folder,
                # which the api-server reads: no log server (they would all want :8793).
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ]
            extra = {
                WORKER_NAME_VAR: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            }
            out[f"celery-{name}"] = (args, extra)
        return out

    def start(self) -> LocalAirflow:
        """Start the services and wait until the API (and every worker) answers; return self."""
        if self.cfg.executor == "CeleryExecutor" and self.workers < 1:
            raise OrchestrationError("CeleryExecutor needs at least one worker (--workers N)")
        home.ensure_initialized(self.cfg)
        self.port = self.port or free_port()
        api_password(self.cfg)
        env = {**os.environ, **self.env, **server_env(self.cfg, self.port)}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name, (args, extra) in self.commands().items():
                with open(self.log_dir / f"{name}.log", "ab") as out:
                    self._log_offsets[name] = out.tell()  # the log is appended to
                    self.processes[name] = subprocess.Popen(
                        [sys.executable, "-m", "airflow", *args],
                        env={**env, **extra},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        cwd=self.cfg.airflow_home,
                        start_new_session=True,  # its own process group: stop() kills all
                    )
                # For operators and tests: `kill -- -$(cat <name>.pid)` stops that service.
                (self.log_dir / f"{name}.pid").write_text(f"{self.processes[name].pid}\n")
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        import requests

        deadline = time.monotonic() + self.start_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise OrchestrationError(
                        f"airflow {name} exited with {proc.returncode} while starting; "
                        f"see {self.log_dir / (name + '.log')}"
                    )
            try:
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                states = {k: (v or {}).get("status") for k, v in health.items()}
                if (
                    states.get("scheduler") == "healthy"
                    and states.get("metadatabase") in ("healthy", None)
                    and self._workers_ready()
                ):
                    return
                last = json.dumps(states)
            except (requests.RequestException, ValueError) as exc:
                last = str(exc)
            time.sleep(1)
        raise OrchestrationError(
            f"the local Airflow did not become healthy in {self.start_timeout_s:.0f}s "
            f"({last}); logs in {self.log_dir}"
        )

    def _workers_ready(self) -> bool:
        # A Celery worker logs "<worker>@<host> ready." once it consumes from the broker.
        for name in self.processes:
            if name.startswith("celery-"):
                with open(self.log_dir / f"{name}.log", "rb") as fh:
                    fh.seek(self._log_offsets.get(name, 0))
                    if b" ready." not in fh.read():
                        return False
        return True

    def worker_pids(self) -> dict[str, int]:
        """Return the process id of each Celery worker, by worker name."""
        return {
            name.removeprefix("celery-"): proc.pid
            for name, proc in self.processes.items()
            if name.startswith("celery-")
        }

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every service and its children (SIGTERM to the group, then SIGKILL)."""
        for proc in self.processes.values():
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Task processes forked by the executor live in the scheduler's group: make sure.
        for proc in self.processes.values():
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for name in self.processes:
            (self.log_dir / f"{name}.pid").unlink(missing_ok=True)
        self.processes.clear()

    def client(self) -> AirflowClient:
        """Return a REST API client logged in as the local API user."""
        return AirflowClient(self.url, API_USER, api_password(self.cfg))

    def __enter__(self) -> LocalAirflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class AirflowClient:
    """A small client of Airflow 3's REST API (``/api/v2``), authenticated with a JWT."""

    url: str
    username: str
    password: str = field(repr=False)
    timeout_s: float = 30.0
    _token: str | None = field(default=None, init=False, repr=False)

    def _headers(self) -> dict[str, str]:
        import requests

        if self._token is None:
            resp = requests.post(
                f"{self.url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=self.timeout_s,
            )
            if resp.status_code >= 400:
                raise OrchestrationError(
                    f"Airflow refused the login of {self.username!r}: HTTP {resp.status_code}"
                )
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API and return the decoded JSON; raise with the API's detail on error."""
        import requests

        resp = requests.request(
            method,
            f"{self.url}/api/v2{path}",
            headers=self._headers(),
            timeout=self.timeout_s,
            **kwargs,
        )
        if resp.status_code >= 400:
            raise OrchestrationError(
                f"Airflow API {method} {path}: HTTP {resp.status_code}: {resp.text[:500]}"
            )
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait until the DAG processor has parsed `dag_id`; return the DAG's details."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.request("GET", f"/dags/{dag_id}")
            except OrchestrationError as exc:
                if "HTTP 404" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def import_errors(self) -> list[dict[str, Any]]:
        """Return the DAG import errors the DAG processor reported."""
        return self.request("GET", "/importErrors").get("import_errors", [])

    def unpause(self, dag_id: str) -> None:
        """Unpause `dag_id` so the scheduler runs its triggered runs."""
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(
        self, dag_id: str, logical_date: dt.date, conf: Mapping[str, Any] | None = None
    ) -> str:
        """Trigger a run of `dag_id` for the business day `logical_date`; return its run id."""
        from lifecycle.orchestration.daily import business_zone

        when = dt.datetime.combine(logical_date, dt.time(), tzinfo=business_zone())
        body = {
            "logical_date": when.isoformat(),
            "dag_run_id": f"api__{logical_date.isoformat()}__{secrets.token_hex(3)}",
            "conf": dict(conf or {}),
        }
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900.0) -> str:
        """Wait until the run ends; return its final state ("success" or "failed")."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in TERMINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise OrchestrationError(
                    f"run {run_id} of {dag_id} still {state} after {timeout_s:.0f}s"
                )
            time.sleep(2)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Return the state of every task instance of a run."""
        body = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}
