"""The one definition of which features need which source, and the dropping rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml import features as ft
from ml.churn import ChurnSpecError, load_churn_spec

WEB = "no such source: web events (raw.web__events) is not configured in sources.yml"


def test_every_spec_feature_is_orders_only_or_names_its_source() -> None:
    spec = load_churn_spec()
    feats = spec["features"]
    every = [*feats["numeric"], *feats["categorical"]]
    assert [f for f in every if f not in ft.FEATURE_SOURCES] == feats["orders_only"]


def test_a_spec_whose_orders_only_list_reads_another_source_is_refused() -> None:
    with pytest.raises(ChurnSpecError) as exc:
        load_churn_spec({"features": {"orders_only": ["count_orders", "sessions_7d"]}})
    assert str(exc.value) == (
        "features.orders_only lists feature(s) read from other sources: sessions_7d (web__events)"
    )


def test_features_of_absent_sources_and_all_null_columns_are_dropped_with_why() -> None:
    rows = pd.DataFrame(
        {
            "count_orders": [1.0, 2.0],
            "mean_gap_days": [np.nan, np.nan],
            "sessions_7d": [0.0, 0.0],
            "country_code": ["DE", None],
        }
    )
    dropped = ft.dropped_features(
        ["count_orders", "mean_gap_days", "sessions_7d", "country_code"],
        {"web__events": WEB},
        rows,
    )
    assert dropped == {
        "mean_gap_days": "no value in any of the 2 training rows",
        "sessions_7d": WEB,
    }
