"""The registry keeps no half-finished training: a version whose alias was never set goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml import tracking
from tests.transform.conftest import settings_for


def test_an_interrupted_registration_leaves_no_version_without_alias(tmp_path: Path) -> None:
    """Ctrl-C between registering and promoting left a READY version with no alias."""
    import mlflow
    from sklearn.dummy import DummyClassifier

    settings = settings_for(tmp_path, "postgresql://127.0.0.1/unused", tmp_path)
    client = tracking.configure(settings)
    name = "lifecycle_registry_test"
    model = DummyClassifier().fit([[0], [1]], [0, 1])
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="model")
    tags = {"as_of": "2024-01-01"}
    with tracking.registered(client, name, info.model_uri, run.info.run_id, tags) as first:
        client.set_registered_model_alias(name, tracking.CHAMPION, first)
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.registered(client, name, info.model_uri, run.info.run_id, tags) as second,
    ):
        assert second == "2"
        raise KeyboardInterrupt
    kept = [v.version for v in client.search_model_versions(f"name = '{name}'")]
    assert [str(v) for v in kept] == ["1"]
    assert str(client.get_model_version_by_alias(name, tracking.CHAMPION).version) == "1"
    with tracking.registered(client, name, info.model_uri, run.info.run_id, tags) as third:
        assert third == "3"  # numbers are not reused: version 2 stays the interrupted one's
