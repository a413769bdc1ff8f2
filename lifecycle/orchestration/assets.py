"""The URIs of the assets the DAGs publish: the warehouse's tables, named as lineage tools do.

When the warehouse has a host (``LIFECYCLE_WAREHOUSE_URL``, or the Airflow Connection of
:mod:`lifecycle.orchestration.connections` given as ``AIRFLOW_CONN_<ID>``), a table's
asset is ``postgres://<host>:<port>/<database>/<schema>/<table>``: the form the postgres
provider's asset URI sanitizer normalises to (scheme ``postgres``, the port always
written, no user or password), so the same table has the same URI in every tool that
emits or reads it (OpenLineage, another DAG's ``Asset``). The published marts, which
are swapped in as one schema, are ``.../<database>/marts/*``.

The embedded warehouse listens on a Unix socket of this machine, which no other tool can
name: its assets keep the private scheme ``x-lifecycle://warehouse/<schema>/<table>``.
An embedded warehouse's assets are named after their tables (``raw.<table>``,
``marts``, ``ml.scores_history``, ...); a server's are named by their URIs, as Airflow
names an asset given only a URI, because Airflow keeps one active asset per name: with
table names, moving the warehouse in the same Airflow home left the new URIs inactive and
failed every task that emits them. The table name is in each asset's extra
(``lifecycle_table``) either way.
"""

from __future__ import annotations

from lifecycle.settings import Settings, load_settings

#: Scheme of the embedded warehouse's assets (private: ``x-`` is never normalised).
PRIVATE_LOCATION = "x-lifecycle://warehouse"
#: Key of an asset's extra holding its table name (``raw.orders__orders``, ``marts``): the
#: name the tasks know it by, whatever the asset's name.
TABLE_KEY = "lifecycle_table"
#: The postgres provider's default port, which its sanitizer writes when a URI has none.
DEFAULT_PORT = 5432


def socket_host(url: str) -> str | None:
    """Return the Unix-socket directory a PostgreSQL URL connects through, or None."""
    # Imported here: a DAG file parsed without a warehouse URL never loads psycopg.
    from psycopg.conninfo import conninfo_to_dict

    try:
        host = str(conninfo_to_dict(url).get("host") or "")
    except Exception:  # noqa: BLE001 - not a libpq URL: the driver will say why
        return None
    if not host:
        return "(the default socket)"
    return host if host.startswith("/") else None


def warehouse_location(settings: Settings) -> str:
    """Return ``postgres://host:port/database`` of the warehouse, or the private scheme
    when it is the embedded server (or any server reached through a Unix socket)."""
    url = settings.warehouse_url
    if not url or socket_host(url):
        return PRIVATE_LOCATION
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    # libpq takes lists of hosts and ports (failover); the first is the primary
    host = str(info["host"]).split(",")[0]
    port = str(info.get("port") or DEFAULT_PORT).split(",")[0] or DEFAULT_PORT
    database = info.get("dbname") or info.get("user") or "postgres"  # libpq's defaults
    return f"postgres://{host}:{port}/{database}"


def asset_uri(location: str, schema: str, table: str | None) -> str:
    """Return the URI of `schema`.`table` (None: the whole schema) at `location`."""
    if location == PRIVATE_LOCATION:
        return f"{location}/{schema}" + (f"/{table}" if table else "")
    return f"{location}/{schema}/{table or '*'}"


def parse_time_settings() -> Settings:
    """Return the settings a DAG file is parsed with: the environment, and the warehouse
    of ``AIRFLOW_CONN_<ID>`` when set (never a secrets backend call at parse time)."""
    from lifecycle.orchestration.connections import with_connections

    return with_connections(load_settings(), backends=False)


def warehouse_asset(name: str, schema: str, table: str | None):
    """Return the Airflow asset `name` of `schema`.`table` in the configured warehouse."""
    from airflow.sdk import Asset

    location = warehouse_location(parse_time_settings())
    uri = asset_uri(location, schema, table)
    # Airflow keeps one active asset per name: a table of a warehouse with a host is named
    # by its URI (Airflow's own default), so moving the warehouse (embedded -> a server,
    # one server -> another) in the same Airflow home does not leave the new URIs inactive
    # behind the old assets of the same name (every task with them failed)
    private = location == PRIVATE_LOCATION
    return Asset(name=name if private else uri, uri=uri, group=schema, extra={TABLE_KEY: name})
