"""Write-audit-publish of the marts: build into ``marts__build``, publish into ``marts``.

dbt builds a run's marts (models and seeds configured for ``marts``) into the build
schema ``marts__build`` (the dbt var ``marts_schema``); the quality gate validates them
there; :func:`publish_marts` then swaps them into ``marts`` in ONE PostgreSQL
transaction: per relation, the published one is dropped and the built one moved with
``ALTER ... SET SCHEMA`` (a catalog update: no data is copied, so publishing costs
milliseconds whatever the size). Views move with the tables they read: PostgreSQL binds
a view to its tables by OID, so ``customer_stage_daily`` reads ``marts.customer_stage_history``
after the move. The grants of the roles that read or write ``marts``
(:data:`lifecycle.warehouse.ROLES`) are re-applied in the same transaction, since a moved
relation keeps the (empty) privileges it was created with in the build schema.

Until the commit, BI tools see yesterday's marts; after it, today's; never a mix. A build
that fails its dbt tests or the gate is never published, and the published marts stay
exactly as they were. Like dbt's own table materialization, dropping a published
relation cascades to views that others built on it.

The build schema carries a comment naming the logical date it was built for, so a
publish can refuse a build of another day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from lifecycle.settings import Settings, get_settings
from lifecycle.transform import BUILD_SCHEMA, MARTS_SCHEMA, TransformError
from lifecycle.warehouse import ROLES, apply_grants, connect, warehouse_url

log = logging.getLogger(__name__)

#: pg_class.relkind → the noun ALTER/DROP statements use.
_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view"}

PUBLICATIONS_DDL = """
-- a transform before any extract (which creates ops) publishes its empty marts too
create schema if not exists ops;
create table if not exists ops.marts_publications (
    logical_date date not null,
    relations text[] not null,
    published_at timestamptz not null default now()
)
"""


class PublishError(TransformError):
    """The build could not be published; the published marts are unchanged."""


@dataclass
class PublishResult:
    """What one publish moved into ``marts``."""

    logical_date: dt.date
    relations: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return a short text for a task log."""
        return (
            f"published {len(self.relations)} relation(s) of {self.logical_date} from "
            f"{BUILD_SCHEMA} into {MARTS_SCHEMA} ({len(self.replaced)} replaced) in one "
            f"transaction: {', '.join(self.relations)}"
        )

    def facts(self) -> dict[str, object]:
        """Return JSON-able facts (for XCom)."""
        return {
            "logical_date": self.logical_date.isoformat(),
            "published": len(self.relations),
            "replaced": len(self.replaced),
        }


def _relations(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    """Return {name: kind} of the tables and views in `schema`."""
    rows = conn.execute(
        "select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relkind in ('r', 'p', 'v', 'm') order by c.relname",
        (schema,),
    ).fetchall()
    return {name: _KINDS[kind] for name, kind in rows}


def _existing_roles(conn: psycopg.Connection) -> set[str]:
    """Return which of our roles exist on this server."""
    rows = conn.execute("select rolname from pg_roles where rolname = any(%s)", (list(ROLES),))
    return {r[0] for r in rows}


def prepare_build(settings: Settings | None = None) -> None:
    """Empty the build schema (create it if missing) so a build starts clean; return nothing."""
    settings = settings or get_settings()
    with connect(warehouse_url(settings)) as conn, conn.transaction():
        conn.execute(
            sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(BUILD_SCHEMA))
        )
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(BUILD_SCHEMA)))
        # only the roles that write marts may build there; BI roles never see it
        for role in _existing_roles(conn):
            if MARTS_SCHEMA in ROLES[role]["write"]:
                conn.execute(
                    sql.SQL("grant usage, create on schema {} to {}").format(
                        sql.Identifier(BUILD_SCHEMA), sql.Identifier(role)
                    )
                )


def mark_built(logical_date: dt.date, settings: Settings | None = None) -> None:
    """Record on the build schema which logical date it holds; return nothing."""
    settings = settings or get_settings()
    note = json.dumps({"as_of_date": logical_date.isoformat()})
    with connect(warehouse_url(settings)) as conn:
        conn.execute(
            sql.SQL("comment on schema {} is {}").format(
                sql.Identifier(BUILD_SCHEMA), sql.Literal(note)
            )
        )


def pending_build(conn: psycopg.Connection) -> dt.date | None:
    """Return the logical date of the unpublished build in the build schema, or None."""
    row = conn.execute(
        "select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = %s",
        (BUILD_SCHEMA,),
    ).fetchone()
    if not row or not row[0]:
        return None
    try:
        return dt.date.fromisoformat(json.loads(row[0])["as_of_date"])
    except (ValueError, KeyError, TypeError):
        return None


def publish_marts(logical_date: dt.date, settings: Settings | None = None) -> PublishResult:
    """Swap the build of `logical_date` from ``marts__build`` into ``marts`` in one transaction.

    Returns what moved. Raises :class:`PublishError` (and changes nothing) when the build
    schema holds no build of that date.
    """
    from lifecycle.locks import WAREHOUSE, run_lock

    settings = settings or get_settings()
    result = PublishResult(logical_date)
    url = warehouse_url(settings)
    with (
        run_lock(url, "build", logical_date, scope=WAREHOUSE, wait_s=settings.lock_wait_s),
        connect(url) as conn,
        conn.transaction(),
    ):
        # one publisher at a time; a second waits and then finds nothing pending
        conn.execute("select pg_advisory_xact_lock(hashtext('lifecycle.publish_marts'))")
        built = pending_build(conn)
        if built != logical_date:
            what = f"a build of {built}" if built else "no pending build"
            raise PublishError(
                f"cannot publish the marts of {logical_date}: {BUILD_SCHEMA} holds {what}; "
                f"build them first with transform({logical_date}, publish=False) "
                f"(`lifecycle transform --date {logical_date} --no-publish`)"
            )
        built_relations = _relations(conn, BUILD_SCHEMA)
        if not built_relations:
            raise PublishError(
                f"cannot publish the marts of {logical_date}: {BUILD_SCHEMA} is empty"
            )
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(MARTS_SCHEMA)))
        published = _relations(conn, MARTS_SCHEMA)
        # views first: they depend on the tables (cascade covers views others built on them)
        for name in sorted(built_relations, key=lambda n: published.get(n) != "view"):
            if name in published:
                conn.execute(
                    sql.SQL("drop {} if exists {}.{} cascade").format(
                        sql.SQL(published[name]),
                        sql.Identifier(MARTS_SCHEMA),
                        sql.Identifier(name),
                    )
                )
                result.replaced.append(name)
        for name, kind in built_relations.items():
            conn.execute(
                sql.SQL("alter {} {}.{} set schema {}").format(
                    sql.SQL(kind),
                    sql.Identifier(BUILD_SCHEMA),
                    sql.Identifier(name),
                    sql.Identifier(MARTS_SCHEMA),
                )
            )
            result.relations.append(name)
        _grant(conn, list(built_relations))
        conn.execute(sql.SQL("comment on schema {} is null").format(sql.Identifier(BUILD_SCHEMA)))
        conn.execute(PUBLICATIONS_DDL)
        conn.execute(
            "insert into ops.marts_publications (logical_date, relations) values (%s, %s)",
            (logical_date, result.relations),
        )
    log.info("%s", result.summary())
    return result


def _grant(conn: psycopg.Connection, names: list[str]) -> None:
    """Give the roles of ``marts`` their rights on the moved relations (PII-aware)."""
    apply_grants(conn, MARTS_SCHEMA, names)
