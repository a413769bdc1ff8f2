"""Churn on orders alone against BG/NBD: holdout figures on two generated worlds.

    .venv/bin/python bench/bench_churn.py [--customers 20000] [--regimes pareto_nbd,bgnbd]

For each purchase-process regime of the sample generator (``WorldConfig.purchase_process``):

* ``pareto_nbd`` — the default sample world: Pareto/NBD buying with the calendar's
  seasonality (weekly, Q4 peak), refunds and cancellations;
* ``bgnbd`` — a pure BG/NBD world with the CDNOW parameters of Fader, Hardie & Lee (2005):
  BG/NBD is the true model there, so the honest answer is "a tie with BG/NBD".

it generates ``--customers`` people over 2022-2024, lands the **orders only** (a sources file
with nothing else: web, CRM and marketing are absent, their features dropped) into a
scratch database of an embedded PostgreSQL, builds the warehouse, and trains twice as of
2024-12-31 (MLflow in a temporary folder):

1. a champion equivalent to BG/NBD: the spec's only candidate reads
   ``btyd_expected_purchases`` alone (the BG/NBD expected purchases fitted at each snapshot);
2. the spec as shipped (models/churn.yaml: candidates ``hgb``, ``hgb_btyd``,
   ``hgb_btyd_monotone``), which must beat that champion by the bootstrap interval to
   replace it.

It prints each run's holdout metrics (the model, the orders-only variant, BG/NBD expected
purchases, the recency rule, the oracle from the generator's truth), the candidates'
validation and holdout ROC AUC, the bootstrap interval of ROC AUC(model) - ROC AUC(BG/NBD),
and the promotion decision. Nothing is asserted: the figures are the output (docs/ml.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from lifecycle import warehouse as wh  # noqa: E402
from lifecycle.settings import load_settings  # noqa: E402

START, END = dt.date(2022, 1, 1), dt.date(2024, 12, 31)

ORDERS_ONLY = """\
version: 1
sources:
  orders:
    kind: csv
    entities:
      orders:
        path: {orders}
      order_items:
        skip: true
"""


def bgnbd_equivalent_overrides() -> dict:
    """Return churn spec overrides whose only candidate reads BG/NBD's expected purchases."""
    from ml.churn import load_churn_spec

    spec = load_churn_spec()
    everything = [*spec["features"]["numeric"], *spec["features"]["categorical"]]
    return {
        "candidates": [
            {
                "name": "bgnbd_equivalent",
                "exclude": [f for f in everything if f != "btyd_expected_purchases"],
            }
        ]
    }


def run_regime(regime: str, customers: int, home: Path, server: str, seed: int) -> None:
    """Generate, land orders only, build, train twice; print the figures."""
    from lifecycle.extract import extract
    from lifecycle.sample.world import WorldConfig, generate_world
    from lifecycle.transform import transform
    from ml.train import train

    world = home / f"world-{regime}"
    t0 = time.perf_counter()
    summary = generate_world(
        WorldConfig(customers=customers, start=START, end=END, seed=seed, purchase_process=regime),
        world,
    )
    print(f"\n######## regime {regime}: {summary}")
    sources = home / f"sources-{regime}.yml"
    sources.write_text(ORDERS_ONLY.format(orders=world / "orders" / "orders.csv"), "utf-8")
    db = f"bench_churn_{uuid.uuid4().hex[:8]}"
    admin = wh.with_database(server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{db}"')
    url = wh.with_database(server, db)
    wh.bootstrap(url)
    state = home / f"state-{regime}"
    settings = load_settings(
        {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(world),
            "LIFECYCLE_SOURCES_FILE": str(sources),
        }
    )
    t1 = time.perf_counter()
    extract("orders", END, settings, full=True)
    transform(END, settings, quiet=True)
    t2 = time.perf_counter()
    print(f"world generated in {t1 - t0:.0f}s; orders landed and built in {t2 - t1:.0f}s")
    for label, overrides in (
        ("run 1: champion equivalent to BG/NBD", bgnbd_equivalent_overrides()),
        ("run 2: models/churn.yaml as shipped", None),
    ):
        t0 = time.perf_counter()
        result = train(END, settings, overrides=overrides)
        print(f"\n== {regime}, {label} ({time.perf_counter() - t0:.0f}s) ==")
        print(result.summary())
        print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_s.items()))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{db}" with (force)')


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--regimes", default="pareto_nbd,bgnbd")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    home = Path(tempfile.mkdtemp(prefix="lifecycle-bench-churn-"))
    home.chmod(0o755)
    external = os.environ.get("LIFECYCLE_WAREHOUSE_URL")
    base = load_settings({"LIFECYCLE_HOME": str(home)})
    try:
        server = external or wh.up(base)
        for regime in args.regimes.split(","):
            run_regime(regime.strip(), args.customers, home, server, args.seed)
    finally:
        if not external:
            wh.down(base)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
