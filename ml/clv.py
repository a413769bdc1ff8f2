"""Customer lifetime value: BG/NBD (alive, purchases) and Gamma-Gamma (order value) by MLE.

The models are the standard ones of Fader, Hardie & Lee: "Counting your customers the easy
way: an alternative to the Pareto/NBD model" (Marketing Science, 2005) for the BG/NBD
purchase process, and "RFM and CLV: using iso-value curves for customer base analysis"
(Journal of Marketing Research, 2005) for the Gamma-Gamma spend model. Both are fitted by
maximum likelihood with ``scipy.optimize.minimize`` on log-parameters (L-BFGS-B with
analytic gradients, a Nelder-Mead fallback, and a vanishing gradient required of the
result), the log-likelihoods written with ``gammaln``/``betaln`` and log-sum-exp so that
they stay finite for customers with hundreds of orders. Optionally (``modified=True``,
``CLVModel(process="mbgnbd")``) the modified BG/NBD of Batislam, Denizel & Filiztekin
(2007), where a customer may also drop out right after the first purchase.

They are hand-written on purpose: ``lifetimes`` is unmaintained and pins old pandas/numpy
(it cannot be installed next to pandas 3), and ``pymc-marketing`` brings a whole Bayesian
stack (PyMC, PyTensor, a C compiler at run time) for what is a four-parameter MLE here.

Conventions (those of ``lifetimes``):

* **Time unit.** Every public function takes and returns *days*. Internally the BG/NBD works
  in weeks (``TIME_UNIT_DAYS = 7``) so that ``alpha`` stays in a well-conditioned range;
  ``BetaGeoParams.alpha`` is therefore in weeks (``r``, ``a``, ``b`` have no unit).
* **RFM summary as of a date D.** Orders dated on or before D count (``order_date <= D``:
  the daily load of D makes D's orders visible, and churn labels look at ``(D, D + h]``).
  Orders are aggregated per calendar day; ``frequency`` is the number of days with an order
  after the first such day (repeat purchase days), ``recency`` the days from the first to the
  last purchase day (0 for one-day customers), ``T`` the days from the first purchase day to D,
  ``monetary_value`` the mean amount of the repeat purchase days (0 when there are none).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

log = logging.getLogger(__name__)

#: Days per internal time unit of the BG/NBD (weeks).
TIME_UNIT_DAYS = 7.0
#: Bounds of the log-parameters during optimisation: e^-15..e^15 covers every real fit; a
#: parameter that ends on a bound means the data cannot identify it (degenerate input).
_LOG_BOUND = 15.0
#: Objective value standing for a non-finite log-likelihood (keeps the optimiser away).
_NOT_FINITE = 1e300
#: Largest gradient component (of the mean log-likelihood per customer, in log-parameters)
#: a fit may end with: beyond it the search stalled rather than converged.
_GRADIENT_TOL = 1e-3
#: Gamma-Gamma's q beyond which the fit is the no-spend-heterogeneity limit (see the fit).
_NO_SPEND_HETEROGENEITY_Q = 1e4
#: Purchase processes CLVModel knows: BG/NBD and the modified BG/NBD.
PROCESSES = ("bgnbd", "mbgnbd")
#: Columns ``CLVModel.predict`` returns, in order.
PREDICTION_COLUMNS = ("p_alive", "expected_purchases_12m", "expected_order_value", "clv_12m")

ArrayLike = Any  # numpy arrays, pandas Series or scalars


class CLVFitError(RuntimeError):
    """A CLV model could not be fitted: which fit and why (data, convergence, parameters)."""


@dataclass(frozen=True)
class BetaGeoParams:
    """BG/NBD parameters: purchase rate ~ Gamma(r, alpha), alpha in weeks; drop-out ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class GammaGammaParams:
    """Gamma-Gamma parameters: order value ~ Gamma(p, nu), nu ~ Gamma(q, v) (v in money)."""

    p: float
    q: float
    v: float


# --------------------------------------------------------------------------- RFM summary


def rfm_summary(
    orders: pd.DataFrame,
    as_of: date,
    *,
    customer_col: str = "customer_key",
    date_col: str = "order_date",
    value_col: str = "amount",
) -> pd.DataFrame:
    """Return one row per customer with an order on or before `as_of`: frequency, recency, T
    (days), monetary_value; indexed by `customer_col`, sorted."""
    missing = [c for c in (customer_col, date_col, value_col) if c not in orders.columns]
    if missing:
        raise ValueError(
            f"rfm_summary: orders lack column(s) {missing}; they have {list(orders.columns)}"
        )
    frame = orders[[customer_col, date_col, value_col]]
    if frame[customer_col].isna().any():
        raise ValueError(
            f"rfm_summary: {int(frame[customer_col].isna().sum())} order(s) have no {customer_col}"
        )
    days = pd.to_datetime(frame[date_col], errors="coerce")
    if getattr(days.dt, "tz", None) is not None:
        days = days.dt.tz_convert("UTC").dt.tz_localize(None)
    bad_dates = days.isna()
    if bad_dates.any():
        raise ValueError(
            f"rfm_summary: {int(bad_dates.sum())} order(s) have a missing or unparseable "
            f"{date_col}, e.g. {frame.loc[bad_dates, date_col].iloc[0]!r}"
        )
    amounts = pd.to_numeric(frame[value_col], errors="coerce").astype("float64")
    bad_amounts = ~np.isfinite(amounts.to_numpy()) | (amounts.to_numpy() < 0)
    if bad_amounts.any():
        raise ValueError(
            f"rfm_summary: {int(bad_amounts.sum())} order(s) have a missing, non-numeric or "
            f"negative {value_col}, e.g. {frame.loc[bad_amounts, value_col].iloc[0]!r}; pass "
            "completed orders with their (non-negative) amounts"
        )
    as_of_ts = pd.Timestamp(as_of).normalize()
    day = days.dt.floor("D")
    keep = (day <= as_of_ts).to_numpy()
    daily = (
        pd.DataFrame({"customer": frame[customer_col].to_numpy()[keep], "day": day[keep]})
        .assign(amount=amounts.to_numpy()[keep])
        .groupby(["customer", "day"], sort=True)["amount"]
        .sum()
        .reset_index()
    )
    if daily.empty:
        out = pd.DataFrame(
            {
                "frequency": pd.Series(dtype="int64"),
                "recency": pd.Series(dtype="float64"),
                "T": pd.Series(dtype="float64"),
                "monetary_value": pd.Series(dtype="float64"),
            }
        )
        out.index.name = customer_col
        return out
    grouped = daily.groupby("customer", sort=True)
    first = grouped["day"].min()
    last = grouped["day"].max()
    n_days = grouped["day"].size()
    total = grouped["amount"].sum()
    first_amount = grouped["amount"].first()  # rows are sorted by day within a customer
    frequency = (n_days - 1).astype("int64")
    repeat_total = total - first_amount
    monetary = np.where(frequency > 0, repeat_total / frequency.clip(lower=1), 0.0)
    out = pd.DataFrame(
        {
            "frequency": frequency,
            "recency": (last - first).dt.days.astype("float64"),
            "T": (as_of_ts - first).dt.days.astype("float64"),
            "monetary_value": np.asarray(monetary, dtype="float64"),
        }
    )
    out.index.name = customer_col
    return out


def _as_float(name: str, values: ArrayLike) -> np.ndarray:
    """Return `values` as a 1-D float array, or raise ValueError naming the bad input."""
    arr = np.atleast_1d(np.asarray(values, dtype="float64"))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} missing/infinite value(s)")
    return arr


def _check_rft(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[np.ndarray, ...]:
    """Return frequency, recency (weeks), T (weeks) as arrays after checking their consistency."""
    x = _as_float("frequency", frequency)
    tx = _as_float("recency", recency)
    t_obs = _as_float("T", T)
    if not (len(x) == len(tx) == len(t_obs)):
        raise ValueError(
            f"frequency, recency and T differ in length ({len(x)}, {len(tx)}, {len(t_obs)})"
        )
    problems = []
    if (x < 0).any() or (x != np.round(x)).any():
        problems.append("frequency must be a non-negative whole number")
    if (tx < 0).any():
        problems.append("recency must be >= 0")
    if (tx > t_obs + 1e-9).any():
        problems.append(f"recency > T for {int((tx > t_obs + 1e-9).sum())} customer(s)")
    if ((x == 0) & (tx != 0)).any():
        problems.append("recency must be 0 where frequency is 0")
    if problems:
        raise ValueError("invalid RFM input: " + "; ".join(problems))
    return x, tx / TIME_UNIT_DAYS, t_obs / TIME_UNIT_DAYS


# --------------------------------------------------------------------------- BG/NBD


def bgnbd_log_likelihood(
    params: BetaGeoParams,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    modified: bool = False,
) -> np.ndarray:
    """Return each customer's BG/NBD (or MBG/NBD) log-likelihood (days in, alpha in weeks)."""
    x, tx, t_obs = _check_rft(frequency, recency, T)
    log_params = np.log([params.r, params.alpha, params.a, params.b])
    return _bgnbd_ll_and_grad(log_params, x, tx, t_obs, modified)[0]


def _bgnbd_ll_and_grad(
    log_params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray, modified: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-customer BG/NBD log-likelihoods and their gradient (n x 4) with respect to
    the log-parameters (times in weeks); analytic, so L-BFGS-B needs no finite differences.

    ``modified`` gives the MBG/NBD (Batislam, Denizel & Filiztekin 2007), where a customer
    may also drop out right after the first purchase: ``b + x`` becomes ``b + x + 1`` in the
    alive term and the drop-out term applies to one-order customers too.
    """
    r, alpha, a, b = np.exp(log_params)
    m = 1.0 if modified else 0.0
    psi = special.digamma
    beta_ab = special.betaln(a, b)
    log_at = np.log(alpha + T)
    log_atx = np.log(alpha + tx)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.betaln(a, b + x + m) - beta_ab - (r + x) * log_at
    dies = (x > 0) | modified  # customers for whom the "dropped out at t_x" term exists
    xd = x[dies]
    a3 = np.full_like(x, -np.inf)
    a3[dies] = special.betaln(a + 1, b + xd - 1 + m) - beta_ab - (r + xd) * log_atx[dies]
    lse = np.logaddexp(a2, a3)
    w2 = np.exp(a2 - lse)  # the share of each term in the likelihood
    w3 = np.exp(a3 - lse)
    d_r = psi(r + x) - psi(r) + np.log(alpha) - w2 * log_at - w3 * log_atx
    d_alpha = r / alpha - w2 * (r + x) / (alpha + T) - w3 * (r + x) / (alpha + tx)
    common = psi(a + b) - psi(a + b + x + m)  # shared part of the betaln derivatives
    da2 = common
    db2 = psi(b + x + m) - psi(b) + common
    da3 = np.zeros_like(x)
    db3 = np.zeros_like(x)
    da3[dies] = psi(a + 1) - psi(a) + common[dies]
    db3[dies] = psi(b + xd - 1 + m) - psi(b) + common[dies]
    d_a = w2 * da2 + w3 * da3
    d_b = w2 * db2 + w3 * db3
    grad = np.column_stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    return a1 + lse, grad


def _compress(*columns: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return counts and the unique rows of the given columns (the likelihood only needs those)."""
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return counts.astype("float64"), [unique[:, i] for i in range(unique.shape[1])]


def _penalised(
    ll: np.ndarray, grad: np.ndarray, weights: np.ndarray, log_params: np.ndarray, penalizer: float
) -> tuple[float, np.ndarray]:
    """Return the weighted mean negative log-likelihood plus ``penalizer * sum(param**2)``
    and its gradient in the log-parameters (a huge value and zero gradient if not finite)."""
    total = weights.sum()
    value = -float(np.dot(weights, ll)) / total
    gradient = -(weights @ grad) / total
    if penalizer:
        params = np.exp(log_params)
        value += penalizer * float(np.sum(params**2))
        gradient = gradient + 2 * penalizer * params**2
    if not (np.isfinite(value) and np.all(np.isfinite(gradient))):
        return _NOT_FINITE, np.zeros_like(log_params)
    return value, gradient


def _minimize(
    fun_and_grad: Any,
    x0: np.ndarray,
    what: str,
    names: tuple[str, ...],
    limit_ok: tuple[str, ...] = (),
) -> optimize.OptimizeResult:
    """Return the optimum of `fun_and_grad` (value, gradient) over bounded log-parameters,
    or raise CLVFitError. The parameters of `limit_ok` alone may end on the upper bound:
    the caller knows the limit there is a model of its own (and says so)."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(x0)

    def objective(params: np.ndarray) -> float:
        return fun_and_grad(params)[0]

    def converged(result: optimize.OptimizeResult) -> bool:
        """Return whether `result` is a finite point where the gradient vanishes (or points
        out of the search box on a bound): a real optimum, not a stalled search. The
        optimiser's own flag is not asked: on a flat ridge (Gamma-Gamma with spend alike
        across customers) L-BFGS-B ends "ABNORMAL" and Nelder-Mead runs out of iterations at
        a point whose gradient is zero all the same."""
        if not (np.isfinite(result.fun) and np.all(np.isfinite(result.x))):
            return False
        grad = np.asarray(fun_and_grad(result.x)[1])
        free = np.abs(result.x) < _LOG_BOUND - 1e-3
        return bool(np.all(np.abs(grad[free]) <= _GRADIENT_TOL))

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = optimize.minimize(fun_and_grad, x0, jac=True, method="L-BFGS-B", bounds=bounds)
        if not converged(res):
            # L-BFGS-B can stop on a line-search failure near a flat optimum: polish with
            # the derivative-free Nelder-Mead from where it stopped (or from x0 if it diverged).
            start = res.x if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) else x0
            nm = optimize.minimize(
                objective,
                start,
                method="Nelder-Mead",
                bounds=bounds,
                options={"maxiter": 4000, "xatol": 1e-8, "fatol": 1e-12},
            )
            if converged(nm):
                res = nm
            else:
                raise CLVFitError(
                    f"{what} fit did not converge (L-BFGS-B: {res.message}; Nelder-Mead: "
                    f"{nm.message}; gradient {np.round(fun_and_grad(nm.x)[1], 6).tolist()}); "
                    "check the input for outliers or too little data"
                )
    if not np.all(np.isfinite(res.x)):
        raise CLVFitError(f"{what} fit returned non-finite parameters {res.x}")
    if res.fun >= _NOT_FINITE:
        raise CLVFitError(
            f"{what} fit: the log-likelihood is not finite at any parameters tried; "
            "check the input for extreme values"
        )
    at_bound = [n for n, v in zip(names, res.x, strict=True) if abs(v) >= _LOG_BOUND - 1e-3]
    at_limit = [n for n, v in zip(names, res.x, strict=True) if v >= _LOG_BOUND - 1e-3]
    if at_bound and not (at_bound == at_limit and set(at_bound) <= set(limit_ok)):
        values = ", ".join(f"{n}={math.exp(v):.3g}" for n, v in zip(names, res.x, strict=True))
        raise CLVFitError(
            f"{what} fit is degenerate: parameter(s) {at_bound} ran to the edge of the "
            f"search space ({values}); the data cannot identify them (too few repeat "
            "purchases, or all customers alike)"
        )
    return res


def fit_bgnbd(
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    penalizer: float = 0.0,
    min_repeat_buyers: int = 10,
    modified: bool = False,
) -> BetaGeoParams:
    """Return the maximum-likelihood BG/NBD parameters for RFM data in days (alpha in weeks).

    `penalizer` adds ``penalizer * sum(param**2)`` to the mean negative log-likelihood (as in
    ``lifetimes``); `modified` fits the MBG/NBD variant instead. Raises CLVFitError on empty
    data, fewer than `min_repeat_buyers` repeat buyers, non-convergence or a degenerate
    optimum.
    """
    what = "MBG/NBD" if modified else "BG/NBD"
    x, tx, t_obs = _check_rft(frequency, recency, T)
    if len(x) == 0:
        raise CLVFitError(f"{what} fit: no customers (empty RFM summary)")
    n_repeat = int((x > 0).sum())
    if n_repeat < min_repeat_buyers:
        raise CLVFitError(
            f"{what} fit: only {n_repeat} of {len(x)} customers bought more than once "
            f"(need at least {min_repeat_buyers}); the drop-out process cannot be estimated"
        )
    if (t_obs <= 0).all():
        raise CLVFitError(f"{what} fit: every customer has T = 0 (all first orders on as_of)")
    if penalizer < 0:
        raise ValueError(f"penalizer must be >= 0, got {penalizer}")
    weights, (xu, txu, tu) = _compress(x, tx, t_obs)

    def objective(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        ll, grad = _bgnbd_ll_and_grad(log_params, xu, txu, tu, modified)
        return _penalised(ll, grad, weights, log_params, penalizer)

    # Start at r = a = b = 1 and alpha = mean T (a customer buying about once per period).
    x0 = np.array([0.0, math.log(max(float(t_obs.mean()), 1e-3)), 0.0, 0.0])
    res = _minimize(objective, x0, what, ("r", "alpha", "a", "b"))
    r, alpha, a, b = (float(v) for v in np.exp(res.x))
    return BetaGeoParams(r=r, alpha=alpha, a=a, b=b)


def bgnbd_p_alive(
    params: BetaGeoParams,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    modified: bool = False,
) -> np.ndarray:
    """Return each customer's probability of still being alive at T (BG/NBD: 1 when
    frequency is 0; MBG/NBD: below 1 for them too)."""
    x, tx, t_obs = _check_rft(frequency, recency, T)
    return _p_alive(params, x, tx, t_obs, modified)


def _p_alive(
    params: BetaGeoParams, x: np.ndarray, tx: np.ndarray, T: np.ndarray, modified: bool = False
) -> np.ndarray:
    """Return P(alive) for times in weeks: 1 / (1 + a/(b+x-1+m) ((alpha+T)/(alpha+tx))^(r+x)),
    m = 1 for MBG/NBD; BG/NBD customers without a repeat purchase are alive for sure."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    m = 1.0 if modified else 0.0
    out = np.ones_like(x)
    dies = (x > 0) | modified
    xd = x[dies]
    log_odds_dead = (
        math.log(a)
        - np.log(b + xd - 1 + m)
        + (r + xd) * (np.log(alpha + T[dies]) - np.log(alpha + tx[dies]))
    )
    out[dies] = special.expit(-log_odds_dead)
    return out


def bgnbd_expected_purchases(
    params: BetaGeoParams,
    t: float,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    modified: bool = False,
) -> np.ndarray:
    """Return each customer's expected number of purchases in (T, T + t], t in days."""
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"horizon t must be a finite number of days >= 0, got {t}")
    x, tx, t_obs = _check_rft(frequency, recency, T)
    return _expected_purchases(params, float(t) / TIME_UNIT_DAYS, x, tx, t_obs, modified)


def _expected_purchases(
    params: BetaGeoParams,
    t: float,
    x: np.ndarray,
    tx: np.ndarray,
    T: np.ndarray,
    modified: bool = False,
) -> np.ndarray:
    """Return conditional expected purchases in (T, T+t] for times in weeks (FHL 2005, eq. 10)."""
    if t == 0 or len(x) == 0:
        return np.zeros_like(x)
    a = params.a
    if abs(a - 1.0) < 1e-4:
        # The closed form is 0/0 at a = 1; it is smooth in a, so average both sides.
        lo = _expected_purchases_closed(params, 1.0 - 1e-4, t, x, tx, T, modified)
        hi = _expected_purchases_closed(params, 1.0 + 1e-4, t, x, tx, T, modified)
        out = 0.5 * (lo + hi)
    else:
        out = _expected_purchases_closed(params, a, t, x, tx, T, modified)
    bad = ~np.isfinite(out) | (out < 0)
    if bad.any():
        out[bad] = _expected_purchases_quadrature(params, t, x[bad], tx[bad], T[bad], modified)
    return out


def _expected_purchases_closed(
    params: BetaGeoParams,
    a: float,
    t: float,
    x: np.ndarray,
    tx: np.ndarray,
    T: np.ndarray,
    modified: bool = False,
) -> np.ndarray:
    """Return the hypergeometric closed form of expected purchases (weeks), Euler-transformed.

    ``((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x+m; a+b+x-1+m; z)`` (m = 1 for MBG/NBD) is
    rewritten with Euler's transformation as ``(1-z)^(a-1) 2F1(a+b-1+m-r, a-1; a+b+x-1+m;
    z)``, whose first two arguments do not grow with x: it stays accurate for customers with
    many orders.
    """
    r, alpha = params.r, params.alpha
    b = params.b + (1.0 if modified else 0.0)  # MBG/NBD: b + x + 1 wherever BG/NBD has b + x
    with np.errstate(all="ignore"):
        z = t / (alpha + T + t)
        log_one_minus_z = np.log(alpha + T) - np.log(alpha + T + t)
        hyp = special.hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, z)
        # 1 - (1-z)^(a-1) * hyp, with expm1 for accuracy when the product is close to 1.
        bracket = np.where(
            hyp > 0,
            -np.expm1((a - 1) * log_one_minus_z + np.log(np.abs(hyp))),
            1.0 - np.exp((a - 1) * log_one_minus_z) * hyp,
        )
        unconditional = (a + b + x - 1) / (a - 1) * bracket
    return unconditional * _p_alive(params, x, tx, T, modified)


def _expected_purchases_quadrature(
    params: BetaGeoParams,
    t: float,
    x: np.ndarray,
    tx: np.ndarray,
    T: np.ndarray,
    modified: bool = False,
) -> np.ndarray:
    """Return expected purchases (weeks) by Gauss-Jacobi quadrature over the drop-out p.

    Given alive at T, lambda | data ~ Gamma(r+x, alpha+T) and p | data ~ Beta(a, b+x), and an
    alive customer's expected purchases in t are ``(1 - exp(-lambda p t)) / p``; averaging over
    lambda gives ``(1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p``, a smooth function of p.
    Used where the hypergeometric closed form is not finite. (MBG/NBD: Beta(a, b+x+1).)
    """
    r, alpha, a = params.r, params.alpha, params.a
    b = params.b + (1.0 if modified else 0.0)
    out = np.empty_like(x)
    for xv in np.unique(x):
        idx = x == xv
        # Jacobi weight (1-u)^al (1+u)^be on [-1,1] with p = (1+u)/2 ~ Beta(a, b+x).
        with np.errstate(all="ignore"):
            nodes, w = special.roots_jacobi(64, b + xv - 1, a - 1)
            p = (1 + nodes) / 2
            w = w / w.sum()
        if not (np.isfinite(p).all() and np.isfinite(w).all()):
            # Very large a and b (a fit whose drop-out p is nearly a constant) overflow the
            # Jacobi nodes: average over 256 equal-probability quantiles of the Beta instead.
            p = stats.beta.ppf((np.arange(256) + 0.5) / 256, a, b + xv)
            w = np.full(256, 1 / 256)
        base = alpha + T[idx][:, None]
        g = -np.expm1((r + xv) * (np.log(base) - np.log(base + p[None, :] * t))) / p[None, :]
        out[idx] = g @ w
    return out * _p_alive(params, x, tx, T, modified)


# --------------------------------------------------------------------------- Gamma-Gamma


def gamma_gamma_log_likelihood(
    params: GammaGammaParams, frequency: ArrayLike, monetary_value: ArrayLike
) -> np.ndarray:
    """Return each repeat buyer's Gamma-Gamma log-likelihood of their mean order value."""
    x = _as_float("frequency", frequency)
    m = _as_float("monetary_value", monetary_value)
    if ((x <= 0) | (m <= 0)).any():
        raise ValueError("Gamma-Gamma likelihood needs frequency > 0 and monetary_value > 0")
    return _gg_ll(np.log([params.p, params.q, params.v]), x, m)


def _gg_ll(log_params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Return per-customer Gamma-Gamma log-likelihoods of mean spend m over x orders."""
    p, q, v = np.exp(log_params)
    px = p * x
    return (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(v + x * m)
    )


def _gg_ll_and_grad(
    log_params: np.ndarray, x: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-customer Gamma-Gamma log-likelihoods and their gradient (n x 3) with
    respect to the log-parameters."""
    p, q, v = np.exp(log_params)
    px = p * x
    log_vxm = np.log(v + x * m)
    psi_pxq = special.digamma(px + q)
    d_p = x * (psi_pxq - special.digamma(px) + np.log(m) + np.log(x) - log_vxm)
    d_q = psi_pxq - special.digamma(q) + np.log(v) - log_vxm
    d_v = q / v - (px + q) / (v + x * m)
    return _gg_ll(log_params, x, m), np.column_stack([d_p * p, d_q * q, d_v * v])


def fit_gamma_gamma(
    frequency: ArrayLike,
    monetary_value: ArrayLike,
    *,
    penalizer: float = 0.0,
    min_repeat_buyers: int = 10,
) -> GammaGammaParams:
    """Return the maximum-likelihood Gamma-Gamma parameters, fitted on repeat buyers only.

    Customers with frequency 0 (or a repeat spend of 0) carry no information about spend
    variation and are left out; raises CLVFitError on too few repeat buyers, non-convergence,
    a degenerate optimum, or q <= 1 (the mean order value would be infinite).
    """
    x = _as_float("frequency", frequency)
    m = _as_float("monetary_value", monetary_value)
    if len(x) != len(m):
        raise ValueError(f"frequency and monetary_value differ in length ({len(x)}, {len(m)})")
    if (m < 0).any():
        raise ValueError(f"monetary_value has {int((m < 0).sum())} negative value(s)")
    use = (x > 0) & (m > 0)
    n_repeat = int(use.sum())
    if n_repeat < min_repeat_buyers:
        raise CLVFitError(
            f"Gamma-Gamma fit: only {n_repeat} of {len(x)} customers are repeat buyers with a "
            f"positive repeat spend (need at least {min_repeat_buyers}); one-order customers "
            "say nothing about how order values vary"
        )
    weights, (xu, mu) = _compress(x[use], m[use])
    # Rescale money so the optimiser sees values near 1 (v scales with the currency unit).
    scale = float(np.median(mu))
    mu_scaled = mu / scale

    def objective(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        ll, grad = _gg_ll_and_grad(log_params, xu, mu_scaled)
        return _penalised(ll, grad, weights, log_params, penalizer)

    # q, v -> infinity together (p v / (q - 1) finite) is the limit where every customer has
    # the same mean spend: a real answer for a shop whose order values do not differ by
    # customer, in which each expected order value is the population mean. It is kept where
    # the search stopped (q or v on the bound, the other following), where the shrinkage
    # weight p x / (p x + q - 1) is already below 1e-3.
    res = _minimize(objective, np.zeros(3), "Gamma-Gamma", ("p", "q", "v"), limit_ok=("q", "v"))
    p, q, v = (float(val) for val in np.exp(res.x))
    v *= scale
    if max(res.x[1], res.x[2]) >= _LOG_BOUND - 1e-3:
        if q < _NO_SPEND_HETEROGENEITY_Q:
            raise CLVFitError(
                f"Gamma-Gamma fit is degenerate: v ran to the edge of the search space "
                f"(p={p:.3g}, q={q:.3g}, v={v:.3g}); the data cannot identify it"
            )
        log.warning(
            "Gamma-Gamma: order values do not vary by customer beyond chance (q ran to %.3g); "
            "every expected order value is the population mean %.4g",
            q,
            p * v / (q - 1),
        )
    if q <= 1:
        raise CLVFitError(
            f"Gamma-Gamma fit gave q = {q:.3g} <= 1: spend is so heavy-tailed that the mean "
            "order value is undefined; cap outlier order amounts or use a larger penalizer"
        )
    return GammaGammaParams(p=p, q=q, v=v)


def gg_expected_order_value(
    params: GammaGammaParams, frequency: ArrayLike, monetary_value: ArrayLike
) -> np.ndarray:
    """Return each customer's expected order value: the population mean p*v/(q-1) shrunk
    towards their own repeat-order mean by their number of repeat orders."""
    x = _as_float("frequency", frequency)
    m = _as_float("monetary_value", monetary_value)
    if len(x) != len(m):
        raise ValueError(f"frequency and monetary_value differ in length ({len(x)}, {len(m)})")
    if (x < 0).any() or (m < 0).any():
        raise ValueError("frequency and monetary_value must be >= 0")
    p, q, v = params.p, params.q, params.v
    m = np.where(x > 0, m, 0.0)  # one-order customers: the population mean
    return p * (v + x * m) / (p * x + q - 1)


# --------------------------------------------------------------------------- model


@dataclass
class CLVModel:
    """BG/NBD + Gamma-Gamma on an RFM summary (days); picklable, sklearn-style fit/predict.

    ``process`` is ``"bgnbd"`` (default) or ``"mbgnbd"`` (the modified BG/NBD, whose
    one-order customers can be dead too; the parameters keep the BetaGeoParams names)."""

    penalizer: float = 0.0
    gg_penalizer: float = 0.0
    horizon_days: int = 365
    annual_discount_rate: float = 0.0
    min_repeat_buyers: int = 10
    bgnbd: BetaGeoParams | None = None
    gamma_gamma: GammaGammaParams | None = None
    n_customers: int = 0
    n_repeat_buyers: int = 0
    bgnbd_log_likelihood: float = float("nan")
    gamma_gamma_log_likelihood: float = float("nan")
    process: str = "bgnbd"

    def __post_init__(self) -> None:
        """Check the process name; raise ValueError if unknown."""
        if self.process not in PROCESSES:
            raise ValueError(f"CLV process must be one of {PROCESSES}, not {self.process!r}")

    @property
    def modified(self) -> bool:
        """Return whether the purchase process is the modified BG/NBD."""
        return self.process == "mbgnbd"

    def fit(self, summary: pd.DataFrame) -> CLVModel:
        """Return self after fitting BG/NBD on all customers and Gamma-Gamma on repeat buyers."""
        f, rec, t_obs, m = _rfm_columns(summary)
        self.bgnbd = fit_bgnbd(
            f,
            rec,
            t_obs,
            penalizer=self.penalizer,
            min_repeat_buyers=self.min_repeat_buyers,
            modified=self.modified,
        )
        self.gamma_gamma = fit_gamma_gamma(
            f, m, penalizer=self.gg_penalizer, min_repeat_buyers=self.min_repeat_buyers
        )
        self.n_customers = len(summary)
        use = (f.to_numpy() > 0) & (m.to_numpy() > 0)
        self.n_repeat_buyers = int(use.sum())
        self.bgnbd_log_likelihood = float(
            bgnbd_log_likelihood(self.bgnbd, f, rec, t_obs, modified=self.modified).sum()
        )
        self.gamma_gamma_log_likelihood = float(
            gamma_gamma_log_likelihood(self.gamma_gamma, f[use], m[use]).sum()
        )
        return self

    def _fitted(self) -> tuple[BetaGeoParams, GammaGammaParams]:
        """Return both parameter sets, or raise if the model has not been fitted."""
        if self.bgnbd is None or self.gamma_gamma is None:
            raise RuntimeError("CLVModel is not fitted: call fit(summary) or from_dict() first")
        return self.bgnbd, self.gamma_gamma

    def predict(self, summary: pd.DataFrame, horizon_days: int | None = None) -> pd.DataFrame:
        """Return p_alive, expected_purchases_12m, expected_order_value, clv_12m per row of
        `summary` (same index); the purchase and CLV columns cover `horizon_days`."""
        bg, gg = self._fitted()
        horizon = self.horizon_days if horizon_days is None else horizon_days
        if horizon < 0:
            raise ValueError(f"horizon_days must be >= 0, got {horizon}")
        f, rec, t_col, m_col = _rfm_columns(summary)
        x, tx, t_obs = _check_rft(f, rec, t_col)
        m = _as_float("monetary_value", m_col)
        p_alive = _p_alive(bg, x, tx, t_obs, self.modified)
        purchases = _expected_purchases(bg, horizon / TIME_UNIT_DAYS, x, tx, t_obs, self.modified)
        value = gg_expected_order_value(gg, x, np.maximum(m, 0.0))
        clv = self._discounted_purchases(bg, horizon, x, tx, t_obs, purchases) * value
        out = pd.DataFrame(
            {
                "p_alive": np.clip(p_alive, 0.0, 1.0),
                "expected_purchases_12m": np.maximum(purchases, 0.0),
                "expected_order_value": value,
                "clv_12m": np.maximum(clv, 0.0),
            },
            index=summary.index,
        )
        finite = np.isfinite(out.to_numpy()).all(axis=1)
        if not finite.all():  # the formulas above are finite for valid input; never hide it
            raise RuntimeError(
                f"CLV prediction is not finite for {int((~finite).sum())} customer(s), e.g. "
                f"{summary[~finite].head(3).to_dict('index')}; parameters {self.to_dict()}"
            )
        return out

    def _discounted_purchases(
        self,
        bg: BetaGeoParams,
        horizon: int,
        x: np.ndarray,
        tx: np.ndarray,
        t_obs: np.ndarray,
        undiscounted: np.ndarray,
    ) -> np.ndarray:
        """Return expected purchases in the horizon, each month's discounted at the annual rate."""
        if self.annual_discount_rate == 0 or horizon == 0:
            return undiscounted
        months = max(1, round(horizon / (365.25 / 12)))
        edges = np.linspace(0.0, horizon / TIME_UNIT_DAYS, months + 1)
        monthly_rate = (1 + self.annual_discount_rate) ** (1 / 12) - 1
        total = np.zeros_like(x)
        previous = np.zeros_like(x)
        for i, edge in enumerate(edges[1:], start=1):
            cumulative = _expected_purchases(bg, float(edge), x, tx, t_obs, self.modified)
            total += (cumulative - previous) / (1 + monthly_rate) ** i
            previous = cumulative
        return total

    def to_dict(self) -> dict[str, Any]:
        """Return the settings, fitted parameters and fit facts as a JSON-able dict."""
        return {
            "process": self.process,
            "penalizer": self.penalizer,
            "gg_penalizer": self.gg_penalizer,
            "horizon_days": self.horizon_days,
            "annual_discount_rate": self.annual_discount_rate,
            "min_repeat_buyers": self.min_repeat_buyers,
            "time_unit_days": TIME_UNIT_DAYS,
            "bgnbd": asdict(self.bgnbd) if self.bgnbd else None,
            "gamma_gamma": asdict(self.gamma_gamma) if self.gamma_gamma else None,
            "n_customers": self.n_customers,
            "n_repeat_buyers": self.n_repeat_buyers,
            "bgnbd_log_likelihood": _json_float(self.bgnbd_log_likelihood),
            "gamma_gamma_log_likelihood": _json_float(self.gamma_gamma_log_likelihood),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CLVModel:
        """Return a model rebuilt from `to_dict()` output (fitted if it carries parameters)."""
        unit = float(data.get("time_unit_days", TIME_UNIT_DAYS))
        if unit != TIME_UNIT_DAYS:
            raise ValueError(
                f"CLV parameters are in units of {unit} days, expected {TIME_UNIT_DAYS}"
            )
        return cls(
            process=str(data.get("process", "bgnbd")),
            penalizer=float(data.get("penalizer", 0.0)),
            gg_penalizer=float(data.get("gg_penalizer", 0.0)),
            horizon_days=int(data.get("horizon_days", 365)),
            annual_discount_rate=float(data.get("annual_discount_rate", 0.0)),
            min_repeat_buyers=int(data.get("min_repeat_buyers", 10)),
            bgnbd=BetaGeoParams(**data["bgnbd"]) if data.get("bgnbd") else None,
            gamma_gamma=GammaGammaParams(**data["gamma_gamma"])
            if data.get("gamma_gamma")
            else None,
            n_customers=int(data.get("n_customers", 0)),
            n_repeat_buyers=int(data.get("n_repeat_buyers", 0)),
            bgnbd_log_likelihood=_float_or_nan(data.get("bgnbd_log_likelihood")),
            gamma_gamma_log_likelihood=_float_or_nan(data.get("gamma_gamma_log_likelihood")),
        )

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> CLVModel:
        """Return an unfitted model configured from a ``models/clv.yaml`` spec."""
        params = dict(spec.get("params", {}))
        known = (
            "process",
            "penalizer",
            "gg_penalizer",
            "horizon_days",
            "annual_discount_rate",
            "min_repeat_buyers",
        )
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"clv spec: unknown params {unknown}; known: {list(known)}")
        return cls(
            process=str(params.get("process", "bgnbd")),
            penalizer=float(params.get("penalizer", 0.0)),
            gg_penalizer=float(params.get("gg_penalizer", 0.0)),
            horizon_days=int(params.get("horizon_days", 365)),
            annual_discount_rate=float(params.get("annual_discount_rate", 0.0)),
            min_repeat_buyers=int(params.get("min_repeat_buyers", 10)),
        )


def _rfm_columns(frame: pd.DataFrame) -> tuple[pd.Series, ...]:
    """Return the frequency, recency, T (or ``t``) and monetary_value columns of `frame`."""
    t_name = "T" if "T" in frame.columns else "t"
    missing = [c for c in ("frequency", "recency", t_name, "monetary_value") if c not in frame]
    if missing:
        raise ValueError(
            f"RFM summary lacks column(s) {missing} (build it with rfm_summary; T may also "
            f"be called t); it has {list(frame.columns)}"
        )
    return frame["frequency"], frame["recency"], frame[t_name], frame["monetary_value"]


def _json_float(value: float) -> float | None:
    """Return `value`, or None when it is not finite (JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


def _float_or_nan(value: Any) -> float:
    """Return `value` as a float, NaN for None."""
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------- evaluation


def holdout_purchases(
    orders: pd.DataFrame,
    as_of: date,
    horizon_days: int,
    *,
    customer_col: str = "customer_key",
    date_col: str = "order_date",
) -> pd.Series:
    """Return each customer's number of purchase days in (as_of, as_of + horizon_days]
    (customers without one are absent), the actuals to compare expected purchases with."""
    missing = [c for c in (customer_col, date_col) if c not in orders.columns]
    if missing:
        raise ValueError(f"holdout_purchases: orders lack column(s) {missing}")
    days = pd.to_datetime(orders[date_col], errors="coerce")
    if getattr(days.dt, "tz", None) is not None:
        days = days.dt.tz_convert("UTC").dt.tz_localize(None)
    if days.isna().any():
        raise ValueError(
            f"holdout_purchases: {int(days.isna().sum())} order(s) have a missing or "
            f"unparseable {date_col}"
        )
    day = days.dt.floor("D")
    start = pd.Timestamp(as_of)
    inside = ((day > start) & (day <= start + pd.Timedelta(days=horizon_days))).to_numpy()
    counts = (
        pd.DataFrame({customer_col: orders[customer_col].to_numpy()[inside], "day": day[inside]})
        .drop_duplicates()
        .groupby(customer_col, sort=True)
        .size()
        .astype("int64")
    )
    return counts.rename("actual_purchases")


def evaluate_purchases(predicted: pd.Series, actual: pd.Series) -> dict[str, float]:
    """Return MAE, RMSE, relative total error and Spearman correlation of predicted vs actual
    purchases per customer (index = customer; actual missing counts as 0)."""
    if len(predicted) == 0:
        raise ValueError("evaluate_purchases: no customers to evaluate")
    pred = predicted.astype("float64")
    act = actual.reindex(pred.index).fillna(0).astype("float64")
    err = pred - act
    total_actual = float(act.sum())
    return {
        "n_customers": float(len(pred)),
        "mae_purchases": float(err.abs().mean()),
        "rmse_purchases": float(np.sqrt((err**2).mean())),
        "total_predicted": float(pred.sum()),
        "total_actual": total_actual,
        "relative_total_error": float(err.sum() / total_actual) if total_actual else float("nan"),
        "spearman": float(pred.rank().corr(act.rank())) if act.nunique() > 1 else float("nan"),
    }
