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

With ``--state DIR`` (the kept state folder of ``bench/bench_pipeline.py --keep DIR``, e.g.
a 1M warehouse) nothing is generated: the raw suites run on the batches of ``--day`` (the
pipeline bench's first day: the whole history's first load) and the marts suites on the
published marts (of the date they were published for), ``--repeat`` pairs of runs each,
alternately: as the gate runs (counts first, examples for the expectations with unexpected
values alone) and in one pass with examples for every expectation (the gate before), with
the stored outcomes compared; then, as many times, with each compound uniqueness
expectation run as GX's own (a join of every row to its key's count) instead of grouped
(``lifecycle.quality.suites.grouped_uniqueness``), with the verdicts compared.

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

from bench.scratch import END, bench_env, kept_warehouse, make_world, scratch_warehouse  # noqa: E402
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
    ap.add_argument("--state", type=Path, help="a kept bench_pipeline state folder to reuse")
    ap.add_argument("--day", type=dt.date.fromisoformat, default=END - dt.timedelta(days=1))
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs per layer (--state)")
    args = ap.parse_args()
    if args.state:
        passes_side_by_side(args.state, args.day, args.repeat)
        return

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


def passes_side_by_side(state: Path, day: dt.date, repeat: int) -> None:
    """Time each layer's gate as it runs and in one pass with every example, alternately."""
    from unittest import mock

    from lifecycle.quality import gate
    from lifecycle.quality.suites import Suite

    declared = Suite.gx_spec

    def gx_compound(self, tokens, grouped=True):  # noqa: ANN001, ANN202
        return declared(self, tokens, grouped=False)

    with kept_warehouse(state) as settings:
        __import__("great_expectations")  # imported before the first timed run, not in it
        with psycopg.connect(wh.warehouse_url(settings)) as conn:
            published = gate._latest_publication(conn) or day
        rows = []
        for layer in ("raw", "marts"):
            for variant in ("counts first", "one pass", "GX compound") * repeat:
                # the gate before: examples for every expectation in its one pass
                first_pass = gate.RESULT_FORMAT if variant == "one pass" else gate.COUNTS_ONLY
                spec = gx_compound if variant == "GX compound" else declared
                with (
                    mock.patch.object(gate, "COUNTS_ONLY", first_pass),
                    mock.patch.object(Suite, "gx_spec", spec),
                ):
                    t0 = time.perf_counter()
                    verdict = validate_layer(layer, day if layer == "raw" else published, settings)
                    elapsed = time.perf_counter() - t0
                facts = sorted(
                    (o.suite, o.ordinal, o.success, str(o.observed_value), o.unexpected_count,
                     str(o.partial_unexpected))
                    for o in verdict.outcomes
                )  # fmt: skip
                verdicts = sorted((o.suite, o.expectation, o.column, o.success)
                                  for o in verdict.outcomes)  # fmt: skip
                rows.append((layer, variant, elapsed, facts, verdicts))
                print(f"{layer:6s} {variant:13s} {elapsed:8.1f}s  {verdict.summary()[:90]}")
    for layer in ("raw", "marts"):
        mine = [r for r in rows if r[0] == layer]
        first = [r[2] for r in mine if r[1] == "counts first"]
        single = [r[2] for r in mine if r[1] == "one pass"]
        gx = [r[2] for r in mine if r[1] == "GX compound"]
        ours = [r for r in mine if r[1] != "GX compound"]
        same = all(r[3] == ours[0][3] for r in ours)
        print(
            f"{layer}: counts first {' / '.join(f'{x:.1f}' for x in first)} s, one pass "
            f"{' / '.join(f'{x:.1f}' for x in single)} s: "
            f"{sum(first) / sum(single):.2f} of the time; outcomes identical: {same}"
        )
        alike = all(r[4] == mine[0][4] for r in mine)
        print(
            f"{layer}: compound uniqueness grouped {' / '.join(f'{x:.1f}' for x in first)} s, "
            f"as GX's own {' / '.join(f'{x:.1f}' for x in gx)} s: "
            f"{sum(first) / sum(gx):.2f} of the time; verdicts identical: {alike}"
        )


if __name__ == "__main__":
    main()
