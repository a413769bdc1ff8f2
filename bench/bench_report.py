"""Lifecycle report build time and size on a sample world, and the time Chromium takes to draw it.

    .venv/bin/python bench/bench_report.py [--customers 20000] [--world DIR] [--runs 3]

Generates a sample world (or reuses --world) ending on END, starts a private embedded
PostgreSQL (or uses LIFECYCLE_WAREHOUSE_URL: a scratch database is created there), lands
every source as of END, builds the marts, writes deterministic test scores into
``ml.scores_history`` (so the churn and segment sections draw), then times
``build_report(END)`` --runs times (the first includes importing matplotlib and jinja2),
split into the warehouse queries and the chart rendering, and prints the page's size.
If Chromium is installed it also times a headless ``--dump-dom`` of the page (load,
layout and the page's self-check). Nothing is asserted: the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.extract import SOURCES, extract  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402
from lifecycle.transform import transform  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)


def _u(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def _scores(url: str) -> int:
    """Write deterministic scores of END for every buyer (bench data in the real table)."""
    from ml.tables import ensure_ml_tables

    with psycopg.connect(url) as conn:
        ensure_ml_tables(conn)
        conn.execute("delete from ml.scores_history where score_date = %s", (END,))
        keys = [
            r[0] for r in conn.execute("select customer_key from marts.customers where is_buyer")
        ]
        with conn.cursor().copy("copy ml.scores_history from stdin") as copy:
            for key in keys:
                p = round(_u(key, "p"), 4)
                seg = int(_u(key, "s") * 4)
                copy.write_row(
                    (END, key, p, "low" if p < 0.3 else "medium" if p < 0.6 else "high", "bench",
                     seg, f"segment {seg}", 1 - p, 2.0, 50.0, 100.0, "1", "1", "1", "bench")
                )  # fmt: skip
    return len(keys)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--world", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-report-"))
    home.chmod(0o755)
    external = os.environ.get("LIFECYCLE_WAREHOUSE_URL")
    base = load_settings({"LIFECYCLE_HOME": str(home)})
    admin = external or wh.up(base)
    name = f"bench_report_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(wh.with_database(admin, "postgres"), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = wh.with_database(admin, name)
    try:
        world = args.world
        if world is None:
            from lifecycle.sample.world import WorldConfig, generate_world

            world = home / "world"
            t0 = time.perf_counter()
            generate_world(WorldConfig(customers=args.customers, start=START, end=END), world)
            print(f"generated {args.customers:,} people in {time.perf_counter() - t0:.1f}s")
        settings = load_settings(
            {"LIFECYCLE_HOME": str(home), "LIFECYCLE_WAREHOUSE_URL": url,
             "LIFECYCLE_WORLD_DIR": str(world)}
        )  # fmt: skip
        t0 = time.perf_counter()
        for source in SOURCES:
            extract(source, END, settings, full=True)
        transform(END, settings, quiet=True)
        scored = _scores(url)
        print(f"landed, built and scored ({scored:,} buyers) in {time.perf_counter() - t0:.1f}s")

        from lifecycle.report import build as report_build
        from lifecycle.report import build_report

        # split one build into queries (sections) and rendering (charts + template)
        with wh.connect(url) as conn:
            t0 = time.perf_counter()
            sections = report_build.collect_sections(conn, END, settings)
            collect_s = time.perf_counter() - t0
        print(f"sections (SQL + SVG charts) {collect_s:.2f}s; per section:")
        for key, _, builder in report_build.SECTIONS:
            if builder is None:
                continue
            with wh.connect(url) as conn:
                t0 = time.perf_counter()
                try:
                    builder(conn, END)
                except Exception as exc:  # noqa: BLE001 - a bench prints, it does not stop
                    print(f"  {key:<12} unavailable: {exc}")
                    continue
                print(f"  {key:<12} {time.perf_counter() - t0:6.2f}s")
        times = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            result = build_report(END, settings)
            times.append(time.perf_counter() - t0)
            print(f"build_report run {i + 1}: {times[-1]:.2f}s")
        print(
            f"report: {result.bytes / 1024:,.0f} KiB, {result.charts} charts, "
            f"{len(result.rendered)} sections; best of {args.runs}: {min(times):.2f}s "
            f"({len(sections)} sections)"
        )
        chromium = shutil.which("chromium") or shutil.which("google-chrome")
        if chromium:
            t0 = time.perf_counter()
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 f"--user-data-dir={home / 'chromium'}", "--dump-dom", result.path.as_uri()],
                capture_output=True, check=True, timeout=300,
            )  # fmt: skip
            print(f"chromium --dump-dom of the report: {time.perf_counter() - t0:.2f}s")
        else:
            print("chromium not installed: browser time not measured")
    finally:
        with psycopg.connect(wh.with_database(admin, "postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
        if not external:
            wh.down(base)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
