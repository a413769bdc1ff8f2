"""Sample-world generator throughput and peak memory, in one run.

    .venv/bin/python bench/bench_generate.py [--customers 100000] [--chunk-size 20000]
                                             [--start 2023-01-01 --end 2024-12-31] [--out DIR]

Generates a world into a temporary directory (removed afterwards unless --out is given) and
prints customers/s (per wall-clock and per CPU second), rows/s per file type and in total,
bytes written, and peak memory: the peak resident set size of this process from
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (includes the interpreter and imported
libraries; the RSS right before generating is printed as the baseline). Nothing is asserted:
the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lifecycle.sample.world import WorldConfig, generate_world  # noqa: E402


def _rss_mib() -> float:
    """Return the current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _size(path: Path) -> int:
    """Return the total size of the files under ``path`` in bytes."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=20_000)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2023, 1, 1))
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2024, 12, 31))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dirty-rate", type=float, default=0.0)
    parser.add_argument("--out", type=Path, help="keep the world here (default: temp dir)")
    args = parser.parse_args()

    config = WorldConfig(
        customers=args.customers,
        start=args.start,
        end=args.end,
        seed=args.seed,
        dirty_rate=args.dirty_rate,
        chunk_size=args.chunk_size,
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="lifecycle-bench-")) / "world"
    baseline = _rss_mib()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"generating {config.customers:,} customers, {config.start}..{config.end}, "
        f"chunk_size {config.chunk_size:,}, seed {config.seed} -> {out}"
    )
    started = time.perf_counter()
    last = [started]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or done == total:
            print(
                f"  {done:>10,}/{total:,}  {now - started:7.1f}s  rss {_rss_mib():7.0f} MiB",
                flush=True,
            )
            last[0] = now

    summary = generate_world(config, out, progress=progress)
    seconds = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime
    peak = _peak_rss_mib()
    size = _size(out)
    rows = {
        "truth (people)": summary.people,
        "crm contacts": summary.contacts,
        "orders": summary.orders,
        "order items": summary.order_items,
        "web events": summary.web_events,
        "spend": summary.spend_rows,
    }
    print(f"\n{summary.describe()}\n")
    print(f"wall time            {seconds:10.1f} s")
    print(f"cpu time             {user + system:10.1f} s (user {user:.1f}, system {system:.1f})")
    print(f"customers/s          {summary.people / seconds:10,.0f}")
    print(f"customers/cpu-s      {summary.people / (user + system):10,.0f}")
    for name, n in rows.items():
        print(f"rows/s {name:<15}{n / seconds:12,.0f}   ({n:,} rows)")
    total = sum(rows.values())
    print(f"rows/s total         {total / seconds:10,.0f}   ({total:,} rows)")
    print(f"web files            {summary.web_files:10,}")
    print(f"bytes written        {size / 2**20:10,.1f} MiB ({size / summary.people:,.0f} B/person)")
    print(f"RSS before generate  {baseline:10,.0f} MiB (interpreter + imports)")
    print(f"peak RSS             {peak:10,.0f} MiB (getrusage ru_maxrss, whole process)")
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
