"""Credentials from Airflow Connections when the DAGs run under Airflow.

Under Airflow the warehouse URL and the audience push token come from Airflow
Connections, looked up with the Task SDK's ``Connection.get`` (Airflow 3's public API):
the environment's ``AIRFLOW_CONN_<ID>`` (URI or JSON), then the configured secrets
backend, then, inside a task, the connections stored in Airflow's metadata DB. The ids
are settings:

``LIFECYCLE_WAREHOUSE_CONN_ID`` (default ``lifecycle_warehouse``)
    a ``postgres`` connection; the tasks connect with its URI;
``LIFECYCLE_PUSH_CONN_ID`` (default ``lifecycle_push``)
    its password is the bearer token of audience pushes.

A connection that is defined wins over ``LIFECYCLE_WAREHOUSE_URL`` /
``LIFECYCLE_PUSH_TOKEN``. One that is not defined under its default id leaves them in
charge (the local runner, the CLI and the tests use them; so does everything outside
Airflow, which never asks Airflow). An id set explicitly must exist: a task fails at once
with one line naming it. The sources' own connections (``shop_db``, ``crm_api``) are
looked up the same way by :func:`lifecycle.sources_file.resolve_connection`.

Parsing a DAG file reads only ``AIRFLOW_CONN_<ID>`` from the environment (the asset URIs
name the warehouse): top-level DAG code must not call a secrets backend on every parse.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any

from lifecycle.settings import Settings, SettingsError, load_settings

#: Settings fields filled from a Connection: (field, variable naming the conn id).
CONNECTION_SETTINGS: tuple[tuple[str, str], ...] = (
    ("warehouse_url", "LIFECYCLE_WAREHOUSE_CONN_ID"),
    ("push_token", "LIFECYCLE_PUSH_CONN_ID"),
)


def env_name(conn_id: str) -> str:
    """Return the environment variable Airflow reads Connection `conn_id` from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _quiet_airflow_import() -> None:
    # A command that imports Airflow only to look up a connection (`lifecycle airflow
    # serve`, the local runner) would print how Airflow read its configuration (INFO)
    # above its own output: that chatter is for Airflow's own commands.
    if "airflow.configuration" not in sys.modules:
        for name in ("airflow.configuration", "airflow.settings"):
            logging.getLogger(name).setLevel(logging.WARNING)


def find_connection(conn_id: str, settings: Settings, *, backends: bool = True) -> Any:
    """Return Airflow's Connection `conn_id`, or None when it is not defined.

    ``AIRFLOW_CONN_<ID>`` in the settings' environment is read without asking Airflow
    (URI or JSON, parsed by the Task SDK); with `backends`, ``Connection.get`` also asks
    the secrets backend and, in a task, the metadata DB. Raises SettingsError for a
    variable that is neither a connection URI nor JSON.
    """
    value = settings.variable(env_name(conn_id))
    if value is None and not backends:
        return None
    _quiet_airflow_import()
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    if value is None:
        try:
            return Connection.get(conn_id)
        except AirflowNotFoundException:
            return None
    try:
        if value.lstrip().startswith("{"):
            return Connection.from_json(value, conn_id=conn_id)
        return Connection.from_uri(value, conn_id=conn_id)
    except Exception as exc:  # noqa: BLE001 - the SDK raises ValueError, AirflowException, ...
        raise SettingsError(
            f"{env_name(conn_id)} is not an Airflow connection URI or JSON: "
            f"{type(exc).__name__}: {exc}".replace(value, "<value>")
        ) from None


def _postgres_url(conn: Any, where: str) -> str:
    if conn.conn_type not in ("postgres", "postgresql"):
        raise SettingsError(
            f"{where} is a {conn.conn_type or 'typeless'} connection; the warehouse needs "
            "a postgres one"
        )
    if not conn.host:
        raise SettingsError(f"{where} has no host")
    # postgres://... as Airflow writes it; libpq reads the same URI (host, port, database
    # in the path, extras such as sslmode as parameters) under its own scheme name.
    return "postgresql://" + conn.get_uri().split("://", 1)[1]


def _password(conn: Any, where: str) -> str:
    if not conn.password:
        raise SettingsError(f"{where} has no password (the push token)")
    return conn.password


_TAKE: dict[str, Callable[[Any, str], str]] = {
    "warehouse_url": _postgres_url,
    "push_token": _password,
}


def with_connections(settings: Settings, *, backends: bool = True) -> Settings:
    """Return `settings` with the credentials that Airflow Connections define.

    With `backends` (a task, or a command that starts Airflow) every place Airflow keeps
    connections is asked, and an id set explicitly that is defined nowhere raises
    SettingsError naming it. Without (parsing a DAG file) only ``AIRFLOW_CONN_<ID>``
    counts and a missing connection leaves the setting as it is.
    """
    changes: dict[str, str] = {}
    for name, variable in CONNECTION_SETTINGS:
        conn_id = getattr(settings, variable.removeprefix("LIFECYCLE_").lower())
        conn = find_connection(conn_id, settings, backends=backends)
        if conn is None:
            if backends and settings.variable(variable):
                raise SettingsError(
                    f"{variable}={conn_id}: no Airflow Connection {conn_id!r} is defined "
                    f"(set {env_name(conn_id)}, or add it to the secrets backend)"
                )
            continue
        changes[name] = _TAKE[name](conn, f"the Airflow Connection {conn_id!r} ({variable})")
    return dataclasses.replace(settings, **changes) if changes else settings


def airflow_settings(settings: Settings) -> Settings:
    """Return :func:`with_connections` of `settings` for a command that runs Airflow (the
    local runner, ``lifecycle airflow serve``), a wrong connection raised as the
    OrchestrationError its CLI reports. Airflow's home must be active (imports Airflow)."""
    from lifecycle.orchestration.home import OrchestrationError

    try:
        return with_connections(settings)
    except SettingsError as exc:
        raise OrchestrationError(str(exc)) from None


def task_settings() -> Settings:
    """Return the settings of the running Airflow task: the environment's, with the
    credentials of its Connections, every secret registered with the log masker.

    Read per task, not cached per process: a worker (or the local runner) may run many
    tasks with different environments. A wrong connection fails the task at once (a
    retry would find the same configuration).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.redact import mask_in_airflow

    try:
        settings = with_connections(load_settings())
    except SettingsError as exc:
        raise AirflowFailException(str(exc)) from None
    mask_in_airflow(settings)  # no token or password in the task logs
    return settings
