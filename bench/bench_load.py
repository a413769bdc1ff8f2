"""Loader throughput, side by side with a plain COPY and pandas.to_sql, in one run.

    .venv/bin/python bench/bench_load.py [--world DIR | --customers 100000] [--rounds 7]
                                         [--all-sources]

Generates a sample world (or reuses --world), starts a private embedded PostgreSQL
(or uses LIFECYCLE_WAREHOUSE_URL), then loads the same orders CSV three ways into
tables of the same shape (columns, types, the ``_batch_id`` index):

- ``lifecycle``: the real loader (``lifecycle.load.load_batch``): read, parse, type,
  check, dedupe, quarantine, metadata columns, COPY, batch bookkeeping and run log —
  one transaction, into an empty ``raw.orders__orders`` (a new batch);
- ``plain COPY``: the file's bytes streamed with ``COPY ... FROM STDIN (FORMAT csv)``
  into the same typed columns (metadata columns from constant defaults), no checks
  at all: what the loader is held to (target: at least 80% of its rows/s);
- ``to_sql``: what a pandas user writes, ``df.to_sql(name, engine,
  if_exists="append", index=False)`` with SQLAlchemy's default PostgreSQL driver,
  timed for the insert only (``pandas.read_csv`` is done before the clock starts).

The methods run interleaved, in a rotating order, for several rounds (after one
untimed warm-up pass each), so noise from other work on the machine hits each of them
alike; ratios are taken per round and summarized by their median (and best against
best). For each method the bench also prints the CPU seconds of this process and, on
the embedded server, of PostgreSQL (all its processes): on a busy machine throughput
follows CPU work more than wall time. Autovacuum is off on the three tables, so a
background ANALYZE does not land in one method's figures. Each load is checked
afterwards (row count of the table). Nothing is asserted: the figures are the output.
Targets (issue 3): the loader within 80% of plain COPY and at least 10x to_sql; the
bench prints how far plain COPY itself is ahead of to_sql, the bound on the latter.
With --all-sources, every source of the world is then loaded with the real loader and
rows/s per entity are printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg
import sqlalchemy as sa
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.extract import extract  # noqa: E402
from lifecycle.extract.readers import read_csv_file  # noqa: E402
from lifecycle.load import Window, batch_id, ensure_raw_tables, load_batch  # noqa: E402
from lifecycle.raw import ORDERS, table_ddl  # noqa: E402
from lifecycle.settings import Settings, load_settings  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)
METHODS = ("plain COPY", "lifecycle", "to_sql")


@dataclass
class Run:
    """One timed load: rows, wall seconds, CPU seconds of this process and of the server."""

    rows: int
    wall: float
    client_cpu: float
    server_cpu: float | None


def _world(customers: int, out: Path) -> Path:
    from lifecycle.sample.world import WorldConfig, generate_world

    t0 = time.perf_counter()
    generate_world(WorldConfig(customers=customers, start=START, end=END, seed=42), out)
    print(f"generated {customers} customers in {time.perf_counter() - t0:.1f}s -> {out}")
    return out


# ------------------------------------------------------------------ CPU accounting


def _postmaster_pid(settings: Settings) -> int | None:
    """Return the pid of the embedded server, or None (external server: not measurable)."""
    pidfile = settings.pgdata / "postmaster.pid"  # PostgreSQL's own: the pid comes first
    if settings.warehouse_url or not pidfile.exists():
        return None
    return int(pidfile.read_text().split()[0])


def _server_cpu(postmaster: int | None) -> float | None:
    """Return the CPU seconds used so far by the server: postmaster, its live children
    and the children it has reaped (backends of closed connections)."""
    if postmaster is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _client_backends(postmaster: int) -> int:
    """Return how many backends of client connections the server still runs."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != postmaster:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                title = fh.read()
        except OSError:
            continue
        # A client backend's title names its client: "[local]" or "host(port)".
        count += b"[local]" in title or re.search(rb"\(\d+\)", title) is not None
    return count


def _settled_server_cpu(postmaster: int | None) -> float | None:
    """Return the server's CPU seconds once the backends of closed connections are gone
    (a backend ends a moment after its client hangs up; until the postmaster reaps it,
    its CPU time is nowhere to read)."""
    if postmaster is not None:
        deadline = time.monotonic() + 5
        while _client_backends(postmaster) and time.monotonic() < deadline:
            time.sleep(0.005)
    return _server_cpu(postmaster)


def _timed(postmaster: int | None, fn: Callable[[], int]) -> Run:
    s0 = _settled_server_cpu(postmaster)
    c0, t0 = time.process_time(), time.perf_counter()
    rows = fn()
    wall, c1 = time.perf_counter() - t0, time.process_time()
    s1 = _settled_server_cpu(postmaster)
    server = None if s0 is None or s1 is None else s1 - s0
    return Run(rows, wall, c1 - c0, server)


# ------------------------------------------------------------------------ methods


def _fresh_table(url: str, name: str) -> None:
    """Create public.`name` in the shape of raw.orders__orders, metadata as constants."""
    ddl = table_ddl(ORDERS).replace(ORDERS.qualified, f"public.{name}")
    ddl = ddl.replace(f"{ORDERS.table}_batch_idx", f"{name}_batch_idx")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"drop table if exists public.{name}")
        conn.execute(ddl)
        conn.execute(f"alter table public.{name} set (autovacuum_enabled = false)")
        conn.execute(f"alter table public.{name} alter _source set default 'bench'")
        default = sql.Literal(batch_id(ORDERS, END))
        conn.execute(
            sql.SQL("alter table {} alter _batch_id set default {}").format(
                sql.Identifier("public", name), default
            )
        )


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def bench_lifecycle(url: str, path: Path, postmaster: int | None) -> Run:
    """Return the run of the real loader on `path`, as a new batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_raw_tables(conn)
        conn.execute(f"truncate {ORDERS.qualified}")
        conn.execute(f"alter table {ORDERS.qualified} set (autovacuum_enabled = false)")
    window = Window(None, dt.datetime.combine(END, dt.time(), tzinfo=dt.UTC) + dt.timedelta(1))

    def load() -> int:
        chunks = read_csv_file(path)
        return load_batch(url, ORDERS, END, window, chunks, max_reject_share=1.0).rows_loaded

    run = _timed(postmaster, load)
    _check(run, _count(url, ORDERS.qualified), "lifecycle")
    return run


def bench_copy(url: str, path: Path, postmaster: int | None) -> Run:
    """Return the run of a plain COPY of the file into the same typed columns."""
    _fresh_table(url, "bench_copy")
    with path.open("rb") as fh:
        header = fh.readline().decode().strip()

    def load() -> int:
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            sql = f"copy public.bench_copy ({header}) from stdin with (format csv, header)"
            with cur.copy(sql) as cp, path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    cp.write(block)
            return cur.rowcount

    run = _timed(postmaster, load)
    _check(run, _count(url, "public.bench_copy"), "plain COPY")
    return run


def bench_to_sql(url: str, frame: pd.DataFrame, postmaster: int | None) -> Run:
    """Return the run of DataFrame.to_sql of the file's rows (insert only)."""
    _fresh_table(url, "bench_to_sql")
    engine = sa.create_engine(url)  # the URL as it is: SQLAlchemy's default driver

    def load() -> int:
        frame.to_sql("bench_to_sql", engine, if_exists="append", index=False)
        return len(frame)

    try:
        run = _timed(postmaster, load)
    finally:
        engine.dispose()
    _check(run, _count(url, "public.bench_to_sql"), "to_sql")
    return run


def _check(run: Run, counted: int, method: str) -> None:
    if counted != run.rows:
        raise SystemExit(f"{method}: reported {run.rows} rows but the table holds {counted}")


# ------------------------------------------------------------------------- report


def _report(runs: dict[str, list[Run]], rounds: int) -> None:
    print(f"\n{'round':<6}" + "".join(f"{m:>12}" for m in METHODS) + f"{'lifecycle/COPY':>16}")
    for i in range(rounds):
        walls = [runs[m][i].wall for m in METHODS]
        ratio = runs["plain COPY"][i].wall / runs["lifecycle"][i].wall
        print(f"{i + 1:<6}" + "".join(f"{w:>10.2f} s" for w in walls) + f"{ratio:>15.0%}")

    head = ("method", "rows", "rows/s median", "rows/s best", "client CPU s", "server CPU s")
    print(f"\n{head[0]:<12}{head[1]:>8}" + "".join(f"{h:>15}" for h in head[2:]))
    for m in METHODS:
        rows = runs[m][0].rows
        rates = [r.rows / r.wall for r in runs[m]]
        client = statistics.median(r.client_cpu for r in runs[m])
        servers = [r.server_cpu for r in runs[m] if r.server_cpu is not None]
        server = f"{statistics.median(servers):>15.2f}" if servers else f"{'n/a':>15}"
        print(
            f"{m:<12}{rows:>8}{statistics.median(rates):>15,.0f}{max(rates):>15,.0f}"
            f"{client:>15.2f}{server}"
        )

    def ratios(a: str, b: str) -> tuple[float, float]:
        per_round = statistics.median(runs[b][i].wall / runs[a][i].wall for i in range(rounds))
        best = min(r.wall for r in runs[b]) / min(r.wall for r in runs[a])
        return per_round, best

    med, best = ratios("lifecycle", "plain COPY")
    print(
        f"\nlifecycle / plain COPY = {med:.0%} median of rounds, {best:.0%} best vs best"
        "   (target >= 80%)"
    )
    med, best = ratios("lifecycle", "to_sql")
    print(
        f"lifecycle / to_sql     = {med:.1f}x median of rounds, {best:.1f}x best vs best"
        "   (target >= 10x)"
    )
    med, best = ratios("plain COPY", "to_sql")
    print(
        f"plain COPY / to_sql    = {med:.1f}x median of rounds, {best:.1f}x best vs best"
        "   (how far ahead of to_sql a plain COPY itself is)"
    )
    cpu = {
        m: statistics.median(r.client_cpu + (r.server_cpu or 0.0) for r in runs[m]) for m in METHODS
    }
    if all(r.server_cpu is not None for m in METHODS for r in runs[m]):
        print(
            "CPU seconds (this process + PostgreSQL), median: "
            + ", ".join(f"{m} {cpu[m]:.2f}" for m in METHODS)
            + f"; plain COPY / lifecycle = {cpu['plain COPY'] / cpu['lifecycle']:.0%}"
        )


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--world", type=Path, help="reuse a generated world")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the 3 methods")
    ap.add_argument("--all-sources", action="store_true", help="then load every source")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    tmp.chmod(0o755)
    settings = load_settings({"LIFECYCLE_HOME": str(tmp / "home")} | _external())
    try:
        world = args.world or _world(args.customers, tmp / "world")
        url = wh.up(settings)
        postmaster = _postmaster_pid(settings)
        orders_csv = world / "orders" / "orders.csv"
        frame = pd.read_csv(orders_csv, parse_dates=["ordered_at", "updated_at"])
        driver = sa.create_engine(url).dialect.driver
        print(
            f"\norders.csv: {orders_csv.stat().st_size / 1e6:.1f} MB, {len(frame):,} rows; "
            f"{args.rounds} rounds, the methods interleaved (order rotates each round); "
            f"to_sql through SQLAlchemy {sa.__version__} with its default driver ({driver})"
        )
        methods = {
            "plain COPY": lambda: bench_copy(url, orders_csv, postmaster),
            "lifecycle": lambda: bench_lifecycle(url, orders_csv, postmaster),
            "to_sql": lambda: bench_to_sql(url, frame, postmaster),
        }
        # A first, untimed pass of each warms caches, imports and the server.
        for fn in methods.values():
            fn()
        runs: dict[str, list[Run]] = {m: [] for m in METHODS}
        for i in range(args.rounds):
            order = METHODS[i % 3 :] + METHODS[: i % 3]
            for m in order:
                runs[m].append(methods[m]())
        _report(runs, args.rounds)
        if args.all_sources:
            _all_sources(world, tmp, url)
    finally:
        wh.down(settings)
        shutil.rmtree(tmp, ignore_errors=True)


def _all_sources(world: Path, tmp: Path, url: str) -> None:
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
            rate = res.rows_read / res.duration_s if res.duration_s else 0
            print(
                f"  raw.{res.source}__{res.entity:<12} {res.rows_loaded:>10} rows "
                f"in {res.duration_s:6.2f}s  {rate:>10,.0f} rows/s read"
            )


def _external() -> dict[str, str]:
    url = os.environ.get("LIFECYCLE_WAREHOUSE_URL")
    return {"LIFECYCLE_WAREHOUSE_URL": url} if url else {}


if __name__ == "__main__":
    main()
