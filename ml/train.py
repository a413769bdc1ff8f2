"""The training step: training sets → churn (+ orders-only variant) → CLV → segmentation →
evaluation → MLflow registry → promotion.

:func:`train` runs it all (``lifecycle train [--as-of D]`` and the training DAG); the
stages are separate functions too (:func:`build_training_sets`, :func:`train_churn`,
:func:`train_clv`, :func:`train_segmentation`, :func:`evaluate`,
:func:`register_and_promote`). Everything is keyed on the as-of date A, the date the
warehouse's data is complete to: the holdout snapshot is A − horizon (the latest one whose
label window is complete), the calibration snapshot one step before it, the training
snapshots further back. CLV and segmentation are fitted on the customers as of A, the
date scoring starts from.

Promotion: the new churn model becomes ``champion`` when there is none, or when its ROC
AUC on this run's holdout beats the current champion's ROC AUC *on the same holdout* (the
champion is re-scored) by ``promotion.min_improvement`` of ``models/churn.yaml``;
otherwise it is ``challenger`` and the reason is logged and tagged. CLV and segmentation
retrains replace their champions (see docs/ml.md).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lifecycle.locks import WAREHOUSE, holds_lock
from lifecycle.settings import Settings
from ml import features as ft
from ml import tracking
from ml.churn import ChurnModel, fit_churn, load_churn_spec
from ml.evaluate import (
    bootstrap_auc_difference,
    classification_metrics,
    evaluate_scorers,
    oracle_churn_probability,
)

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """The training step cannot run (no data, too few customers, missing warehouse layers)."""


@dataclass
class Frames:
    """The labelled snapshots split by time, and the customers as of the as-of date."""

    as_of: dt.date
    holdout_date: dt.date
    calibration_date: dt.date
    train_dates: list[dt.date]
    train: pd.DataFrame
    calibration: pd.DataFrame
    holdout: pd.DataFrame
    current: pd.DataFrame
    #: feature -> why the models leave it out (its source is absent, or it has no value)
    dropped: dict[str, str] = field(default_factory=dict)
    #: the BTYD fit of `current` (None: the data could not fit it), saved with the churn model
    btyd_fit: Any = None


@dataclass
class TrainResult:
    """What one training run did: data, metrics against baselines, versions, promotions."""

    as_of: dt.date
    snapshot_rows: dict[str, int]
    holdout_date: dt.date
    holdout_rows: int
    metrics: dict[str, dict[str, float]]
    oracle: dict[str, float] | None
    versions: dict[str, str]
    promotions: dict[str, dict[str, Any]]
    run_ids: dict[str, str]
    tracking_uri: str
    elapsed_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    #: registered model -> why it was not trained this run (its champion, if any, stays)
    not_trained: dict[str, str] = field(default_factory=dict)
    #: "<scorer>_vs_<other>" -> ROC AUC difference and its bootstrap interval on the holdout
    uncertainty: dict[str, dict[str, float]] = field(default_factory=dict)
    #: candidate -> validation and holdout ROC AUC; the chosen one is the model
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    chosen: str | None = None

    def summary(self) -> str:
        """Return a short readable report for a task log or the CLI."""
        lines = [
            f"training as of {self.as_of}: holdout {self.holdout_date} "
            f"({self.holdout_rows} customers), snapshots "
            + ", ".join(f"{d}: {n}" for d, n in self.snapshot_rows.items()),
            f"{'scorer':<16} {'ROC AUC':>8} {'PR AUC':>7} {'Brier':>6} {'logloss':>7} "
            f"{'ECE':>6} {'lift@10%':>8}",
        ]
        for name, m in self.metrics.items():
            lines.append(
                f"{name:<16} {m['roc_auc']:>8.4f} {m['pr_auc']:>7.4f} {m['brier']:>6.4f} "
                f"{m['log_loss']:>7.4f} {m['ece']:>6.4f} {m['lift_top_decile']:>8.2f}"
            )
        for name, c in self.candidates.items():
            mark = " (chosen)" if name == self.chosen else ""
            lines.append(
                f"candidate {name}: validation ROC AUC {c['validation_roc_auc']:.4f}, "
                f"holdout {c['holdout_roc_auc']:.4f}{mark}"
            )
        for name, u in self.uncertainty.items():
            lines.append(
                f"{name}: ROC AUC difference {u['diff']:+.4f}, {u['level']:.0%} bootstrap "
                f"interval [{u['low']:+.4f}, {u['high']:+.4f}]"
            )
        if self.oracle:
            lines.append(
                f"oracle (ground truth) ROC AUC {self.oracle['oracle_roc_auc']:.4f} vs model "
                f"{self.oracle['model_roc_auc']:.4f} on the same {int(self.oracle['n'])} customers"
            )
        for name, p in self.promotions.items():
            state = "champion" if p["promoted"] else "challenger"
            lines.append(f"{name} v{p['version']} -> {state}: {p['reason']}")
        for name, why in self.not_trained.items():
            lines.append(f"{name} not trained: {why}")
        lines.append(f"MLflow: {self.tracking_uri}; {self.elapsed_s:.1f}s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-able facts (for XCom and logs)."""
        return json.loads(
            json.dumps(
                {
                    "as_of": self.as_of,
                    "holdout_date": self.holdout_date,
                    "holdout_rows": self.holdout_rows,
                    "snapshot_rows": self.snapshot_rows,
                    "metrics": self.metrics,
                    "oracle": self.oracle,
                    "versions": self.versions,
                    "promotions": self.promotions,
                    "run_ids": self.run_ids,
                    "not_trained": self.not_trained,
                    "uncertainty": self.uncertainty,
                    "candidates": self.candidates,
                    "chosen": self.chosen,
                    "elapsed_s": round(self.elapsed_s, 2),
                },
                default=str,
            )
        )


# ------------------------------------------------------------------------------ stages


def _connect(settings: Settings):
    from lifecycle import warehouse as wh

    return wh.connect(wh.warehouse_url(settings))


def data_as_of(settings: Settings) -> dt.date:
    """Return the date the warehouse was last built as of (marts.customers.as_of_date)."""
    with _connect(settings) as conn:
        if conn.execute("select to_regclass('marts.customers')").fetchone()[0] is None:
            raise TrainError("the warehouse has no marts: run `lifecycle transform --date D`")
        value = conn.execute("select max(as_of_date) from marts.customers").fetchone()[0]
    if value is None:
        raise TrainError("marts.customers is empty: load data and run `lifecycle transform`")
    return value


def _snapshot_dates(as_of: dt.date, spec: Mapping[str, Any]) -> list[dt.date]:
    """Return the spec's snapshot dates of `as_of`, latest first (holdout, calibration, ...)."""
    return ft.snapshot_dates(
        as_of,
        horizon_days=int(spec["label"]["horizon_days"]),
        count=int(spec["snapshots"]["count"]),
        step_days=int(spec["snapshots"]["step_days"]),
    )


def build_training_sets(
    as_of: dt.date, settings: Settings, spec: Mapping[str, Any]
) -> dict[dt.date, int]:
    """Write the labelled snapshots of `as_of` to ml.training_set; return rows per snapshot."""
    horizon = int(spec["label"]["horizon_days"])
    dates = _snapshot_dates(as_of, spec)
    with _connect(settings) as conn:
        return ft.build_training_set(
            conn,
            dates,
            horizon_days=horizon,
            data_as_of=as_of,
            max_customers=spec["snapshots"].get("max_customers"),
        )


def load_frames(
    as_of: dt.date, settings: Settings, spec: Mapping[str, Any], *, holdout_only: bool = False
) -> Frames:
    """Return the training, calibration and holdout snapshots and the customers as of `as_of`.

    `holdout_only`: the holdout and calibration snapshots alone (train and current empty),
    for the stages that only score them (evaluate, promote): the same rows and features,
    since each snapshot's BTYD fit is its own, without reading the training snapshots or
    computing today's features (at 1M customers about 100 s and GBs per stage).
    """
    horizon = int(spec["label"]["horizon_days"])
    dates = _snapshot_dates(as_of, spec)
    from lifecycle.availability import absent_entities

    with _connect(settings) as conn:
        labelled = ft.read_training_set(conn, dates[:2] if holdout_only else dates)
        if not labelled.empty and labelled["churned"].astype(bool).all():
            _no_orders_after(conn, as_of, dates[0])
            _no_repeat_buyers(conn)
        if not holdout_only:  # what the holdout-only frames leave empty is not read
            current = ft.compute_features(conn, [as_of], horizon_days=horizon, data_as_of=as_of)
            absent = absent_entities(settings, conn, set(ft.FEATURE_SOURCES.values()))
    # BG/NBD + Gamma-Gamma fitted per snapshot on that snapshot's RFM (data <= D only)
    params = btyd_params()
    labelled = ft.add_btyd_features(labelled, horizon_days=horizon, clv_params=params)
    if holdout_only:
        by_date = _by_snapshot(labelled, dates[:2])
        if any(f.empty for f in by_date.values()):
            raise TrainError(f"no eligible customers at the holdout snapshots {dates[:2]}")
        none = labelled.iloc[0:0]
        return Frames(
            as_of=as_of,
            holdout_date=dates[0],
            calibration_date=dates[1],
            train_dates=[],
            train=none,
            calibration=by_date[dates[1]].reset_index(drop=True),
            holdout=by_date[dates[0]].reset_index(drop=True),
            current=none,
            btyd_fit=None,
            dropped={},
        )
    current, current_fit = _with_btyd(current, as_of, horizon, params)
    by_date = _by_snapshot(labelled, dates)
    reached = [d for d in dates if not by_date[d].empty]
    if len(reached) >= 3 and reached == dates[: len(reached)]:
        # a history that starts after the oldest snapshots (a shop of under a year) trains
        # on the snapshots it reaches instead of asking every user to tune snapshots.count
        if len(reached) < len(dates):
            log.warning(
                "the data starts after snapshot(s) %s: training on the %d of %d snapshots "
                "it reaches",
                ", ".join(str(d) for d in dates[len(reached) :]),
                len(reached),
                len(dates),
            )
        dates = reached
    if len(reached) < len(dates):
        empty = [str(d) for d, f in by_date.items() if f.empty]
        step = spec["snapshots"]["step_days"]
        raise TrainError(
            f"no eligible customers at snapshot(s) {', '.join(empty)}: training needs 3 "
            f"snapshots {step} days apart (holdout, calibration, training), the latest "
            f"{horizon} days before {as_of} (the churn horizon), so a customer with a completed "
            f"order by {dates[2]}; the data does not reach back that far (lower "
            "snapshots.step_days or label.horizon_days with `lifecycle train --set`)"
        )
    if current.empty:
        raise TrainError(f"no customer with a completed order by {as_of}")
    train = pd.concat([by_date[d] for d in dates[2:]], ignore_index=True)
    return Frames(
        as_of=as_of,
        holdout_date=dates[0],
        calibration_date=dates[1],
        train_dates=dates[2:],
        train=train,
        calibration=by_date[dates[1]].reset_index(drop=True),
        holdout=by_date[dates[0]].reset_index(drop=True),
        current=current,
        btyd_fit=current_fit,
        dropped=ft.dropped_features(
            [*ft.NUMERIC_FEATURES, *ft.BTYD_FEATURES, *ft.CATEGORICAL_FEATURES], absent, train
        ),
    )


def load_current(
    as_of: dt.date, settings: Settings, spec: Mapping[str, Any], features: Sequence[str] = ()
) -> Frames:
    """Return the customers as of `as_of` (``current``, with their BTYD columns and fit) and
    which of `features` the models leave out, without reading the labelled snapshots.

    What the CLV and segmentation stages use: both fit on the customers as of `as_of`
    alone, and at 1M customers the whole load (:func:`load_frames`: 3.1M snapshot rows of
    about 60 columns and a BTYD fit per snapshot) cost each of them about 100 s and 2.6 GB
    for nothing. ``current`` and ``btyd_fit`` are those of the whole load; ``dropped`` is
    its entry for each of `features`: absent sources as there, and "no value in any
    training row" from non-null counts taken in the database over the training snapshots'
    rows. The BTYD columns are not stored in ml.training_set (each snapshot's fit adds
    them): a feature list naming one is judged on the whole load.
    """
    if any(f in ft.BTYD_FEATURES for f in features):
        whole = load_frames(as_of, settings, spec)
        return replace(whole, dropped={f: w for f, w in whole.dropped.items() if f in features})
    horizon = int(spec["label"]["horizon_days"])
    dates = _snapshot_dates(as_of, spec)
    from lifecycle.availability import absent_entities

    with _connect(settings) as conn:
        current = ft.compute_features(conn, [as_of], horizon_days=horizon, data_as_of=as_of)
        if current.empty:
            raise TrainError(f"no customer with a completed order by {as_of}")
        dropped: dict[str, str] = {}
        if features:
            absent = absent_entities(settings, conn, set(ft.FEATURE_SOURCES.values()))
            dropped = ft.dropped_features(features, absent)
            counted = [f for f in features if f in ft.COLUMNS and f not in dropped]
            counts = ft.training_counts(conn, dates[2:], counted)
            rows = counts.pop("*")
            if rows:
                empty = f"no value in any of the {rows} training rows"
                dropped |= {f: empty for f, n in counts.items() if not n}
            else:  # a history shorter than the snapshots: today's customers say what is fed
                empty = f"no value for any of the {len(current)} customers of {as_of}"
                dropped |= {f: empty for f in counted if current[f].isna().all()}
    current, current_fit = _with_btyd(current, as_of, horizon, btyd_params())
    none = current.iloc[0:0]
    return Frames(
        as_of=as_of,
        holdout_date=dates[0],
        calibration_date=dates[1],
        train_dates=dates[2:],
        train=none,
        calibration=none,
        holdout=none,
        current=current,
        btyd_fit=current_fit,
        dropped={f: dropped[f] for f in features if f in dropped},
    )


def _with_btyd(
    current: pd.DataFrame, as_of: dt.date, horizon: int, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, Any]:
    """Return today's features with their BTYD columns, and the fit at the training date
    (kept: it travels with the churn models, see train_churn)."""
    fit = None if current.empty else ft.fit_btyd(current, params, label=as_of)
    return current.assign(**ft.btyd_features(current, fit, horizon_days=horizon)), fit


def _by_snapshot(labelled: pd.DataFrame, dates: list[dt.date]) -> dict[dt.date, pd.DataFrame]:
    """Return the rows of each snapshot date: slices of `labelled`, not copies.

    The rows come ordered by snapshot date (read_training_set); a slice of them shares the
    frame's memory (copy-on-write), where a boolean mask would copy every snapshot and hold
    the training rows twice (at 1M customers, 3.1M rows of about 60 columns).
    """
    column = labelled["snapshot_date"]
    if not column.is_monotonic_increasing:
        return {d: labelled[column == d] for d in dates}
    values = column.to_numpy()
    return {
        d: labelled.iloc[np.searchsorted(values, d, "left") : np.searchsorted(values, d, "right")]
        for d in dates
    }


def _no_orders_after(conn, as_of: dt.date, newest_snapshot: dt.date) -> None:
    """Raise TrainError when nobody orders after the snapshots: the data ends before them.

    Every label is "churned" then, and a churn model has one class to learn from: the
    usual cause is a training date past the end of an export (run for "today" on a file
    of last year), said with the date the data does reach.
    """
    newest = conn.execute("select max(last_order_date) from marts.customers").fetchone()[0]
    if newest is None or newest > newest_snapshot:
        return
    raise TrainError(
        f"every customer is labelled churned at every snapshot: the newest order in the data "
        f"is of {newest}, {(as_of - newest).days} days before {as_of}, and the newest snapshot "
        f"({newest_snapshot}) looks for orders after it; train as of a day the data reaches "
        f"(`lifecycle train --as-of {newest}`, or the pipeline's --date {newest})"
    )


def _no_repeat_buyers(conn) -> None:
    """Raise TrainError when no customer ever ordered twice: nobody can be seen to stay.

    A churn label is "no order in the horizon after the snapshot", so with one order per
    customer every label is "churned". The usual cause is a customer id that names an
    order, not a person (Olist's orders file: its ``customer_id`` is new with every order,
    the person is ``customer_unique_id`` in the customers file).
    """
    row = conn.execute(
        "select count(*), count(*) filter (where count_orders > 1) from marts.customers "
        "where count_orders > 0"
    ).fetchone()
    buyers, repeat = row
    if not buyers or repeat:
        return
    raise TrainError(
        f"every customer is labelled churned at every snapshot: none of the {buyers:,} buyers "
        "ordered more than once, so no one is seen to stay; if the orders' customer_id names "
        "an order rather than a person (a new id with every order), map the column that names "
        "the person (e.g. an email, or Olist's customer_unique_id) in the sources file"
    )


def btyd_params() -> dict[str, Any]:
    """Return models/clv.yaml's params: the BTYD features are fitted like the CLV model."""
    from ml.specs import load_spec

    return dict(load_spec("clv").get("params") or {})


def churn_features(frames: Frames, spec: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Return the spec's churn features the data can feed, and the dropped ones with why."""
    wanted = [*spec["features"]["numeric"], *spec["features"].get("categorical", [])]
    kept = [f for f in wanted if f not in frames.dropped]
    dropped = {f: frames.dropped[f] for f in wanted if f in frames.dropped}
    if not kept:
        raise TrainError(
            "every churn feature is dropped: "
            + "; ".join(f"{f}: {why}" for f, why in dropped.items())
        )
    return kept, dropped


def log_dropped(model: str, dropped: Mapping[str, str]) -> None:
    """Say in the training log which features `model` leaves out and why (one line each)."""
    for name, why in dropped.items():
        log.warning("%s: feature %s dropped: %s", model, name, why)


def train_churn(frames: Frames, spec: Mapping[str, Any]) -> tuple[ChurnModel, ChurnModel]:
    """Return the churn model and its orders-only variant, fitted and calibrated, on the
    features whose sources are present (the others dropped, see :func:`churn_features`)."""
    kept, dropped = churn_features(frames, spec)
    log_dropped("churn", dropped)
    params = btyd_params()
    y_val = frames.calibration["churned"].astype(int).to_numpy()
    y_hold = frames.holdout["churned"].astype(int).to_numpy()
    fitted: dict[str, ChurnModel] = {}
    figures: dict[str, dict[str, float]] = {}
    try:
        for candidate in spec.get("candidates") or [{"name": "hgb"}]:
            name = candidate["name"]
            m = fit_churn(
                frames.train,
                frames.calibration,
                spec,
                features=kept,
                candidate=candidate,
                btyd_params=params,
            )
            fitted[name] = m
            # the calibration snapshot is out of time for the trees (never trained on): it
            # chooses; the holdout figure is logged only, so the holdout stays unbiased
            figures[name] = {
                "validation_roc_auc": _auc(y_val, m.churn_probability(frames.calibration)),
                "holdout_roc_auc": _auc(y_hold, m.churn_probability(frames.holdout)),
            }
            log.info(
                "churn candidate %s: validation ROC AUC %.4f, holdout %.4f",
                name,
                figures[name]["validation_roc_auc"],
                figures[name]["holdout_roc_auc"],
            )
        best = max(figures, key=lambda n: figures[n]["validation_roc_auc"])  # first on ties
        model = fitted[best]
        model.candidates = figures
        chosen = next(c for c in spec.get("candidates") or [{"name": "hgb"}] if c["name"] == best)
        orders_only = fit_churn(
            frames.train,
            frames.calibration,
            spec,
            features=[f for f in spec["features"]["orders_only"] if f in kept],
            candidate=chosen,
            btyd_params=params,
        )
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    if model.uses_btyd or orders_only.uses_btyd:
        # the population's BTYD fit at the training date travels with the models
        for m in (model, orders_only):
            m.btyd_fit, m.btyd_frozen = frames.btyd_fit, True
    log.info("churn: candidate %s chosen on the validation snapshot", best)
    return model, orders_only


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")


def rfm_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the RFM summary (frequency, recency, t, monetary_value) indexed by customer_key."""
    return frame.set_index("customer_key")[list(ft.RFM_COLUMNS)]


def segmentation_spec(
    seg_spec: Mapping[str, Any], frames: Frames
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the segmentation spec without the features the data cannot feed (their roles
    unset, so no cluster is named after them), and the dropped features with why."""
    dropped = {f: frames.dropped[f] for f in seg_spec["features"] if f in frames.dropped}
    out = copy.deepcopy(dict(seg_spec))
    out["features"] = [f for f in seg_spec["features"] if f not in dropped]
    out["roles"] = {
        role: (None if feature in dropped else feature)
        for role, feature in (seg_spec.get("roles") or {}).items()
    }
    if not out["features"]:
        raise TrainError(
            "every segmentation feature is dropped: "
            + "; ".join(f"{f}: {why}" for f, why in dropped.items())
        )
    out["dropped"] = dropped
    return out, dropped


def segmentation_frame(frame: pd.DataFrame, seg_spec: Mapping[str, Any]) -> pd.DataFrame:
    """Return the segmentation spec's feature columns by customer_key (unknown counts as 0)."""
    columns = list(seg_spec["features"])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrainError(
            f"models/segmentation.yaml asks for feature(s) {', '.join(missing)} that "
            f"ml.features does not compute (it has {', '.join(ft.NUMERIC_FEATURES)})"
        )
    out = frame.set_index("customer_key")[columns].astype("float64")
    return out.fillna(0.0)


def train_clv(frames: Frames, clv_spec: Mapping[str, Any]):  # -> CLVModel
    """Return a CLV model (BG/NBD + Gamma-Gamma) fitted on the customers as of the as-of date."""
    from ml.clv import CLVFitError, CLVModel

    try:
        return CLVModel.from_spec(clv_spec).fit(rfm_frame(frames.current))
    except CLVFitError as exc:
        raise TrainError(f"the data cannot fit CLV: {exc}") from exc


def train_segmentation(frames: Frames, seg_spec: Mapping[str, Any], previous: Any = None):
    """Return a segmentation fitted on the customers as of the as-of date (ids kept stable)."""
    from ml.segmentation import SegmentationModel

    log_dropped("segmentation", seg_spec.get("dropped") or {})
    model = _segmentation_from_spec(SegmentationModel, seg_spec)
    if previous is not None and tuple(previous.features) != tuple(model.features):
        log.warning(
            "segmentation: the champion uses features %s, this fit %s: segment ids start a "
            "new series",
            ",".join(previous.features),
            ",".join(model.features),
        )
        previous = None
    return model.fit(segmentation_frame(frames.current, seg_spec), previous=previous)


def _segmentation_from_spec(cls: Any, spec: Mapping[str, Any]) -> Any:
    if hasattr(cls, "from_spec"):
        return cls.from_spec(spec)
    return cls()


def evaluate(
    frames: Frames,
    model: ChurnModel,
    orders_only: ChurnModel,
    spec: Mapping[str, Any],
    clv_spec: Mapping[str, Any] | None = None,
    truth_csv: Path | None = None,
    settings: Settings | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float] | None, dict[str, Any]]:
    """Return holdout metrics per scorer, the oracle comparison (if a truth file), and curves."""
    horizon = int(spec["label"]["horizon_days"])
    p_model = model.churn_probability(frames.holdout)
    metrics, probabilities, scores = evaluate_scorers(
        frames.holdout,
        frames.calibration,
        {"churn_model": p_model, "orders_only": orders_only.churn_probability(frames.holdout)},
        horizon_days=horizon,
        clv_spec=clv_spec,
    )
    oracle = None
    if truth_csv is not None and Path(truth_csv).is_file() and settings is not None:
        oracle = oracle_comparison(frames, p_model, truth_csv, horizon, settings)
    return (
        metrics,
        oracle,
        {
            "probabilities": probabilities,
            "scores": scores,
            "uncertainty": uncertainty(frames.holdout, scores, spec),
        },
    )


def uncertainty(
    holdout: pd.DataFrame, scores: Mapping[str, np.ndarray], spec: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """Return the bootstrap intervals of the models' ROC AUC minus BG/NBD's on the holdout
    (``churn_model_vs_bgnbd``, ``orders_only_vs_bgnbd``; none without a BG/NBD baseline)."""
    if "bgnbd" not in scores:
        return {}
    cfg = spec.get("uncertainty") or {}
    y = holdout["churned"].astype(int).to_numpy()
    out = {}
    for name in ("churn_model", "orders_only"):
        u = bootstrap_auc_difference(
            y,
            scores[name],
            scores["bgnbd"],
            resamples=int(cfg.get("bootstrap", 300)),
            level=float(cfg.get("level", 0.95)),
            seed=int(cfg.get("seed", 0)),
        )
        out[f"{name}_vs_bgnbd"] = {**u, "level": float(cfg.get("level", 0.95))}
    return out


def oracle_comparison(
    frames: Frames, p_model: np.ndarray, truth_csv: Path, horizon: int, settings: Settings
) -> dict[str, float]:
    """Return oracle and model ROC AUC (and more) on the holdout customers found in the truth."""
    with _connect(settings) as conn:
        truth = oracle_churn_probability(conn, truth_csv, frames.holdout_date, horizon)
    keys = frames.holdout["customer_key"]
    known = keys.isin(truth.index).to_numpy()
    y = frames.holdout["churned"].astype(int).to_numpy()[known]
    oracle_p = truth.reindex(keys[known]).to_numpy()
    om = classification_metrics(y, oracle_p)
    mm = classification_metrics(y, p_model[known])
    return {
        "n": float(known.sum()),
        "oracle_roc_auc": om["roc_auc"],
        "model_roc_auc": mm["roc_auc"],
        "oracle_brier": om["brier"],
        "model_brier": mm["brier"],
    }


def dropped_params(dropped: Mapping[str, str]) -> dict[str, str]:
    """Return the MLflow params that say which features a model left out and why."""
    return {
        "dropped_features": ",".join(dropped) or "none",
        **{f"dropped_reason.{name}": why for name, why in dropped.items()},
    }


def churn_run_params(frames: Frames, spec: Mapping[str, Any], model: ChurnModel) -> dict[str, Any]:
    """Return the params logged with a churn training run: data split, features (and the
    dropped ones with why), settings."""
    _, dropped = churn_features(frames, spec)
    return {
        **dropped_params(dropped),
        "as_of": frames.as_of.isoformat(),
        "horizon_days": spec["label"]["horizon_days"],
        "holdout_date": frames.holdout_date.isoformat(),
        "calibration_date": frames.calibration_date.isoformat(),
        "train_dates": ",".join(d.isoformat() for d in frames.train_dates),
        "train_rows": len(frames.train),
        "calibration_rows": len(frames.calibration),
        "holdout_rows": len(frames.holdout),
        # the snapshots' sample cap (null: everyone); ml.training_set logs the share taken
        "max_customers": spec["snapshots"].get("max_customers"),
        "features": ",".join(model.features),
        "calibration": spec["model"]["calibration"],
        **{f"hgb_{k}": v for k, v in spec["model"]["params"].items()},
        "risk_band_medium": model.medium,
        "risk_band_high": model.high,
    }


def champion_holdout_auc(
    settings: Settings, holdout: pd.DataFrame
) -> tuple[str | None, float | None]:
    """Return (version, ROC AUC on `holdout`) of the current churn champion, or (None, None)."""
    version, auc, _ = champion_holdout_scores(settings, holdout)
    return version, auc


def champion_holdout_scores(
    settings: Settings, holdout: pd.DataFrame
) -> tuple[str | None, float | None, np.ndarray | None]:
    """Return (version, ROC AUC, probabilities) of the churn champion on `holdout`, or Nones."""
    client = tracking.configure(settings)
    mv = tracking.version_by_alias(client, tracking.CHURN_MODEL, tracking.CHAMPION)
    if mv is None:
        return None, None, None
    try:
        champion, _ = tracking.load_champion(settings, tracking.CHURN_MODEL, sklearn=True)
        p = champion.churn_probability(holdout)
        y = holdout["churned"].astype(int).to_numpy()
        return str(mv.version), classification_metrics(y, p)["roc_auc"], p
    except Exception as exc:  # a champion that cannot score this holdout loses its place
        log.warning("champion v%s could not score the holdout: %s", mv.version, exc)
        return str(mv.version), None, None


def log_uncertainty_and_candidates(curves: Mapping[str, Any], model: ChurnModel) -> None:
    """Log to the active MLflow run the bootstrap intervals against BG/NBD and every
    candidate's validation and holdout ROC AUC (``candidate`` param: the chosen one)."""
    import mlflow

    for name, u in (curves.get("uncertainty") or {}).items():
        # e.g. churn_model_vs_bgnbd.roc_auc_diff, .roc_auc_diff_low, .roc_auc_diff_high
        mlflow.log_metrics(
            {
                f"{name}.roc_auc_diff": u["diff"],
                f"{name}.roc_auc_diff_low": u["low"],
                f"{name}.roc_auc_diff_high": u["high"],
                f"{name}.p_not_better": u["p_not_better"],
            }
        )
    mlflow.log_param("candidate", getattr(model, "candidate", "hgb"))
    for name, c in (getattr(model, "candidates", None) or {}).items():
        mlflow.log_metrics({f"candidate.{name}.{k}": v for k, v in c.items()})


def promotion_interval(
    spec: Mapping[str, Any], y: np.ndarray, p_new: np.ndarray, champion_p: np.ndarray | None
) -> tuple[float, float] | None:
    """Return the bootstrap interval of ROC AUC(new) - ROC AUC(champion) on the holdout
    (logged as ``vs_champion.*`` in the active run), or None without a champion's scores."""
    import mlflow

    if champion_p is None or spec["promotion"]["metric"] != "roc_auc":
        return None
    cfg = spec.get("uncertainty") or {}
    u = bootstrap_auc_difference(
        y,
        p_new,
        champion_p,
        resamples=int(cfg.get("bootstrap", 300)),
        level=float(cfg.get("level", 0.95)),
        seed=int(cfg.get("seed", 0)),
    )
    mlflow.log_metrics(
        {
            "vs_champion.roc_auc_diff": u["diff"],
            "vs_champion.roc_auc_diff_low": u["low"],
            "vs_champion.roc_auc_diff_high": u["high"],
        }
    )
    return u["low"], u["high"]


def register_churn(
    settings: Settings,
    frames: Frames,
    spec: Mapping[str, Any],
    model: ChurnModel,
    metrics: dict[str, dict[str, float]],
    curves: dict[str, Any],
    oracle: dict[str, float] | None = None,
) -> tuple[str, tracking.Promotion, str]:
    """Log the churn model, its metrics and plots to MLflow, register it and decide its
    alias against the champion re-scored on the same holdout; return (version, decision,
    run id)."""
    import mlflow

    from ml.evaluate import save_plots

    client = tracking.configure(settings)
    tags = {"as_of": frames.as_of.isoformat()}
    # -- churn
    champion_version, champion_auc, champion_p = champion_holdout_scores(settings, frames.holdout)
    exp = tracking.experiment_id(settings, client, tracking.CHURN_MODEL)
    with mlflow.start_run(experiment_id=exp, run_name=f"churn-{frames.as_of}", tags=tags) as run:
        mlflow.log_params(churn_run_params(frames, spec, model))
        for scorer, values in metrics.items():
            mlflow.log_metrics({f"{scorer}.{k}": v for k, v in values.items()})
        mlflow.log_metrics({k: v for k, v in metrics["churn_model"].items()})
        if oracle:
            mlflow.log_metrics({f"oracle.{k}": v for k, v in oracle.items()})
        log_uncertainty_and_candidates(curves, model)
        plot_dir = tracking.artifacts_dir(settings) / run.info.run_id
        y = frames.holdout["churned"].astype(int).to_numpy()
        for path in save_plots(y, curves["probabilities"], curves["scores"], plot_dir):
            mlflow.log_artifact(str(path), artifact_path="plots")
        example = frames.holdout[model.features].head(5)
        info = tracking.log_churn_model(model, example)
        with tracking.registered(
            client, tracking.CHURN_MODEL, info.model_uri, run.info.run_id, tags
        ) as version:
            gain = promotion_interval(spec, y, curves["scores"]["churn_model"], champion_p)
            decision = tracking.decide(
                tracking.CHURN_MODEL,
                version,
                metric=spec["promotion"]["metric"],
                value=metrics["churn_model"][spec["promotion"]["metric"]],
                champion_version=champion_version,
                champion_value=champion_auc,
                min_improvement=float(spec["promotion"]["min_improvement"]),
                gain_interval=gain,
            )
            tracking.apply_promotion(client, decision, run.info.run_id)
        mlflow.log_param("promoted", decision.promoted)
    return version, decision, run.info.run_id


def register_retrained(
    settings: Settings, frames: Frames, name: str, fitted: Any, example: pd.DataFrame, params: dict
) -> tuple[str, tracking.Promotion, str]:
    """Log a retrained CLV or segmentation model, register it and make it champion; return
    (version, decision, run id)."""
    import mlflow

    client = tracking.configure(settings)
    tags = {"as_of": frames.as_of.isoformat()}
    exp = tracking.experiment_id(settings, client, name)
    with mlflow.start_run(experiment_id=exp, run_name=f"{name}-{frames.as_of}", tags=tags) as run:
        mlflow.log_params(_flat(params))
        mlflow.log_metric("customers", len(frames.current))
        info = tracking.log_pyfunc(fitted, example)
        with tracking.registered(client, name, info.model_uri, run.info.run_id, tags) as version:
            previous = tracking.version_by_alias(client, name, tracking.CHAMPION)
            decision = tracking.Promotion(
                name,
                version,
                True,
                "first model: no champion yet"
                if previous is None
                else f"retrained as of {frames.as_of}: replaces v{previous.version}",
                None if previous is None else str(previous.version),
            )
            tracking.apply_promotion(client, decision, run.info.run_id)
    return version, decision, run.info.run_id


def register_and_promote(
    settings: Settings,
    frames: Frames,
    spec: Mapping[str, Any],
    model: ChurnModel,
    metrics: dict[str, dict[str, float]],
    curves: dict[str, Any],
    oracle: dict[str, float] | None,
    clv_model: Any,
    seg_model: Any,
    seg_spec: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, str]]:
    """Log, register and promote the three models; return versions, decisions, run ids."""
    current = frames.current
    steps = {
        tracking.CHURN_MODEL: lambda: register_churn(
            settings, frames, spec, model, metrics, curves, oracle
        ),
        tracking.CLV_MODEL: lambda: register_retrained(
            settings,
            frames,
            tracking.CLV_MODEL,
            clv_model,
            rfm_frame(current).head(5),
            clv_model.to_dict(),
        ),
        tracking.SEGMENTATION_MODEL: lambda: register_retrained(
            settings,
            frames,
            tracking.SEGMENTATION_MODEL,
            seg_model,
            segmentation_frame(current, seg_spec).head(5),
            _seg_params(seg_model, seg_spec),
        ),
    }
    versions: dict[str, str] = {}
    promotions: dict[str, dict[str, Any]] = {}
    run_ids: dict[str, str] = {}
    if clv_model is None:  # not trained (see TrainResult.not_trained): the champion stays
        del steps[tracking.CLV_MODEL]
    for name, step in steps.items():
        versions[name], decision, run_ids[name] = step()
        promotions[name] = decision.to_dict()
    return versions, promotions, run_ids


def _seg_params(seg_model: Any, seg_spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "features": ",".join(seg_spec.get("features", [])),
        **dropped_params(seg_spec.get("dropped") or {}),
    }
    if hasattr(seg_model, "to_dict"):
        with contextlib.suppress(Exception):  # params are informative only
            out.update(seg_model.to_dict())
    return out


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)[:500]
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------- the step


#: The lock stage of a training (``train`` and the DAG's register and promote tasks).
TRAIN_LOCK = "train"
#: Trainings take turns over the warehouse: `lifecycle train`, and the training DAG's
#: register and promote tasks (ml.stages), set the one registry's aliases.
train_lock = holds_lock(TRAIN_LOCK, date_arg="as_of", scope=WAREHOUSE)


@train_lock
def train(
    as_of: dt.date | None,
    settings: Settings,
    *,
    overrides: Mapping[str, Any] | None = None,
    truth_csv: Path | None = None,
) -> TrainResult:
    """Run the whole training step as of `as_of` (default: the warehouse's as-of date).

    `overrides` are merged into models/churn.yaml (nested keys), e.g.
    ``{"features": {"numeric": [...]}}``. `truth_csv` (default: the sample world's
    ``truth/customers.csv`` when it exists) adds the oracle comparison. Trainings take
    turns (lifecycle.locks, the stage ``train`` over the warehouse): two at once would
    register and promote over each other.
    """
    from ml.specs import load_spec

    started = time.perf_counter()
    stage_s: dict[str, float] = {}
    as_of = as_of or data_as_of(settings)
    spec = load_churn_spec(overrides)
    clv_spec = load_spec("clv")
    base_seg_spec = load_spec("segmentation")
    tracking.configure(settings)  # a store that cannot be used fails now, not after training
    if truth_csv is None:
        candidate = settings.world_dir / "truth" / "customers.csv"
        truth_csv = candidate if candidate.is_file() else None

    def stage(name: str, t0: float) -> float:
        stage_s[name] = round(time.perf_counter() - t0, 2)
        log.info("train %s: %s done in %.1fs", as_of, name, stage_s[name])
        return time.perf_counter()

    t = time.perf_counter()
    rows = build_training_sets(as_of, settings, spec)
    t = stage("training sets", t)
    frames = load_frames(as_of, settings, spec)
    seg_spec, _ = segmentation_spec(base_seg_spec, frames)
    t = stage("load frames", t)
    model, orders_only = train_churn(frames, spec)
    t = stage("churn", t)
    not_trained: dict[str, str] = {}
    try:
        clv_model = train_clv(frames, clv_spec)
    except TrainError as exc:  # e.g. a degenerate BG/NBD fit on a small world: train the rest
        clv_model = None
        not_trained[tracking.CLV_MODEL] = str(exc)
        log.warning("CLV not trained, churn and segmentation are: %s", exc)
    t = stage("clv", t)
    previous = None
    with contextlib.suppress(tracking.NoChampionError):
        previous, _ = tracking.load_champion(settings, tracking.SEGMENTATION_MODEL)
    seg_model = train_segmentation(frames, seg_spec, previous=previous)
    t = stage("segmentation", t)
    metrics, oracle, curves = evaluate(
        frames, model, orders_only, spec, clv_spec, truth_csv, settings
    )
    t = stage("evaluation", t)
    versions, promotions, run_ids = register_and_promote(
        settings,
        frames,
        spec,
        model,
        metrics,
        curves,
        oracle,
        clv_model,
        seg_model,
        seg_spec,
    )
    stage("register and promote", t)
    return TrainResult(
        as_of=as_of,
        snapshot_rows={d.isoformat(): n for d, n in rows.items()},
        holdout_date=frames.holdout_date,
        holdout_rows=len(frames.holdout),
        metrics=metrics,
        oracle=oracle,
        versions=versions,
        promotions=promotions,
        run_ids=run_ids,
        tracking_uri=tracking.tracking_uri(settings),
        elapsed_s=time.perf_counter() - started,
        stage_s=stage_s,
        not_trained=not_trained,
        uncertainty=curves.get("uncertainty") or {},
        candidates=model.candidates or {},
        chosen=model.candidate,
    )
