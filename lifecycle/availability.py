"""Which sources a deployment has: orders alone must carry the pipeline (issue 13).

A company may have only an orders export: no CRM, no web events, no marketing spend.
A raw entity is **absent** when the sources file does not configure it
(``load_sources(settings).entity(raw) is None``), or, when a connection is given, when
its raw table is missing or holds no rows. Everything downstream of an absent source
says so with one reason starting "no such source" rather than failing or showing empty
charts: the raw gates skip its suite, the models drop its features
(:mod:`ml.features`), the report replaces its charts by a note.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from lifecycle.raw import ENTITIES, RawEntity
from lifecycle.settings import Settings

#: How messages name each raw table's source.
LABELS: dict[str, str] = {
    "crm__contacts": "CRM contacts",
    "web__events": "web events",
    "orders__orders": "orders",
    "orders__order_items": "order lines",
    "marketing__spend": "marketing spend",
}

#: The prefix of every reason an absent source gives.
NO_SUCH_SOURCE = "no such source"


def label(entity: RawEntity) -> str:
    """Return e.g. ``web events (raw.web__events)``."""
    return f"{LABELS.get(entity.table, entity.table)} ({entity.qualified})"


def absent_entities(
    settings: Settings,
    conn: psycopg.Connection | None = None,
    tables: Iterable[str] | None = None,
) -> dict[str, str]:
    """Return raw table -> why it is absent, for the absent ones of `tables` (default all).

    Without `conn` only the sources file is read (not configured); with it, a configured
    entity whose raw table is missing or empty is absent too.
    """
    from lifecycle.sources_file import load_sources

    sources = load_sources(settings)
    out: dict[str, str] = {}
    for table in tables if tables is not None else ENTITIES:
        entity = ENTITIES[table]
        if sources.entity(entity) is None:
            out[table] = f"{NO_SUCH_SOURCE}: {label(entity)} is {sources.absent_why(entity)}"
            continue
        if conn is None:
            continue
        exists = conn.execute("select to_regclass(%s)", (entity.qualified,)).fetchone()[0]
        if (
            exists is None
            or not conn.execute(f"select exists (select 1 from {entity.qualified})").fetchone()[0]
        ):
            out[table] = f"{NO_SUCH_SOURCE}: {label(entity)} has no rows"
    return out
