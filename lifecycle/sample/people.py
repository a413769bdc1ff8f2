"""People of the sample world: identity, acquisition, CRM facts and latent buying parameters.

One call draws a block of people with one generator; every draw has a fixed size (``n`` or
``n x k``) so the stream never depends on earlier outcomes. See README.md ("People") for the
model.
"""

from __future__ import annotations

import numpy as np

from lifecycle.sample.calendar import (
    CHANNEL_INDEX,
    SECONDS_PER_YEAR,
    acquisition_times,
    channels_for,
)
from lifecycle.sample.context import Context, Table
from lifecycle.sample.names import EMAIL_DOMAIN_WEIGHTS, EMAIL_DOMAINS
from lifecycle.sample.text import SECONDS_PER_DAY, permute, random_uuid_halves

EMAIL_FORMATS = 6  # first.last, firstlast, flast, first_last, last.first, first (+ number)
_EMAIL_FORMAT_P = (0.30, 0.20, 0.15, 0.10, 0.10, 0.15)
_REFERRER_CANDIDATES = 8


def make_people(ctx: Context, rng: np.random.Generator, idx: np.ndarray) -> Table:
    """Return the people table for global person indices ``idx`` (one block)."""
    cfg, cal, names = ctx.config, ctx.cal, ctx.names
    n = idx.size
    idx = idx.astype(np.int64)

    # acquisition: stratified quantiles give times that never decrease with the index
    acq_t = acquisition_times(cal, (idx + rng.random(n)) / cfg.customers)
    channel = channels_for(cal, acq_t, rng.random(n))

    # identity
    country = np.minimum(
        np.searchsorted(ctx.country_cum, rng.random(n) * ctx.country_cum[-1], side="right"),
        len(ctx.country_codes) - 1,
    )
    locale = np.minimum(
        (rng.random(n)[:, None] >= ctx.locale_cum[country]).sum(axis=1),
        ctx.locale_cum.shape[1] - 1,
    )
    first = names.first_offset[locale] + np.floor(rng.random(n) * names.first_count[locale]).astype(
        np.int64
    )
    last = names.last_offset[locale] + np.floor(rng.random(n) * names.last_count[locale]).astype(
        np.int64
    )
    romanized = names.is_cjk[locale] & (rng.random(n) < 0.15)
    email_fmt = rng.choice(EMAIL_FORMATS, size=n, p=_EMAIL_FORMAT_P).astype(np.int8)
    email_domain = rng.choice(len(EMAIL_DOMAINS), size=n, p=EMAIL_DOMAIN_WEIGHTS).astype(np.int8)
    crm_case = rng.choice(3, size=n, p=(0.86, 0.10, 0.04)).astype(np.int8)
    crm_pad = rng.random(n) < 0.04
    web_case = rng.choice(3, size=n, p=(0.93, 0.06, 0.01)).astype(np.int8)
    has_phone = rng.random(n) < 0.75
    nat_digits = ctx.national_digits[country]
    scale = 10 ** (nat_digits - 1)  # national number: a non-zero digit, then the rest
    lead = 1 + np.floor(rng.random(n) * 9).astype(np.int64)
    phone = lead * scale + np.floor(rng.random(n) * scale).astype(np.int64)

    is_prospect = ctx.is_prospect(idx)
    has_contact = ctx.has_contact(idx)

    # Pareto/NBD purchase process and Gamma-Gamma spend (drawn for everyone, used for buyers)
    lam = rng.gamma(cfg.purchase_rate_shape, cfg.purchase_rate_mean / cfg.purchase_rate_shape, n)
    mu = rng.gamma(cfg.dropout_rate_shape, cfg.dropout_rate_mean / cfg.dropout_rate_shape, n)
    lifetime_years = np.minimum(rng.exponential(1.0, n) / mu, 200.0)
    bg_repeats = np.zeros(n, dtype=np.int64)
    if cfg.purchase_process == "bgnbd":  # extra draws only in this regime: the default is kept
        lam, lifetime_years, bg_repeats = _bgnbd_process(rng, n, cfg.bgnbd_params)
    same_day = rng.random(n) < cfg.same_day_first_order
    delay = np.where(
        same_day,
        2400 + rng.exponential(3 * 3600, n),
        2400 + rng.exponential(cfg.first_order_days * SECONDS_PER_DAY, n),
    )
    first_t = acq_t + delay.astype(np.int64)
    dropout_t = first_t + np.maximum((lifetime_years * SECONDS_PER_YEAR).astype(np.int64), 1)
    gamma_rate = cfg.order_value_mean * (cfg.order_value_q - 1) / cfg.order_value_p
    nu = rng.gamma(cfg.order_value_q, 1.0 / gamma_rate, n)
    mean_value = cfg.order_value_p / nu
    eur = ctx.eurozone[country] & (rng.random(n) < cfg.eur_share)

    # web behaviour
    u_browse = rng.random(n)
    browses = np.where(
        is_prospect, u_browse < cfg.prospect_browse_share, u_browse < cfg.browse_share
    )
    after = browses & ~is_prospect & (rng.random(n) < cfg.browse_after_dropout_share)
    devices = np.where(rng.random(n) < 0.35, 2, 1).astype(np.int8)
    dev_hi, dev_lo = random_uuid_halves(rng, 2 * n)
    spo = cfg.sessions_per_order * rng.lognormal(-0.18, 0.6, n)
    prospect_rate = rng.gamma(2.0, 1.5, n)  # sessions per year right after acquisition
    prospect_decay = rng.uniform(60, 240, n) * SECONDS_PER_DAY
    signup = np.where(
        is_prospect, browses & (rng.random(n) < cfg.prospect_signup_share), has_contact & browses
    )
    n_anon = rng.poisson(cfg.anonymous_visitors_per_person, n)

    # CRM facts
    opt_in = rng.random(n) < cfg.opt_in_rate
    u_optout = rng.random(n)
    churned = ~is_prospect & (dropout_t < cal.end_ts)
    optout_t = np.where(
        u_optout < 0.07,
        acq_t + (rng.random(n) * (cal.end_ts - acq_t)).astype(np.int64),
        dropout_t + rng.exponential(45 * SECONDS_PER_DAY, n).astype(np.int64),
    )
    opts_out = opt_in & has_contact & ((u_optout < 0.07) | ((u_optout < 0.25) & churned))
    optout_t = np.where(opts_out & (optout_t < cal.end_ts), optout_t, -1)
    edit_t = np.where(
        rng.random(n) < 0.25, acq_t + (rng.random(n) * (cal.end_ts - acq_t)).astype(np.int64), -1
    )
    crm_channel_missing = rng.random(n) < 0.03
    mql = rng.random(n) < 0.10
    stage_lag = rng.uniform(3600, SECONDS_PER_DAY, n).astype(np.int64)

    # referral: the CRM id of an earlier contact, preferably a buyer
    cands = np.floor(rng.random((n, _REFERRER_CANDIDATES)) * idx[:, None]).astype(np.int64)
    flat = cands.ravel()
    ok = ctx.has_contact(flat).reshape(cands.shape) & (cands < idx[:, None])
    best = ok & ~ctx.is_prospect(flat).reshape(cands.shape)
    col = np.where(best.any(axis=1), best.argmax(axis=1), ok.argmax(axis=1))
    found = ok[np.arange(n), col]
    referrer = cands[np.arange(n), col]
    is_referral = (channel == CHANNEL_INDEX["referral"]) & has_contact & found
    referred_by = np.where(is_referral, ctx.crm_id(referrer), -1)

    return {
        "idx": idx,
        "acq_t": acq_t,
        "channel": channel,
        "country": country.astype(np.int8),
        "locale": locale.astype(np.int8),
        "first": first,
        "last": last,
        "romanized": romanized,
        "email_fmt": email_fmt,
        "email_domain": email_domain,
        "email_num": permute(idx, ctx.email_digits, ctx.key_email),
        "crm_case": crm_case,
        "crm_pad": crm_pad,
        "web_case": web_case,
        "has_phone": has_phone,
        "phone": phone,
        "is_prospect": is_prospect,
        "has_contact": has_contact,
        "crm_id": ctx.crm_id(idx),
        "account": permute(idx, ctx.account_digits, ctx.key_account),
        "lam": np.where(is_prospect, 0.0, lam),
        "bg_repeats": bg_repeats,
        "first_t": np.where(is_prospect, -1, first_t),
        "dropout_t": np.where(is_prospect, -1, dropout_t),
        "mean_value": np.where(is_prospect, 0.0, mean_value),
        "eur": eur,
        "browses": browses,
        "after": after,
        "devices": devices,
        "dev_hi": dev_hi.reshape(n, 2),
        "dev_lo": dev_lo.reshape(n, 2),
        "spo": spo,
        "prospect_rate": prospect_rate,
        "prospect_decay": prospect_decay,
        "signup": signup,
        "n_anon": n_anon,
        "opt_in": opt_in,
        "optout_t": optout_t,
        "edit_t": edit_t,
        "crm_channel_missing": crm_channel_missing,
        "mql": mql,
        "stage_lag": stage_lag,
        "referred_by": referred_by,
    }


def _bgnbd_process(
    rng: np.random.Generator, n: int, params: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (rate per year, years to the drop-out, repeat orders made) of BG/NBD buyers.

    Rate ~ Gamma(r, alpha) per week; after each repeat order the buyer drops out with
    probability p ~ Beta(a, b), so they make K ~ Geometric(p) repeat orders at most and drop
    out at the K-th, which comes Gamma(K, rate) after the first order (Fader, Hardie & Lee
    2005). Orders place the repeats (ml/orders.py): K - 1 uniform before the drop-out and
    one at it, or, when the K-th falls after the world's end, a Poisson count truncated
    below K.
    """
    r, alpha, a, b = params
    rate = rng.gamma(r, 1.0 / alpha, n) * (365.25 / 7.0)
    p = np.clip(rng.beta(a, b, n), 1e-9, 1.0)
    k = rng.geometric(p, n).astype(np.int64)
    years = rng.gamma(k.astype(float), 1.0, n) / np.maximum(rate, 1e-12)
    return rate, np.minimum(years, 200.0), k
