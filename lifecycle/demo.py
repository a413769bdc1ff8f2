"""The main job as `make demo` runs it: warehouse, sample world, sources, daily loads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path

from lifecycle import warehouse as wh
from lifecycle.settings import Settings

#: The demo world's period: fixed dates, so every run of the demo gives the same data.
DEMO_START = dt.date(2023, 1, 1)
DEMO_END = dt.date(2024, 12, 31)
#: Logical dates the demo runs the daily pipeline for: the first run loads everything
#: up to its date, the next ones load one day each (as the scheduler would).
DEMO_DAYS = 3


def run_demo(
    settings: Settings,
    *,
    customers: int = 2000,
    seed: int = 42,
    echo: Callable[[str], None] = print,
) -> str:
    """Run the demo end to end and return a summary of where everything is."""
    from lifecycle.extract import SOURCES, extract
    from lifecycle.sample.world import WorldConfig, generate_world
    from lifecycle.sources.crm_server import load_contacts, make_server
    from lifecycle.sources.shop_db import load_shop_db

    echo(f"[1/5] warehouse: starting ({'external' if settings.warehouse_url else 'embedded'})")
    url = wh.up(settings)

    world: Path = settings.world_dir
    echo(f"[2/5] sample world: {customers} people, {DEMO_START}..{DEMO_END}, seed {seed}")
    summary = generate_world(
        WorldConfig(customers=customers, start=DEMO_START, end=DEMO_END, seed=seed), world
    )

    echo("[3/5] shop database: loading orders and order items")
    shop_url = wh.shop_db_url(settings)
    shop = load_shop_db(world, shop_url)

    echo("[4/5] CRM API: serving the contacts on loopback")
    store = load_contacts(world / "crm" / "contacts.csv")
    token = settings.crm_token or secrets.token_urlsafe(24)
    days = [DEMO_END - dt.timedelta(days=n) for n in reversed(range(DEMO_DAYS))]
    loads = []
    with make_server(store, token=token) as server:
        run_settings = dataclasses.replace(
            settings,
            crm_api_url=server.url,
            crm_token=token,
            shop_db_url=shop_url,
            orders_source="db",
        )
        echo(f"[5/5] extract and load: {', '.join(map(str, days))}")
        for day in days:
            for source in SOURCES:
                for result in extract(source, day, run_settings):
                    echo(f"      {result.describe()}")
                    loads.append(result)

    loaded = {}
    for r in loads:
        loaded[f"raw.{r.source}__{r.entity}"] = loaded.get(f"raw.{r.source}__{r.entity}", 0) + (
            r.rows_loaded
        )
    lines = [
        "",
        "Lifecycle demo finished.",
        f"  state folder (LIFECYCLE_HOME): {settings.home}",
        f"  warehouse:    {wh.redact(url)}",
        f"  sample world: {world}",
        f"                {summary}",
        f"  shop database: {wh.redact(shop_url)} "
        f"({', '.join(f'shop.{r.table}: {r.rows_written} rows' for r in shop)})",
        "  raw tables (rows loaded over the demo's days):",
        *(f"      {table:<28} {rows:>8}" for table, rows in loaded.items()),
        "  run log: select * from ops.load_runs order by started_at;",
        "  next: `lifecycle warehouse status`, "
        '`psql "$(lifecycle warehouse url)"`, `lifecycle extract --date YYYY-MM-DD`',
    ]
    return "\n".join(lines)
