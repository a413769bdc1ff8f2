"""ML step: training time, and scoring throughput and peak memory at 100k and 1M customers.

    .venv/bin/python bench/bench_ml.py [--customers 100000] [--world DIR] [--scale 10]

What it does, in order:

1. Generates a sample world of ``--customers`` people over 2023-2024 (or reuses
   ``--world``), starts a private embedded PostgreSQL (or uses LIFECYCLE_WAREHOUSE_URL: a
   scratch database is created there), lands every source as of 2024-12-31 and builds the
   warehouse with dbt (timed, for context).
2. **Training**: ``ml.train.train`` — training sets (6 snapshots), churn model + orders-only
   variant, CLV, segmentation, evaluation, MLflow logging/registry/promotion (local SQLite
   store in a temporary folder).
3. **Scoring, real**: ``ml.score.score`` as of 2024-12-31 on the world's eligible customers
   (point-in-time features computed in the warehouse and streamed with a server-side
   cursor, 50k per chunk; results COPYed into ml.scores_history).
4. **Scoring, 1M synthetic**: generating and loading a real 1M-person world takes too long
   on this machine, so the features of the real customers as of 2024-12-31 are written to
   a table and copied as many times as it takes to reach ``--target`` (1M) rows, with new
   customer keys (md5 of key and copy number; feature values unchanged);
   ``score(..., features_relation=...)`` then streams it through the same chunked
   scoring and COPY path. The feature SQL itself is therefore not part of the 1M
   figure (its 100k time is in step 3).

Each measured step runs in a fresh child process, so "peak RSS" is that step's own peak
resident memory (``resource.getrusage``). Nothing is asserted: the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.settings import Settings, load_settings  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)


def _peak_rss_mb() -> float:
    """Return this process's peak resident memory in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train(settings: Settings, queue) -> None:
    from ml.train import train

    t0 = time.perf_counter()
    result = train(END, settings)
    queue.put(
        {
            "elapsed": time.perf_counter() - t0,
            "peak_mb": _peak_rss_mb(),
            "summary": result.summary(),
            "stages": result.stage_s,
        }
    )


def _score(settings: Settings, relation: str | None, queue) -> None:
    from ml.score import score

    result = score(END, settings, features_relation=relation, chunk_size=50_000)
    queue.put(
        {
            "rows": result.rows,
            "elapsed": result.elapsed_s,
            "rate": result.customers_per_s,
            "rate_scoring": result.rows
            / max(1e-9, result.elapsed_s - result.stage_s["load_models"]),
            "peak_mb": _peak_rss_mb(),
            "stages": result.stage_s,
        }
    )


def _child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {proc.exitcode}")
    return out


def _synthesise(url: str, scale: int) -> tuple[str, int, int]:
    """Write the real features as of END, then `scale` copies with new keys; return sizes."""
    from ml import features as ft

    cols = ", ".join(ft.COLUMNS)
    with psycopg.connect(url) as conn:
        conn.execute("drop table if exists ml.bench_features_real, ml.bench_features_scaled")
        conn.execute(
            f"create table ml.bench_features_real as select {cols} from ({ft.FEATURES_SQL}) as f",
            ft._params([END], 90, END),
        )
        real = conn.execute("select count(*) from ml.bench_features_real").fetchone()[0]
        keyed = ", ".join(
            "md5(customer_key || ':' || copy) as customer_key" if c == "customer_key" else c
            for c in ft.COLUMNS
        )
        conn.execute(
            f"create table ml.bench_features_scaled as select {keyed} "
            "from ml.bench_features_real, generate_series(1, %s) as copy",
            (scale,),
        )
        conn.execute("analyze ml.bench_features_scaled")
        scaled = conn.execute("select count(*) from ml.bench_features_scaled").fetchone()[0]
    return "ml.bench_features_scaled", real, scaled


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--world", type=Path, default=None, help="reuse a generated world")
    parser.add_argument(
        "--target", type=int, default=1_000_000, help="customers of the synthetic run"
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    home = Path(tempfile.mkdtemp(prefix="lifecycle-bench-ml-"))
    home.chmod(0o755)
    external = os.environ.get("LIFECYCLE_WAREHOUSE_URL")
    try:
        world = args.world
        if world is None:
            from lifecycle.sample.world import WorldConfig, generate_world

            world = home / "world"
            t0 = time.perf_counter()
            generate_world(WorldConfig(customers=args.customers, start=START, end=END), world)
            print(
                f"world       {args.customers} people generated in {time.perf_counter() - t0:.0f}s"
            )
        base = load_settings({"LIFECYCLE_HOME": str(home)})
        server = external or wh.up(base)
        db = f"bench_ml_{uuid.uuid4().hex[:8]}"
        admin = wh.with_database(server, "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'create database "{db}"')
        url = wh.with_database(server, db)
        wh.bootstrap(url)
        settings = load_settings(
            {
                "LIFECYCLE_HOME": str(home),
                "LIFECYCLE_WAREHOUSE_URL": url,
                "LIFECYCLE_WORLD_DIR": str(world),
            }
        )
        from lifecycle.extract import SOURCES, extract
        from lifecycle.transform import transform

        t0 = time.perf_counter()
        for source in SOURCES:
            extract(source, END, settings, full=True)
        t1 = time.perf_counter()
        transform(END, settings, quiet=True)
        t2 = time.perf_counter()
        print(f"warehouse   landed in {t1 - t0:.0f}s, dbt build in {t2 - t1:.0f}s (context only)")

        trained = _child(_train, settings)
        print(f"\n== training ({args.customers} people) ==\n{trained['summary']}")
        print(
            f"training    {trained['elapsed']:.1f}s, peak RSS {trained['peak_mb']:.0f} MB; "
            "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in trained["stages"].items())
        )

        real = _child(_score, settings, None)
        print(
            f"\n== scoring, real features ({real['rows']} eligible customers) ==\n"
            f"scoring     {real['rows']} customers in {real['elapsed']:.1f}s = "
            f"{real['rate']:.0f} customers/s ({real['rate_scoring']:.0f}/s after loading the "
            f"models), peak RSS {real['peak_mb']:.0f} MB; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in real["stages"].items())
        )

        t0 = time.perf_counter()
        scale = -(-args.target // real["rows"])
        relation, n_real, n_scaled = _synthesise(url, scale)
        print(
            f"\n== scoring, synthetic ({n_scaled} customers = {scale} copies of the "
            f"{n_real} real feature rows, new keys; table built in "
            f"{time.perf_counter() - t0:.0f}s) =="
        )
        big = _child(_score, settings, relation)
        print(
            f"scoring     {big['rows']} customers in {big['elapsed']:.1f}s = "
            f"{big['rate']:.0f} customers/s ({big['rate_scoring']:.0f}/s after loading the "
            f"models), peak RSS {big['peak_mb']:.0f} MB; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in big["stages"].items())
        )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{db}" with (force)')
    finally:
        if not external:
            wh.down(load_settings({"LIFECYCLE_HOME": str(home)}))
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
