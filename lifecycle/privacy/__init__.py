"""Erasure requests (GDPR Art. 17, CCPA "right to delete"): forget a person everywhere.

A request names one identifier of the person (an email, a shop customer id, a CRM
contact id or a web anonymous id). Filing it records only a keyed hash of that
identifier in the ledger ``ops.erasure_requests``; applying it

1. resolves the person through the identity graph (``marts.customer_identities``: every
   email, customer id, CRM id and stitched anonymous id of their customer key) and the raw
   orders they placed, and stores the keyed hash of every one of those identifiers (and of
   the customer key, the order ids and the ad-platform SHA-256 of each email) in
   ``ops.erasure_identifiers``;
2. deletes every row of every warehouse table (raw, quarantine, staging, intermediate,
   marts, the marts build, ml, activation) whose identifier columns match a hash of the
   ledger, blanks the referral columns that point at the person from other people's rows,
   and the data-quality examples that quote them;
3. rewrites the export folders that list them (rows removed, manifest counts and checksums
   and the export log rewritten);
4. logs per table and file how many rows went (``ops.erasure_log``).

From then on every load drops the rows that match the ledger inside the load's own
transaction (:func:`drop_forgotten`, called by :func:`lifecycle.load.load_batch`), so a
full reload of a source that still holds the person does not bring them back.

The hash is SHA-256 over a site key (``LIFECYCLE_ERASURE_SECRET``) and the normalized
identifier. Keyed, not a bare SHA-256: emails are guessable, and a bare hash would let
anyone who can read the ledger test a list of addresses against it, so the ledger would
itself say who asked to be forgotten. The key lives in the deployment's secrets, not in
the warehouse; the ledger keeps its fingerprint to refuse another key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SECRET_VARIABLE = "LIFECYCLE_ERASURE_SECRET"
MIN_SECRET_CHARS = 16

#: What a request can name, and the CLI option for each.
KINDS = ("email", "customer_id", "crm_contact_id", "anonymous_id")

#: Columns that hold an identifier of a person in any schema: a row whose column matches
#: the ledger is the person's row and is deleted.
IDENTIFIER_COLUMNS = frozenset(
    {
        "customer_key",
        "email",
        "primary_email",
        "customer_id",
        "user_id",
        "primary_customer_id",
        "contact_id",
        "crm_contact_id",
        "primary_crm_contact_id",
        "anonymous_id",
        "order_id",
        "identifier_value",
        "identifier_a",
        "identifier_b",
        "identified_by_value",
        "anchor_identifier_value",
    }
)
#: Columns that name who used a device in the same row as its anonymous id.
DEVICE_USERS = ("user_id", "email")
#: Identifier columns whose name says nothing outside their table.
TABLE_IDENTIFIER_COLUMNS = {("raw", "crm__contacts"): frozenset({"id"})}
#: Columns of *other* people's rows that point at the person: blanked, the row stays.
POINTER_COLUMNS = frozenset({"referred_by", "referred_by_contact_id"})
#: Free-text columns that may quote a person's values: the row is deleted (a quarantined
#: source line) or the column blanked (examples of a data-quality result).
TEXT_COLUMNS = {"payload": "delete", "partial_unexpected": "blank"}
#: Schemas swept when a request is applied (views are skipped: they read these tables).
SWEPT_SCHEMAS = (
    "raw",
    "staging",
    "intermediate",
    "marts",
    "marts__build",
    "ml",
    "activation",
    "ops",
)
#: The event stream's incremental aggregates (dbt, by device and session), and the table
#: they are built from. A build merges a device's new events into its rows, so a row that
#: counted a forgotten person's events (a device someone else also used, or one not stitched
#: to them) would keep them, and one the sweep deleted would not come back from the other
#: person's events. When the sweep removes events, they are dropped: the next transform
#: rebuilds them whole from the events that remain, as a full refresh would.
WEB_EVENTS = "staging.stg_web__events"
WEB_AGGREGATES = (
    "intermediate.int_web_session_days_aggregated",
    "intermediate.int_web_identities_observed",
    "intermediate.int_web_visitors_aggregated",
)
#: Where text is cut into candidate identifiers (JSON, CSV, URLs), the same in SQL.
TOKEN_SEPARATORS = r"[][\s,;\"'{}:|<>()=&?/\\]+"
_TOKENS = re.compile(TOKEN_SEPARATORS)

DDL = """
create schema if not exists ops;
create table if not exists ops.erasure_requests (
    request_id text primary key,
    kind text not null check (kind in ('email', 'customer_id', 'crm_contact_id', 'anonymous_id')),
    identifier_hash text not null,     -- keyed SHA-256 of the normalized identifier
    requested_at timestamptz not null default now(),
    status text not null default 'pending' check (status in ('pending', 'applied')),
    applied_at timestamptz,
    apply_id text,                     -- the apply run (ops.erasure_log.apply_id)
    count_customers integer,           -- customer keys the identifier resolved to
    count_identifiers integer,         -- identifier hashes added to the ledger
    unique (kind, identifier_hash)
);
create table if not exists ops.erasure_identifiers (
    identifier_hash text primary key,  -- keyed SHA-256: no plain identifier is kept
    identifier_type text not null,
    request_id text not null references ops.erasure_requests (request_id)
);
create table if not exists ops.erasure_log (
    apply_id text,                     -- an apply run (null: rows dropped by a load)
    batch_id text,                     -- the load batch that dropped rows (null: an apply)
    location text not null,            -- schema.table, or an export file
    action text not null check (action in ('deleted', 'blanked', 'dropped at load')),
    count_rows bigint not null,
    logged_at timestamptz not null default now()
);
create index if not exists erasure_log_batch_idx on ops.erasure_log (batch_id);
create table if not exists ops.erasure_key (
    fingerprint text not null          -- SHA-256 of the key: tells a wrong key, reveals nothing
);
"""

LEDGER_TABLES = ("erasure_requests", "erasure_identifiers", "erasure_log", "erasure_key")


class ErasureError(RuntimeError):
    """An erasure request or run that cannot go on; the message says what to fix."""


# ------------------------------------------------------------------------------ hashing


def identifier_hash(key: str, value: str) -> str:
    """Return the keyed SHA-256 (hex) of `value` as stored in the ledger.

    :func:`_sql_hash` computes the same in SQL; the two must stay equal.
    """
    return hashlib.sha256(f"{key}\x1f{value}".encode()).hexdigest()


def _sql_hash(expr: sql.Composable) -> sql.Composed:
    """Return the SQL of :func:`identifier_hash` of `expr` (the key is ``%(key)s``)."""
    return sql.SQL("encode(sha256(convert_to(%(key)s || chr(31) || {}, 'UTF8')), 'hex')").format(
        expr
    )


def normalize(kind: str, value: str) -> str:
    """Return `value` as the identity models hold it: emails trimmed and lower-cased,
    other identifiers trimmed."""
    value = value.strip()
    return value.lower() if kind == "email" else value


def _candidates(value: str) -> set[str]:
    """Return the forms of a cell that may be an identifier (as is, and lower-cased);
    a leading ``'`` (how exports make a cell inert for spreadsheets) is looked through."""
    value = value.strip()
    if value.startswith("'"):
        value = value[1:]
    return {value, value.lower()} if value else set()


def fingerprint(key: str) -> str:
    """Return the fingerprint of the site key kept in ``ops.erasure_key``."""
    return hashlib.sha256(f"lifecycle erasure key\x1f{key}".encode()).hexdigest()


def site_key(environ: dict[str, str] | Any) -> str:
    """Return the site key from the settings' environment, or raise ErasureError."""
    key = (environ.get(SECRET_VARIABLE) or "").strip()
    if not key:
        raise ErasureError(
            f"{SECRET_VARIABLE} is not set: erasure requests are hashed with this site key "
            f"(a random secret of at least {MIN_SECRET_CHARS} characters, e.g. "
            "`openssl rand -hex 32`, kept with the deployment's other secrets)"
        )
    if len(key) < MIN_SECRET_CHARS:
        raise ErasureError(f"{SECRET_VARIABLE} is too short: use at least {MIN_SECRET_CHARS}")
    return key


def ensure_ledger(conn: psycopg.Connection, key: str | None = None) -> None:
    """Create the ledger tables if missing; with `key`, check it is the ledger's key."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('lifecycle.erasure_ddl'))")
        conn.execute(DDL)
        if key is None:
            return
        row = conn.execute("select fingerprint from ops.erasure_key").fetchone()
        if row is None:
            conn.execute("insert into ops.erasure_key values (%s)", (fingerprint(key),))
        elif row[0] != fingerprint(key):
            raise ErasureError(
                f"{SECRET_VARIABLE} is not the key the erasure ledger was written with: "
                "restore the original key (hashes made with another key match nothing)"
            )


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Request:
    """One identifier to forget, as given (plain: it is hashed before it is stored)."""

    kind: str
    value: str


def parse_request(kind: str, value: str, where: str = "") -> Request:
    """Return the request for `value`, or raise ErasureError (empty, unknown kind)."""
    at = f"{where}: " if where else ""
    if kind not in KINDS:
        raise ErasureError(f"{at}unknown identifier kind {kind!r}; one of: {', '.join(KINDS)}")
    if not value.strip():
        raise ErasureError(f"{at}empty {kind}: nothing to forget")
    if kind == "email" and "@" not in value:
        raise ErasureError(f"{at}{value.strip()[:40]!r} is not an email address")
    return Request(kind, normalize(kind, value))


def read_requests(path: Path) -> list[Request]:
    """Return the requests of a CSV file with the header ``kind,identifier``.

    Raises ErasureError naming the file (and line) when it cannot be used.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ErasureError(f"{path}: cannot read the requests file: {reason}") from exc
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if header != ["kind", "identifier"]:
        raise ErasureError(
            f"{path}: the first line must be the header `kind,identifier`, got {','.join(header)!r}"
        )
    requests = []
    for line, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            raise ErasureError(
                f"{path}:{line}: expected 2 fields (kind,identifier), got {len(row)}"
            )
        requests.append(parse_request(row[0].strip(), row[1], f"{path}:{line}"))
    if not requests:
        raise ErasureError(f"{path}: no request in the file")
    return requests


def file_requests(conn: psycopg.Connection, key: str, requests: Sequence[Request]) -> list[str]:
    """Record `requests` as pending in the ledger (hashes only); return their request ids.

    A request already on file (same kind and identifier) keeps its id and status.
    """
    ensure_ledger(conn, key)
    ids = []
    with conn.transaction():
        for r in requests:
            h = identifier_hash(key, r.value)
            row = conn.execute(
                "insert into ops.erasure_requests (request_id, kind, identifier_hash) "
                "values (%s, %s, %s) on conflict (kind, identifier_hash) do update "
                "set kind = excluded.kind returning request_id",
                (f"er-{uuid.uuid4().hex[:12]}", r.kind, h),
            ).fetchone()
            ids.append(row[0])
    return ids


# ------------------------------------------------------------------------------- tables


def _relation_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()[0]


def _ledger_has_hashes(conn: psycopg.Connection) -> bool:
    if not _relation_exists(conn, "ops.erasure_identifiers"):
        return False
    return conn.execute("select exists (select 1 from ops.erasure_identifiers)").fetchone()[0]


def _column_matches(column: str) -> sql.Composed:
    """Return SQL true when `column` holds an identifier of the ledger (any of its forms)."""
    col = sql.SQL("trim({}::text)").format(sql.Identifier(column))
    return sql.SQL(
        "exists (select 1 from ops.erasure_identifiers as e where e.identifier_hash in ({}, {}))"
    ).format(_sql_hash(col), _sql_hash(sql.SQL("lower({})").format(col)))


def _text_mentions(column: str) -> sql.Composed:
    """Return SQL true when the free text in `column` holds an identifier of the ledger."""
    return sql.SQL(
        "exists (select 1 from regexp_split_to_table({}::text, %(separators)s) as t (token) "
        "inner join ops.erasure_identifiers as e on e.identifier_hash in ({}, {}))"
    ).format(
        sql.Identifier(column),
        _sql_hash(sql.SQL("t.token")),
        _sql_hash(sql.SQL("lower(t.token)")),
    )


@dataclass(frozen=True)
class _Plan:
    """What a sweep does to one table: rows to delete, columns to blank."""

    schema: str
    table: str
    delete_when: tuple[sql.Composable, ...]
    blank: tuple[tuple[str, sql.Composable], ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def _plan(schema: str, table: str, columns: Iterable[str]) -> _Plan | None:
    """Return how to sweep `schema.table` with `columns`, or None (nothing to do)."""
    ids = IDENTIFIER_COLUMNS | TABLE_IDENTIFIER_COLUMNS.get((schema, table), frozenset())
    delete_when: list[sql.Composable] = []
    blank: list[tuple[str, sql.Composable]] = []
    columns = list(columns)
    # A device (anonymous id) can be shared: an event on the person's device that names
    # someone else (a login) is that other person's, and stays.
    others = [c for c in DEVICE_USERS if c in columns]
    for c in columns:
        if c == "anonymous_id" and others:
            named = sql.SQL(" and ").join(
                sql.SQL("{} is null").format(sql.Identifier(o)) for o in others
            )
            delete_when.append(sql.SQL("({} and {})").format(_column_matches(c), named))
        elif c in ids:
            delete_when.append(_column_matches(c))
        elif c in POINTER_COLUMNS:
            blank.append((c, _column_matches(c)))
        elif TEXT_COLUMNS.get(c) == "delete":
            delete_when.append(_text_mentions(c))
        elif TEXT_COLUMNS.get(c) == "blank":
            blank.append((c, _text_mentions(c)))
    if not delete_when and not blank:
        return None
    return _Plan(schema, table, tuple(delete_when), tuple(blank))


def _sweep(
    cur: psycopg.Cursor, plan: _Plan, key: str, where: sql.Composable | None = None
) -> tuple[int, int]:
    """Delete and blank what the ledger matches in one table; return (deleted, blanked)."""
    params = {"key": key, "separators": TOKEN_SEPARATORS}
    scope = sql.SQL(" and {}").format(where) if where is not None else sql.SQL("")
    table = sql.Identifier(plan.schema, plan.table)
    deleted = blanked = 0
    if plan.delete_when:
        cur.execute(
            sql.SQL("delete from {} where ({}){}").format(
                table, sql.SQL(" or ").join(plan.delete_when), scope
            ),
            params,
        )
        deleted = cur.rowcount
    for column, matches in plan.blank:
        cur.execute(
            sql.SQL("update {} set {} = null where {}{}").format(
                table, sql.Identifier(column), matches, scope
            ),
            params,
        )
        blanked += cur.rowcount
    return deleted, blanked


def _swept_tables(conn: psycopg.Connection) -> list[_Plan]:
    """Return the sweep of every base table of the swept schemas (the ledger excepted)."""
    rows = conn.execute(
        "select c.table_schema, c.table_name, array_agg(c.column_name::text order by "
        "c.ordinal_position) from information_schema.columns as c "
        "inner join information_schema.tables as t using (table_schema, table_name) "
        "where t.table_type = 'BASE TABLE' and c.table_schema = any(%s) "
        "and not (c.table_schema = 'ops' and c.table_name = any(%s)) "
        "group by 1, 2 order by 1, 2",
        (list(SWEPT_SCHEMAS), list(LEDGER_TABLES)),
    ).fetchall()
    return [p for s, t, cols in rows if (p := _plan(s, t, cols)) is not None]


# -------------------------------------------------------------------------------- apply


@dataclass
class ApplyResult:
    """What one apply run removed, where."""

    apply_id: str
    requests: list[str] = field(default_factory=list)
    customers: int = 0
    removed: dict[str, tuple[str, int]] = field(default_factory=dict)  # location -> (action, n)
    #: aggregate tables dropped for the next transform to rebuild (WEB_AGGREGATES)
    rebuilt: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return a short human summary (counts only, never an identifier)."""
        if not self.requests:
            return "erasure: no pending request"
        rows = sum(n for _, n in self.removed.values())
        rebuilt = (
            f"; {len(self.rebuilt)} web aggregate table(s) dropped, rebuilt whole by the next "
            "transform"
            if self.rebuilt
            else ""
        )
        return (
            f"erasure {self.apply_id}: {len(self.requests)} request(s), {self.customers} "
            f"customer(s), {rows} row(s) removed or blanked in {len(self.removed)} place(s)"
            f"{rebuilt}"
        )

    def facts(self) -> dict[str, Any]:
        """Return JSON-able facts (for XCom)."""
        return {
            "apply_id": self.apply_id,
            "requests": len(self.requests),
            "customers": self.customers,
            "rows_removed": sum(n for _, n in self.removed.values()),
            "rebuilt": self.rebuilt,
            "summary": self.summary(),
        }


_ADD_IDENTIFIERS = (
    "insert into ops.erasure_identifiers (identifier_hash, identifier_type, request_id) "
)

_RESOLVE_SQL = """
with asked as (
    select request_id, identifier_hash from ops.erasure_requests where request_id = any(%(ids)s)
)
select asked.request_id, i.customer_key
from marts.customer_identities as i
inner join asked on asked.identifier_hash in ({h_value}, {h_lower})
"""

_IDENTIFIERS_SQL = (
    _ADD_IDENTIFIERS
    + """
select distinct on (h) h, identifier_type, request_id from (
    select {h_value} as h, i.identifier_type, k.request_id
    from marts.customer_identities as i
    inner join unnest(%(keys)s::text[], %(owners)s::text[]) as k (customer_key, request_id)
        using (customer_key)
    union all
    select {h_key}, 'customer_key', k.request_id
    from unnest(%(keys)s::text[], %(owners)s::text[]) as k (customer_key, request_id)
    union all
    -- the ad-platform hash of each email (exports carry it instead of the address)
    select {h_sha}, 'email_sha256', k.request_id
    from marts.customer_identities as i
    inner join unnest(%(keys)s::text[], %(owners)s::text[]) as k (customer_key, request_id)
        using (customer_key)
    where i.identifier_type = 'email'
) as found
order by h, request_id
on conflict (identifier_hash) do nothing
"""
)


_ORDERS_SQL = (
    _ADD_IDENTIFIERS
    + """
select distinct on (1) {h_order}, 'order_id', e.request_id
from raw.orders__orders as o
inner join ops.erasure_identifiers as e on e.identifier_hash in ({forms})
order by 1, e.request_id
on conflict (identifier_hash) do nothing
"""
)


def _resolve(cur: psycopg.Cursor, key: str, request_ids: list[str]) -> dict[str, set[str]]:
    """Add every identifier of the requested people to the ledger; return their keys."""
    params: dict[str, Any] = {"key": key, "ids": request_ids}
    keys: dict[str, set[str]] = {r: set() for r in request_ids}
    # the identifier as asked (also when the person is not, or not yet, in the marts)
    cur.execute(
        _ADD_IDENTIFIERS + "select identifier_hash, kind, request_id from ops.erasure_requests "
        "where request_id = any(%(ids)s) on conflict (identifier_hash) do nothing",
        params,
    )
    if _relation_exists(cur.connection, "marts.customer_identities"):
        value = sql.SQL("i.identifier_value")
        found = cur.execute(
            sql.SQL(_RESOLVE_SQL).format(
                h_value=_sql_hash(value), h_lower=_sql_hash(sql.SQL("lower(i.identifier_value)"))
            ),
            params,
        ).fetchall()
        owner: dict[str, str] = {}
        for request_id, customer_key in found:
            keys[request_id].add(customer_key)
            owner.setdefault(customer_key, request_id)
        sha = sql.SQL("encode(sha256(convert_to(lower(trim(i.identifier_value)), 'UTF8')), 'hex')")
        cur.execute(
            sql.SQL(_IDENTIFIERS_SQL).format(
                h_value=_sql_hash(value),
                h_key=_sql_hash(sql.SQL("k.customer_key")),
                h_sha=_sql_hash(sha),
            ),
            {**params, "keys": list(owner), "owners": list(owner.values())},
        )
    # the orders they placed: their lines (order_items) carry only the order id
    if _relation_exists(cur.connection, "raw.orders__orders"):
        forms = [
            _sql_hash(sql.SQL(form).format(sql.Identifier("o", column)))
            for column in ("customer_id", "email")
            for form in ("trim({})", "lower(trim({}))")
        ]
        cur.execute(
            sql.SQL(_ORDERS_SQL).format(
                h_order=_sql_hash(sql.SQL("trim(o.order_id)")), forms=sql.SQL(", ").join(forms)
            ),
            params,
        )
    return keys


def apply_pending(url: str, environ: Any, export_root: Path | None) -> ApplyResult:
    """Apply every pending request: resolve, sweep the warehouse, rewrite the exports.

    One transaction: a failure leaves the requests pending and the warehouse as it was
    (export folders already rewritten stay rewritten: a rerun finds nothing more there).
    """
    result = ApplyResult(apply_id=f"ea-{uuid.uuid4().hex[:12]}")
    with psycopg.connect(url) as conn:
        if not _relation_exists(conn, "ops.erasure_requests"):
            return result
        pending = [
            r[0]
            for r in conn.execute(
                "select request_id from ops.erasure_requests where status = 'pending' "
                "order by requested_at, request_id"
            )
        ]
        if not pending:
            return result
        key = site_key(environ)
        ensure_ledger(conn, key)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('lifecycle.erasure_apply'))")
            keys = _resolve(cur, key, pending)
            result.requests = pending
            result.customers = len(set().union(*keys.values()))
            left_out = _left_out(cur, key)
            for plan in _swept_tables(conn):
                deleted, blanked = _sweep(cur, plan, key)
                if deleted:
                    result.removed[plan.qualified] = ("deleted", deleted)
                if blanked:
                    result.removed[f"{plan.qualified} (columns)"] = ("blanked", blanked)
            if WEB_EVENTS in result.removed:
                for table in WEB_AGGREGATES:
                    if _relation_exists(conn, table):
                        cur.execute(
                            sql.SQL("drop table {}").format(sql.Identifier(*table.split(".")))
                        )
                        result.rebuilt.append(table)
            if export_root is not None:
                for location, n in rewrite_exports(cur, export_root, key, left_out).items():
                    result.removed[location] = ("deleted", n)
            cur.executemany(
                "insert into ops.erasure_log (apply_id, location, action, count_rows) "
                "values (%s, %s, %s, %s)",
                [(result.apply_id, loc, a, n) for loc, (a, n) in sorted(result.removed.items())],
            )
            for request_id in pending:
                cur.execute(
                    "update ops.erasure_requests set status = 'applied', applied_at = now(), "
                    "apply_id = %s, count_customers = %s, count_identifiers = "
                    "(select count(*) from ops.erasure_identifiers where request_id = %s) "
                    "where request_id = %s",
                    (result.apply_id, len(keys[request_id]), request_id, request_id),
                )
    log.info(result.summary())
    return result


# ------------------------------------------------------------------------------ exports


def _left_out(cur: psycopg.Cursor, key: str) -> dict[tuple[str, str], str]:
    """Return why each forgotten (as_of_date, customer key) was left out of a send list
    (``no_consent`` / ``no_email``), read before their score rows are deleted."""
    if not _relation_exists(cur.connection, "activation.customer_scores_history"):
        return {}
    rows = cur.execute(
        sql.SQL(
            "select as_of_date, customer_key, has_marketing_consent is true, email is not null "
            "from activation.customer_scores_history where {}"
        ).format(_column_matches("customer_key")),
        {"key": key},
    ).fetchall()
    return {
        (d.isoformat(), k): ("no_consent" if not consent else "no_email")
        for d, k, consent, has_email in rows
        if not (consent and has_email)
    }


def _matches(cell: str, key: str, hashes: set[str]) -> bool:
    return any(identifier_hash(key, c) in hashes for c in _candidates(cell))


def rewrite_exports(
    cur: psycopg.Cursor, root: Path, key: str, left_out: dict[tuple[str, str], str]
) -> dict[str, int]:
    """Remove the forgotten people's rows from every export folder under `root`; return
    rows removed per file. Manifests (counts, sizes, checksums) and the export log follow."""
    from lifecycle.activation.exports import (
        CONTROL_FILE,
        IDS_FILE,
        MANIFEST,
        _write_folder,
        render_csv,
    )

    hashes = {r[0] for r in cur.execute("select identifier_hash from ops.erasure_identifiers")}
    removed: dict[str, int] = {}
    if not root.is_dir():
        return removed
    for manifest_path in sorted(root.glob("*/*/" + MANIFEST)):
        folder = manifest_path.parent
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        blobs = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        dropped: dict[str, list[list[str]]] = {}
        headers: dict[str, list[str]] = {}
        for entry in manifest["files"]:
            header, *rows = list(csv.reader(io.StringIO(blobs[entry["name"]].decode("utf-8"))))
            headers[entry["name"]] = header
            theirs = [any(_matches(c, key, hashes) for c in r) for r in rows]
            if not any(theirs):
                continue
            keep = [r for r, t in zip(rows, theirs, strict=True) if not t]
            dropped[entry["name"]] = [r for r, t in zip(rows, theirs, strict=True) if t]
            data = render_csv(header, keep)
            blobs[entry["name"]] = data
            entry.update(rows=len(keep), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            removed[str(folder / entry["name"])] = len(rows) - len(keep)
        if not dropped:
            continue
        counts = manifest["counts"]
        full = sorted(n for n in blobs if n.endswith("_full.csv"))
        first = full[0].removesuffix("_full.csv") if full else None
        gone = {
            "members": len(dropped.get(IDS_FILE, [])),
            "control": len(dropped.get(CONTROL_FILE, [])),
            **{kind: len(dropped.get(f"{first}_{kind}.csv", [])) for kind in ("adds", "removes")},
            "sent": len(dropped.get(f"{first}_full.csv", [])),
        }
        why = [left_out.get((manifest["as_of_date"], r[0])) for r in dropped.get(IDS_FILE, [])]
        gone["left_out_no_consent"] = why.count("no_consent")
        gone["left_out_no_email"] = why.count("no_email")
        if IDS_FILE in dropped:
            group = headers[IDS_FILE].index("group")
            gone["members_control"] = sum(r[group] == "control" for r in dropped[IDS_FILE])
        for name, n in gone.items():
            if name in counts:  # a manifest of an earlier release may lack a count
                counts[name] -= n
        blobs[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
        _write_folder(folder, blobs)
        cur.execute(
            "update activation.export_log set files = %s::jsonb, count_members = %s, "
            "count_control = %s, count_sent = %s, count_adds = %s, count_removes = %s, "
            "count_no_consent = %s, count_no_email = %s where folder = %s and status = 'ok'",
            (
                json.dumps(manifest["files"]),
                counts["members"],
                counts["control"],
                counts["sent"],
                counts["adds"],
                counts["removes"],
                counts["left_out_no_consent"],
                counts["left_out_no_email"],
                str(folder),
            ),
        )
    return removed


# ------------------------------------------------------------------------- load filter


def drop_forgotten(
    cur: psycopg.Cursor, table: str, batch_id: str, quarantine: list[tuple]
) -> tuple[int, int, list[tuple]]:
    """Drop the forgotten people's rows from the batch being loaded (same transaction).

    Deletes the batch's rows of ``raw.<table>`` that match the ledger and blanks referral
    columns pointing at them; removes from `quarantine` (rows about to be quarantined:
    (source, line, reason, payload)) the lines that mention them. Returns (loaded rows
    dropped, all rows dropped, the quarantine rows to keep) and logs the count (never an
    identifier) in ``ops.erasure_log``. Without a ledger this costs one catalog lookup.
    """
    conn = cur.connection
    if not _ledger_has_hashes(conn):
        return 0, 0, quarantine
    from lifecycle.settings import load_settings

    key = site_key(load_settings().environ)
    cur.execute("delete from ops.erasure_log where batch_id = %s", (batch_id,))
    columns = [
        r[0]
        for r in cur.execute(
            "select column_name::text from information_schema.columns "
            "where table_schema = 'raw' and table_name = %s order by ordinal_position",
            (table,),
        )
    ]
    loaded = 0
    plan = _plan("raw", table, columns)
    if plan is not None:
        scope = sql.SQL("_batch_id = {}").format(sql.Literal(batch_id))
        loaded, _ = _sweep(cur, plan, key, scope)
    hashes = {r[0] for r in cur.execute("select identifier_hash from ops.erasure_identifiers")}
    keep = [
        q
        for q in quarantine
        if not any(
            _matches(token, key, hashes) for token in _TOKENS.split(q[3] or "") if token.strip()
        )
    ]
    dropped = loaded + len(quarantine) - len(keep)
    if dropped:
        cur.execute(
            "insert into ops.erasure_log (batch_id, location, action, count_rows) "
            "values (%s, %s, 'dropped at load', %s)",
            (batch_id, f"raw.{table}", dropped),
        )
        log.info("raw.%s %s: %d row(s) of forgotten people dropped", table, batch_id, dropped)
    return loaded, dropped, keep


# ------------------------------------------------------------------------------- report


def report(conn: psycopg.Connection) -> dict[str, Any]:
    """Return what the ledger says: requests by status, rows removed per place and run."""
    if not _relation_exists(conn, "ops.erasure_requests"):
        return {"requests": [], "applied": [], "dropped_at_load": []}
    requests = conn.execute(
        "select request_id, kind, status, requested_at, applied_at, apply_id, count_customers, "
        "count_identifiers from ops.erasure_requests order by requested_at, request_id"
    ).fetchall()
    applied = conn.execute(
        "select apply_id, location, action, count_rows from ops.erasure_log "
        "where apply_id is not null order by min(logged_at) over (partition by apply_id), "
        "apply_id, location"
    ).fetchall()
    dropped = conn.execute(
        "select location, count(distinct batch_id), sum(count_rows)::bigint from ops.erasure_log "
        "where batch_id is not null group by location order by location"
    ).fetchall()
    return {
        "requests": [
            {
                "request_id": r[0],
                "kind": r[1],
                "status": r[2],
                "requested_at": r[3].isoformat(),
                "applied_at": r[4].isoformat() if r[4] else None,
                "apply_id": r[5],
                "customers": r[6],
                "identifiers": r[7],
            }
            for r in requests
        ],
        "applied": [
            {"apply_id": a, "location": loc, "action": act, "rows": n} for a, loc, act, n in applied
        ],
        "dropped_at_load": [{"location": loc, "batches": b, "rows": n} for loc, b, n in dropped],
    }


def format_report(facts: dict[str, Any]) -> str:
    """Return the report as text lines for people."""
    lines = []
    reqs = facts["requests"]
    pending = sum(r["status"] == "pending" for r in reqs)
    lines.append(
        f"erasure requests: {len(reqs)} ({len(reqs) - pending} applied, {pending} pending)"
    )
    for r in reqs:
        found = "" if r["customers"] is None else f", {r['customers']} customer(s) found"
        lines.append(f"  {r['request_id']} {r['kind']} {r['status']}{found}")
    current = None
    for row in facts["applied"]:
        if row["apply_id"] != current:
            current = row["apply_id"]
            lines.append(f"applied by {current}:")
        lines.append(f"  {row['location']}: {row['rows']} row(s) {row['action']}")
    if facts["dropped_at_load"]:
        lines.append("dropped at load time since:")
        for row in facts["dropped_at_load"]:
            lines.append(f"  {row['location']}: {row['rows']} row(s) in {row['batches']} batch(es)")
    return "\n".join(lines)
