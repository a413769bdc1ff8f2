"""Unit tests on tiny inputs: the churn spec, evaluation metrics, reason sentences."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ml.churn import (
    REASON_GROUPS,
    REASON_MIN_DELTA,
    ChurnModel,
    ChurnSpecError,
    describe_column,
    fit_churn,
    load_churn_spec,
)
from ml.evaluate import (
    bootstrap_auc_difference,
    classification_metrics,
    expected_calibration_error,
    lift_at,
)
from ml.features import BTYD_FEATURES, NUMERIC_FEATURES
from ml.tracking import decide


def test_spec_overrides_merge_and_bad_specs_are_refused() -> None:
    spec = load_churn_spec({"model": {"params": {"max_iter": 10}}})
    assert spec["model"]["params"]["max_iter"] == 10
    assert spec["model"]["params"]["learning_rate"] == 0.05  # the rest is kept
    with pytest.raises(ChurnSpecError, match="unknown churn feature.*nope"):
        load_churn_spec({"features": {"numeric": ["nope"]}})
    with pytest.raises(ChurnSpecError, match="0 < medium < high < 1"):
        load_churn_spec({"risk_bands": {"medium": 0.9}})
    with pytest.raises(ChurnSpecError, match="isotonic or sigmoid"):
        load_churn_spec({"model": {"calibration": "beta"}})
    # a typo trained and promoted with the default, without a word
    with pytest.raises(
        ChurnSpecError,
        match=r"^--set snapshots\.stepdays: models/churn\.yaml has no such key \(did you mean "
        r"snapshots\.step_days\?\); it has snapshots\.count, snapshots\.step_days, ",
    ):
        load_churn_spec({"snapshots": {"stepdays": 7}})
    with pytest.raises(ChurnSpecError, match=r"^--set x: models/churn\.yaml has no such key;"):
        load_churn_spec({"x": 1})
    # the estimator's own arguments are scikit-learn's to check
    assert load_churn_spec({"model": {"params": {"max_depth": 3}}})["model"]["params"]["max_depth"]
    assert load_churn_spec()["snapshots"]["max_customers"] == 250_000
    assert load_churn_spec({"snapshots": {"max_customers": None}})["snapshots"]["count"] == 6
    for bad in (0, -5, 2.5, "many", True):
        with pytest.raises(ChurnSpecError) as refused:
            load_churn_spec({"snapshots": {"max_customers": bad}})
        assert str(refused.value) == (
            "snapshots.max_customers must be a whole number of customers >= 1, or null for "
            f"everyone; got {bad!r}"
        )
    for section, key, wanted in (
        ("snapshots", "count", "a whole number >= 1"),
        ("snapshots", "step_days", "a whole number of days >= 1"),
        ("label", "horizon_days", "a whole number of days >= 1"),
    ):
        for bad in ("x", 0, 1.5, None):
            with pytest.raises(ChurnSpecError) as refused:
                load_churn_spec({section: {key: bad}})
            assert str(refused.value) == f"{section}.{key} must be {wanted}; got {bad!r}"


def test_expected_calibration_error_and_lift_exact() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # bin [0.1): 4 rows, observed 0.5 vs 0.1; bin [0.9]: 6 rows, observed 5/6 vs 0.9
    assert expected_calibration_error(y, p) == pytest.approx((4 * 0.4 + 6 * (0.9 - 5 / 6)) / 10)
    # top 10% = the first highest score (index 4, a churner): 1 / 0.7
    assert lift_at(y, p, 0.1) == pytest.approx(1 / 0.7)
    m = classification_metrics(y, p)
    # 7 churners x 3 stayers = 21 pairs: 10 won, 5 + 4 tied (half each) -> 14.5
    assert m["roc_auc"] == pytest.approx(14.5 / 21)


def test_reason_sentences_use_the_customers_values() -> None:
    frame = pd.DataFrame(
        {
            "days_since_last_order": [1.0, 212.0],
            "count_orders": [1.0, 5.0],
            "count_orders_365d": [1.0, 0.0],
            "mean_gap_days": [np.nan, 30.0],
            "last_gap_days": [np.nan, 45.0],
            "days_since_last_visit": [np.nan, 3.0],
            "is_marketing_opt_in": [0.0, np.nan],
        }
    )
    assert list(describe_column("recency", frame)) == [
        "last order 1 day ago",
        "last order 212 days ago",
    ]
    assert list(describe_column("frequency", frame)) == [
        "1 order in total, 1 in the last year",
        "5 orders in total, 0 in the last year",
    ]
    assert list(describe_column("gaps", frame)) == [
        "no repeat purchase yet",
        "last gap between orders 45 days (typically 30)",
    ]
    assert list(describe_column("last_visit", frame)) == [
        "never visited the website",
        "last website visit 3 days ago",
    ]
    assert list(describe_column("consent", frame)) == [
        "opted out of marketing",
        "marketing consent unknown",
    ]


def test_promotion_decision_rules(caplog: pytest.LogCaptureFixture) -> None:
    first = decide(
        "m",
        "1",
        metric="roc_auc",
        value=0.7,
        champion_version=None,
        champion_value=None,
        min_improvement=0.002,
    )
    assert first.promoted and first.reason == "first model: no champion yet"
    better = decide(
        "m",
        "2",
        metric="roc_auc",
        value=0.75,
        champion_version="1",
        champion_value=0.7,
        min_improvement=0.002,
    )
    assert better.promoted and "beats champion v1 (0.7000) by 0.0500" in better.reason
    tie = decide(
        "m",
        "3",
        metric="roc_auc",
        value=0.7505,
        champion_version="2",
        champion_value=0.75,
        min_improvement=0.002,
    )
    assert not tie.promoted
    assert tie.reason == (
        "roc_auc 0.7505 does not beat champion v2 (0.7500) by the required 0.002 (gain +0.0005)"
    )
    # a constant score ranks no one: promoted first (a shop needs a champion), said so
    with caplog.at_level(logging.WARNING, logger="ml.tracking"):
        chance = decide(
            "m",
            "4",
            metric="roc_auc",
            value=0.5,
            champion_version=None,
            champion_value=None,
            min_improvement=0.002,
        )
    assert chance.promoted
    assert caplog.messages == [
        "m v4: roc_auc 0.5000 on the holdout is no better than chance (0.5): the model tells "
        "no one apart (too few customers, or too little history), so its scores and risk "
        "bands are alike for everyone"
    ]


def _customers(n: int, seed: int) -> pd.DataFrame:
    """Return `n` made-up feature rows: skewed counts, missing values, a few categories."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {col: rng.gamma(1.5, 20.0, n).round() for col in NUMERIC_FEATURES}, dtype="float64"
    )
    for col in ("mean_gap_days", "last_gap_days", "gap_trend", "days_since_last_visit"):
        frame.loc[rng.random(n) < 0.3, col] = np.nan
    frame["is_marketing_opt_in"] = rng.choice([0.0, 1.0, np.nan], n)
    frame["acquisition_channel"] = rng.choice(["organic", "paid_search", "email", None], n)
    frame["country_code"] = rng.choice(["US", "DE", "JP", None], n)
    # churn driven by recency and web activity, so the groups' deltas differ in size
    risk = frame["days_since_last_order"] / 40 - frame["sessions_30d"] / 30
    frame["churned"] = rng.random(n) < 1 / (1 + np.exp(-(risk - 0.8)))
    # the BTYD fit's outputs (ml.features.add_btyd_features), some null (fit not possible)
    frame["btyd_p_alive"] = rng.random(n)
    frame["btyd_expected_purchases"] = rng.gamma(1.0, 0.5, n)
    frame["btyd_expected_order_value"] = rng.gamma(4.0, 20.0, n)
    frame["btyd_purchases_residual"] = rng.normal(0.0, 1.0, n)
    frame["btyd_p_no_purchase"] = rng.random(n)
    frame.loc[rng.random(n) < 0.1, list(BTYD_FEATURES)] = np.nan
    return frame


def _reason_deltas_on_frames(model: ChurnModel, X: pd.DataFrame, base: np.ndarray) -> pd.DataFrame:
    """The reason deltas as first written: every variant a data frame through the whole
    calibrated pipeline (kept as the reference of the encode-once version)."""
    frame = model._frame(X).reset_index(drop=True)
    deltas = {}
    for group, all_cols in REASON_GROUPS.items():
        cols = [c for c in all_cols if c in model.features]
        if not cols:
            continue
        differs = np.zeros(len(frame), dtype=bool)
        for col in cols:
            ref = model.reference[col]
            if ref is None or (isinstance(ref, float) and np.isnan(ref)):
                differs |= frame[col].notna().to_numpy()
            else:
                differs |= (frame[col] != ref).to_numpy() | frame[col].isna().to_numpy()
        typical = frame.loc[differs].copy()
        for col in cols:
            typical[col] = model.reference[col]
        delta = np.zeros(len(frame))
        if differs.any():
            delta[differs] = base[differs] - model.churn_probability(typical)
        deltas[group] = delta
    return pd.DataFrame(deltas)


def _explain_rowwise(model: ChurnModel, X: pd.DataFrame, base: np.ndarray) -> list[str]:
    """The row-by-row explain that ChurnModel.explain replaced, kept as the reference."""
    deltas = _reason_deltas_on_frames(model, X, base)
    records = X.reset_index(drop=True)
    texts = np.stack([describe_column(g, records) for g in deltas.columns], axis=1)
    values = deltas.to_numpy()
    top = np.argsort(-np.abs(values), axis=1, kind="stable")[:, : model.top_reasons]
    rows = np.arange(len(values))[:, None]
    chosen_values = values[rows, top]
    chosen_texts = texts[rows, top]
    effect = np.where(chosen_values > 0, " (raises risk)", " (lowers risk)")
    out = []
    for vals, txts, effs in zip(chosen_values, chosen_texts, effect, strict=True):
        parts = [t + e for v, t, e in zip(vals, txts, effs, strict=True) if abs(v) >= 0.005]
        out.append("; ".join(parts) if parts else "typical customer profile")
    return out


@pytest.mark.parametrize("calibration", ["sigmoid", "isotonic"])
def test_vectorized_explain_equals_the_rowwise_logic_exactly(calibration: str) -> None:
    spec = load_churn_spec(
        {
            "model": {
                "params": {"max_iter": 30, "min_samples_leaf": 20},
                "calibration": calibration,
            }
        }
    )
    model = fit_churn(_customers(3000, 1), _customers(1500, 2), spec)
    scored = _customers(4000, 3)
    scored.loc[7, "country_code"] = "XX"  # a category never seen in training
    scored.loc[8, "acquisition_channel"] = None
    # rows equal to the typical customer in every group: no reason clears the threshold
    for i in range(5):
        for col in model.features:
            scored.at[i, col] = model.reference[col]
    scored.index = scored.index * 7 + 3  # a chunk's index is not 0..n-1
    p = model.churn_probability(scored)
    # encoding once, then swapping in the typical encoded values: the very same numbers
    pd.testing.assert_frame_equal(
        model.reason_deltas(scored, p), _reason_deltas_on_frames(model, scored, p), rtol=0, atol=0
    )
    pd.testing.assert_frame_equal(
        model.reason_deltas(scored), _reason_deltas_on_frames(model, scored, p), rtol=0, atol=0
    )
    for top in (3, 1, 5):
        model.top_reasons = top
        fast = model.explain(scored, p)
        assert fast == _explain_rowwise(model, scored, p)
    # the sample covers every shape: no reason, one, two and three shown
    shown = pd.Series(fast).map(
        lambda t: 0 if t == "typical customer profile" else t.count("; ") + 1
    )
    assert set(shown) >= {0, 1, 2, 3}
    assert fast[0] == "typical customer profile"
    assert REASON_MIN_DELTA == 0.005
    assert model.explain(scored.iloc[:0], p[:0]) == []
    # what scoring calls: the probability and the reasons from one pass over the trees
    both, reasons = model.probability_and_reasons(scored)
    assert both.tobytes() == p.tobytes() and reasons == fast
    # a booster without categorical columns (the orders-only variant) keeps its own order
    numeric_only = fit_churn(
        _customers(3000, 1), _customers(1500, 2), spec, features=spec["features"]["orders_only"]
    )
    q = numeric_only.churn_probability(scored)
    pd.testing.assert_frame_equal(
        numeric_only.reason_deltas(scored, q),
        _reason_deltas_on_frames(numeric_only, scored, q),
        rtol=0,
        atol=0,
    )


def test_promotion_with_an_interval_needs_its_lower_end_above_the_margin() -> None:
    common = dict(metric="roc_auc", champion_version="2", min_improvement=0.002)
    noisy = decide(
        "m", "3", value=0.78, champion_value=0.77, gain_interval=(-0.004, 0.024), **common
    )
    assert not noisy.promoted  # a +0.01 point gain inside the noise keeps the champion
    assert noisy.reason == (
        "roc_auc 0.7800 does not beat champion v2 (0.7700): gain +0.0100, bootstrap interval "
        "[-0.0040, +0.0240], whose lower end must reach 0.002"
    )
    clear = decide(
        "m", "3", value=0.80, champion_value=0.77, gain_interval=(0.021, 0.039), **common
    )
    assert clear.promoted
    first = decide(
        "m",
        "1",
        value=0.7,
        champion_value=None,
        **{**common, "champion_version": None},
    )
    assert first.promoted and first.reason == "first model: no champion yet"


def test_bootstrap_interval_of_the_auc_difference() -> None:
    rng = np.random.default_rng(4)
    y = rng.random(4000) < 0.4
    signal = y + rng.normal(0, 1.0, y.size)
    better = signal + 0.0 * rng.normal(0, 1, y.size)
    worse = signal + rng.normal(0, 1.5, y.size)
    u = bootstrap_auc_difference(y, better, worse, resamples=200, seed=1)
    assert u["diff"] == pytest.approx(
        classification_metrics(y, better)["roc_auc"] - classification_metrics(y, worse)["roc_auc"]
    )
    assert 0 < u["low"] < u["diff"] < u["high"]
    assert u["p_not_better"] == 0.0 and u["resamples"] == 200
    assert bootstrap_auc_difference(y, better, worse, resamples=200, seed=1) == u  # seeded
    same = bootstrap_auc_difference(y, better, better.copy(), resamples=50, seed=1)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    # two scorers of equal quality: the interval straddles 0
    twin = signal + rng.normal(0, 1.5, y.size)
    tie = bootstrap_auc_difference(y, twin, worse, resamples=200, seed=1)
    assert tie["low"] < 0 < tie["high"]


def test_unconditional_bgnbd_purchases_match_a_simulation() -> None:
    from ml.clv import BetaGeoParams
    from ml.features import _unconditional_purchases

    params = BetaGeoParams(r=0.243, alpha=4.414, a=0.793, b=2.426)  # CDNOW, weeks
    rng = np.random.default_rng(0)
    n, weeks = 200_000, 39.0
    lam = rng.gamma(params.r, 1 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    count, t, alive = np.zeros(n), np.zeros(n), np.ones(n, dtype=bool)
    for _ in range(200):  # repeat purchases; drop-out after each with probability p
        t = t + rng.exponential(1 / np.maximum(lam, 1e-12))
        bought = alive & (t <= weeks)
        count += bought
        alive = bought & (rng.random(n) >= p)
    expected = _unconditional_purchases(params, np.array([0.0, weeks * 7]))
    assert expected[0] == 0.0
    assert expected[1] == pytest.approx(count.mean(), abs=0.01)  # 1.1967 vs 1.1962


def test_monotone_candidate_keeps_the_declared_direction() -> None:
    spec = load_churn_spec({"model": {"params": {"max_iter": 40, "min_samples_leaf": 20}}})
    monotone = {"name": "m", "monotonic": {"count_orders_90d": -1, "btyd_p_alive": -1}}
    model = fit_churn(_customers(3000, 1), _customers(1500, 2), spec, candidate=monotone)
    assert model.candidate == "m"
    rows = _customers(200, 5)
    for col in ("count_orders_90d", "btyd_p_alive"):
        grid = np.linspace(0, rows[col].max() if col != "btyd_p_alive" else 1.0, 12)
        curves = []
        for v in grid:
            varied = rows.copy()
            varied[col] = v
            curves.append(model.churn_probability(varied))
        steps = np.diff(np.vstack(curves), axis=0)
        assert (steps <= 1e-12).all(), col
    no_btyd = {"name": "x", "exclude": list(BTYD_FEATURES)}
    excluded = fit_churn(_customers(3000, 1), _customers(1500, 2), spec, candidate=no_btyd)
    assert not excluded.uses_btyd and model.uses_btyd
    with pytest.raises(ChurnSpecError, match="monotonic.acquisition_channel"):
        load_churn_spec({"candidates": [{"name": "c", "monotonic": {"acquisition_channel": 1}}]})


def test_btyd_features_are_empty_not_an_error_when_bgnbd_cannot_be_fitted() -> None:
    import datetime as dt

    from ml.features import RECENT_FREQUENCY, add_btyd_features, btyd_features

    day = dt.date(2024, 6, 30)
    rng = np.random.default_rng(3)
    rows = []
    # 3 repeat buyers of 40 at the first snapshot (BG/NBD needs 10), about 200 of 400 later
    for snapshot, n, repeat_share in ((day, 40, 3 / 40), (day + dt.timedelta(days=30), 400, 0.5)):
        t = rng.uniform(60, 700, n).round()
        f = np.where(np.arange(n) < round(n * repeat_share), rng.poisson(2.0, n) + 1, 0)
        rec = np.where(f > 0, (t * rng.uniform(0.2, 1.0, n)).round(), 0)
        for i in range(n):
            rows.append(
                {
                    "snapshot_date": snapshot,
                    "customer_key": f"c{i}",
                    "frequency": float(f[i]),
                    "recency": float(rec[i]),
                    "t": float(t[i]),
                    "monetary_value": float(rng.gamma(4.0, 15.0) if f[i] else 0.0),
                    RECENT_FREQUENCY: float(min(f[i], 1) if rec[i] > t[i] - 90 else 0),
                }
            )
    frame = pd.DataFrame(rows)
    out = add_btyd_features(frame, horizon_days=90, clv_params={"min_repeat_buyers": 10})
    first = out[out["snapshot_date"] == day]
    second = out[out["snapshot_date"] != day]
    assert first[list(BTYD_FEATURES)].isna().all().all()
    fitted = ["btyd_p_alive", "btyd_expected_purchases", "btyd_p_no_purchase"]
    assert second[fitted].notna().all().all()
    assert (second["btyd_p_alive"][second["frequency"] == 0] == 1.0).all()  # BG/NBD's rule
    assert out[list(frame.columns)].equals(frame)  # the inputs untouched
    empty = btyd_features(frame, None, horizon_days=90)
    assert empty.shape == (440, len(BTYD_FEATURES)) and empty.isna().all().all()


def test_the_resampled_roc_auc_is_sklearns_on_the_resampled_rows() -> None:
    """The bootstrap scores a resample as weights on rows sorted once; it must be the
    ROC AUC scikit-learn gives on the resampled rows themselves, ties included."""
    from sklearn.metrics import roc_auc_score

    from ml.evaluate import _RankedScores

    rng = np.random.default_rng(3)
    y = (rng.random(5_000) < 0.4).astype(int)
    score = np.round(rng.random(5_000) + 0.2 * y, 2)  # many ties
    ranked = _RankedScores(score, y)
    for _ in range(20):
        idx = rng.integers(0, len(y), len(y))
        weights = np.bincount(idx, minlength=len(y)).astype(float)
        assert ranked.auc(weights) == pytest.approx(roc_auc_score(y[idx], score[idx]), abs=1e-12)


def test_calibration_rows_with_too_few_of_both_classes_are_said_so() -> None:
    """Tiny data leaked scikit-learn's "n_splits=5 cannot be greater than the number of
    members in each class" as the command's error line; one small class still calibrates
    (the orders-only world of test_orders_only_train has 4 active customers of 44)."""
    spec = load_churn_spec({"model": {"params": {"max_iter": 10}}})
    calibration = _customers(8, 2)
    calibration["churned"] = False
    calibration.loc[:3, "churned"] = True  # 4 churned and 4 active customers
    with pytest.raises(ValueError) as caught:
        fit_churn(_customers(1000, 1), calibration, spec)
    assert str(caught.value) == (
        "the calibration rows hold 4 churned and 4 active customer(s): calibrating takes at "
        "least 5 of one of them (more customers, or more history)"
    )
    calibration = _customers(200, 2)
    calibration["churned"] = False
    calibration.loc[:2, "churned"] = True  # 3 churned customers of 200
    model = fit_churn(_customers(1000, 1), calibration, spec)
    assert model.candidate == "hgb"


def test_calibration_rows_of_one_class_say_which_and_what_to_try() -> None:
    """A shop whose customer ids are nearly one per order (4 repeat buyers of 2,996):
    "a single class: too few customers or snapshots" said neither which class nor what
    to change."""
    spec = load_churn_spec({"model": {"params": {"max_iter": 10}}})
    calibration = _customers(300, 2)
    calibration["churned"] = True
    with pytest.raises(ValueError) as caught:
        fit_churn(_customers(1000, 1), calibration, spec)
    assert str(caught.value) == (
        "the calibration rows have a single class (300 rows, all churned): none of them "
        "ordered again within 90 days (label.horizon_days): too few repeat buyers, or too "
        "little history after the snapshots; if customer_id is new with every order it "
        "names the order, not the person, else a shorter horizon (lifecycle train --set "
        "label.horizon_days=30) may do"
    )
    calibration["churned"] = False
    with pytest.raises(ValueError, match=r"\(300 rows, all active\): every one of them"):
        fit_churn(_customers(1000, 1), calibration, spec)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model": {"params": {"bogus": 1}}},
            "model.params.bogus: HistGradientBoostingClassifier has no such parameter (it has "
            "loss, learning_rate,",
        ),
        (
            {"model": {"params": {"learning_rate": -1}}},
            "model.params: The 'learning_rate' parameter of HistGradientBoostingClassifier must "
            "be a float in the range (0.0, inf). Got -1 instead.",
        ),
        (
            {"model": {"params": {"max_iter": 0}}},
            "model.params: The 'max_iter' parameter of HistGradientBoostingClassifier must be an "
            "int in the range [1, inf). Got 0 instead.",
        ),
        (
            {"candidates": [{"name": "x", "params": {"max_leaf_nodes": 1}}]},
            "candidates.x.params: The 'max_leaf_nodes' parameter",
        ),
        (
            {"snapshots": 5},
            "--set snapshots: is a section of models/churn.yaml, not a value: set one of its keys "
            "(snapshots.count, snapshots.step_days, snapshots.max_customers), e.g. --set "
            "snapshots.count=...",
        ),
        (
            {"uncertainty": {"bootstrap": 0}},
            "uncertainty.bootstrap must be a whole number of resamples >= 1; got 0",
        ),
        ({"reasons": {"top": -1}}, "reasons.top must be a whole number of reasons >= 0; got -1"),
        (
            {"promotion": {"min_improvement": float("nan")}},
            "promotion.min_improvement must be a number between -1 and 1; got nan",
        ),
        (
            {"uncertainty": {"level": 95}},
            "uncertainty.level must be a share between 0.5 and 0.999; got 95",
        ),
        (
            {"risk_bands": {"high": "high"}},
            "risk_bands.high must be a probability between 0 and 1; got 'high'",
        ),
    ],
)
def test_train_set_values_scikit_learn_or_numpy_would_refuse_are_refused_naming_the_key(
    overrides: dict, message: str
) -> None:
    """`train --set` values that ended in internal errors (TypeError, AttributeError,
    IndexError after 20 s of training), in scikit-learn's words naming no setting, or that
    were taken silently (a negative number of reasons, a NaN margin no gain can reach)."""
    with pytest.raises(ChurnSpecError) as caught:
        load_churn_spec(overrides)
    assert str(caught.value).startswith(message), str(caught.value)


def test_no_feature_left_to_train_on_is_said_so() -> None:
    spec = load_churn_spec({"model": {"params": {"max_iter": 10}}})
    train = _customers(200, 1)
    with pytest.raises(ValueError, match="^no feature is left to train on"):
        fit_churn(train, train, spec, features=["not_a_feature"])


def test_scores_alike_for_everyone_are_a_warning() -> None:
    """A tiny world's constant champion gave all 21 customers p = 0.92496, high risk,
    without a word."""
    from ml.score import _alike

    assert _alike(21, (0.92496, 0.92496)) == [
        "every one of the 21 customers has the churn probability 0.9250: the champion tells "
        "no one apart (trained on too few customers or too little history), so its risk "
        "bands and audiences take everyone or no one alike"
    ]
    assert _alike(21, (0.1, 0.9)) == []
    assert _alike(1, (0.5, 0.5)) == []  # one customer is one score
