"""Training's data errors fail the task at once: a retry would give the same answer."""

from __future__ import annotations

import pytest


def _raise(exc: Exception):
    def fn():
        raise exc

    return fn


def test_data_errors_fail_at_once_and_others_stay_retryable(airflow_cfg) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.orchestration.training import _guard
    from ml.churn import ChurnSpecError
    from ml.features import FeatureError
    from ml.train import TrainError

    for exc in (
        FeatureError("the warehouse lacks intermediate.int_orders_versioned"),
        ChurnSpecError("models/churn.yml: unknown feature 'x'"),
        TrainError("churn: no eligible customers"),
    ):
        with pytest.raises(AirflowFailException, match=f"^training_sets: {exc}$"):
            _guard("training_sets", _raise(exc))
    # a dropped connection is worth a retry: it is not turned into a hard failure
    with pytest.raises(ConnectionResetError):
        _guard("training_sets", _raise(ConnectionResetError("server closed the connection")))
