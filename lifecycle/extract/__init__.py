"""Extract and load: one entry point per source, for the CLI and the DAGs alike.

``extract(source, logical_date)`` lands what `source` delivered for that logical date
in ``raw.<source>__<entity>`` and returns one :class:`~lifecycle.load.LoadResult` per
entity. Where each entity's data is and how it maps onto the raw contract comes from the
sources file (:mod:`lifecycle.sources_file`; without one, the built-in mapping of the
``LIFECYCLE_*`` settings). Every source is optional: one that is not configured, or
whose files do not exist, is skipped, and the run log says so.

The path of a batch: a *connector* (by the source's ``kind``: files, PostgreSQL, REST)
yields chunks of source records as text under their source names; the *mapping step*
(:mod:`lifecycle.extract.mapping`) turns them into contract fields; the loader
(:func:`lifecycle.load.load_batch`) checks, quarantines and lands them. Quarantine,
batches, windows and watermarks are the loader's, the same for every source.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from lifecycle.load import (
    Chunk,
    LoadResult,
    Window,
    ensure_raw_tables,
    load_batch,
    plan_window,
    record_skip,
)
from lifecycle.raw import (
    CRM_CONTACTS,
    FX_RATES,
    MARKETING_SPEND,
    ORDER_ITEMS,
    ORDERS,
    WEB_EVENTS,
    RawEntity,
)
from lifecycle.settings import Settings, get_settings
from lifecycle.sources_file import EntityMap, Source, SourcesFile, load_sources
from lifecycle.warehouse import connect, warehouse_url

log = logging.getLogger(__name__)

SOURCES: dict[str, tuple[RawEntity, ...]] = {
    "crm": (CRM_CONTACTS,),
    "web": (WEB_EVENTS,),
    "orders": (ORDERS, ORDER_ITEMS),
    "marketing": (MARKETING_SPEND,),
    "fx": (FX_RATES,),
}


@dataclass
class Batch:
    """What a connector found for one entity and window: chunks to load, or why none."""

    chunks: Iterator[Chunk] | None = None
    skip: str | None = None  # the reason nothing is loaded (recorded in the run log)
    files: list[str] = field(default_factory=list)  # locators this batch claims
    outcomes: dict[str, str] = field(default_factory=dict)  # why a claimed file is not read
    window_filter: bool = True  # False: every row belongs to the batch (files by arrival)


def extract(
    source: str,
    logical_date: dt.date,
    settings: Settings | None = None,
    *,
    full: bool = False,
    sources: SourcesFile | None = None,
) -> list[LoadResult]:
    """Extract `source` for `logical_date` into raw; return what each entity's batch did."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of: {', '.join(SOURCES)}")
    settings = settings or get_settings()
    sources = sources or load_sources(settings)
    url = warehouse_url(settings)
    from lifecycle.locks import run_lock

    with run_lock(url, f"extract-{source}", logical_date, wait_s=settings.lock_wait_s):
        return _extract_source(source, logical_date, settings, sources, url, full)


def _extract_source(
    source: str,
    logical_date: dt.date,
    settings: Settings,
    sources: SourcesFile,
    url: str,
    full: bool,
) -> list[LoadResult]:
    results = []
    for entity in SOURCES[source]:
        found = sources.entity(entity)
        full_refresh = found is not None and found[1].sync == "full_refresh"
        with connect(url) as conn:
            ensure_raw_tables(conn)
            window = plan_window(
                conn,
                entity,
                logical_date,
                full=full or full_refresh,
                timezone=sources.business.timezone,
            )
        if found is None:
            why = sources.absent_why(entity)
            results.append(record_skip(url, entity, logical_date, window, why))
            continue
        src, emap = found
        results.append(_extract_entity(entity, logical_date, window, src, emap, sources, settings))
    return results


def _extract_entity(
    entity: RawEntity,
    day: dt.date,
    window: Window,
    src: Source,
    emap: EntityMap,
    sources: SourcesFile,
    settings: Settings,
) -> LoadResult:
    from lifecycle.extract.check import headers_checked
    from lifecycle.extract.mapping import Mapper

    url = warehouse_url(settings)
    batch = _connector(entity, day, window, src, emap, sources, settings, url)
    if batch.skip is not None:
        return record_skip(url, entity, day, window, batch.skip)
    assert batch.chunks is not None
    mapper = Mapper(entity, src, emap, sources)
    # The source's columns are checked against the mapping before any row is mapped.
    chunks = headers_checked(batch.chunks, entity, src, emap, sources)
    return load_batch(
        url,
        entity,
        day,
        window,
        mapper.map_chunks(chunks),
        files=batch.files,
        max_reject_share=emap.reject_limit(settings),
        cursor=emap.cursor,
        window_filter=batch.window_filter,
        timezone=mapper.timezone,
        outcomes=batch.outcomes,
        unplaced_refunds=mapper.unplaced_refunds,
    )


def _connector(
    entity: RawEntity,
    day: dt.date,
    window: Window,
    src: Source,
    emap: EntityMap,
    sources: SourcesFile,
    settings: Settings,
    url: str,
) -> Batch:
    """Return the batch the connector of `src.kind` finds for `entity` in `window`."""
    if src.kind == "rest":
        from lifecycle.extract import crm

        return crm.rest_batch(src, emap, window, sources, settings)
    if src.kind == "postgres":
        from lifecycle.extract import orders

        return orders.db_batch(entity, src, emap, window, sources, settings)
    if src.kind == "jsonl" and src.partitioned:
        from lifecycle.extract import web

        return web.partition_batch(entity, day, window, src, emap, sources, settings, url)
    from lifecycle.extract import files

    return files.file_batch(entity, src, emap, sources)
