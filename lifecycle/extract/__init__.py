"""Extract and load: one entry point per source, for the CLI and the DAGs alike.

``extract(source, logical_date)`` lands what `source` delivered for that logical date
in ``raw.<source>__<entity>`` and returns one :class:`~lifecycle.load.LoadResult` per
entity. Every source is optional: one that is not configured (and has no sample-world
files) is skipped, and says so in the run log.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from lifecycle.load import (
    LoadResult,
    Window,
    batch_id,
    ensure_raw_tables,
    load_batch,
    plan_window,
    record_skip,
)
from lifecycle.raw import CRM_CONTACTS, MARKETING_SPEND, ORDER_ITEMS, ORDERS, WEB_EVENTS, RawEntity
from lifecycle.settings import Settings, get_settings
from lifecycle.warehouse import connect, shop_db_url, warehouse_url

log = logging.getLogger(__name__)

SOURCES: dict[str, tuple[RawEntity, ...]] = {
    "crm": (CRM_CONTACTS,),
    "web": (WEB_EVENTS,),
    "orders": (ORDERS, ORDER_ITEMS),
    "marketing": (MARKETING_SPEND,),
}


def extract(
    source: str,
    logical_date: dt.date,
    settings: Settings | None = None,
    *,
    full: bool = False,
) -> list[LoadResult]:
    """Extract `source` for `logical_date` into raw; return what each entity's batch did."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of: {', '.join(SOURCES)}")
    settings = settings or get_settings()
    url = warehouse_url(settings)
    results = []
    for entity in SOURCES[source]:
        with connect(url) as conn:
            ensure_raw_tables(conn)
            window = plan_window(conn, entity, logical_date, full=full)
        results.append(_extract_entity(entity, logical_date, window, settings, url))
    return results


def _extract_entity(
    entity: RawEntity, day: dt.date, window: Window, settings: Settings, url: str
) -> LoadResult:
    share = settings.max_reject_share
    if entity is CRM_CONTACTS:
        from lifecycle.extract import crm

        if settings.crm_api_url:
            if not settings.crm_token:
                raise ValueError("LIFECYCLE_CRM_API_URL is set but LIFECYCLE_CRM_TOKEN is not")
            chunks = crm.api_chunks(
                settings.crm_api_url,
                settings.crm_token,
                window,
                retries=settings.http_retries,
                backoff_s=settings.http_backoff_s,
            )
            return load_batch(url, entity, day, window, chunks, max_reject_share=share)
        if settings.crm_csv.exists():
            return _csv(url, entity, day, window, settings.crm_csv, share)
        return record_skip(url, entity, day, window, "no CRM API URL and no CRM CSV export")

    if entity is WEB_EVENTS:
        return _web(url, day, window, settings)

    if entity in (ORDERS, ORDER_ITEMS):
        from lifecycle.extract import orders

        if settings.orders_source == "db":
            chunks = orders.db_chunks(shop_db_url(settings), entity, window)
            return load_batch(url, entity, day, window, chunks, max_reject_share=share)
        path = orders.csv_path(settings.orders_csv_dir, entity)
        if not path.exists():
            return record_skip(url, entity, day, window, f"no {path}")
        return _csv(url, entity, day, window, path, share, orders.csv_cursor(path, entity))

    if entity is MARKETING_SPEND:
        if not settings.spend_csv.exists():
            return record_skip(url, entity, day, window, f"no {settings.spend_csv}")
        return _csv(url, entity, day, window, settings.spend_csv, share)
    raise AssertionError(entity)  # pragma: no cover


def _csv(
    url: str,
    entity: RawEntity,
    day: dt.date,
    window: Window,
    path: Path,
    share: float,
    cursor: str | None = None,
) -> LoadResult:
    from lifecycle.extract.readers import read_csv_file

    return load_batch(
        url, entity, day, window, read_csv_file(path), max_reject_share=share, cursor=cursor
    )


def _web(url: str, day: dt.date, window: Window, settings: Settings) -> LoadResult:
    from lifecycle.extract import web

    first = None if window.start is None else day - dt.timedelta(days=settings.web_lookback_days)
    files = web.list_files(settings.web_events, first, day)
    if not files and window.start is None:
        return record_skip(
            url, WEB_EVENTS, day, window, f"no event files under {settings.web_events}"
        )
    bid = batch_id(WEB_EVENTS, day)
    with connect(url) as conn:
        taken = {
            row[0]
            for row in conn.execute(
                "select locator from ops.load_files where batch_id <> %s and locator = any(%s)",
                (bid, [f.url for f in files]),
            )
        }
    mine = [f for f in files if f.arrived <= day and f.url not in taken]
    return load_batch(
        url,
        WEB_EVENTS,
        day,
        window,
        web.file_chunks(mine),
        files=[f.url for f in mine],
        max_reject_share=settings.max_reject_share,
        window_filter=False,
    )
