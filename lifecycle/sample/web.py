"""Web behaviour of the sample world: sessions, tracking events, identity, lateness, duplicates.

Sessions come from five sources (acquisition visit, anonymous visits before it, purchase
sessions for tracked orders, browse sessions from a seasonal Poisson process tied to the
person's purchase rate, and never-identified anonymous visitors); each session expands into a
fixed sequence of events. See README.md ("Web events") for the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lifecycle.sample.calendar import CHANNEL_INDEX, SECONDS_PER_YEAR, thin
from lifecycle.sample.text import SECONDS_PER_DAY, random_uuid_halves

if TYPE_CHECKING:
    from lifecycle.sample.context import Context, Table

EVENTS = (
    "page_viewed",
    "product_viewed",
    "added_to_cart",
    "checkout_started",
    "signed_up",
    "logged_in",
    "order_completed",
)
PAGE_VIEWED, PRODUCT_VIEWED, ADDED_TO_CART, CHECKOUT_STARTED, SIGNED_UP, LOGGED_IN, COMPLETED = (
    range(7)
)

SHOP_URL = "https://shop.example.com"
PAGES = (
    "/",
    "/collections/new",
    "/collections/sale",
    "/blog/style-guide",
    "/search",
    "/products/",
    "/cart",
    "/checkout",
    "/checkout/thank-you",
    "/account/signup",
    "/account/login",
)
P_PRODUCT, P_CART, P_CHECKOUT, P_THANKS, P_SIGNUP, P_LOGIN = 5, 6, 7, 8, 9, 10
# Landing page distribution per traffic source (organic, paid_search, social, referral, email).
_LANDING = np.array(
    [
        [0.55, 0.05, 0.05, 0.25, 0.10],
        [0.40, 0.20, 0.30, 0.00, 0.10],
        [0.20, 0.60, 0.15, 0.05, 0.00],
        [0.80, 0.10, 0.10, 0.00, 0.00],
        [0.10, 0.45, 0.45, 0.00, 0.00],
    ]
).cumsum(axis=1)

# (utm_source, utm_medium, utm_campaign); the last entry of each paid channel is its holiday
# campaign, used more often in Q4.
UTM = (
    ("google", "cpc", "brand_search"),
    ("google", "cpc", "generic_search"),
    ("google", "cpc", "shopping"),
    ("bing", "cpc", "generic_search"),
    ("google", "cpc", "holiday_sale"),
    ("facebook", "paid_social", "prospecting"),
    ("instagram", "paid_social", "prospecting"),
    ("facebook", "paid_social", "retargeting"),
    ("tiktok", "paid_social", "creators"),
    ("instagram", "paid_social", "holiday_sale"),
    ("referral", "referral", "refer_a_friend"),
    ("newsletter", "email", "weekly_newsletter"),
    ("newsletter", "email", "new_arrivals"),
    ("crm", "email", "winback"),
    ("newsletter", "email", "holiday_sale"),
)
# channel -> (first utm row, number of regular rows, holiday row or -1); organic has no utm
_UTM_RANGE = {
    CHANNEL_INDEX["paid_search"]: (0, 4, 4),
    CHANNEL_INDEX["social"]: (5, 4, 9),
    CHANNEL_INDEX["referral"]: (10, 1, -1),
    CHANNEL_INDEX["email"]: (11, 3, 14),
}
# traffic source of a returning visit: organic/direct, paid_search, social, referral, email
_RETURN_MIX = np.array([0.45, 0.18, 0.12, 0.0, 0.25]).cumsum()
_LATE_DAYS_P = (0.45, 0.30, 0.15, 0.10)  # 1, 2, 3, 4 days late
PRE_DROPOUT_RAMP = 60 * SECONDS_PER_DAY  # browsing fades out over this window before dropout
AFTER_DROPOUT_LEVEL = 0.3
BASE_BROWSE_RATE = 0.5  # browse sessions per year on top of sessions_per_order * rate


def _utm(ctx: Context, rng: np.random.Generator, source: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Return utm row codes (-1 = none) for sessions from traffic ``source`` at time ``t``."""
    out = np.full(source.size, -1, dtype=np.int16)
    u = rng.random(source.size)
    holiday = rng.random(source.size) < 0.6 * np.minimum(
        ctx.cal.q4[np.clip(ctx.cal.day_of(t), 0, ctx.cal.n_days - 1)], 1.0
    )
    for channel, (first, count, hol) in _UTM_RANGE.items():
        m = source == channel
        row = first + np.floor(u[m] * count).astype(np.int16)
        if hol >= 0:
            row = np.where(holiday[m], hol, row)
        out[m] = row
    return out


def _landing(rng: np.random.Generator, source: np.ndarray) -> np.ndarray:
    """Return landing page codes for sessions from traffic ``source``."""
    u = rng.random(source.size)
    return (u[:, None] >= _LANDING[source]).sum(axis=1).clip(0, 4).astype(np.int8)


def _return_source(rng: np.random.Generator, opted_in: np.ndarray) -> np.ndarray:
    """Return traffic sources of returning visits (email only for opted-in people)."""
    src = (rng.random(opted_in.size)[:, None] >= _RETURN_MIX).sum(axis=1).clip(0, 4)
    src = np.where((src == CHANNEL_INDEX["email"]) & ~opted_in, CHANNEL_INDEX["organic"], src)
    return src.astype(np.int8)


def _sessions(
    ctx: Context, rng: np.random.Generator, people: Table, orders: Table
) -> tuple[Table, np.ndarray, np.ndarray]:
    """Return (sessions, anon visitor dev_hi, dev_lo) for a block; see the module docstring."""
    cfg, cal = ctx.config, ctx.cal
    n = people["idx"].size
    browses, prospect = people["browses"], people["is_prospect"]
    parts: list[Table] = []

    def part(local: np.ndarray, dev: np.ndarray, t0: np.ndarray, **cols: np.ndarray) -> None:
        size = local.size
        base = {
            "local": local.astype(np.int64),
            "visitor": np.full(size, -1, np.int64),
            "dev": dev.astype(np.int8),
            "t0": t0.astype(np.int64),
            "anchored": np.zeros(size, bool),
            "identify": np.zeros(size, np.int8),
            "views": np.zeros(size, np.int64),
            "carts": np.zeros(size, np.int64),
            "checkout": np.zeros(size, bool),
            "order": np.full(size, -1, np.int64),
            "source": np.zeros(size, np.int8),
        }
        base.update(cols)
        parts.append(base)

    def device(local: np.ndarray) -> np.ndarray:
        return ((people["devices"][local] == 2) & (rng.random(local.size) < 0.3)).astype(np.int8)

    # A) the acquisition visit (signs up here if the person has a web account)
    a = np.flatnonzero(browses)
    views = rng.poisson(1.5, a.size)
    carts = (prospect[a] & (rng.random(a.size) < 0.08)).astype(np.int64)
    part(
        a,
        np.zeros(a.size),
        people["acq_t"][a],
        identify=np.where(people["signup"][a], SIGNED_UP, 0).astype(np.int8),
        views=np.maximum(views, carts),
        carts=carts,
        source=people["channel"][a],
    )
    # B) anonymous visits before acquisition
    b = a[rng.random(a.size) < 0.35]
    b = np.repeat(b, 1 + (rng.random(b.size) < 0.3))
    t0 = people["acq_t"][b] - rng.integers(3600, 21 * SECONDS_PER_DAY, b.size)
    keep = t0 >= cal.start_ts
    b, t0 = b[keep], t0[keep]
    part(
        b,
        np.zeros(b.size),
        t0,
        views=rng.poisson(1.2, b.size),
        source=_return_source(rng, np.zeros(b.size, bool)),
    )
    # C) purchase sessions for tracked orders, anchored so order_completed ~ ordered_at
    o = np.flatnonzero(
        browses[orders["local"]] & (rng.random(orders["local"].size) < cfg.order_tracking_rate)
    )
    c = orders["local"][o]
    n_items = orders["n_items"][o]
    login = people["signup"][c] & (rng.random(c.size) < 0.85)
    part(
        c,
        device(c),
        orders["t"][o] + rng.integers(0, 4, c.size),
        anchored=np.ones(c.size, bool),
        identify=np.where(login, LOGGED_IN, 0).astype(np.int8),
        views=n_items + rng.poisson(0.8, c.size),
        carts=n_items,
        checkout=np.ones(c.size, bool),
        order=o,
        source=_return_source(rng, people["opt_in"][c]),
    )
    # D) browse sessions: alive buyers (fading before dropout), after dropout, prospects
    first, drop, acq = people["first_t"], people["dropout_t"], people["acq_t"]
    rate = people["lam"] * people["spo"] + BASE_BROWSE_RATE
    alive = np.flatnonzero(browses & ~prospect & (first < cal.end_ts))
    after = np.flatnonzero(people["after"] & ~prospect & (drop < cal.end_ts))
    pros = np.flatnonzero(browses & prospect)
    seg_local = np.concatenate([alive, after, pros])
    kind = np.repeat(np.arange(3), [alive.size, after.size, pros.size])
    seg_a = np.concatenate([first[alive] + 3600, drop[after], acq[pros] + 3600])
    seg_b = np.concatenate(
        [
            np.minimum(drop[alive], cal.end_ts),
            np.full(after.size, cal.end_ts),
            np.full(pros.size, cal.end_ts),
        ]
    )
    seg_rate = np.concatenate(
        [rate[alive], rate[after] * AFTER_DROPOUT_LEVEL, people["prospect_rate"][pros]]
    )
    seg_ref = np.concatenate([drop[alive], drop[after], acq[pros]])
    seg_scale = np.concatenate(
        [
            np.full(alive.size, float(PRE_DROPOUT_RAMP)),
            np.full(after.size, SECONDS_PER_YEAR),
            people["prospect_decay"][pros],
        ]
    )

    def modulation(seg: np.ndarray, t: np.ndarray) -> np.ndarray:
        k, ref, scale = kind[seg], seg_ref[seg], seg_scale[seg]
        ramp = np.clip((ref - t) / scale, 0.15, 1.0)
        decay = np.exp(-np.maximum(t - ref, 0) / scale)
        return np.where(k == 0, ramp, decay)

    seg, t = thin(rng, cal, seg_a, seg_b, seg_rate, modulation)
    d = seg_local[seg]
    carts = (rng.random(d.size) < 0.10).astype(np.int64)
    part(
        d,
        device(d),
        t,
        identify=np.where(people["signup"][d] & (rng.random(d.size) < 0.08), LOGGED_IN, 0).astype(
            np.int8
        ),
        views=1 + rng.poisson(1.4, d.size),
        carts=carts,
        checkout=(carts > 0) & (rng.random(d.size) < 0.35),
        source=_return_source(rng, people["opt_in"][d]),
    )
    # E) anonymous visitors who never identify (hosted by a person slot for chunking)
    host = np.repeat(np.arange(n), people["n_anon"])
    v_hi, v_lo = random_uuid_halves(rng, host.size)
    visitor = np.repeat(np.arange(host.size), 1 + rng.poisson(0.4, host.size))
    day = np.minimum(
        np.searchsorted(cal.acq_cdf, rng.random(visitor.size), side="right"), cal.n_days - 1
    )
    t0 = cal.start_ts + day * SECONDS_PER_DAY + cal.time_of_day(rng.random(visitor.size))
    cum = cal.chan_cum[day]
    src = (rng.random(visitor.size)[:, None] >= cum).sum(axis=1).clip(0, 4).astype(np.int8)
    views = rng.poisson(0.9, visitor.size)
    carts = ((views > 0) & (rng.random(visitor.size) < 0.02)).astype(np.int64)
    part(
        host[visitor],
        np.zeros(visitor.size),
        t0,
        visitor=visitor,
        views=views,
        carts=carts,
        source=src,
    )

    sessions = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    sessions["utm"] = _utm(ctx, rng, sessions["source"], sessions["t0"])
    sessions["landing"] = _landing(rng, sessions["source"])
    hi, lo = random_uuid_halves(rng, sessions["t0"].size)
    sessions["sess_hi"], sessions["sess_lo"] = hi, lo
    return sessions, v_hi, v_lo


def make_events(
    ctx: Context, rng: np.random.Generator, people: Table, orders: Table, items: Table
) -> Table:
    """Return the event lines of a block, late deliveries and duplicate copies included."""
    cal, cfg, cat = ctx.cal, ctx.config, ctx.catalog
    s, v_hi, v_lo = _sessions(ctx, rng, people, orders)
    n_sess = s["t0"].size
    has_id = (s["identify"] > 0).astype(np.int64)
    done = (s["order"] >= 0).astype(np.int64)
    per = 1 + has_id + s["views"] + s["carts"] + s["checkout"] + done
    sess = np.repeat(np.arange(n_sess), per)
    first_pos = np.cumsum(per) - per
    pos = np.arange(sess.size) - first_pos[sess]
    b2 = 1 + has_id
    b3 = b2 + s["views"]
    b4 = b3 + s["carts"]
    b5 = b4 + s["checkout"]
    p2, p3, p4, p5 = b2[sess], b3[sess], b4[sess], b5[sess]
    etype = np.select(
        [pos == 0, pos < p2, pos < p3, pos < p4, pos < p5],
        [PAGE_VIEWED, s["identify"][sess], PRODUCT_VIEWED, ADDED_TO_CART, CHECKOUT_STARTED],
        COMPLETED,
    ).astype(np.int8)

    # timing: ~40 s between events; purchase sessions end at the order's time
    gap = 2 + rng.exponential(38.0, sess.size)
    gap[first_pos] = 0
    cum = np.cumsum(gap)
    offset = np.floor(cum - cum[first_pos][sess]).astype(np.int64)
    last = offset[first_pos + per - 1]
    t = np.where(s["anchored"][sess], s["t0"][sess] - last[sess] + offset, s["t0"][sess] + offset)

    # products: purchase sessions view (and cart) the order's items first
    view = etype == PRODUCT_VIEWED
    product = np.full(sess.size, -1, np.int64)
    product[view] = cat.popular(rng.random(int(view.sum())))
    j = pos - p2
    order_row = s["order"][sess]
    n_items = orders["n_items"]
    # a world too small or too short to hold an order has no purchase sessions
    in_order = n_items[np.maximum(order_row, 0)] if n_items.size else np.zeros(sess.size, int)
    from_items = view & (order_row >= 0) & (j < in_order)
    item_start = np.searchsorted(items["order_row"], np.arange(orders["t"].size))
    product[from_items] = items["product"][item_start[order_row[from_items]] + j[from_items]]
    cart = etype == ADDED_TO_CART
    product[cart] = product[np.flatnonzero(cart) - s["views"][sess[cart]]]

    # add-to-cart happens on the product page, so it shares the product URL
    page = np.select(
        [
            pos == 0,
            etype == SIGNED_UP,
            etype == LOGGED_IN,
            etype == CHECKOUT_STARTED,
            etype == COMPLETED,
        ],
        [s["landing"][sess], P_SIGNUP, P_LOGIN, P_CHECKOUT, P_THANKS],
        P_PRODUCT,
    ).astype(np.int8)
    utm = np.where(pos == 0, s["utm"][sess], -1).astype(np.int16)

    local = s["local"][sess]
    visitor = s["visitor"][sess]
    person_dev = visitor < 0
    dev = s["dev"][sess]
    dev_hi = np.where(person_dev, people["dev_hi"][local, dev], v_hi[np.maximum(visitor, 0)])
    dev_lo = np.where(person_dev, people["dev_lo"][local, dev], v_lo[np.maximum(visitor, 0)])

    inside = (t >= cal.start_ts) & (t < cal.end_ts)
    cols = {
        "local": local,
        "sess": sess,
        "t": t,
        "etype": etype,
        "product": product,
        "page": page,
        "utm": utm,
        "dev_hi": dev_hi,
        "dev_lo": dev_lo,
        "person_dev": person_dev,
        "dev_key": np.where(person_dev, local * 2 + dev, -1),
        "order_row": np.where(etype == COMPLETED, order_row, -1),
    }
    ev = {k: v[inside] for k, v in cols.items()}

    # identity: a device carries the user_id from its first sign-up/login on
    ident = (ev["etype"] == SIGNED_UP) | (ev["etype"] == LOGGED_IN)
    ident_t = np.full(2 * people["idx"].size, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(ident_t, ev["dev_key"][ident], ev["t"][ident])
    known = ev["person_dev"] & (ev["t"] >= ident_t[np.maximum(ev["dev_key"], 0)])
    ev["user"] = np.where(known, people["account"][ev["local"]], -1)
    ev["email"] = ident
    ev["order_num"] = (
        np.where(ev["order_row"] >= 0, orders["order_num"][ev["order_row"]], -1)
        if orders["order_num"].size
        else np.full(ev["order_row"].size, -1)
    )
    ev["sess_hi"] = s["sess_hi"][ev["sess"]]
    ev["sess_lo"] = s["sess_lo"][ev["sess"]]
    ev["person"] = people["idx"][ev["local"]]
    ev["anonymous"] = ~ev["person_dev"]
    for k in ("local", "sess", "order_row", "dev_key", "person_dev"):
        del ev[k]

    # delivery: most events arrive within seconds; some a few days late; some twice
    m = ev["t"].size
    ev_hi, ev_lo = random_uuid_halves(rng, m)
    ev["ev_hi"], ev["ev_lo"] = ev_hi, ev_lo
    day = (ev["t"] - cal.start_ts) // SECONDS_PER_DAY
    day_end = cal.start_ts + (day + 1) * SECONDS_PER_DAY
    late = rng.random(m) < cfg.late_event_rate
    lag = 1 + rng.choice(4, size=m, p=_LATE_DAYS_P)
    on_time = np.minimum(
        ev["t"] + 1 + np.floor(rng.exponential(2.0, m)).astype(np.int64), day_end - 1
    )
    late_at = day_end + (lag - 1) * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY, m)
    ev["received"] = np.where(late, late_at, on_time)
    ev["copy"] = np.zeros(m, bool)
    dup = np.flatnonzero(rng.random(m) < cfg.duplicate_event_rate)
    redelivery = 1 + np.floor(rng.exponential(2 * 3600.0, dup.size)).astype(np.int64)
    copies = {k: v[dup] for k, v in ev.items()}
    copies["received"] = copies["received"] + redelivery
    copies["copy"][:] = True
    ev = {k: np.concatenate([ev[k], copies[k]]) for k in ev}
    ev = {k: v[ev["received"] < cal.end_ts] for k, v in ev.items()}
    ev["dt"] = (ev["t"] - cal.start_ts) // SECONDS_PER_DAY
    ev["arrival"] = (ev["received"] - cal.start_ts) // SECONDS_PER_DAY
    return ev
