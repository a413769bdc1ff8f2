"""Contracts of the raw layer: what each source entity lands as, and the ops tables.

One :class:`RawEntity` per ``raw.<source>__<entity>`` table names its fields, their
types and the checks a value must pass to be loaded; a row that fails goes to
``raw.quarantine`` with the reason instead. Business rules beyond "can this value be
typed and is it plausible" (accepted values, row-count bounds) are the quality gate's
job, not the loader's.

Every raw table also carries the load metadata of DESIGN.md §4:
``_batch_id`` (the batch that landed the row; one per source entity and logical date),
``_loaded_at``, ``_source`` (file path, API cursor or query), ``_line`` (line or
record number within that source) and ``_extra`` (source fields the contract does
not know, kept as JSON: schema drift never breaks a load).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

#: The earliest date a dated field of the contract takes (the raw gate refuses older ones:
#: a year typed wrong, an Excel serial of 0), and the earliest logical date of a command.
EARLIEST_DATE = dt.date(1900, 1, 1)

FieldType = Literal["text", "timestamp", "date", "numeric", "integer", "boolean"]

PG_TYPES: dict[str, str] = {
    "text": "text",
    "timestamp": "timestamptz",
    "date": "date",
    "numeric": "numeric(14, 2)",
    "integer": "bigint",
    "boolean": "boolean",
}


#: The longest id a source may give, in characters (two of them, four bytes a character,
#: fit in one btree entry of the identity graph's links; see Field.length_limit).
ID_MAX_LENGTH = 256
#: The longest email address (RFC 5321's path limit).
EMAIL_MAX_LENGTH = 254


@dataclass(frozen=True)
class Field:
    """One source field and the checks its values must pass."""

    name: str
    type: FieldType = "text"
    required: bool = False  # the column must be present in the source
    nullable: bool = True  # an empty value is allowed
    non_negative: bool = False  # numbers only
    not_future: bool = False  # timestamps/dates: not after the end of the load interval
    pg_type: str | None = None  # the column type when PG_TYPES' is too coarse (rates)
    currency_code: bool = False  # text: an ISO 4217 code (three letters, stored upper-case)
    # text: an identifier; a whole number written as a float (``17850.0``, as pandas and
    # spreadsheets write an id column that has blanks) is stored as ``17850``
    identifier: bool = False
    # text: the words the marts know (compared and stored lower-case, trimmed); a source's
    # own words are mapped onto them with ``values`` in the sources file
    one_of: tuple[str, ...] = ()
    # text: at most this many characters (identifiers: ID_MAX_LENGTH), see length_limit
    max_length: int | None = None
    # numbers: above 0 once stored (rates: a 0 was dropped by staging, then the day was
    # converted at another rate; 1e-12 was stored as 0 in numeric(20, 10))
    smallest: float | None = None

    @property
    def length_limit(self) -> int | None:
        """The longest value the field may hold, or None.

        Ids and emails end up in btree indexes (the raw orders' order_id, the identity
        graph's links, the events' ids), whose entries PostgreSQL caps at 2,704 bytes: one
        over-long value would fail a whole load or build. Nothing that long is an id (a
        shifted column, a pasted document), so such a row is quarantined instead.
        """
        return self.max_length or (ID_MAX_LENGTH if self.identifier else None)

    @property
    def column_type(self) -> str:
        """The PostgreSQL type of the raw column."""
        return self.pg_type or PG_TYPES[self.type]


@dataclass(frozen=True)
class RawEntity:
    """The contract of one raw table."""

    source: str
    entity: str
    fields: tuple[Field, ...]
    key: tuple[str, ...]  # identifies a row version; repeats within a batch are duplicates
    cursor: str  # the field that places a row in a load interval
    duplicates: Literal["quarantine", "collapse"] = "quarantine"
    description: str = ""
    cursor_fallback: str | None = None  # used where the cursor field is empty or absent

    @property
    def table(self) -> str:
        """Unqualified raw table name, ``<source>__<entity>``."""
        return f"{self.source}__{self.entity}"

    @property
    def qualified(self) -> str:
        """Schema-qualified raw table name."""
        return f"raw.{self.table}"

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in contract order."""
        return tuple(f.name for f in self.fields)

    @property
    def required(self) -> tuple[str, ...]:
        """Names of the fields a source must provide."""
        return tuple(f.name for f in self.fields if f.required)

    def field(self, name: str) -> Field:
        """Return the field called `name`."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


#: Load metadata on every raw table. ``_source`` and ``_batch_id`` are the same for
#: every row of a COPY, so the loader sets them once as transaction-local settings that
#: these defaults read, instead of repeating them on every line it streams.
META_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_extra", "jsonb"),
    ("_source", "text not null default current_setting('lifecycle.source', true)"),
    ("_line", "bigint"),
    ("_batch_id", "text not null default current_setting('lifecycle.batch_id', true)"),
    ("_loaded_at", "timestamptz not null default now()"),
)

_T = Field  # brevity in the table below

#: The order statuses of the contract (what stg_orders__orders and the raw gate know).
ORDER_STATUSES = ("completed", "refunded", "cancelled")

CRM_CONTACTS = RawEntity(
    "crm",
    "contacts",
    (
        _T("id", required=True, nullable=False, identifier=True),
        _T("email", max_length=EMAIL_MAX_LENGTH),
        _T("first_name"),
        _T("last_name"),
        _T("phone"),
        _T("country"),
        _T("created_at", "timestamp", not_future=True),
        _T("updated_at", "timestamp", required=True, nullable=False, not_future=True),
        _T("acquisition_channel"),
        _T("marketing_opt_in", "boolean"),
        _T("lifecycle_stage"),
        _T("referred_by", max_length=ID_MAX_LENGTH),
    ),
    key=("id", "updated_at"),
    cursor="updated_at",
    description="CRM contacts, one row per contact version (id, updated_at)",
)

WEB_EVENTS = RawEntity(
    "web",
    "events",
    (
        _T("event_id", required=True, nullable=False, max_length=ID_MAX_LENGTH),
        _T("anonymous_id", max_length=ID_MAX_LENGTH),
        _T("user_id", identifier=True),
        _T("email", max_length=EMAIL_MAX_LENGTH),
        _T("event", required=True, nullable=False),
        _T("timestamp", "timestamp", required=True, nullable=False, not_future=True),
        _T("received_at", "timestamp"),
        _T("session_id", max_length=ID_MAX_LENGTH),
        _T("page_url"),
        _T("utm_source"),
        _T("utm_medium"),
        _T("utm_campaign"),
        _T("order_id", identifier=True),
        _T("product_id"),
    ),
    key=("event_id",),
    cursor="timestamp",
    # Trackers deliver at least once: a repeated event_id is the same event, not bad data.
    duplicates="collapse",
    description="web tracking events, one row per event_id and batch",
)

ORDERS = RawEntity(
    "orders",
    "orders",
    (
        _T("order_id", required=True, nullable=False, identifier=True),
        _T("customer_id", required=True, nullable=False, identifier=True),
        _T("email", max_length=EMAIL_MAX_LENGTH),
        _T("ordered_at", "timestamp", required=True, nullable=False, not_future=True),
        _T("updated_at", "timestamp", not_future=True),
        _T("status", one_of=ORDER_STATUSES),
        _T("currency", currency_code=True),
        _T("amount", "numeric", required=True, nullable=False, non_negative=True),
        _T("quantity", "integer", non_negative=True),
    ),
    key=("order_id", "updated_at"),
    # Orders change after creation (refunds): extract by updated_at; a minimal CSV
    # without updated_at falls back to ordered_at (see lifecycle.extract.orders).
    cursor="updated_at",
    cursor_fallback="ordered_at",
    description="orders, one row per order version (order_id, updated_at)",
)

ORDER_ITEMS = RawEntity(
    "orders",
    "order_items",
    (
        _T("order_item_id", required=True, nullable=False, identifier=True),
        _T("order_id", required=True, nullable=False, identifier=True),
        _T("product_id"),
        _T("quantity", "integer", non_negative=True),
        _T("unit_price", "numeric", non_negative=True),
        _T("updated_at", "timestamp", required=True, nullable=False, not_future=True),
    ),
    key=("order_item_id", "updated_at"),
    cursor="updated_at",
    description="order lines, one row per item version (order_item_id, updated_at)",
)

MARKETING_SPEND = RawEntity(
    "marketing",
    "spend",
    (
        _T("date", "date", required=True, nullable=False, not_future=True),
        _T("channel", required=True, nullable=False),
        _T("spend", "numeric", required=True, nullable=False, non_negative=True),
        _T("currency", currency_code=True),
    ),
    key=("date", "channel"),
    cursor="date",
    description="daily marketing spend, one row per date and acquisition channel",
)

FX_RATES = RawEntity(
    "fx",
    "rates",
    (
        _T("date", "date", required=True, nullable=False),
        _T("currency", required=True, nullable=False, currency_code=True),
        # units of the reporting currency per unit of `currency`; rates need more than
        # the two decimals of money (PostgreSQL keeps what the text gives, up to 10)
        _T(
            "rate",
            "numeric",
            required=True,
            nullable=False,
            non_negative=True,
            smallest=1e-10,
            pg_type="numeric(20, 10)",
        ),
    ),
    key=("date", "currency"),
    cursor="date",
    description="daily exchange rates to the reporting currency, one row per date and currency",
)

ENTITIES: dict[str, RawEntity] = {
    e.table: e for e in (CRM_CONTACTS, WEB_EVENTS, ORDERS, ORDER_ITEMS, MARKETING_SPEND, FX_RATES)
}

QUARANTINE_DDL = """
create table if not exists raw.quarantine (
    _batch_id text not null,
    source text not null,
    entity text not null,
    _source text not null,
    _line bigint,
    reason text not null,
    payload text,
    _loaded_at timestamptz not null default now()
);
create index if not exists quarantine_batch_idx on raw.quarantine (_batch_id);
"""

OPS_DDL = """
create table if not exists ops.load_batches (
    batch_id text primary key,
    source text not null,
    entity text not null,
    logical_date date not null,
    window_start timestamptz,
    window_end timestamptz not null,
    rows_loaded bigint not null,
    rows_quarantined bigint not null,
    committed_at timestamptz not null default now()
);
create table if not exists ops.load_files (
    locator text primary key,
    batch_id text not null,
    source text not null,
    entity text not null
);
create index if not exists load_files_batch_idx on ops.load_files (batch_id);
create table if not exists ops.watermarks (
    source text not null,
    entity text not null,
    value timestamptz not null,
    batch_id text not null,
    updated_at timestamptz not null default now(),
    primary key (source, entity)
);
create table if not exists ops.load_runs (
    run_id uuid primary key,
    batch_id text not null,
    source text not null,
    entity text not null,
    logical_date date not null,
    window_start timestamptz,
    window_end timestamptz,
    status text not null check (status in ('running', 'success', 'failed', 'skipped')),
    rows_read bigint,
    rows_loaded bigint,
    rows_quarantined bigint,
    rows_duplicate bigint,
    rows_out_of_window bigint,
    extra_columns text[],
    error text,
    started_at timestamptz not null,
    finished_at timestamptz,
    duration_s double precision
);
create index if not exists load_runs_batch_idx on ops.load_runs (batch_id, started_at);
-- what a run noted that is not a row (an empty source file): added after the first release
alter table ops.load_runs add column if not exists warnings text[];
-- what became of a claimed file: 'read', or why it was not (added after the first release)
alter table ops.load_files add column if not exists outcome text;
"""


def table_ddl(entity: RawEntity) -> str:
    """Return the idempotent DDL of the raw table of `entity`."""
    cols = [f'    "{f.name}" {f.column_type}' for f in entity.fields]
    cols += [f"    {name} {decl}" for name, decl in META_COLUMNS]
    body = ",\n".join(cols)
    return (
        f"create table if not exists {entity.qualified} (\n{body}\n);\n"
        f"create index if not exists {entity.table}_batch_idx "
        f"on {entity.qualified} (_batch_id);\n"
        # what dbt's incremental staging reads each run (`_loaded_at` > its watermark): a
        # block-range index, since batches are appended in load order (a few kB for
        # millions of rows, nothing to maintain per row); without it every run scanned
        # every event ever loaded to find the day's (bench/bench_dbt.py)
        f"create index if not exists {entity.table}_loaded_idx "
        f"on {entity.qualified} using brin (_loaded_at);\n"
        # an order's earlier versions, for the loader's check that it kept its customer
        + (
            f"create index if not exists {entity.table}_order_idx "
            f"on {entity.qualified} (order_id);\n"
            if entity is ORDERS
            else ""
        )
    )


def raw_ddl() -> str:
    """Return the DDL of every raw and ops table the loaders use (idempotent)."""
    schemas = "create schema if not exists raw;\ncreate schema if not exists ops;\n"
    return "\n".join([schemas, *(table_ddl(e) for e in ENTITIES.values()), QUARANTINE_DDL, OPS_DDL])
