"""Unit tests on tiny inputs: the churn spec, evaluation metrics, reason sentences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.churn import ChurnSpecError, describe_column, load_churn_spec
from ml.evaluate import classification_metrics, expected_calibration_error, lift_at
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


def test_promotion_decision_rules() -> None:
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
