"""CLV: BG/NBD and Gamma-Gamma recover known parameters from data simulated with them.

Simulations use numpy with fixed seeds and the published CDNOW estimates as the truth
(Fader, Hardie & Lee 2005: r=0.243, alpha=4.414 weeks, a=0.793, b=2.426; Gamma-Gamma
p=6.25, q=3.74, v=15.44). Tolerances are stated where they are used.
"""

from __future__ import annotations

import json
import math
import pickle
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, special, stats

from ml.clv import (
    PREDICTION_COLUMNS,
    BetaGeoParams,
    CLVFitError,
    CLVModel,
    GammaGammaParams,
    bgnbd_expected_purchases,
    bgnbd_log_likelihood,
    bgnbd_p_alive,
    evaluate_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    gg_expected_order_value,
    holdout_purchases,
    rfm_summary,
)
from ml.specs import load_spec

CDNOW = BetaGeoParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
CDNOW_GG = GammaGammaParams(p=6.25, q=3.74, v=15.44)
#: Each fitted parameter must be within this relative error of the truth (20k customers).
PARAM_TOLERANCE = 0.15


def simulate_bgnbd(
    params: BetaGeoParams, T_days: np.ndarray, horizon_days: float, seed: int, modified=False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return frequency, recency (days) in (0, T] and the purchases in (T, T + horizon];
    `modified`: the MBG/NBD process (drop-out possible right after the first purchase too)."""
    rng = np.random.default_rng(seed)
    n = len(T_days)
    lam = rng.gamma(params.r, 1 / (params.alpha * 7), n)  # rate per day
    p = rng.beta(params.a, params.b, n)
    x = np.zeros(n)
    tx = np.zeros(n)
    future = np.zeros(n)
    for i in range(n):
        t = 0.0
        if modified and rng.random() < p[i]:
            continue  # dropped out right after the first purchase
        while True:  # after each repeat purchase the customer drops out with probability p
            t += rng.exponential(1 / lam[i])
            if t > T_days[i] + horizon_days:
                break
            if t <= T_days[i]:
                x[i] += 1
                tx[i] = t
            else:
                future[i] += 1
            if rng.random() < p[i]:
                break
    return x, tx, future


def simulate_spend(
    params: GammaGammaParams, frequency: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return each customer's mean spend over `frequency` orders, and their true mean value."""
    rng = np.random.default_rng(seed)
    nu = rng.gamma(params.q, 1 / params.v, len(frequency))
    means = np.array(
        [
            rng.gamma(params.p, 1 / nu[i], int(f)).mean() if f else 0.0
            for i, f in enumerate(frequency)
        ]
    )
    return means, params.p / nu


@pytest.fixture(scope="module")
def cdnow_like() -> dict[str, np.ndarray]:
    """20k customers from CDNOW's BG/NBD, observed 27-39 weeks, then 39 weeks of holdout."""
    T = np.random.default_rng(1).uniform(27 * 7, 39 * 7, 20_000)
    x, tx, future = simulate_bgnbd(CDNOW, T, 39 * 7, seed=2)
    return {"frequency": x, "recency": tx, "T": T, "future": future}


@pytest.fixture(scope="module")
def cdnow_fit(cdnow_like: dict[str, np.ndarray]) -> BetaGeoParams:
    return fit_bgnbd(cdnow_like["frequency"], cdnow_like["recency"], cdnow_like["T"])


def test_bgnbd_recovers_simulated_parameters(cdnow_fit: BetaGeoParams) -> None:
    for name in ("r", "alpha", "a", "b"):
        truth, fitted = getattr(CDNOW, name), getattr(cdnow_fit, name)
        assert abs(fitted / truth - 1) < PARAM_TOLERANCE, (name, fitted, truth)


def test_bgnbd_fit_is_deterministic(cdnow_like: dict[str, np.ndarray], cdnow_fit) -> None:
    again = fit_bgnbd(cdnow_like["frequency"], cdnow_like["recency"], cdnow_like["T"])
    assert again == cdnow_fit


def test_bgnbd_expected_purchases_match_the_holdout(cdnow_like, cdnow_fit) -> None:
    """Predicted purchases in the 39-week holdout: total within 3 %, and per frequency group
    (0, 1, 2, 3-5, 6+) within 10 % of what the simulated customers actually did."""
    d = cdnow_like
    predicted = bgnbd_expected_purchases(cdnow_fit, 39 * 7, d["frequency"], d["recency"], d["T"])
    assert abs(predicted.sum() / d["future"].sum() - 1) < 0.03
    groups = np.digitize(d["frequency"], [1, 2, 3, 6])
    for g in range(5):
        sel = groups == g
        ratio = predicted[sel].sum() / d["future"][sel].sum()
        assert abs(ratio - 1) < 0.10, (g, ratio)


def test_mbgnbd_recovers_simulated_parameters_and_the_holdout() -> None:
    """The modified BG/NBD (drop-out possible right after the first purchase): 20k
    simulated customers, parameters within 15 %, holdout purchases within 3 % in total."""
    T = np.random.default_rng(21).uniform(27 * 7, 39 * 7, 20_000)
    x, tx, future = simulate_bgnbd(CDNOW, T, 39 * 7, seed=22, modified=True)
    fitted = fit_bgnbd(x, tx, T, modified=True)
    for name in ("r", "alpha", "a", "b"):
        truth, got = getattr(CDNOW, name), getattr(fitted, name)
        assert abs(got / truth - 1) < PARAM_TOLERANCE, (name, got, truth)
    predicted = bgnbd_expected_purchases(fitted, 39 * 7, x, tx, T, modified=True)
    assert abs(predicted.sum() / future.sum() - 1) < 0.03
    # one-order customers can be dead: the longer since their only order, the less alive
    alive = bgnbd_p_alive(fitted, [0, 0, 0], [0, 0, 0], [7, 70, 700], modified=True)
    assert (alive < 1).all() and (np.diff(alive) < 0).all()


def test_published_cdnow_conditional_expectation() -> None:
    """FHL (2005) §4: with the CDNOW estimates, a customer with x=2, t_x=30.43, T=38.86
    weeks is expected to make 1.226 purchases in the next 39 weeks."""
    got = bgnbd_expected_purchases(CDNOW, 39 * 7, [2], [30.43 * 7], [38.86 * 7])
    assert got[0] == pytest.approx(1.226, abs=5e-4)


def _individual_bgnbd_likelihood(
    lam: float, p: float, x: int, tx: float, T: float, modified: bool
) -> float:
    """Likelihood of (x, t_x, T) for one customer with known rate and drop-out (weeks)."""
    if modified:  # one more chance to drop out: right after the first purchase
        return (1 - p) ** (x + 1) * lam**x * math.exp(-lam * T) + p * (
            1 - p
        ) ** x * lam**x * math.exp(-lam * tx)
    alive = (1 - p) ** x * lam**x * math.exp(-lam * T)
    dead = p * (1 - p) ** (x - 1) * lam**x * math.exp(-lam * tx) if x > 0 else 0.0
    return alive + dead


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize(("x", "tx_days", "T_days"), [(0, 0.0, 35.0), (3, 20.0, 35.0)])
def test_bgnbd_log_likelihood_equals_the_integrated_individual_model(
    x, tx_days, T_days, modified
) -> None:
    """The closed-form log-likelihood equals the individual likelihood integrated over the
    Gamma(r, alpha) rate and the Beta(a, b) drop-out probability numerically."""
    # r, a > 1 keep both densities bounded, so the quadrature is quick and accurate
    params = BetaGeoParams(r=1.5, alpha=2.0, a=1.3, b=2.5)
    tx, T = tx_days / 7, T_days / 7
    r, alpha, a, b = params.r, params.alpha, params.a, params.b

    def integrand(p: float, lam: float) -> float:
        gamma_pdf = alpha**r * lam ** (r - 1) * math.exp(-alpha * lam) / math.gamma(r)
        beta_pdf = p ** (a - 1) * (1 - p) ** (b - 1) / special.beta(a, b)
        return _individual_bgnbd_likelihood(lam, p, x, tx, T, modified) * gamma_pdf * beta_pdf

    # the integrand in lambda decays like exp(-(alpha + t_x) lambda): 60/(alpha+t_x) is far
    value, _ = integrate.dblquad(integrand, 0, 60 / (alpha + tx), 0, 1, epsabs=0, epsrel=1e-9)
    closed = bgnbd_log_likelihood(params, [x], [tx_days], [T_days], modified=modified)[0]
    assert closed == pytest.approx(math.log(value), abs=1e-6)


def test_gamma_gamma_log_likelihood_equals_the_integrated_model() -> None:
    """The marginal density of a mean spend m over x orders equals the Gamma(px, x nu)
    density of the mean integrated over nu ~ Gamma(q, v)."""
    params = GammaGammaParams(p=4.0, q=3.0, v=20.0)
    x, m = 3, 27.5
    value, _ = integrate.quad(
        lambda nu: (
            stats.gamma.pdf(m, params.p * x, scale=1 / (x * nu))
            * stats.gamma.pdf(nu, params.q, scale=1 / params.v)
        ),
        0,
        np.inf,
        epsabs=1e-14,
    )
    closed = gamma_gamma_log_likelihood(params, [x], [m])[0]
    assert closed == pytest.approx(math.log(value), abs=1e-8)


def test_closed_form_equals_quadrature_for_extreme_customers() -> None:
    """The hypergeometric closed form of expected purchases agrees with a direct numerical
    integration over the drop-out probability, for up to 500 repeat purchases."""
    from ml.clv import _expected_purchases_closed, _expected_purchases_quadrature

    x = np.array([0, 1, 2, 5, 40, 500.0])
    tx = np.array([0, 10, 20, 30, 38, 38.9])
    T = np.full(6, 39.0)
    for t in (1.0, 39.0, 520.0):
        for modified in (False, True):
            closed = _expected_purchases_closed(CDNOW, CDNOW.a, t, x, tx, T, modified)
            quad = _expected_purchases_quadrature(CDNOW, t, x, tx, T, modified)
            np.testing.assert_allclose(closed, quad, rtol=1e-7)


def test_bgnbd_closed_form_properties() -> None:
    f = np.array([0, 1, 2, 5, 10])
    T = np.full(5, 300.0)
    rec = np.array([0, 200, 200, 200, 200.0])
    alive = bgnbd_p_alive(CDNOW, f, rec, T)
    assert alive[0] == 1.0  # no repeat purchase: the model cannot have seen a drop-out
    assert ((alive > 0) & (alive <= 1)).all()
    # at fixed recency, more purchases make a long silence more telling: p_alive falls ...
    assert (np.diff(alive[1:]) < 0).all()
    # ... and for customers seen recently, expected purchases rise with frequency (with an
    # old last purchase they need not: many purchases then a long silence means gone)
    recent_rec = np.full(4, 295.0)
    expected = bgnbd_expected_purchases(CDNOW, 365, f[1:], recent_rec, T[1:])
    assert (np.diff(expected) > 0).all()
    # a more recent last purchase makes the customer more likely alive and more valuable
    recent = bgnbd_p_alive(CDNOW, [3, 3, 3], [100, 200, 300], [300, 300, 300])
    assert (np.diff(recent) > 0).all()
    assert (
        np.diff(bgnbd_expected_purchases(CDNOW, 365, [3] * 3, [100, 200, 300], [300] * 3)) > 0
    ).all()
    # a customer who bought at T is alive for sure
    assert bgnbd_p_alive(CDNOW, [4], [300], [300])[0] == pytest.approx(
        1 / (1 + CDNOW.a / (CDNOW.b + 3))
    )
    # expected purchases: zero for a zero horizon, increasing in the horizon
    horizons = [0, 30, 90, 365, 3650]
    series = [bgnbd_expected_purchases(CDNOW, h, [2], [150], [300])[0] for h in horizons]
    assert series[0] == 0.0
    assert (np.diff(series) > 0).all()


def test_bgnbd_no_nan_for_extreme_inputs() -> None:
    f = np.array([0, 0, 1, 1000, 3, 50])
    rec = np.array([0, 0, 0, 3650, 1, 3650])
    T = np.array([0, 3650, 0, 3650, 3650, 3650])
    for params in (CDNOW, BetaGeoParams(1e-3, 1e3, 1.0, 1e3), BetaGeoParams(50, 0.01, 30, 0.05)):
        for t in (0, 1, 365, 36500):
            out = bgnbd_expected_purchases(params, t, f, rec, T)
            assert np.isfinite(out).all() and (out >= 0).all(), (params, t, out)
        alive = bgnbd_p_alive(params, f, rec, T)
        assert np.isfinite(alive).all() and ((alive >= 0) & (alive <= 1)).all()


def test_bgnbd_expected_purchases_finite_for_a_nearly_constant_dropout() -> None:
    """A fit on a short history can put a and b at ~1e4-1e5 (drop-out p all but constant):
    the Jacobi quadrature overflows there, and the Beta-quantile average must take over."""
    f = np.array([0.0, 0.0, 2.0, 5.0])
    rec = np.array([0.0, 0.0, 29.0, 120.0])
    T = np.array([63.0, 208.0, 132.0, 200.0])
    huge = BetaGeoParams(0.4153, 8.1548, 30219.45, 235319.65)  # seen on a 500-person world
    out = bgnbd_expected_purchases(huge, 90, f, rec, T)
    assert np.isfinite(out).all() and (out > 0).all(), out
    # a tenth of a and b: the same mean drop-out p, a little more spread, nearly the same
    near = bgnbd_expected_purchases(
        BetaGeoParams(0.4153, 8.1548, 3021.945, 23531.965), 90, f, rec, T
    )
    np.testing.assert_allclose(out, near, rtol=0.01)
    # never more than an immortal customer's Poisson expectation (r + x) / (alpha + T) * t
    assert (out <= (huge.r + f) / (huge.alpha + T) * 90 + 1e-9).all()


def test_gamma_gamma_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(3)
    frequency = 1 + rng.poisson(2.0, 20_000)
    monetary, _ = simulate_spend(CDNOW_GG, frequency, seed=4)
    # one-order customers (frequency 0) are ignored by the fit
    frequency = np.concatenate([frequency, np.zeros(5_000)])
    monetary = np.concatenate([monetary, np.zeros(5_000)])
    fitted = fit_gamma_gamma(frequency, monetary)
    for name in ("p", "q", "v"):
        truth, got = getattr(CDNOW_GG, name), getattr(fitted, name)
        assert abs(got / truth - 1) < PARAM_TOLERANCE, (name, got, truth)
    # the population mean order value p v / (q - 1) within 3 %
    mean_truth = CDNOW_GG.p * CDNOW_GG.v / (CDNOW_GG.q - 1)
    assert gg_expected_order_value(fitted, [0], [0])[0] == pytest.approx(mean_truth, rel=0.03)


def test_gamma_gamma_expected_value_shrinks_towards_the_population_mean() -> None:
    pop = CDNOW_GG.p * CDNOW_GG.v / (CDNOW_GG.q - 1)
    values = gg_expected_order_value(CDNOW_GG, [0, 1, 5, 100, 1], [0, 100, 100, 100, 0])
    assert values[0] == pytest.approx(pop)
    # a customer spending 100 a time is pulled towards the mean less as they buy more
    assert pop < values[1] < values[2] < values[3] < 100
    # repeat orders of 0 value pull the expectation below the population mean, never below 0
    assert 0 < values[4] < pop
    assert gg_expected_order_value(CDNOW_GG, [3], [42.0])[0] == pytest.approx(
        CDNOW_GG.p * (CDNOW_GG.v + 3 * 42.0) / (CDNOW_GG.p * 3 + CDNOW_GG.q - 1)
    )


def test_fits_refuse_empty_and_degenerate_data() -> None:
    with pytest.raises(CLVFitError, match="BG/NBD fit: no customers"):
        fit_bgnbd([], [], [])
    with pytest.raises(CLVFitError, match=r"only 0 of 500 customers bought more than once"):
        fit_bgnbd(np.zeros(500), np.zeros(500), np.full(500, 100.0))
    with pytest.raises(CLVFitError, match=r"Gamma-Gamma fit: only 0 of 500 customers"):
        fit_gamma_gamma(np.zeros(500), np.zeros(500))
    with pytest.raises(CLVFitError, match=r"only 3 of 3 customers are repeat buyers"):
        fit_gamma_gamma([1, 2, 3], [10.0, 20.0, 30.0])
    # everyone buys every week without fail: no heterogeneity for Gamma(r, alpha) to fit
    n = 300
    T = np.full(n, 700.0)
    with pytest.raises(CLVFitError, match=r"BG/NBD fit is degenerate: parameter\(s\)"):
        fit_bgnbd(np.full(n, 100), np.full(n, 700.0), T)


def test_gamma_gamma_without_spend_heterogeneity_predicts_the_population_mean() -> None:
    """Every customer's orders drawn around the same mean (one shop, one basket): the
    likelihood's optimum is the limit q -> infinity, which is a model (everyone's expected
    order value is the mean), not a failure to fit."""
    # draws whose optimum is the limit (about half are): seed 3 runs q onto the bound
    # (e^15), which used to fail as degenerate; on seed 29's the optimisers stop on the flat
    # ridge with a zero gradient but an "ABNORMAL" / "max iterations" flag, which used to
    # fail as not converged
    for seed, mean in ((3, 40.0), (29, 2_000.0)):
        rng = np.random.default_rng(seed)
        frequency = 1 + rng.poisson(2.0, 1_500)
        # the mean of x repeat order values of Gamma(4): the same mean for every customer
        monetary = np.array([rng.gamma(4.0, mean / 4, k).mean() for k in frequency])
        params = fit_gamma_gamma(frequency, monetary)
        assert params.q > 1e4
        expected = gg_expected_order_value(params, frequency, monetary)
        population = params.p * params.v / (params.q - 1)
        assert population == pytest.approx(mean, rel=0.03)
        assert np.allclose(expected, population, rtol=1e-3)


def test_gamma_gamma_refuses_infinite_mean_spend() -> None:
    """Customers' mean spend with a Pareto tail of index 0.6 (no finite mean): the fit finds
    q < 1 and says why instead of returning an infinite expected order value."""
    rng = np.random.default_rng(5)
    frequency = 1 + rng.poisson(2.0, 2_000)
    nu = 1 / ((rng.pareto(0.6, 2_000) + 1) * 10)
    monetary = np.array([rng.gamma(6.0, 1 / nu[i], k).mean() for i, k in enumerate(frequency)])
    with pytest.raises(CLVFitError, match=r"q = 0\.\d+ <= 1: spend is so heavy-tailed"):
        fit_gamma_gamma(frequency, monetary)
    # with one repeat order each, p and v are barely identified apart: either message
    with pytest.raises(CLVFitError, match=r"Gamma-Gamma fit (is degenerate|gave q = 0\.\d+)"):
        fit_gamma_gamma(np.ones(2_000), (rng.pareto(0.6, 2_000) + 1) * 10)


def test_analytic_gradients_match_finite_differences() -> None:
    from ml.clv import _bgnbd_ll_and_grad, _gg_ll_and_grad

    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, 50).astype(float)
    T = rng.uniform(1, 50, 50)
    tx = np.where(x > 0, T * rng.uniform(0, 1, 50), 0)
    m = rng.uniform(5, 50, 50)
    cases = [
        (lambda p: _bgnbd_ll_and_grad(p, x, tx, T), np.log([0.243, 4.4, 0.79, 2.4])),
        (lambda p: _bgnbd_ll_and_grad(p, x, tx, T), np.log([2.0, 0.5, 3.0, 0.3])),
        (lambda p: _bgnbd_ll_and_grad(p, x, tx, T, True), np.log([0.243, 4.4, 0.79, 2.4])),
        (lambda p: _bgnbd_ll_and_grad(p, x, tx, T, True), np.log([2.0, 0.5, 3.0, 0.3])),
        (lambda p: _gg_ll_and_grad(p, x + 1, m), np.log([6.0, 3.7, 15.0])),
        (lambda p: _gg_ll_and_grad(p, x + 1, m), np.log([0.5, 1.5, 2.0])),
    ]
    for fun, point in cases:
        numeric = optimize.approx_fprime(point, lambda p, f=fun: f(p)[0].sum(), 1e-7)
        np.testing.assert_allclose(fun(point)[1].sum(axis=0), numeric, rtol=1e-5, atol=1e-4)


def test_optimiser_failures_raise_clv_fit_errors() -> None:
    """The optimiser wrapper refuses a search that stalls (noise: no vanishing gradient
    after L-BFGS-B nor after the Nelder-Mead fallback) and a likelihood that is never finite."""
    from ml.clv import _minimize

    rng = np.random.default_rng(0)

    def noise(params: np.ndarray) -> tuple[float, np.ndarray]:
        return float(rng.random()), rng.normal(size=params.shape)

    with pytest.raises(CLVFitError, match=r"Test fit did not converge \(L-BFGS-B: .*Nelder-Mead"):
        _minimize(noise, np.zeros(3), "Test", ("a", "b", "c"))
    with pytest.raises(CLVFitError, match="log-likelihood is not finite at any parameters"):
        _minimize(lambda p: (1e300, np.zeros_like(p)), np.zeros(3), "Test", ("a", "b", "c"))


def test_invalid_rfm_input_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match=r"recency > T for 1 customer"):
        bgnbd_p_alive(CDNOW, [1, 2], [10, 50], [20, 40])
    with pytest.raises(ValueError, match="frequency must be a non-negative whole number"):
        bgnbd_p_alive(CDNOW, [-1], [0], [10])
    with pytest.raises(ValueError, match="recency must be 0 where frequency is 0"):
        bgnbd_p_alive(CDNOW, [0], [5], [10])
    with pytest.raises(ValueError, match="T has 1 missing/infinite value"):
        fit_bgnbd([1, 2], [3, 4], [5, np.nan])


# --------------------------------------------------------------------------- rfm_summary


def test_rfm_summary_hand_computed() -> None:
    orders = pd.DataFrame(
        {
            "customer_key": ["a", "a", "a", "a", "b", "c", "c", "d"],
            "order_date": pd.to_datetime(
                [
                    "2024-01-01 09:00",
                    "2024-01-01 18:00",  # same day: merged with the first
                    "2024-01-11",
                    "2024-01-31",  # = as_of: counts
                    "2024-01-20",
                    "2024-01-05",
                    "2024-02-01",  # after as_of: ignored
                    "2024-02-03",  # only after as_of: d is absent
                ],
                format="ISO8601",
            ),
            "amount": [10.0, 5.0, 30.0, 50.0, 7.0, 20.0, 99.0, 1.0],
        }
    )
    out = rfm_summary(orders, date(2024, 1, 31))
    assert list(out.index) == ["a", "b", "c"]
    assert out.index.name == "customer_key"
    assert out.loc["a"].to_dict() == {
        "frequency": 2,
        "recency": 30.0,
        "T": 30.0,
        "monetary_value": 40.0,
    }
    assert out.loc["b"].to_dict() == {"frequency": 0, "recency": 0, "T": 11, "monetary_value": 0}
    assert out.loc["c"].to_dict() == {"frequency": 0, "recency": 0, "T": 26, "monetary_value": 0}
    assert str(out["frequency"].dtype) == "int64"


def test_rfm_summary_custom_columns_dates_and_timezones() -> None:
    orders = pd.DataFrame(
        {
            "cust": [1, 1, 2],
            # tz-aware timestamps are taken in UTC: 23:30-05:00 is the next day in UTC
            "ts": pd.to_datetime(
                ["2024-03-01T10:00:00Z", "2024-03-04T04:30:00Z", "2024-03-02T00:00:00Z"]
            ),
            "value": [1, 2, 3],
        }
    )
    out = rfm_summary(
        orders, date(2024, 3, 10), customer_col="cust", date_col="ts", value_col="value"
    )
    assert out.loc[1, "frequency"] == 1 and out.loc[1, "recency"] == 3 and out.loc[1, "T"] == 9
    assert out.loc[1, "monetary_value"] == 2.0
    plain = orders.assign(ts=[date(2024, 3, 1), date(2024, 3, 4), date(2024, 3, 2)])
    again = rfm_summary(
        plain, date(2024, 3, 10), customer_col="cust", date_col="ts", value_col="value"
    )
    pd.testing.assert_frame_equal(out, again)
    empty = rfm_summary(
        orders, date(2024, 2, 1), customer_col="cust", date_col="ts", value_col="value"
    )
    assert empty.empty and list(empty.columns) == ["frequency", "recency", "T", "monetary_value"]


def test_rfm_summary_rejects_bad_orders() -> None:
    good = {
        "customer_key": ["a", "b"],
        "order_date": ["2024-01-01", "2024-01-02"],
        "amount": [1, 2],
    }
    with pytest.raises(ValueError, match=r"lack column\(s\) \['amount'\]"):
        rfm_summary(pd.DataFrame(good).drop(columns="amount"), date(2024, 2, 1))
    with pytest.raises(
        ValueError, match=r"1 order\(s\) have a missing or unparseable order_date, e.g. 'soon'"
    ):
        rfm_summary(pd.DataFrame(good | {"order_date": ["2024-01-01", "soon"]}), date(2024, 2, 1))
    with pytest.raises(
        ValueError, match=r"1 order\(s\) have a missing, non-numeric or negative amount"
    ):
        rfm_summary(pd.DataFrame(good | {"amount": [1, -5]}), date(2024, 2, 1))
    with pytest.raises(ValueError, match=r"1 order\(s\) have no customer_key"):
        rfm_summary(pd.DataFrame(good | {"customer_key": ["a", None]}), date(2024, 2, 1))


# --------------------------------------------------------------------------- CLVModel


def simulate_orders(n: int, seed: int, end: date) -> pd.DataFrame:
    """Return orders of `n` customers drawn from the BG/NBD and Gamma-Gamma processes: first
    orders spread over the two years before `end`, the process running one year past it."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 730, n)  # days before `end`
    lam = rng.gamma(CDNOW.r, 1 / (CDNOW.alpha * 7), n)
    drop = rng.beta(CDNOW.a, CDNOW.b, n)
    nu = rng.gamma(CDNOW_GG.q, 1 / CDNOW_GG.v, n)
    keys, days, amounts = [], [], []
    for i in range(n):
        start = end - timedelta(days=int(first[i]))
        t = 0.0
        while True:  # the first order at t=0, then repeats until drop-out or the end
            keys.append(f"c{i:05d}")
            days.append(start + timedelta(days=int(t)))
            amounts.append(round(float(rng.gamma(CDNOW_GG.p, 1 / nu[i])), 2))
            if t > 0 and rng.random() < drop[i]:  # drop-out only ever follows a repeat order
                break
            t += rng.exponential(1 / lam[i])
            if t > first[i] + 365:
                break
    return pd.DataFrame({"customer_key": keys, "order_date": days, "amount": amounts})


AS_OF = date(2024, 6, 30)


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return simulate_orders(10_000, seed=11, end=AS_OF)


@pytest.fixture(scope="module")
def summary(orders: pd.DataFrame) -> pd.DataFrame:
    return rfm_summary(orders, AS_OF)


@pytest.fixture(scope="module")
def model(summary: pd.DataFrame) -> CLVModel:
    return CLVModel.from_spec(load_spec("clv")).fit(summary)


def test_model_predicts_next_year_from_an_order_table(orders, summary, model) -> None:
    """Fitted on daily orders as of D, the predicted purchases in (D, D+365] match what the
    simulated customers did within 3 % in total, and rank customers well."""
    assert model.n_customers == 10_000
    # the whole path (orders -> daily RFM -> MLE) recovers the simulated parameters too
    for fitted, truth in ((model.bgnbd, CDNOW), (model.gamma_gamma, CDNOW_GG)):
        for name, value in vars(truth).items():
            assert abs(getattr(fitted, name) / value - 1) < PARAM_TOLERANCE, (name, fitted)
    pred = model.predict(summary)
    assert list(pred.columns) == list(PREDICTION_COLUMNS)
    assert pred.index.equals(summary.index)
    assert np.isfinite(pred.to_numpy()).all()
    actual = holdout_purchases(orders, AS_OF, 365)
    facts = evaluate_purchases(pred["expected_purchases_12m"], actual)
    assert abs(facts["relative_total_error"]) < 0.03, facts
    assert facts["spearman"] > 0.4, facts
    assert pred["clv_12m"].to_numpy() == pytest.approx(
        (pred["expected_purchases_12m"] * pred["expected_order_value"]).to_numpy()
    )
    one_timers = summary["frequency"] == 0
    assert (pred.loc[one_timers, "p_alive"] == 1.0).all()
    assert pred.loc[one_timers, "expected_order_value"].nunique() == 1  # the population mean


def test_model_round_trips_through_dict_json_and_pickle(summary, model) -> None:
    expected = model.predict(summary)
    facts = json.loads(json.dumps(model.to_dict()))
    assert facts["time_unit_days"] == 7.0 and facts["n_repeat_buyers"] == model.n_repeat_buyers
    pd.testing.assert_frame_equal(CLVModel.from_dict(facts).predict(summary), expected)
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(model)).predict(summary), expected)


def test_model_fit_is_idempotent_and_accepts_lower_case_t(summary, model) -> None:
    again = CLVModel.from_spec(load_spec("clv")).fit(summary.rename(columns={"T": "t"}))
    assert again.to_dict() == model.to_dict()


def test_model_horizon_and_discounting(summary, model) -> None:
    short = model.predict(summary, horizon_days=90)
    year = model.predict(summary)
    assert (short["expected_purchases_12m"] <= year["expected_purchases_12m"]).all()
    assert (short["p_alive"] == year["p_alive"]).all()
    zero = model.predict(summary, horizon_days=0)
    assert (zero["clv_12m"] == 0).all()
    discounted = CLVModel.from_dict(model.to_dict() | {"annual_discount_rate": 0.10})
    d = discounted.predict(summary)
    ratio = d["clv_12m"].sum() / year["clv_12m"].sum()
    # purchases spread over the year, discounted monthly at 10 %/year: between 1/1.1 and 1
    assert 1 / 1.1 < ratio < 0.97


def test_model_predicts_extreme_and_unseen_customers_without_nan(model) -> None:
    odd = pd.DataFrame(
        {
            "frequency": [0, 0, 500, 1, 3],
            "recency": [0, 0, 900, 1, 1],
            "T": [0, 5000, 900, 1, 5000],
            "monetary_value": [0, 0, 1e6, 0, 12.5],
        },
        index=pd.Index(["today", "ancient", "whale", "zero-spend", "lost"], name="customer_key"),
    )
    pred = model.predict(odd)
    assert np.isfinite(pred.to_numpy()).all() and (pred.to_numpy() >= 0).all()
    assert pred.loc["whale", "clv_12m"] > pred.loc["lost", "clv_12m"]
    assert pred.loc["lost", "p_alive"] < 0.01


def test_model_process_is_validated_and_round_trips(summary) -> None:
    with pytest.raises(ValueError, match=r"CLV process must be one of \('bgnbd', 'mbgnbd'\)"):
        CLVModel(process="pareto")
    spec = load_spec("clv")
    spec["params"] = {**spec["params"], "process": "mbgnbd"}
    model = CLVModel.from_spec(spec).fit(summary)
    facts = json.loads(json.dumps(model.to_dict()))
    assert facts["process"] == "mbgnbd"
    pd.testing.assert_frame_equal(
        CLVModel.from_dict(facts).predict(summary), model.predict(summary)
    )
    assert (model.predict(summary).loc[summary["frequency"] == 0, "p_alive"] < 1).all()


def test_model_errors_are_readable(summary) -> None:
    with pytest.raises(ValueError, match=r"clv spec: unknown params \['horizon'\]"):
        CLVModel.from_spec({"params": {"horizon": 90}})
    with pytest.raises(RuntimeError, match="CLVModel is not fitted"):
        CLVModel().predict(summary)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['monetary_value'\]"):
        CLVModel().fit(summary.drop(columns="monetary_value"))
    one_order = summary[summary["frequency"] == 0]
    with pytest.raises(CLVFitError, match="bought more than once"):
        CLVModel().fit(one_order)


def test_holdout_purchases_counts_purchase_days_after_as_of() -> None:
    orders = pd.DataFrame(
        {
            "customer_key": ["a", "a", "a", "a", "b"],
            "order_date": ["2024-01-31", "2024-02-01", "2024-02-01", "2024-03-01", "2024-05-01"],
        }
    )
    # (01-31, 02-29]: 02-01 counts once (one purchase day); the order on as_of does not
    assert holdout_purchases(orders, date(2024, 1, 31), 29).to_dict() == {"a": 1}
    # (01-31, 03-01]: the end day is inside
    assert holdout_purchases(orders, date(2024, 1, 31), 30).to_dict() == {"a": 2}


def test_spec_loader(tmp_path) -> None:
    spec = load_spec("clv")
    assert spec["name"] == "clv" and spec["params"]["horizon_days"] == 365
    assert load_spec("segmentation")["roles"]["monetary"] == "revenue"
    with pytest.raises(ValueError, match="not valid"):
        load_spec("../etc/passwd")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "clv.yaml").write_text("name: clv\n")
    with pytest.raises(FileNotFoundError, match=r"no model spec 'nope'.*available: clv\)"):
        load_spec("nope", models_dir=folder)
    (folder / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_spec("bad", models_dir=folder)
    (folder / "other.yaml").write_text("name: clv\n")
    with pytest.raises(ValueError, match="declares name 'clv', expected 'other'"):
        load_spec("other", models_dir=folder)
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        load_spec("broken", models_dir=folder)


# --------------------------------------------------------------------------- sample world

WORLD_AS_OF = date(2023, 12, 31)


def world_orders(folder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the completed orders and the per-customer truth of a small sample world."""
    from lifecycle.sample.world import WorldConfig, generate_world

    generate_world(
        WorldConfig(customers=4000, start=date(2022, 1, 1), end=date(2024, 12, 31), seed=11),
        folder,
    )
    orders = pd.read_csv(folder / "orders" / "orders.csv", parse_dates=["ordered_at"])
    truth = pd.read_csv(folder / "truth" / "customers.csv", parse_dates=["dropout_at"])
    truth = truth.dropna(subset=["customer_id"]).set_index("customer_id")
    return orders[orders["status"] == "completed"], truth


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    return world_orders(tmp_path_factory.mktemp("world"))


def test_clv_on_the_sample_world_against_its_ground_truth(world) -> None:
    """The generator buys by a Pareto/NBD process (drop-out at any time, not only after a
    purchase), so BG/NBD is misspecified there: it ranks well but overestimates next
    year's purchases (about +24 % on this world), as BG/NBD does when many customers drop
    out before their second order. Tolerances are set for that, and stated."""
    from sklearn.metrics import roc_auc_score

    orders, truth = world
    summary = rfm_summary(
        orders, WORLD_AS_OF, customer_col="customer_id", date_col="ordered_at", value_col="amount"
    )
    visible = orders[orders["ordered_at"].dt.date <= WORLD_AS_OF]
    assert len(summary) == visible["customer_id"].nunique()
    model = CLVModel.from_spec(load_spec("clv")).fit(summary)
    pred = model.predict(summary)
    assert np.isfinite(pred.to_numpy()).all()

    dropped = (truth["dropout_at"] < pd.Timestamp(WORLD_AS_OF, tz="UTC")).reindex(summary.index)
    repeat = summary["frequency"] > 0
    # p_alive separates the truly alive repeat buyers from the dropped-out ones
    assert roc_auc_score(~dropped[repeat], pred.loc[repeat, "p_alive"]) > 0.8
    actual = holdout_purchases(
        orders, WORLD_AS_OF, 365, customer_col="customer_id", date_col="ordered_at"
    )
    facts = evaluate_purchases(pred["expected_purchases_12m"], actual)
    assert facts["spearman"] > 0.4, facts
    assert abs(facts["relative_total_error"]) < 0.35, facts

    # Over all customers, BG/NBD's p_alive ranks badly (every one-order customer is "alive");
    # the modified BG/NBD's does not
    modified = CLVModel(process="mbgnbd").fit(summary).predict(summary)
    auc_bg = roc_auc_score(~dropped, pred["p_alive"])
    auc_mbg = roc_auc_score(~dropped, modified["p_alive"])
    assert auc_mbg > 0.8 and auc_mbg > auc_bg + 0.15, (auc_bg, auc_mbg)
