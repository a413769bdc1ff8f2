"""Wall time of the whole daily DAG through Airflow: a full run versus one incremental day.

    .venv/bin/python bench/bench_pipeline.py [--customers 100000] [--world DIR]

Generates a sample world (or reuses --world, ending 2024-12-31), starts a private embedded
PostgreSQL in a scratch state folder, and runs, each through Airflow (``dag.test()``, as
``lifecycle pipeline run`` does):

1. ``lifecycle_daily`` for END - 1 — the first run lands every source up to that day;
2. ``lifecycle_train`` as of END - 1, so that a champion model exists;
3. **full**: ``lifecycle_daily`` for END - 1 again with ``full_reload`` and
   ``dbt_full_refresh``: every source re-read from the beginning, every model rebuilt,
   gates, scoring of every customer, audiences, exports, report;
4. **incremental**: ``lifecycle_daily`` for END — one new day, as the scheduler runs it.

Prints each run's tasks with their durations, the two wall times and their ratio.
Nothing is asserted: the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lifecycle.settings import environment, load_settings  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--world", type=Path, help="reuse a generated world (ending 2024-12-31)")
    args = ap.parse_args()

    from lifecycle import warehouse as wh
    from lifecycle.orchestration.runner import run_dates

    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-pipeline-"))
    tmp.chmod(0o755)
    home = tmp / "home"
    env = {"LIFECYCLE_HOME": str(home), "LIFECYCLE_WORLD_DIR": str(args.world or tmp / "world")}
    for key in [k for k in os.environ if k.startswith("LIFECYCLE_")]:
        del os.environ[key]
    try:
        with environment(env):
            settings = load_settings()
            if args.world is None:
                from lifecycle.sample.world import WorldConfig, generate_world

                t0 = time.perf_counter()
                summary = generate_world(
                    WorldConfig(customers=args.customers, start=START, end=END),
                    settings.world_dir,
                )
                print(f"generated {summary} in {time.perf_counter() - t0:.1f}s")
            wh.up(settings)
            day0, day1 = END - dt.timedelta(days=1), END
            quiet = lambda _m: None  # noqa: E731

            def timed(label: str, dag_id: str, day: dt.date, conf: dict | None = None) -> float:
                t0 = time.perf_counter()
                [report] = run_dates([day], dag_id=dag_id, conf=conf, env=env, echo=quiet)
                elapsed = time.perf_counter() - t0
                print(f"\n{label}: {elapsed:.1f}s\n{report.describe()}")
                return elapsed

            timed("first daily run (lands everything)", "lifecycle_daily", day0)
            timed("training", "lifecycle_train", day0)
            full = timed(
                "FULL daily run",
                "lifecycle_daily",
                day0,
                {"full_reload": True, "dbt_full_refresh": True},
            )
            incremental = timed("INCREMENTAL daily run (one new day)", "lifecycle_daily", day1)
            with wh.connect(wh.warehouse_url(settings, start=False)) as conn:
                customers = conn.execute("select count(*) from marts.customers").fetchone()[0]
            print(
                f"\n{customers} customers in the warehouse\n"
                f"full daily DAG:        {full:8.1f}s\n"
                f"incremental daily DAG: {incremental:8.1f}s\n"
                f"incremental / full:    {incremental / full:8.2f}"
            )
            wh.down(settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
