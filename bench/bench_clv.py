"""CLV and segmentation: fit time, prediction throughput and peak memory at 100k and 1M.

    .venv/bin/python bench/bench_clv.py [--customers 100000 1000000] [--seed 7]

For each size, simulates customers' orders from the BG/NBD and Gamma-Gamma processes
(CDNOW parameters, first orders spread over two years, whole days), then times:
``rfm_summary`` on the order table, ``CLVModel.fit`` (BG/NBD + Gamma-Gamma MLE),
``CLVModel.predict`` (customers/s), and ``SegmentationModel`` fit and predict on features
derived from the same orders. Peak memory is the process's peak RSS
(``resource.getrusage``; it includes the simulation). Nothing is asserted: the figures
are the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.clv import CLVModel, rfm_summary  # noqa: E402
from ml.segmentation import SegmentationModel  # noqa: E402
from ml.specs import load_spec  # noqa: E402

AS_OF = dt.date(2024, 6, 30)


def simulate_orders(n: int, seed: int) -> pd.DataFrame:
    """Return BG/NBD + Gamma-Gamma orders (CDNOW parameters) of `n` customers up to AS_OF."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = 0.243, 4.414 * 7, 0.793, 2.426  # alpha per day
    p_gg, q_gg, v_gg = 6.25, 3.74, 15.44
    lam = rng.gamma(r, 1 / alpha, n)
    drop = rng.beta(a, b, n)
    nu = rng.gamma(q_gg, 1 / v_gg, n)
    horizon = rng.uniform(0, 730, n)  # days from the first order to AS_OF
    customers = [np.arange(n)]
    times = [np.zeros(n)]
    t = np.zeros(n)
    active = np.arange(n)
    while active.size:  # one repeat purchase per round for every still-active customer
        t_next = t[active] + rng.exponential(1 / lam[active])
        buys = t_next <= horizon[active]
        active, t_next = active[buys], t_next[buys]
        t[active] = t_next
        customers.append(active)
        times.append(t_next)
        alive = rng.random(active.size) >= drop[active]
        active = active[alive]
    who = np.concatenate(customers)
    when = np.concatenate(times)
    day = (horizon[who] - when).astype(np.int64)  # days before AS_OF
    return pd.DataFrame(
        {
            "customer_key": who,
            "order_date": pd.Timestamp(AS_OF) - pd.to_timedelta(day, unit="D"),
            "amount": np.round(rng.gamma(p_gg, 1 / nu[who]), 2),
        }
    )


def peak_mib() -> float:
    """Return the peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(n: int, seed: int) -> None:
    """Print the figures of one size."""
    t0 = time.perf_counter()
    orders = simulate_orders(n, seed)
    sim_s = time.perf_counter() - t0
    print(f"\n== {n:,} customers, {len(orders):,} orders (simulated in {sim_s:.1f} s)")

    t0 = time.perf_counter()
    summary = rfm_summary(orders, AS_OF)
    rfm_s = time.perf_counter() - t0
    print(f"rfm_summary           {rfm_s:7.2f} s  {len(orders) / rfm_s:12,.0f} orders/s")

    model = CLVModel.from_spec(load_spec("clv"))
    t0 = time.perf_counter()
    model.fit(summary)
    fit_s = time.perf_counter() - t0
    bg, gg = model.bgnbd, model.gamma_gamma
    print(
        f"CLVModel.fit          {fit_s:7.2f} s  BG/NBD r={bg.r:.3f} alpha={bg.alpha:.3f} "
        f"a={bg.a:.3f} b={bg.b:.3f}; Gamma-Gamma p={gg.p:.2f} q={gg.q:.2f} v={gg.v:.2f}"
    )
    t0 = time.perf_counter()
    pred = model.predict(summary)
    pred_s = time.perf_counter() - t0
    print(f"CLVModel.predict      {pred_s:7.2f} s  {n / pred_s:12,.0f} customers/s")
    print(f"mean clv_12m          {pred['clv_12m'].mean():7.2f}")

    features = pd.DataFrame(
        {
            "days_since_last_order": summary["T"] - summary["recency"],
            "count_orders": summary["frequency"] + 1,
            "revenue": orders.groupby("customer_key")["amount"].sum(),
            "avg_order_value": orders.groupby("customer_key")["amount"].mean(),
            "days_since_first_order": summary["T"],
            "sessions_90d": np.random.default_rng(seed).poisson(3.0, n),
        }
    )
    seg = SegmentationModel.from_spec(load_spec("segmentation"))
    t0 = time.perf_counter()
    seg.fit(features)
    seg_fit_s = time.perf_counter() - t0
    print(
        f"SegmentationModel.fit {seg_fit_s:7.2f} s  k={seg.k} silhouette={seg.silhouette:.3f} "
        f"(k chosen on {min(n, seg.selection_sample):,} rows, KMeans on {min(n, seg.fit_sample):,})"
    )
    t0 = time.perf_counter()
    seg.predict(features)
    seg_pred_s = time.perf_counter() - t0
    print(f"SegmentationModel.predict {seg_pred_s:5.2f} s  {n / seg_pred_s:12,.0f} customers/s")
    print(f"peak RSS so far       {peak_mib():7.0f} MiB")


def main() -> None:
    """Run the benchmark for each requested size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for n in args.customers:
        bench(n, args.seed)


if __name__ == "__main__":
    main()
