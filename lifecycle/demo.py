"""The main job as `make demo` runs it: warehouse, sample world, sources, in one go."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path

from lifecycle import warehouse as wh
from lifecycle.settings import Settings

#: The demo world's period: fixed dates, so every run of the demo gives the same data.
DEMO_START = dt.date(2023, 1, 1)
DEMO_END = dt.date(2024, 12, 31)


def run_demo(
    settings: Settings,
    *,
    customers: int = 2000,
    seed: int = 42,
    echo: Callable[[str], None] = print,
) -> str:
    """Run the demo end to end and return a summary of where everything is."""
    from lifecycle.sample.world import WorldConfig, generate_world
    from lifecycle.sources.crm_server import load_contacts, make_server
    from lifecycle.sources.shop_db import load_shop_db

    echo(f"[1/4] warehouse: starting ({'external' if settings.warehouse_url else 'embedded'})")
    url = wh.up(settings)

    world: Path = settings.world_dir
    echo(f"[2/4] sample world: {customers} people, {DEMO_START}..{DEMO_END}, seed {seed}")
    summary = generate_world(
        WorldConfig(customers=customers, start=DEMO_START, end=DEMO_END, seed=seed), world
    )

    echo("[3/4] shop database: loading orders and order items")
    shop_url = wh.shop_db_url(settings)
    shop = load_shop_db(world, shop_url)

    echo("[4/4] CRM API: serving the contacts on loopback and reading them back")
    store = load_contacts(world / "crm" / "contacts.csv")
    token = settings.crm_token or secrets.token_urlsafe(24)
    with make_server(store, token=token) as server:
        served = _count_contacts(server.url, token)

    lines = [
        "",
        "Lifecycle demo finished.",
        f"  state folder (LIFECYCLE_HOME): {settings.home}",
        f"  warehouse:   {wh.redact(url)}  (schemas: {', '.join(wh.SCHEMAS)})",
        f"  sample world: {world}",
        f"      {summary}",
        f"  shop database: {wh.redact(shop_url)}",
    ]
    lines += [f"      shop.{r.table}: {r.rows_written} rows" for r in shop]
    lines += [
        f"  CRM API: served {served} contacts of {len(store)} over HTTP with pagination",
        "  next: `lifecycle warehouse status`, `lifecycle sources serve-crm`, "
        '`psql "$(lifecycle warehouse url)"`',
    ]
    return "\n".join(lines)


def _count_contacts(base_url: str, token: str) -> int:
    """Return how many contacts a full paginated walk of the CRM API yields."""
    import requests

    count, after = 0, None
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        while True:
            params = {"limit": 100} | ({"after": after} if after else {})
            resp = http.get(f"{base_url}/crm/v3/objects/contacts", params=params, timeout=10)
            resp.raise_for_status()
            body = resp.json()
            count += len(body["results"])
            after = body.get("paging", {}).get("next", {}).get("after")
            if not after:
                return count
