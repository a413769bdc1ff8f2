"""`dbt build` time on a sample world: full refresh versus an incremental day, in one run.

    .venv/bin/python bench/bench_dbt.py [--customers 100000] [--world DIR] [--threads N]
                                        [--top N]

Generates a sample world (or reuses --world) ending on END, starts a private embedded
PostgreSQL (or uses LIFECYCLE_WAREHOUSE_URL: a scratch database is created there), lands
every source with --full semantics as of END - 1 day, then times:

- ``full``: ``transform(END - 1, full_refresh=True)`` — every model rebuilt from raw;
- ``incremental``: the sources extracted for END (one new day), then ``transform(END)``:
  incremental models take only what changed (new events, devices with new events,
  customers whose orders or identity changed); the other tables are rebuilt.

Both are complete ``dbt build`` runs (models, seeds and data tests; unit tests excluded, as
in production). Prints both times, their ratio and the slowest nodes of each. Nothing is
asserted: the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from bench.scratch import END, bench_env, land, make_world, scratch_warehouse  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402
from lifecycle.transform import DEFAULT_THREADS, TransformResult, transform  # noqa: E402


def _slowest(result: TransformResult, n: int = 6) -> str:
    nodes = sorted(result.nodes, key=lambda x: -x.execution_time_s)[:n]
    return "\n".join(f"    {x.execution_time_s:7.2f}s  {x.unique_id}" for x in nodes)


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--world", type=Path, help="reuse a generated world (ending 2024-12-31)")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    ap.add_argument("--top", type=int, default=6, help="how many of the slowest nodes to print")
    args = ap.parse_args()

    with scratch_warehouse("dbt") as (tmp, url):
        world = args.world or make_world(args.customers, tmp / "world")
        settings = load_settings(bench_env(tmp, url, world))
        day0, day1 = END - dt.timedelta(days=1), END
        print(f"landing every source as of {day0} (full)")
        print(f"landed in {land(settings, day0, full=True, verbose=True):.1f}s")

        full = transform(day0, settings, full_refresh=True, threads=args.threads, quiet=True)
        print(f"\nfull refresh   {full.describe()}\n{_slowest(full, args.top)}")

        print(f"\nlanding one new day, {day1}")
        print(f"landed in {land(settings, day1, full=False, verbose=True):.1f}s")
        incr = transform(day1, settings, threads=args.threads, quiet=True)
        print(f"\nincremental    {incr.describe()}\n{_slowest(incr, args.top)}")

        with psycopg.connect(url) as conn:
            customers = conn.execute("select count(*) from marts.customers").fetchone()[0]
            events = conn.execute("select count(*) from staging.stg_web__events").fetchone()[0]
        print(
            f"\n{customers} customers, {events} web events, {args.threads} dbt threads\n"
            f"dbt build full refresh: {full.elapsed_s:7.1f}s\n"
            f"dbt build incremental:  {incr.elapsed_s:7.1f}s (one new day)\n"
            f"incremental / full:     {incr.elapsed_s / full.elapsed_s:7.2f}"
        )


if __name__ == "__main__":
    main()
