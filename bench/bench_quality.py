"""Quality gates and publishing on a sample world: how long each step of the gate takes.

    .venv/bin/python bench/bench_quality.py [--customers 20000] [--days 8]

Generates a sample world ending on END, starts a private embedded PostgreSQL (or uses
LIFECYCLE_WAREHOUSE_URL: a scratch database is created there), lands every source day by
day for the last --days days (the first one a full load, so the row-count bounds have
recent days to compare with), builds and publishes the marts of END - 1, builds END into
``marts__build``, then times:

- ``validate raw``: the raw suites on the batches of END (GX import included once);
- ``validate marts``: the marts suites on ``marts__build``;
- ``publish``: the swap into ``marts`` (one transaction);
- ``validate marts`` again on the published marts (GX already imported).

Nothing is asserted: the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from bench.scratch import END, bench_env, make_world, scratch_warehouse  # noqa: E402
from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.extract import SOURCES, extract  # noqa: E402
from lifecycle.quality import publish_marts, validate_layer  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402
from lifecycle.transform import transform  # noqa: E402


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=8)
    args = ap.parse_args()

    with scratch_warehouse("quality") as (tmp, url):
        world = make_world(args.customers, tmp / "world")
        wh.bootstrap(url)
        settings = load_settings(bench_env(tmp, url, world))
        first = END - dt.timedelta(days=args.days - 1)
        day = first
        while day <= END:
            for source in SOURCES:
                extract(source, day, settings, full=day == first)
            day += dt.timedelta(days=1)
        transform(END - dt.timedelta(days=1), settings, quiet=True)
        build = transform(END, settings, quiet=True, publish=False)
        print(build.describe())

        figures = []
        for label, step in (
            ("validate raw", lambda: validate_layer("raw", END, settings)),
            ("validate marts (build)", lambda: validate_layer("marts", END, settings)),
            ("publish", lambda: publish_marts(END, settings)),
            ("validate marts (published)", lambda: validate_layer("marts", END, settings)),
        ):
            t0 = time.perf_counter()
            out = step()
            elapsed = time.perf_counter() - t0
            text = out.summary().splitlines()[0]
            figures.append((label, elapsed, text))
            print(f"{label:28s} {elapsed:7.2f}s  {text}")
        with psycopg.connect(url) as conn:
            customers = conn.execute("select count(*) from marts.customers").fetchone()[0]
            history = conn.execute("select count(*) from marts.customer_stage_history").fetchone()
            events = conn.execute("select count(*) from raw.web__events").fetchone()[0]
        print(f"\n{customers} customers, {history[0]} stage intervals, {events} raw web events")
        for label, elapsed, _ in figures:
            print(f"{label:28s} {elapsed:7.2f}s")


if __name__ == "__main__":
    main()
