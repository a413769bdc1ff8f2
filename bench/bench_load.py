"""Loader throughput, side by side with pandas.to_sql and a plain COPY, in one run.

    .venv/bin/python bench/bench_load.py [--customers 100000] [--world DIR] [--repeat 2]

Generates a sample world (or reuses --world), starts a private embedded PostgreSQL
(or uses LIFECYCLE_WAREHOUSE_URL), then loads the same orders CSV three ways into
tables of the same shape and indexes, and prints rows/s for each:

- ``lifecycle``: the real loader (``lifecycle.load.load_batch``): parse, type, check,
  quarantine, metadata columns, COPY, batch bookkeeping — one transaction;
- ``plain COPY``: the file's bytes streamed with ``COPY ... FROM STDIN (FORMAT csv)``
  into the same typed columns: no checks at all, the practical ceiling;
- ``to_sql``: ``pandas.read_csv`` then ``DataFrame.to_sql`` (SQLAlchemy, the default
  method), timed for the insert only.

It then loads every source of the world with the real loader and prints rows/s per
entity. Nothing is asserted: the figures are the output. Targets (issue 3): the
loader within 80% of plain COPY and at least 10x to_sql.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.extract import extract  # noqa: E402
from lifecycle.extract.readers import read_csv_file  # noqa: E402
from lifecycle.load import Window, ensure_raw_tables, load_batch  # noqa: E402
from lifecycle.raw import ORDERS, table_ddl  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)


def _world(customers: int, out: Path) -> Path:
    from lifecycle.sample.world import WorldConfig, generate_world

    t0 = time.perf_counter()
    generate_world(WorldConfig(customers=customers, start=START, end=END, seed=7), out)
    print(f"generated {customers} customers in {time.perf_counter() - t0:.1f}s -> {out}")
    return out


def _fresh_table(url: str, name: str) -> None:
    ddl = table_ddl(ORDERS).replace(ORDERS.qualified, f"public.{name}")
    ddl = ddl.replace(f"{ORDERS.table}_batch_idx", f"{name}_batch_idx")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"drop table if exists public.{name}")
        conn.execute(ddl)


def bench_lifecycle(url: str, path: Path) -> tuple[int, float]:
    """Return (rows, seconds) of the real loader on `path`."""
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_raw_tables(conn)
        conn.execute(f"truncate {ORDERS.qualified}")
    window = Window(None, dt.datetime.combine(END, dt.time(), tzinfo=dt.UTC) + dt.timedelta(1))
    t0 = time.perf_counter()
    res = load_batch(url, ORDERS, END, window, read_csv_file(path), max_reject_share=1.0)
    return res.rows_loaded, time.perf_counter() - t0


def bench_copy(url: str, path: Path) -> tuple[int, float]:
    """Return (rows, seconds) of a plain COPY of the file into the same typed columns."""
    _fresh_table(url, "bench_copy")
    with path.open("rb") as fh:
        header = fh.readline().decode().strip()
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        # The metadata columns the loader fills are given constants here.
        cur.execute("alter table public.bench_copy alter _source set default 'bench'")
        cur.execute("alter table public.bench_copy alter _batch_id set default 'bench'")
        with (
            cur.copy(
                f"copy public.bench_copy ({header}) from stdin with (format csv, header)"
            ) as cp,
            path.open("rb") as fh,
        ):
            while block := fh.read(1 << 20):
                cp.write(block)
        rows = cur.rowcount
    return rows, time.perf_counter() - t0


def bench_to_sql(url: str, path: Path, limit: int | None) -> tuple[int, float]:
    """Return (rows, seconds) of DataFrame.to_sql of the file's rows (insert only)."""
    frame = pd.read_csv(path, nrows=limit, parse_dates=["ordered_at", "updated_at"])
    engine = sa.create_engine(wh.sqlalchemy_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text("drop table if exists public.bench_to_sql"))
    t0 = time.perf_counter()
    frame.to_sql("bench_to_sql", engine, schema="public", index=False, chunksize=10_000)
    elapsed = time.perf_counter() - t0
    engine.dispose()
    return len(frame), elapsed


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--world", type=Path, help="reuse a generated world")
    ap.add_argument("--repeat", type=int, default=5, help="runs per method (best is kept)")
    ap.add_argument("--to-sql-rows", type=int, default=None, help="cap rows for to_sql")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    tmp.chmod(0o755)
    settings = load_settings({"LIFECYCLE_HOME": str(tmp / "home")} | _external())
    try:
        world = args.world or _world(args.customers, tmp / "world")
        url = wh.up(settings)
        orders_csv = world / "orders" / "orders.csv"
        size_mb = orders_csv.stat().st_size / 1e6
        print(f"\norders.csv: {size_mb:.1f} MB")
        results = {}
        for name, fn in (
            ("plain COPY", lambda: bench_copy(url, orders_csv)),
            ("lifecycle", lambda: bench_lifecycle(url, orders_csv)),
        ):
            best = min((fn() for _ in range(args.repeat)), key=lambda r: r[1])
            results[name] = best
        results["to_sql"] = bench_to_sql(url, orders_csv, args.to_sql_rows)
        print(f"\n{'method':<12} {'rows':>10} {'seconds':>9} {'rows/s':>12}")
        for name, (rows, secs) in results.items():
            print(f"{name:<12} {rows:>10} {secs:>9.2f} {rows / secs:>12,.0f}")
        rate = {k: r / s for k, (r, s) in results.items()}
        print(
            f"\nlifecycle / plain COPY = {rate['lifecycle'] / rate['plain COPY']:.0%}"
            f"   (target >= 80%)"
        )
        print(
            f"lifecycle / to_sql     = {rate['lifecycle'] / rate['to_sql']:.1f}x  (target >= 10x)"
        )

        print("\nevery source of the world, real loader (full load up to the last day):")
        env = {
            "LIFECYCLE_HOME": str(tmp / "home"),
            "LIFECYCLE_WORLD_DIR": str(world),
            "LIFECYCLE_MAX_REJECT_SHARE": "1",
        } | _external()
        src_settings = load_settings(env)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("drop schema raw cascade; drop schema ops cascade")
        for source in ("crm", "web", "orders", "marketing"):
            for res in extract(source, END, src_settings, full=True):
                rate_s = res.rows_read / res.duration_s if res.duration_s else 0
                print(
                    f"  raw.{res.source}__{res.entity:<12} {res.rows_loaded:>10} rows "
                    f"in {res.duration_s:6.2f}s  {rate_s:>10,.0f} rows/s read"
                )
    finally:
        wh.down(settings)
        shutil.rmtree(tmp, ignore_errors=True)


def _external() -> dict[str, str]:
    import os

    url = os.environ.get("LIFECYCLE_WAREHOUSE_URL")
    return {"LIFECYCLE_WAREHOUSE_URL": url} if url else {}


if __name__ == "__main__":
    main()
