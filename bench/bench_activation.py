"""Activation time on a sample world: scores, membership, exports and a push, first run and rerun.

    .venv/bin/python bench/bench_activation.py [--customers 20000] [--batch-size 500]

Generates a sample world, starts a private embedded PostgreSQL, lands and builds it as of
END, writes synthetic scores for every buyer (SQL, a hash of the key: no model needed),
then times ``run_activation(END)`` with the repository's audiences plus one audience of
every scored customer pushed to an HTTP server on loopback (no failures): the first run,
and a rerun (same files, no batch sent twice). Prints the times and throughput. Nothing
is asserted: the figures are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
import yaml  # noqa: E402

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.activation import run_activation  # noqa: E402
from lifecycle.extract import SOURCES, extract  # noqa: E402
from lifecycle.sample.world import WorldConfig, generate_world  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402
from lifecycle.transform import transform  # noqa: E402
from ml.tables import ensure_ml_tables  # noqa: E402
from tests.activation.flaky_server import flaky_server  # noqa: E402

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)
REPO = Path(__file__).resolve().parents[1]

SCORES_SQL = """
insert into ml.scores_history
with h as (
    select customer_key,
        ('x' || substr(md5('c' || customer_key), 1, 8))::bit(32)::bigint / 4294967296.0 as u,
        ('x' || substr(md5('v' || customer_key), 1, 8))::bit(32)::bigint / 4294967296.0 as v
    from marts.customers where is_buyer
)
select %(day)s, customer_key, u, case when u < 0.3 then 'low' when u < 0.6 then 'medium'
    else 'high' end, 'synthetic', (v * 4)::int %% 4, 'segment ' || ((v * 4)::int %% 4), 1 - u,
    6 * v, 20 + 180 * v, 6 * v * (20 + 180 * v), '1', '1', '1', 'bench'
from h
"""


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-activation-"))
    home.chmod(0o755)
    settings = load_settings({"LIFECYCLE_HOME": str(home)})
    try:
        t0 = time.perf_counter()
        generate_world(
            WorldConfig(customers=args.customers, start=START, end=END), settings.world_dir
        )
        wh.up(settings)
        for source in SOURCES:
            extract(source, END, settings, full=True)
        transform(END, settings, quiet=True)
        url = wh.warehouse_url(settings)
        with psycopg.connect(url) as conn:
            ensure_ml_tables(conn)
            scored = conn.execute(SCORES_SQL, {"day": END}).rowcount
        print(
            f"setup       {args.customers} people, {scored} scored, "
            f"in {time.perf_counter() - t0:.0f}s"
        )
        with flaky_server(failure_rate=0.0) as (endpoint, received):
            doc = yaml.safe_load((REPO / "audiences.yml").read_text(encoding="utf-8"))
            doc["audiences"].append(
                {
                    "name": "everyone_scored",
                    "description": "Every scored customer (benchmark).",
                    "filter": [{"column": "is_scored", "op": "eq", "value": True}],
                    "control_share": 0.1,
                    "push": {"url": endpoint, "batch_size": args.batch_size, "mode": "full"},
                }
            )
            audiences = home / "audiences.yml"
            audiences.write_text(yaml.safe_dump(doc), encoding="utf-8")
            settings = load_settings(
                {"LIFECYCLE_HOME": str(home), "LIFECYCLE_AUDIENCES_FILE": str(audiences)}
            )
            for label in ("first run", "rerun"):
                t0 = time.perf_counter()
                result = run_activation(END, settings)
                elapsed = time.perf_counter() - t0
                facts = result.facts()
                members = sum(a["members"] for a in facts["audiences"].values())
                sent = sum(a["sent"] for a in facts["audiences"].values())
                files = sum(a["files"] for a in facts["audiences"].values())
                push = result.audiences["everyone_scored"].push
                print(
                    f"{label:11s} {elapsed:.2f}s: {facts['customers']} customers scored into "
                    f"activation, {members} memberships, {sent} rows to send in {files} files; "
                    f"push {push.rows_delivered} rows in {push.delivered} batches "
                    f"({push.skipped} skipped) — {facts['customers'] / elapsed:,.0f} customers/s"
                )
                print(f"{'':11s} steps: {facts['seconds']}")
            print(f"server      {received.requests} requests, {len(received.batches)} batches")
    finally:
        wh.down(settings)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
