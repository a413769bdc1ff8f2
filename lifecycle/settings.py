"""Settings: the one place that reads the environment (and a local `.env`).

Every knob is an environment variable prefixed ``LIFECYCLE_``; a `.env` file in the
working directory is read for local use (real environment variables win). Nothing
else in the package reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dotenv import load_dotenv

#: Database of the warehouse on the embedded server (and the default elsewhere).
WAREHOUSE_DB = "lifecycle"
#: Database that plays the shop's operational orders system on the embedded server.
SHOP_DB = "shop"


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one process."""

    home: Path
    warehouse_url: str | None
    shop_db_url: str | None
    crm_api_url: str | None
    crm_token: str | None = field(repr=False)
    world_dir: Path
    crm_csv: Path
    web_events: str
    orders_source: str  # "db" (the shop database) or "csv"
    orders_csv_dir: Path
    spend_csv: Path
    max_reject_share: float = 0.05
    web_lookback_days: int = 7
    http_retries: int = 8
    http_backoff_s: float = 0.5
    lock_wait_s: float = 30.0  # how long a second run of a stage waits for the first
    alert_webhook_url: str | None = field(default=None, repr=False)
    airflow_parallelism: int | None = None
    audiences_file: Path | None = None  # activation: audience definitions (YAML)
    export_dir: Path | None = None  # activation: root of the audience export folders
    push_token: str | None = field(default=None, repr=False)  # bearer for audience pushes
    # hosts (host or host:port) an audience push may follow a redirect to; none: same origin
    push_redirect_hosts: tuple[str, ...] = ()
    # role -> password, from LIFECYCLE_<ROLE>_PASSWORD or a secrets file named by
    # LIFECYCLE_<ROLE>_PASSWORD_FILE (lifecycle_bi: LIFECYCLE_BI_PASSWORD); roles without
    # one are NOLOGIN
    role_passwords: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    mlflow_tracking_uri: str | None = None  # MLflow tracking store/server (None: local)
    # Where a DB tracking store puts new experiments' artifacts (a URL every worker reaches:
    # s3://..., or file:// on a shared folder). None: the local folder, or the server's.
    mlflow_artifact_uri: str | None = None
    report_dir: Path | None = None  # the daily HTML reports (None: $LIFECYCLE_HOME/reports)
    sources_file: Path | None = None  # the sources file (None: ./sources.yml or built-in)
    # Airflow Connections that hold the warehouse URL and the push token when the DAGs run
    # under Airflow (lifecycle.orchestration.connections); the URL and token settings
    # above are the fallback, and what every command outside Airflow reads.
    warehouse_conn_id: str = "lifecycle_warehouse"
    push_conn_id: str = "lifecycle_push"
    # Delay before a failed task's retry (None: each DAG's own, 2 min daily, 5 min train).
    retry_delay_s: float | None = None
    # The environment the settings were read from: the sources file names the variables
    # that hold connection URLs and tokens, looked up here (never stored in the file).
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def variable(self, name: str) -> str | None:
        """Return the environment variable `name` (a connection URL or token), or None."""
        return self.environ.get(name) or None

    @property
    def state_dir(self) -> Path:
        """Folder for everything the embedded runtime keeps (PostgreSQL data, logs)."""
        return self.home

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded PostgreSQL server."""
        return self.home / "pgdata"


class SettingsError(ValueError):
    """A setting (environment variable) with a value that cannot be used; names it."""


def _path(value: str) -> Path:
    return Path(value).expanduser().resolve()


_ROLE_PASSWORD = re.compile(r"LIFECYCLE_([A-Z][A-Z0-9_]*)_PASSWORD(_FILE)?")
#: LIFECYCLE_*_PASSWORD variables that are not role passwords.
_NOT_ROLES = frozenset({"DBT"})  # set by `lifecycle transform` for its dbt process


def _role_passwords(env: Mapping[str, str]) -> dict[str, str]:
    """Return {role: password} from the environment and the secrets files it names."""
    found: dict[str, str] = {}
    for name, value in sorted(env.items()):
        m = _ROLE_PASSWORD.fullmatch(name)
        if not m or not value or m.group(1) in _NOT_ROLES:
            continue
        role = f"lifecycle_{m.group(1).lower()}"
        if m.group(2):
            if role in found:
                continue  # the variable itself wins over its file
            try:
                value = Path(value).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SettingsError(
                    f"{name}: cannot read the secrets file {value}: {exc}"
                ) from None
        found[role] = value
    return found


def _number(env: Mapping[str, str], name: str, default, kind=float, low=None, high=None):
    """Return the number in `env[name]` (or `default`), or raise SettingsError naming it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be {what}, not {raw!r}") from None
    if kind is float and value != value:  # NaN compares false with everything
        raise SettingsError(f"{name} must be {what}, not {raw!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SettingsError(f"{name} must be {bounds}, not {raw!r}")
    return value


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Return settings from `env` (default: the process environment plus `.env`)."""
    if env is None:
        load_dotenv(Path.cwd() / ".env", override=False)
        env = dict(os.environ)
    home = _path(env.get("LIFECYCLE_HOME") or ".lifecycle")
    world = _path(env.get("LIFECYCLE_WORLD_DIR") or str(home / "world"))
    shop_db_url = env.get("LIFECYCLE_SHOP_DB_URL") or None
    orders_source = env.get("LIFECYCLE_ORDERS_SOURCE") or ("db" if shop_db_url else "csv")
    if orders_source not in ("db", "csv"):
        raise SettingsError(f"LIFECYCLE_ORDERS_SOURCE must be db or csv, not {orders_source!r}")
    return _checked_paths(
        Settings(
            home=home,
            warehouse_url=env.get("LIFECYCLE_WAREHOUSE_URL") or None,
            shop_db_url=shop_db_url,
            crm_api_url=env.get("LIFECYCLE_CRM_API_URL") or None,
            crm_token=env.get("LIFECYCLE_CRM_TOKEN") or None,
            world_dir=world,
            crm_csv=_path(env.get("LIFECYCLE_CRM_CSV") or str(world / "crm" / "contacts.csv")),
            web_events=env.get("LIFECYCLE_WEB_EVENTS") or str(world / "web" / "events"),
            orders_source=orders_source,
            orders_csv_dir=_path(env.get("LIFECYCLE_ORDERS_CSV_DIR") or str(world / "orders")),
            spend_csv=_path(
                env.get("LIFECYCLE_SPEND_CSV") or str(world / "marketing" / "spend.csv")
            ),
            max_reject_share=_number(env, "LIFECYCLE_MAX_REJECT_SHARE", 0.05, float, 0, 1),
            web_lookback_days=_number(env, "LIFECYCLE_WEB_LOOKBACK_DAYS", 7, int, 0, 3660),
            http_retries=_number(env, "LIFECYCLE_HTTP_RETRIES", 8, int, 0, 100),
            http_backoff_s=_number(env, "LIFECYCLE_HTTP_BACKOFF_S", 0.5, float, 0, 3600),
            lock_wait_s=_number(env, "LIFECYCLE_LOCK_WAIT_S", 30.0, float, 0, 86400),
            alert_webhook_url=env.get("LIFECYCLE_ALERT_WEBHOOK_URL") or None,
            mlflow_tracking_uri=env.get("LIFECYCLE_MLFLOW_TRACKING_URI") or None,
            mlflow_artifact_uri=env.get("LIFECYCLE_MLFLOW_ARTIFACT_URI") or None,
            report_dir=_path(env.get("LIFECYCLE_REPORT_DIR") or str(home / "reports")),
            audiences_file=_path(
                env.get("LIFECYCLE_AUDIENCES_FILE")
                or str(Path(__file__).resolve().parent.parent / "audiences.yml")
            ),
            export_dir=_path(env.get("LIFECYCLE_EXPORT_DIR") or str(home / "exports")),
            push_token=env.get("LIFECYCLE_PUSH_TOKEN") or None,
            role_passwords=_role_passwords(env),
            push_redirect_hosts=tuple(
                h.strip().lower()
                for h in (env.get("LIFECYCLE_PUSH_REDIRECT_HOSTS") or "").split(",")
                if h.strip()
            ),
            environ=dict(env),
            sources_file=(
                _path(env["LIFECYCLE_SOURCES_FILE"]) if env.get("LIFECYCLE_SOURCES_FILE") else None
            ),
            airflow_parallelism=_number(env, "LIFECYCLE_AIRFLOW_PARALLELISM", None, int, 1),
            warehouse_conn_id=env.get("LIFECYCLE_WAREHOUSE_CONN_ID") or "lifecycle_warehouse",
            push_conn_id=env.get("LIFECYCLE_PUSH_CONN_ID") or "lifecycle_push",
            retry_delay_s=_number(env, "LIFECYCLE_RETRY_DELAY_SECONDS", None, float, 0, 86400),
        )
    )


def _checked_paths(settings: Settings) -> Settings:
    """Fail on a state folder that exists as something other than a folder, or a URL
    that is not a connection URL."""
    for name, url in (
        ("LIFECYCLE_WAREHOUSE_URL", settings.warehouse_url),
        ("LIFECYCLE_SHOP_DB_URL", settings.shop_db_url),
    ):
        if url:
            # Imported only here: DAG files read the settings at parse time, cheaply.
            from psycopg import ProgrammingError
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(url)
            except ProgrammingError as exc:
                why = str(exc).replace(url, "<url>")
                raise SettingsError(
                    f"{name} is not a PostgreSQL connection URL "
                    f"(postgresql://user@host:port/db): {why}"
                ) from None
    for name, path in (("LIFECYCLE_HOME", settings.home),):
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            why = "is a file" if probe == path else f"is under {probe}, which is a file"
            raise SettingsError(f"{name}={path} cannot be used as a folder: it {why}")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings of this process (read once)."""
    return load_settings()


@contextlib.contextmanager
def environment(values: Mapping[str, str] | None) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    if not values:
        yield
        return
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
