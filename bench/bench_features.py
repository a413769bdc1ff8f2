"""The point-in-time feature query of scoring: web sessions from the dbt model vs every event.

    .venv/bin/python bench/bench_features.py [--customers 20000] [--world DIR] [--repeat 3]

Generates a sample world (or reuses --world) ending on END, starts a private embedded
PostgreSQL (or uses LIFECYCLE_WAREHOUSE_URL: a scratch database is created there), lands
every source as of END - 1 day and builds the warehouse (full refresh), then lands END
and builds it incrementally. On each of the two days it times, side by side and
alternating (best of --repeat), the feature query of one scoring run (one snapshot, every
eligible customer, rows fetched):

- ``model``: ``ml.features.FEATURES_SQL``, which reads the web sessions from the
  incremental dbt model ``intermediate.int_web_session_days_aggregated``;
- ``events``: ``ml.features.reference_features_sql()``, the same query aggregating the
  sessions from every event of ``staging.stg_web__events`` (the query before issue 14).

It checks the two return the same rows, and prints the dbt time of the session-day model
in the full and the incremental build (what the model costs the daily transform). Nothing
is asserted beyond the equal rows: the figures are the output.

    .venv/bin/python bench/bench_features.py --state DIR [--day 2024-12-31] [--repeat 2]

With ``--state DIR`` (the kept state folder of ``bench/bench_pipeline.py --keep DIR``, e.g.
at 1M customers) it times instead, on that warehouse as built, alternately, scoring's
feature query as of ``--day`` (``now``: ``FEATURES_SQL``) and the query before each order's
latest version recorded by D was found by a filter on its successor's updated_at
(``before``: ``reference_features_sql(from_events=False, every_session=False)``: every
version numbered again from staging and sorted), checking the rows are the same.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from bench.scratch import (  # noqa: E402
    END,
    bench_env,
    kept_warehouse,
    land,
    make_world,
    scratch_warehouse,
)
from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402
from lifecycle.transform import TransformResult, transform  # noqa: E402

MODEL = "int_web_session_days_aggregated"


def _model_seconds(result: TransformResult) -> float:
    return next(n.execution_time_s for n in result.nodes if n.unique_id.endswith(f".{MODEL}"))


def _timed(url: str, sql: str, params: dict) -> tuple[float, list]:
    from ml import features as ft

    with psycopg.connect(url) as conn:
        ft._plan(conn)  # the planner setting the scoring and training queries run with
        t0 = time.perf_counter()
        rows = conn.execute(f"select * from ({sql}) as f order by customer_key", params).fetchall()
        return time.perf_counter() - t0, rows


def _compare(url: str, day: dt.date, repeat: int, settings) -> tuple[float, float, int]:
    from ml import features as ft

    os.environ["LIFECYCLE_HOME"] = str(settings.home)  # business_timezone() reads settings
    params = ft._params([day], 90, day)
    best = {"model": float("inf"), "events": float("inf")}
    results = {}
    for _ in range(repeat):
        for name, sql in (("model", ft.FEATURES_SQL), ("events", ft.reference_features_sql())):
            seconds, rows = _timed(url, sql, params)
            best[name] = min(best[name], seconds)
            results[name] = rows
    if results["model"] != results["events"]:
        raise SystemExit(f"error: the two queries differ as of {day}")
    return best["model"], best["events"], len(results["model"])


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--world", type=Path, help="reuse a generated world (ending 2024-12-31)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--state", type=Path, help="a kept bench_pipeline state folder to reuse")
    ap.add_argument("--day", type=dt.date.fromisoformat, default=END, help="with --state")
    args = ap.parse_args()
    if args.state:
        before_and_now(args.state, args.day, args.repeat)
        return

    with scratch_warehouse("features") as (tmp, url):
        world = args.world or make_world(args.customers, tmp / "world")
        env = bench_env(tmp, url, world)
        os.environ.update(env)
        settings = load_settings(env)
        day0, day1 = END - dt.timedelta(days=1), END
        print(f"landed as of {day0} in {land(settings, day0, full=True):.1f}s")
        full = transform(day0, settings, full_refresh=True, quiet=True)
        print(f"full build     {full.describe()}")
        first = _compare(url, day0, args.repeat, settings)
        print(f"landed as of {day1} in {land(settings, day1, full=False):.1f}s")
        incr = transform(day1, settings, quiet=True)
        print(f"incremental    {incr.describe()}")
        second = _compare(url, day1, args.repeat, settings)

        with psycopg.connect(url) as conn:
            events = conn.execute("select count(*) from staging.stg_web__events").fetchone()[0]
            sessions = conn.execute(f"select count(*) from intermediate.{MODEL}").fetchone()[0]
        print(f"\n{events} web events, {sessions} session-day rows")
        print(
            f"{MODEL}: {_model_seconds(full):.2f}s in the full build, "
            f"{_model_seconds(incr):.2f}s in the incremental one (one new day)"
        )
        for day, (model, events_s, rows) in ((day0, first), (day1, second)):
            print(
                f"features as of {day} ({rows} customers, same rows): "
                f"model {model:6.2f}s   every event {events_s:6.2f}s   "
                f"model / events {model / events_s:5.2f}"
            )


def before_and_now(state: Path, day: dt.date, repeat: int) -> None:
    """Time the feature query as of `day` now and before, alternately, on a kept warehouse."""
    from ml import features as ft

    with kept_warehouse(state) as settings:
        url = wh.warehouse_url(settings)
        params = ft._params([day], 90, day)
        queries = {
            "now": ft.FEATURES_SQL,
            "before": ft.reference_features_sql(from_events=False, every_session=False),
        }
        times: dict[str, list[float]] = {name: [] for name in queries}
        results = {}
        for _ in range(repeat):
            for name, sql in queries.items():
                seconds, results[name] = _timed(url, sql, params)
                times[name].append(seconds)
                print(f"{name:6s} {seconds:7.1f}s  {len(results[name])} customers")
    same = results["now"] == results["before"]
    print(
        f"features as of {day}: now {' / '.join(f'{t:.1f}' for t in times['now'])} s, before "
        f"{' / '.join(f'{t:.1f}' for t in times['before'])} s: "
        f"{sum(times['now']) / sum(times['before']):.2f} of the time; same rows: {same}"
    )
    if not same:
        raise SystemExit(f"error: the two queries differ as of {day}")


if __name__ == "__main__":
    main()
