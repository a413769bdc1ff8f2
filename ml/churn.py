"""Churn model: a scikit-learn Pipeline (ColumnTransformer + HistGradientBoosting), calibrated.

Trained on earlier snapshots of ``ml.training_set`` and calibrated on the most recent
training snapshot (isotonic or sigmoid, from ``models/churn.yaml``); the latest complete
snapshot is kept for validation (see :mod:`ml.train`). :class:`ChurnModel` is what MLflow
stores: the calibrated pipeline plus what scoring needs to explain a score — the
features it reads, the reference values of a typical customer and the risk-band
thresholds — so the registered model is self-contained.

Top reasons are local deltas: for each group of related features (recency, frequency,
web activity, ...), the probability minus the probability with that group set to the
typical customer's values (training medians / modes). The groups that move the score the
most come first, rendered as short sentences with the customer's own values. This is a
hand-written, model-agnostic explanation (one extra prediction per group) rather than
SHAP: the shap package is not a dependency, and grouped deltas read better for marketers
than per-column attributions.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from ml.features import FEATURE_SOURCES
from ml.specs import load_spec
from ml.tables import RISK_BANDS

#: Feature groups explained together, in a fixed order (ties broken by this order).
REASON_GROUPS: dict[str, tuple[str, ...]] = {
    "recency": ("days_since_last_order", "recency_over_gap", "days_to_usual_next"),
    "frequency": ("count_orders", "count_orders_90d", "count_orders_365d"),
    "gaps": (
        "mean_gap_days",
        "last_gap_days",
        "gap_trend",
        "gap_p25_days",
        "gap_median_days",
        "gap_p75_days",
        "gap_slope",
    ),
    "btyd": (
        "btyd_p_alive",
        "btyd_expected_purchases",
        "btyd_purchases_residual",
        "btyd_p_no_purchase",
    ),
    "season": ("orders_same_window_last_year",),
    "tenure": ("days_since_first_order",),
    "value": ("revenue", "avg_order_value", "btyd_expected_order_value", "value_trend"),
    "refunds": ("count_refunds", "refund_share", "refunded_value_share", "days_since_last_refund"),
    "web_recent": ("sessions_7d", "sessions_30d", "product_views_30d", "carts_30d"),
    "web_quarter": ("sessions_90d", "product_views_90d", "carts_90d"),
    "last_visit": ("days_since_last_visit",),
    "consent": ("is_marketing_opt_in",),
    "profile": ("acquisition_channel", "country_code"),
}


#: Folds of the calibration (CalibratedClassifierCV's default).
CALIBRATION_FOLDS = 5


class ChurnSpecError(ValueError):
    """The churn spec (models/churn.yaml plus overrides) is invalid."""


def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _known_keys(base: Mapping[str, Any], overrides: Mapping[str, Any], path: str = "") -> None:
    """Refuse an override of a key the spec does not have: a typo (``snapshots.stepdays``)
    would train and promote with the default, without a word."""
    import difflib

    for key, value in overrides.items():
        where = f"{path}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            hint = f" (did you mean {path}{close[0]}?)" if close else ""
            known = ", ".join(f"{path}{k}" for k in base)
            raise ChurnSpecError(
                f"--set {where}: models/churn.yaml has no such key{hint}; it has {known}"
            )
        if isinstance(base[key], Mapping) and not isinstance(value, Mapping):
            first = next(iter(base[key]), "key")
            raise ChurnSpecError(
                f"--set {where}: is a section of models/churn.yaml, not a value: set one of "
                f"its keys ({', '.join(f'{where}.{k}' for k in base[key])}), e.g. "
                f"--set {where}.{first}=..."
            )
        if where == "model.params":
            continue  # the estimator's keyword arguments: checked by _check_params
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            _known_keys(base[key], value, f"{where}.")


def _check_params(where: str, params: Mapping[str, Any]) -> None:
    """Refuse estimator parameters scikit-learn would refuse at fit time, naming the key
    (its message names the parameter, not the setting, and an unknown one was a
    TypeError)."""
    import inspect

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.utils._param_validation import InvalidParameterError

    accepted = inspect.signature(HistGradientBoostingClassifier).parameters
    for key in params:
        if key not in accepted:
            raise ChurnSpecError(
                f"{where}.{key}: HistGradientBoostingClassifier has no such parameter (it has "
                f"{', '.join(accepted)})"
            )
    try:
        # scikit-learn's own check of each parameter's type and range, without fitting
        HistGradientBoostingClassifier(**params)._validate_params()
    except InvalidParameterError as exc:
        raise ChurnSpecError(f"{where}: {exc}") from exc


def _check_number(
    spec: Mapping[str, Any], section: str, key: str, low: float, high: float | None, wanted: str
) -> None:
    """Refuse a setting that is not a finite number in [low, high] (JSON's NaN parses)."""
    import math

    value = (spec.get(section) or {}).get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (high is not None and value > high):
        raise ChurnSpecError(f"{section}.{key} must be {wanted}; got {value!r}")


def load_churn_spec(
    overrides: Mapping[str, Any] | None = None, models_dir: Path | None = None
) -> dict:
    """Return models/churn.yaml merged with `overrides` (nested dicts merge), validated."""
    try:
        spec = load_spec("churn", models_dir)
    except (OSError, ValueError) as exc:
        raise ChurnSpecError(f"cannot read the churn spec: {exc}") from exc
    _known_keys(spec, overrides or {})
    spec = _merge(spec, overrides or {})
    feats = spec.get("features", {})
    known = {*REASON_GROUPS_FEATURES}
    unknown = [
        f for f in [*feats.get("numeric", []), *feats.get("categorical", [])] if f not in known
    ]
    if unknown:
        raise ChurnSpecError(f"unknown churn feature(s) in the spec: {', '.join(unknown)}")
    if not feats.get("numeric") and not feats.get("categorical"):
        raise ChurnSpecError("the churn spec selects no features")
    # features.orders_only is the one list of the features computed from orders alone; every
    # other feature names its raw table in ml.features.FEATURE_SOURCES
    orders_only = list(feats.get("orders_only") or [])
    sourced = [f for f in orders_only if f in FEATURE_SOURCES]
    if sourced:
        raise ChurnSpecError(
            "features.orders_only lists feature(s) read from other sources: "
            + ", ".join(f"{f} ({FEATURE_SOURCES[f]})" for f in sourced)
        )
    unsourced = [
        f
        for f in [*feats.get("numeric", []), *feats.get("categorical", [])]
        if f not in orders_only and f not in FEATURE_SOURCES
    ]
    if unsourced:
        raise ChurnSpecError(
            f"feature(s) {', '.join(unsourced)} are neither in features.orders_only nor read "
            "from a source of ml.features.FEATURE_SOURCES"
        )
    # a candidate may name features a narrowed spec (overrides) leaves out: they are skipped
    categorical = set(feats.get("categorical", []))
    names: set[str] = set()
    for cand in spec.get("candidates") or [{"name": "hgb"}]:
        if not isinstance(cand, Mapping) or not cand.get("name"):
            raise ChurnSpecError(f"candidates: each needs a name, got {cand!r}")
        if cand["name"] in names:
            raise ChurnSpecError(f"candidates: {cand['name']} is declared twice")
        names.add(cand["name"])
        for f, direction in (cand.get("monotonic") or {}).items():
            if f not in known or f in categorical or direction not in (-1, 1):
                raise ChurnSpecError(
                    f"candidates.{cand['name']}.monotonic.{f}: needs a numeric feature and "
                    f"-1 or 1, got {direction!r}"
                )
        unknown = [f for f in cand.get("exclude") or [] if f not in known]
        if unknown:
            raise ChurnSpecError(
                f"candidates.{cand['name']}.exclude: unknown feature(s) {', '.join(unknown)}"
            )
    # the whole numbers that date the snapshots and size the sample (int() of "x" or 2.5
    # would otherwise fail later, in a message that names no setting)
    for section, key, wanted, nullable in (
        ("label", "horizon_days", "a whole number of days >= 1", False),
        ("snapshots", "count", "a whole number >= 1", False),
        ("snapshots", "step_days", "a whole number of days >= 1", False),
        ("uncertainty", "bootstrap", "a whole number of resamples >= 1", False),
        (
            "snapshots",
            "max_customers",
            "a whole number of customers >= 1, or null for everyone",
            True,
        ),
    ):
        value = (spec.get(section) or {}).get(key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ChurnSpecError(f"{section}.{key} must be {wanted}; got {value!r}")
    top = (spec.get("reasons") or {}).get("top", 3)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ChurnSpecError(f"reasons.top must be a whole number of reasons >= 0; got {top!r}")
    _check_number(spec, "uncertainty", "level", 0.5, 0.999, "a share between 0.5 and 0.999")
    _check_number(spec, "promotion", "min_improvement", -1.0, 1.0, "a number between -1 and 1")
    _check_number(spec, "risk_bands", "medium", 0.0, 1.0, "a probability between 0 and 1")
    _check_number(spec, "risk_bands", "high", 0.0, 1.0, "a probability between 0 and 1")
    bands = spec.get("risk_bands", {})
    if not 0 < float(bands.get("medium", 0)) < float(bands.get("high", 0)) < 1:
        raise ChurnSpecError(f"risk_bands need 0 < medium < high < 1, got {bands}")
    params = (spec.get("model") or {}).get("params") or {}
    if not isinstance(params, Mapping):
        raise ChurnSpecError(f"model.params must be a mapping of parameters; got {params!r}")
    _check_params("model.params", params)
    for cand in spec.get("candidates") or []:
        if cand.get("params"):
            _check_params(f"candidates.{cand['name']}.params", {**params, **cand["params"]})
    if spec.get("model", {}).get("calibration") not in ("isotonic", "sigmoid"):
        raise ChurnSpecError("model.calibration must be isotonic or sigmoid")
    return spec


REASON_GROUPS_FEATURES: tuple[str, ...] = tuple(f for g in REASON_GROUPS.values() for f in g)
#: A reason group moving P(churn) by less than this (absolute) is not worth a sentence.
REASON_MIN_DELTA = 0.005


@dataclass
class ChurnModel:
    """A fitted, calibrated churn classifier with what it needs to explain and band scores."""

    numeric: list[str]
    categorical: list[str]
    calibrated: Any  # CalibratedClassifierCV over a frozen Pipeline
    reference: dict[str, Any]
    medium: float
    high: float
    top_reasons: int = 3
    #: the label horizon, which the BTYD features' expected purchases cover
    horizon_days: int = 90
    #: models/clv.yaml's params for the BTYD features' fit (scoring fits the same way)
    btyd_params: dict[str, Any] | None = None
    #: the BTYD fit at the training date (the population's BG/NBD and Gamma-Gamma
    #: parameters; None when the data could not fit them), which scoring applies to each
    #: customer's RFM of its day: learned once with the model, like its trees, so another
    #: person's data (erased, or a day's arrivals) does not move everyone's features
    #: until the next training. ``btyd_frozen`` False: a model from before, which
    #: scoring's own fit on the day serves.
    btyd_fit: Any = None
    btyd_frozen: bool = False
    #: the spec candidate this model is (``candidates`` of models/churn.yaml)
    candidate: str = "hgb"
    #: every candidate's validation and holdout ROC AUC from the run that chose this one
    candidates: dict[str, dict[str, float]] | None = None

    @property
    def uses_btyd(self) -> bool:
        """Return whether the model reads BTYD features (scoring then fits BG/NBD first)."""
        return any(f.startswith("btyd_") for f in self.features)

    @property
    def features(self) -> list[str]:
        """Return the input columns the model reads, in order."""
        return [*self.numeric, *self.categorical]

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.features if c not in X.columns]
        if missing:
            raise ValueError(f"churn model input lacks column(s) {', '.join(missing)}")
        frame = X[self.features].copy()
        for col in self.numeric:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        for col in self.categorical:
            frame[col] = frame[col].astype("object").where(frame[col].notna(), None)
        return frame

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Return calibrated [P(stays), P(churns)] per row."""
        return self.calibrated.predict_proba(self._frame(X))

    def churn_probability(self, X: pd.DataFrame) -> np.ndarray:
        """Return the calibrated churn probability per row, clipped to [0, 1]."""
        return np.clip(self.predict_proba(X)[:, 1], 0.0, 1.0)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Return the churn probability per row (what the MLflow pyfunc flavour serves)."""
        return self.churn_probability(X)

    def risk_band(self, probability: np.ndarray) -> np.ndarray:
        """Return 'low' / 'medium' / 'high' per probability."""
        low, medium, high = RISK_BANDS
        return np.where(
            probability >= self.high, high, np.where(probability >= self.medium, medium, low)
        )

    def reason_deltas(self, X: pd.DataFrame, base: np.ndarray | None = None) -> pd.DataFrame:
        """Return, per row and reason group, P(churn) minus P(churn) with the group typical."""
        return self._deltas(X, base)[1]

    def _deltas(
        self, X: pd.DataFrame, base: np.ndarray | None = None
    ) -> tuple[np.ndarray, pd.DataFrame]:
        """Return P(churn) per row (`base` when given) and the reason deltas.

        The rows are encoded once (the pipeline's prepare step); each group's variant sets
        that group's encoded columns to the typical customer's encoded values, and only
        for rows whose group differs from them (the others' delta is 0). Each tree's leaf
        value is computed once per row; a variant re-evaluates only the trees that split
        on the group's columns (about 40% of the tree evaluations of predicting every
        variant afresh) and sums the leaves in the booster's own order, so the result is
        bit for bit the calibrated pipeline's prediction on the modified rows (tested).
        """
        frame = self._frame(X).reset_index(drop=True)
        groups = {
            group: [c for c in cols if c in self.features] for group, cols in REASON_GROUPS.items()
        }
        groups = {group: cols for group, cols in groups.items() if cols}
        if frame.empty:
            return np.empty(0), pd.DataFrame({group: np.zeros(0) for group in groups})
        trees = _TreeSums(self.calibrated)
        prepare = trees.prepare
        encoded = np.asarray(prepare.transform(frame), dtype="float64")
        leaves = trees.leaf_values(encoded)
        if base is None:
            base = trees.probability(leaves)
        base = np.asarray(base)
        typical_row = self._frame(pd.DataFrame([{c: self.reference[c] for c in self.features}]))
        typical = np.asarray(prepare.transform(typical_row), dtype="float64")[0]
        position = {name: i for i, name in enumerate(prepare.get_feature_names_out())}

        def delta(cols: list[str]) -> np.ndarray:
            differs = np.zeros(len(frame), dtype=bool)
            for col in cols:
                ref = self.reference[col]
                values = frame[col]
                if ref is None or (isinstance(ref, float) and np.isnan(ref)):
                    differs |= values.notna().to_numpy()
                else:
                    differs |= (values != ref).to_numpy() | values.isna().to_numpy()
            rows = np.flatnonzero(differs)
            at = [position[c] for c in cols]
            variant = encoded[rows]
            variant[:, at] = typical[at]
            # only the trees that split on the group's columns can change their leaf
            changed = leaves[rows]
            trees.refresh(changed, variant, at)
            out = np.zeros(len(frame))
            out[rows] = base[rows] - trees.probability(changed)
            return out

        # the groups' variants are independent and the trees' Cython loop releases the GIL:
        # one group per core, each call single-threaded (see _TreeSums.n_threads)
        with ThreadPoolExecutor(max_workers=_workers(len(groups))) as pool:
            deltas = dict(zip(groups, pool.map(delta, groups.values()), strict=True))
        return base, pd.DataFrame(deltas)

    def explain(self, X: pd.DataFrame, base: np.ndarray | None = None) -> list[str]:
        """Return per row the top reasons, strongest first, '; '-separated sentences.

        A reason is shown when its delta is at least 0.005 in absolute value; a row with
        none reads "typical customer profile". Vectorized: the sentences are rendered
        only for the cells shown (each group once, over the rows that show it) and joined
        column by column, not row by row (same text as the row-wise loop it replaced,
        tested exactly).
        """
        return self._explain(X, self.reason_deltas(X, base))

    def probability_and_reasons(self, X: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """Return :meth:`churn_probability` and :meth:`explain` of `X`, the trees run once."""
        base, deltas = self._deltas(X)
        return base, self._explain(X, deltas)

    def _explain(self, X: pd.DataFrame, deltas: pd.DataFrame) -> list[str]:
        records = X.reset_index(drop=True)
        values = deltas.to_numpy()
        top = np.argsort(-np.abs(values), axis=1, kind="stable")[:, : self.top_reasons]
        chosen = values[np.arange(len(values))[:, None], top]
        shown = np.abs(chosen) >= REASON_MIN_DELTA
        texts = np.full(top.shape, "", dtype=object)
        for g, group in enumerate(deltas.columns):
            cells = (top == g) & shown  # at most one cell per row: top holds distinct groups
            rows = np.flatnonzero(cells.any(axis=1))
            if len(rows):
                texts[cells] = describe_column(group, records.iloc[rows])  # row-major order
        effect = np.where(chosen > 0, " (raises risk)", " (lowers risk)").astype(object)
        out = np.full(len(values), "", dtype=object)
        for k in range(top.shape[1]):
            sep = np.where(out == "", "", "; ").astype(object)
            out = np.where(shown[:, k], out + sep + texts[:, k] + effect[:, k], out)
        return np.where(out == "", "typical customer profile", out).tolist()


class _Decisions(ClassifierMixin, BaseEstimator):
    """A fitted binary classifier whose decision function is its input's one column.

    Lets the calibrated classifier's own code (sklearn's) turn decision values computed
    elsewhere into calibrated probabilities.
    """

    def __init__(self, classes: np.ndarray) -> None:
        self.classes = classes
        self.classes_ = classes

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Return the decision values (the one column of `X`)."""
        return np.asarray(X)[:, 0]


class _TreeSums:
    """The boosted trees of a calibrated HistGradientBoosting classifier, tree by tree.

    ``leaf_values`` is what ``_raw_predict`` computes, kept per tree (rows x trees);
    ``probability`` sums them as ``_raw_predict`` does (baseline, then each tree in
    order, one float addition at a time) and calibrates the sum with the calibrated
    classifier itself. Uses the booster's private predictors (scikit-learn is pinned in
    requirements.lock; ``test_vectorized_explain_equals_the_rowwise_logic_exactly``
    compares with the public prediction bit for bit).
    """

    def __init__(self, calibrated: Any) -> None:
        pipelines = [
            cc.estimator.estimator if isinstance(cc.estimator, FrozenEstimator) else cc.estimator
            for cc in calibrated.calibrated_classifiers_
        ]
        if any(p is not pipelines[0] for p in pipelines):
            raise ValueError("the calibrated classifiers do not share one fitted pipeline")
        #: the pipeline's encoding step: the rows are encoded once, then varied
        self.prepare = pipelines[0].named_steps["prepare"]
        self.booster = pipelines[0].steps[-1][1]
        if self.booster.n_trees_per_iteration_ != 1:
            raise ValueError("expected a binary booster under the calibration")
        self.predictors = [iteration[0] for iteration in self.booster._predictors]
        self.known, self.f_idx_map = self.booster._bin_mapper.make_known_categories_bitsets()
        # One OpenMP thread per call: a chunk makes ~700 calls of ~50k rows, and each
        # parallel call's fork/join and spin-waiting cost more than a second core gives.
        # Measured (98k rows, 2-core machine under load): CPU 12.5-14.5 s and wall 13-25 s
        # with 2 threads, 6.1-6.3 s and 8-11 s with 1 (and 12.7-13.8 s / 15-24 s for the
        # stacked predictions this replaced).
        self.n_threads = 1
        # a tree's feature index is a column of the booster's own preprocessing, which
        # puts the categorical columns first: map it back to the input column
        categorical = self.booster.is_categorical_
        n_features = self.booster.n_features_in_
        order = (
            np.arange(n_features)
            if self.booster._preprocessor is None or categorical is None
            else np.concatenate([np.flatnonzero(categorical), np.flatnonzero(~categorical)])
        )
        self.splits = [
            {int(order[f]) for f in p.nodes["feature_idx"][~p.nodes["is_leaf"].astype(bool)]}
            for p in self.predictors
        ]
        # the calibrated classifier itself (shallow copies, nothing refitted), reading
        # decision values instead of rows: sklearn's own calibration code
        self.calibrated = copy.copy(calibrated)
        self.calibrated.calibrated_classifiers_ = []
        for cc in calibrated.calibrated_classifiers_:
            view = copy.copy(cc)
            view.estimator = _Decisions(self.booster.classes_)
            self.calibrated.calibrated_classifiers_.append(view)

    def _leaf(self, t: int, X: np.ndarray) -> np.ndarray:
        return self.predictors[t].predict(X, self.known, self.f_idx_map, self.n_threads)

    def leaf_values(self, encoded: np.ndarray) -> np.ndarray:
        """Return every row's value of every tree (rows x trees, column-major).

        The trees are shared out between the cores, each call single-threaded."""
        X = self.booster._preprocess_X(encoded, reset=False)
        out = np.empty((len(X), len(self.predictors)), dtype="float64", order="F")

        def fill(t: int) -> None:
            out[:, t] = self._leaf(t, X)

        with ThreadPoolExecutor(max_workers=_workers(len(self.predictors))) as pool:
            list(pool.map(fill, range(len(self.predictors))))
        return out

    def refresh(self, leaves: np.ndarray, variant: np.ndarray, columns: list[int]) -> None:
        """Recompute in place the values of the trees splitting on `columns` for `variant`."""
        if not len(variant):
            return
        wanted = set(columns)
        X = self.booster._preprocess_X(variant, reset=False)
        for t, used in enumerate(self.splits):
            if used & wanted:
                leaves[:, t] = self._leaf(t, X)

    def probability(self, leaves: np.ndarray) -> np.ndarray:
        """Return the calibrated P(churn) of rows with these tree values, clipped to [0, 1]."""
        if not len(leaves):
            return np.empty(0)
        raw = np.zeros((len(leaves), 1), dtype=self.booster._baseline_prediction.dtype, order="F")
        raw += self.booster._baseline_prediction
        for t in range(leaves.shape[1]):
            raw[:, 0] += leaves[:, t]
        return np.clip(self.calibrated.predict_proba(raw)[:, 1], 0.0, 1.0)


def _workers(tasks: int) -> int:
    """Return how many threads share `tasks` independent tree evaluations: the cores this
    process may use (at most 4; a task is tens of milliseconds, more threads only queue)."""
    return max(1, min(tasks, len(os.sched_getaffinity(0)), 4))


def _ints(frame: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(frame[col], errors="coerce").fillna(0).round().astype("int64")


def _count(n: pd.Series, word: str) -> pd.Series:
    return n.astype(str) + " " + word + np.where(n == 1, "", "s")


def describe_column(group: str, frame: pd.DataFrame) -> np.ndarray:
    """Return, per row of `frame`, a short sentence with the customer's values of a group."""
    f = frame
    if group == "recency":
        text = "last order " + _count(_ints(f, "days_since_last_order"), "day") + " ago"
    elif group == "frequency":
        text = (
            _count(_ints(f, "count_orders"), "order")
            + " in total, "
            + _ints(f, "count_orders_365d").astype(str)
            + " in the last year"
        )
    elif group == "gaps":
        mean = pd.to_numeric(f["mean_gap_days"], errors="coerce")
        text = (
            "last gap between orders "
            + _count(_ints(f, "last_gap_days"), "day")
            + " (typically "
            + mean.fillna(0).round().astype("int64").astype(str)
            + ")"
        ).where(mean.notna(), "no repeat purchase yet")
    elif group == "btyd":
        alive = pd.to_numeric(f["btyd_p_alive"], errors="coerce")
        expected = pd.to_numeric(f["btyd_expected_purchases"], errors="coerce")
        text = (
            "purchase model: "
            + (alive.fillna(0) * 100).round().astype("int64").astype(str)
            + "% likely still active, "
            + expected.fillna(0).round(1).astype(str)
            + " purchases expected"
        ).where(alive.notna(), "purchase model not fitted")
    elif group == "season":
        n = pd.to_numeric(f["orders_same_window_last_year"], errors="coerce")
        text = (
            _count(_ints(f, "orders_same_window_last_year"), "order")
            + " in the same season last year"
        ).where(n.notna(), "no purchase history a year ago")
    elif group == "tenure":
        text = "customer for " + _count(_ints(f, "days_since_first_order"), "day")
    elif group == "value":
        text = "average order $" + _ints(f, "avg_order_value").astype(str)
    elif group == "refunds":
        n = _ints(f, "count_refunds")
        text = _count(n, "refunded order").where(n > 0, "no refunds")
    elif group == "web_recent":
        text = (
            _count(_ints(f, "sessions_30d"), "web session")
            + " and "
            + _count(_ints(f, "carts_30d"), "cart")
            + " in the last 30 days"
        )
    elif group == "web_quarter":
        text = _count(_ints(f, "sessions_90d"), "web session") + " in the last 90 days"
    elif group == "last_visit":
        days = pd.to_numeric(f["days_since_last_visit"], errors="coerce")
        text = (
            "last website visit " + _count(_ints(f, "days_since_last_visit"), "day") + " ago"
        ).where(days.notna(), "never visited the website")
    elif group == "consent":
        v = pd.to_numeric(f["is_marketing_opt_in"], errors="coerce")
        text = pd.Series(
            np.where(
                v.isna(),
                "marketing consent unknown",
                np.where(v == 1, "opted in to marketing", "opted out of marketing"),
            )
        )
    elif group == "profile":
        channel = f["acquisition_channel"].fillna("unknown channel").astype(str)
        country = f["country_code"].fillna("unknown country").astype(str)
        text = "acquired via " + channel + " (" + country + ")"
    else:
        raise KeyError(group)
    return np.asarray(text, dtype=object)


def make_pipeline(
    numeric: Sequence[str],
    categorical: Sequence[str],
    params: Mapping,
    monotonic: Mapping[str, int] | None = None,
) -> Pipeline:
    """Return an unfitted Pipeline: ordinal-encode categories, then HistGradientBoosting.

    `monotonic` maps numeric features to +1 (P(churn) may only rise with it) or -1 (only
    fall); features not named, and categories, are unconstrained.
    """
    transformer = ColumnTransformer(
        [
            ("numeric", "passthrough", list(numeric)),
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                list(categorical),
            ),
        ],
        verbose_feature_names_out=False,
    )
    n_num, n_cat = len(numeric), len(categorical)
    categorical_mask = [False] * n_num + [True] * n_cat
    constraints = None
    if monotonic and any(f in monotonic for f in numeric):
        # positional (the ColumnTransformer hands the booster an array): numeric, then categories
        constraints = [int(monotonic.get(f, 0)) for f in numeric] + [0] * n_cat
    classifier = HistGradientBoostingClassifier(
        categorical_features=categorical_mask if n_cat else None,
        monotonic_cst=constraints,
        **dict(params),
    )
    return Pipeline([("prepare", transformer), ("classify", classifier)])


def _reference(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> dict:
    ref: dict[str, Any] = {}
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce").dropna()
        ref[col] = float(values.median()) if len(values) else float("nan")
    for col in categorical:
        values = frame[col].dropna()
        ref[col] = str(values.mode().iloc[0]) if len(values) else None
    return ref


def fit_churn(
    train: pd.DataFrame,
    calibration: pd.DataFrame,
    spec: Mapping[str, Any],
    *,
    features: Sequence[str] | None = None,
    candidate: Mapping[str, Any] | None = None,
    btyd_params: Mapping[str, Any] | None = None,
) -> ChurnModel:
    """Return a ChurnModel fitted on `train` and calibrated on `calibration` (labelled rows).

    `features` narrows the spec's feature list (e.g. the orders-only variant); `candidate`
    (one of the spec's ``candidates``) narrows it further (``exclude``), overrides
    parameters (``params``) and constrains directions (``monotonic``).
    """
    candidate = dict(candidate or {"name": "hgb"})
    excluded = set(candidate.get("exclude") or [])
    if features is not None:
        features = [f for f in features if f not in excluded]
    else:
        features = [
            f
            for f in [*spec["features"]["numeric"], *spec["features"].get("categorical", [])]
            if f not in excluded
        ]
    numeric = [f for f in spec["features"]["numeric"] if features is None or f in features]
    categorical = [
        f for f in spec["features"].get("categorical", []) if features is None or f in features
    ]
    if not numeric and not categorical:
        raise ValueError(
            "no feature is left to train on: the spec's features (less a candidate's "
            "exclude, and those dropped for want of a source or of any value) are none"
        )
    for name, frame in (("training", train), ("calibration", calibration)):
        labels = frame["churned"]
        if labels.isna().any():
            raise ValueError(f"the {name} rows include unlabelled snapshots")
        if labels.nunique() < 2:
            horizon = int(spec["label"]["horizon_days"])
            churned = bool(labels.iloc[0])
            why = (
                f"none of them ordered again within {horizon} days (label.horizon_days): "
                "too few repeat buyers, or too little history after the snapshots; if "
                "customer_id is new with every order it names the order, not the person, "
                f"else a shorter horizon (lifecycle train --set label.horizon_days="
                f"{max(horizon // 3, 7)}) may do"
                if churned
                else f"every one of them ordered again within {horizon} days: no churn to learn"
            )
            raise ValueError(
                f"the {name} rows have a single class ({len(frame)} rows, all "
                f"{'churned' if churned else 'active'}): {why}"
            )
        counts = labels.astype(bool).value_counts()
        if name == "calibration" and counts.max() < CALIBRATION_FOLDS:
            # scikit-learn's words were "n_splits=5 cannot be greater than the number of
            # members in each class"; its stratified folds refuse only when every class is
            # smaller than the fold count (one small class is a warning, and calibrates)
            raise ValueError(
                f"the calibration rows hold {counts.get(True, 0)} churned and "
                f"{counts.get(False, 0)} active customer(s): calibrating takes at least "
                f"{CALIBRATION_FOLDS} of one of them (more customers, or more history)"
            )
    params = {**spec["model"]["params"], **(candidate.get("params") or {})}
    monotonic = candidate.get("monotonic") or {}
    pipeline = make_pipeline(numeric, categorical, params, monotonic)
    x_train = train[[*numeric, *categorical]]
    pipeline.fit(x_train, train["churned"].astype(int).to_numpy())
    calibrated = CalibratedClassifierCV(
        FrozenEstimator(pipeline), method=spec["model"]["calibration"]
    )
    calibrated.fit(
        calibration[[*numeric, *categorical]], calibration["churned"].astype(int).to_numpy()
    )
    return ChurnModel(
        numeric=numeric,
        categorical=categorical,
        calibrated=calibrated,
        reference=_reference(train, numeric, categorical),
        medium=float(spec["risk_bands"]["medium"]),
        high=float(spec["risk_bands"]["high"]),
        top_reasons=int(spec.get("reasons", {}).get("top", 3)),
        horizon_days=int(spec["label"]["horizon_days"]),
        btyd_params=dict(btyd_params or {}),
        candidate=str(candidate.get("name", "hgb")),
    )
