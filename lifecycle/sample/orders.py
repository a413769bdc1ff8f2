"""Orders of the sample world: the buy-till-you-die process, order values, statuses and items.

See README.md ("Purchases", "Order items") for the model. Amounts are integer cents throughout,
so the items of an order sum to its amount exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lifecycle.sample.calendar import thin
from lifecycle.sample.text import SECONDS_PER_DAY, permute

if TYPE_CHECKING:
    from lifecycle.sample.context import Context, Table

MAX_ORDERS_PER_PERSON = 999  # order ids encode (person, sequence < 1000)
COMPLETED, REFUNDED, CANCELLED = 0, 1, 2
STATUSES = ("completed", "refunded", "cancelled")
EUR_PER_USD = 0.92


@dataclass(frozen=True)
class Catalog:
    """Products sorted by USD price, with popularity weights (Zipf over a random rank)."""

    product_num: np.ndarray  # id number: product_id = "P" + number
    price_usd: np.ndarray  # cents, ascending
    price_eur: np.ndarray  # cents
    log_price: np.ndarray  # log of USD price in dollars, ascending
    pop_cum: np.ndarray  # cumulative popularity in price order, pop_cum[0] = 0, [-1] = 1

    def pick(self, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Return a popularity-weighted product index in ``[lo, hi)`` for uniforms ``u``."""
        c = self.pop_cum[lo] + u * (self.pop_cum[hi] - self.pop_cum[lo])
        return np.clip(np.searchsorted(self.pop_cum, c, side="right") - 1, lo, hi - 1)

    def popular(self, u: np.ndarray) -> np.ndarray:
        """Return popularity-weighted product indices over the whole catalog."""
        size = self.price_usd.size
        return self.pick(np.zeros(u.size, np.int64), np.full(u.size, size, np.int64), u)


def build_catalog(rng: np.random.Generator, size: int) -> Catalog:
    """Return a catalog of ``size`` products: log-normal prices, mostly ending in .99."""
    dollars = np.clip(np.exp(rng.normal(np.log(28.0), 0.85, size)), 3.0, 600.0)
    ending = rng.random(size)
    cents = np.where(
        ending < 0.80,
        np.floor(dollars) * 100 + 99,
        np.where(ending < 0.95, np.round(dollars) * 100, np.floor(dollars) * 100 + 50),
    ).astype(np.int64)
    cents = np.sort(cents)
    eur = np.maximum(np.round(cents * EUR_PER_USD / 100) * 100 - 1, 99).astype(np.int64)
    weights = 1.0 / (1.0 + rng.permutation(size)) ** 1.05
    pop_cum = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    pop_cum[-1] = 1.0
    return Catalog(
        product_num=10001 + rng.permutation(size),
        price_usd=cents,
        price_eur=eur,
        log_price=np.log(cents / 100.0),
        pop_cum=pop_cum,
    )


def make_orders(ctx: Context, rng: np.random.Generator, people: Table) -> tuple[Table, Table]:
    """Return (orders, order_items) of a block of people, sorted by person then time."""
    cal = ctx.cal
    buyer = np.flatnonzero(~people["is_prospect"] & (people["first_t"] < cal.end_ts))
    first_t = people["first_t"][buyer]
    stop = np.minimum(people["dropout_t"][buyer], cal.end_ts)
    if ctx.config.purchase_process == "bgnbd":
        seg, t_rep = _bgnbd_repeats(rng, first_t, people["dropout_t"][buyer], cal.end_ts,
                                    people["lam"][buyer], people["bg_repeats"][buyer])  # fmt: skip
    else:
        seg, t_rep = thin(rng, cal, first_t + 1, stop, people["lam"][buyer])
    local = np.concatenate([buyer, buyer[seg]])
    t = np.concatenate([first_t, t_rep])
    order = np.lexsort((t, local))
    local, t = local[order], t[order]
    starts = np.searchsorted(local, local, side="left")
    seq = np.arange(local.size) - starts
    keep = seq < MAX_ORDERS_PER_PERSON
    local, t, seq = local[keep], t[keep], seq[keep]
    orders, items = orders_at(ctx, rng, people, local, t, seq)
    if ctx.config.refund_dropout > 0:  # extra draws only then: the default world is kept
        orders, items = _drop_out_after_refunds(rng, people, orders, items, ctx.config)
    return orders, items


def _drop_out_after_refunds(
    rng: np.random.Generator, people: Table, orders: Table, items: Table, cfg
) -> tuple[Table, Table]:
    """Return the orders without those placed after a refund their buyer reacted to.

    Each refunded order makes its buyer drop out when the refund happens with probability
    ``refund_dropout`` (order experience drives churn: what a BTYD model cannot see). The
    buyer's later orders are removed (a suffix: the kept ones keep their sequence numbers)
    and the truth's ``dropout_t`` moves to the refund, so web activity fades then too.
    """
    n = orders["t"].size
    reacts = (orders["status"] == REFUNDED) & (rng.random(n) < cfg.refund_dropout)
    cut = np.full(people["idx"].size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(cut, orders["local"][reacts], orders["updated"][reacts])
    keep = orders["t"] <= cut[orders["local"]]
    people["dropout_t"] = np.minimum(people["dropout_t"], cut)  # cut is max: no reaction
    kept_items = keep[items["order_row"]]
    new_row = np.cumsum(keep) - 1
    orders = {k: v[keep] for k, v in orders.items()}
    items = {k: v[kept_items] for k, v in items.items()}
    items["order_row"] = new_row[items["order_row"]]
    return orders, items


def _bgnbd_repeats(
    rng: np.random.Generator,
    first_t: np.ndarray,
    dropout_t: np.ndarray,
    end_ts: int,
    rate_per_year: np.ndarray,
    k: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (segment, epoch seconds) of BG/NBD repeat orders, sorted by segment then time.

    The K-th repeat order is the drop-out (people.py drew its time): before the world's end,
    K - 1 repeats uniform on (first, drop-out) and one at it; after it, N repeats uniform on
    (first, end) with N ~ Poisson(rate x span) conditioned on N < K (the inverse CDF of the
    truncated Poisson), which is the law of the count given that the K-th came later.
    """
    from scipy import stats

    dropped = dropout_t < end_ts
    span = np.where(dropped, dropout_t, end_ts) - first_t - 1
    span = np.maximum(span, 0)
    mean = rate_per_year * span / (365.25 * SECONDS_PER_DAY)
    u = rng.random(first_t.size)
    truncated = stats.poisson.ppf(u * stats.poisson.cdf(k - 1, mean), mean)
    count = np.where(dropped, k - 1, np.nan_to_num(truncated)).astype(np.int64)
    count = np.clip(count, 0, MAX_ORDERS_PER_PERSON)
    seg = np.repeat(np.arange(first_t.size), count)
    t = first_t[seg] + 1 + np.floor(rng.random(seg.size) * span[seg]).astype(np.int64)
    last = np.flatnonzero(dropped & (span > 0))
    seg = np.concatenate([seg, last])
    t = np.concatenate([t, dropout_t[last]])
    order = np.lexsort((t, seg))
    return seg[order], t[order]


def orders_at(
    ctx: Context,
    rng: np.random.Generator,
    people: Table,
    local: np.ndarray,
    t: np.ndarray,
    seq: np.ndarray,
) -> tuple[Table, Table]:
    """Return (orders, order_items) placed by block people ``local`` at times ``t``, the
    ``seq``-th order of each: values, items and statuses drawn from ``rng``."""
    cfg, cal, cat = ctx.config, ctx.cal, ctx.catalog
    n_orders = local.size

    # Gamma-Gamma order value (USD target), then items that approximate it from the catalog
    target = rng.gamma(cfg.order_value_p, people["mean_value"][local] / cfg.order_value_p)
    k = 1 + rng.binomial(3, np.clip(target / 300.0, 0.08, 0.6))
    item_order = np.repeat(np.arange(n_orders), k)
    item_no = np.arange(item_order.size) - np.repeat(np.cumsum(k) - k, k) + 1
    share = rng.gamma(2.0, 1.0, item_order.size)
    share /= np.bincount(item_order, weights=share, minlength=n_orders)[item_order]
    qty = rng.choice(np.array([1, 2, 3]), size=item_order.size, p=(0.86, 0.10, 0.04))
    log_target = np.log(np.maximum(target[item_order] * share / qty, 0.5)) + rng.normal(
        0.0, 0.15, item_order.size
    )
    size = cat.price_usd.size
    centre = np.clip(np.searchsorted(cat.log_price, log_target), 0, size - 1)
    lo = np.minimum(np.searchsorted(cat.log_price, log_target - 0.2), centre)
    hi = np.maximum(np.searchsorted(cat.log_price, log_target + 0.2, side="right"), centre + 1)
    product = cat.pick(lo, hi, rng.random(item_order.size))
    eur = people["eur"][local]
    unit = np.where(eur[item_order], cat.price_eur[product], cat.price_usd[product])
    amount = np.bincount(item_order, weights=unit * qty, minlength=n_orders).astype(np.int64)
    quantity = np.bincount(item_order, weights=qty, minlength=n_orders).astype(np.int64)

    # statuses: refunds happen days later (only visible if before `end`), cancels within hours
    u = rng.random(n_orders)
    refund_at = t + ((1 + rng.gamma(2.0, 4.0, n_orders)) * SECONDS_PER_DAY).astype(np.int64)
    cancel_at = t + rng.integers(300, 6 * 3600, n_orders)
    done_at = t + rng.integers(0, 300, n_orders)
    refunded = (u < cfg.refund_rate) & (refund_at < cal.end_ts)
    cancelled = (u >= cfg.refund_rate) & (u < cfg.refund_rate + cfg.cancel_rate)
    status = np.where(refunded, REFUNDED, np.where(cancelled, CANCELLED, COMPLETED)).astype(np.int8)
    updated = np.where(refunded, refund_at, np.where(cancelled, cancel_at, done_at))
    updated = np.minimum(updated, cal.end_ts - 1)

    person = people["idx"][local]
    order_num = permute(person * 1000 + seq, 12, ctx.key_order)
    orders = {
        "person": person,
        "local": local,
        "seq": seq,
        "t": t,
        "updated": updated,
        "status": status,
        "eur": eur,
        "amount": amount,
        "quantity": quantity,
        "order_num": order_num,
        "n_items": k,
    }
    items = {
        "person": person[item_order],
        "order_row": item_order,
        "order_num": order_num[item_order],
        "item_no": item_no,
        "product": product,
        "qty": qty,
        "unit": unit,
        "updated": updated[item_order],
    }
    return orders, items
