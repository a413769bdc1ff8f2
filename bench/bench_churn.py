"""Churn on orders alone against BG/NBD: holdout figures on two generated worlds.

    .venv/bin/python bench/bench_churn.py [--customers 20000] [--regimes pareto_nbd,bgnbd]

For each purchase-process regime of the sample generator (``WorldConfig.purchase_process``):

* ``pareto_nbd`` — the default sample world: Pareto/NBD buying with the calendar's
  seasonality (weekly, Q4 peak), refunds and cancellations;
* ``bgnbd`` — a pure BG/NBD world with the CDNOW parameters of Fader, Hardie & Lee (2005),
  no refunds or cancellations: BG/NBD is the true model there, so the honest answer is "a
  tie with BG/NBD";
* ``experience`` — the default world where a refund makes its buyer leave with probability
  0.5 (10% of orders refunded): order experience drives part of the churn.

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

#: WorldConfig fields of each regime (the rest: the defaults)
REGIMES = {
    "pareto_nbd": {},
    # pure: no refunds or cancellations either (a refunded drop-out order would hide the
    # drop-out from the completed orders, information BG/NBD's RFM summary lacks)
    "bgnbd": {"purchase_process": "bgnbd", "refund_rate": 0.0, "cancel_rate": 0.0},
    # order experience drives churn: 10% of orders refunded, half of those buyers leave
    "experience": {"refund_rate": 0.10, "refund_dropout": 0.5},
}

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
        WorldConfig(customers=customers, start=START, end=END, seed=seed, **REGIMES[regime]),
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
    try:
        print_ceiling(regime, settings, summary)
    except Exception as exc:  # noqa: BLE001 - a figure missing, the other regimes still run
        print(f"error: RFM ceiling of {regime} not computed: {exc!r}")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{db}" with (force)')


def rfm_ceiling(frame, config):
    """Return P(no purchase in the horizon) given the RFM summary under the generator's own
    purchase process and its true population parameters: the best any scorer of the RFM
    summary can do on this world (seasonality and refunds ignored).

    BG/NBD world: BG/NBD's formula with the true (r, alpha, a, b). Pareto/NBD worlds: the
    posterior over (lambda, mu) by importance sampling of 4,000 prior draws, each weighted
    by the customer's likelihood; per draw, P(alive) = lambda^x e^-(lambda+mu)T / L and
    P(no purchase | alive) = e^-(lambda+mu)h + mu/(lambda+mu) (1 - e^-(lambda+mu)h).
    """
    import numpy as np

    from ml import features as ft
    from ml.clv import BetaGeoParams

    horizon = 90
    if config.purchase_process == "bgnbd":
        fit = ft.BtydFit(BetaGeoParams(*config.bgnbd_params), None, False)
        return ft.btyd_features(frame, fit, horizon_days=horizon)["btyd_p_no_purchase"].to_numpy()
    rng = np.random.default_rng(0)
    n = 4000
    lam = rng.gamma(
        config.purchase_rate_shape, config.purchase_rate_mean / config.purchase_rate_shape, n
    )
    mu = rng.gamma(
        config.dropout_rate_shape, config.dropout_rate_mean / config.dropout_rate_shape, n
    )
    s = lam + mu
    h = horizon / 365.25
    quiet = np.exp(-s * h) + mu / s * (1 - np.exp(-s * h))
    x = frame["frequency"].to_numpy(dtype=float)
    tx = frame["recency"].to_numpy(dtype=float) / 365.25
    T = frame["t"].to_numpy(dtype=float) / 365.25
    out = np.empty(len(frame))
    for lo in range(0, len(frame), 500):
        xs, txs, Ts = (v[lo : lo + 500, None] for v in (x, tx, T))
        log_alive = xs * np.log(lam) - s * Ts
        log_dead = (
            xs * np.log(lam)
            + np.log(mu / s)
            + np.log(np.maximum(np.exp(-s * txs) - np.exp(-s * Ts), 1e-300))
        )
        log_l = np.logaddexp(log_alive, log_dead)
        w = np.exp(log_l - log_l.max(axis=1, keepdims=True))
        p_alive = np.exp(log_alive - log_l)
        zero = 1 - p_alive + p_alive * quiet
        out[lo : lo + 500] = (w * zero).sum(axis=1) / w.sum(axis=1)
    return out


def print_ceiling(regime: str, settings, summary) -> None:
    """Print the RFM Bayes ceiling's holdout ROC AUC next to BG/NBD's on the same rows."""
    import json

    from sklearn.metrics import roc_auc_score

    from lifecycle.sample.world import WorldConfig
    from ml import train as tr
    from ml.churn import load_churn_spec
    from ml.evaluate import bgnbd_score
    from ml.specs import load_spec

    meta = json.loads((summary.out / "world.json").read_text("utf-8"))["config"]
    meta["start"], meta["end"] = START, END
    meta["channel_mix"] = tuple(meta["channel_mix"].items())
    meta["cac"] = tuple(meta["cac"].items())
    meta["bgnbd_params"] = tuple(meta["bgnbd_params"])
    config = WorldConfig(**meta)
    frames = tr.load_frames(END, settings, load_churn_spec())
    y = frames.holdout["churned"].astype(int).to_numpy()
    ceiling = roc_auc_score(y, rfm_ceiling(frames.holdout, config))
    bgnbd = roc_auc_score(y, bgnbd_score(frames.holdout, 90, load_spec("clv")))
    print(
        f"\n{regime}: RFM Bayes ceiling (the true process and parameters, from the RFM summary) "
        f"ROC AUC {ceiling:.4f} vs BG/NBD {bgnbd:.4f} on the same {len(y)} holdout customers"
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--regimes", default=",".join(REGIMES))
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
