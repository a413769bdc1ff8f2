"""The churn model's evaluation section, read from a real MLflow tracking store and registry.

The training step (ml/train.py) logs holdout metrics as ``<scorer>.<metric>``, ROC /
calibration / lift plots under ``plots/`` and the promotion reason as a tag, then sets
the ``champion`` alias. This test writes such a run with MLflow itself (a SQLite store
under a private LIFECYCLE_HOME: test data in the real store, not a mock) and checks the
report shows exactly what was logged.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

import numpy as np
import pytest

from lifecycle.report import build_report
from lifecycle.report.evaluation import metric_table
from tests.conftest import make_settings
from tests.report.conftest import END
from tests.report.page import read_page

METRICS = {
    "churn_model": {"roc_auc": 0.8123, "pr_auc": 0.7012, "brier": 0.1534, "lift_top_decile": 1.9},
    "recency_rule": {"roc_auc": 0.7411, "pr_auc": 0.6402, "brier": 0.1811, "lift_top_decile": 1.6},
    "bgnbd": {"roc_auc": 0.7655, "pr_auc": 0.6633, "brier": 0.1702, "lift_top_decile": 1.7},
}


@pytest.fixture(scope="module")
def mlflow_home(report_world, tmp_path_factory):
    """A LIFECYCLE_HOME whose MLflow store holds churn versions 1-3, champion v3.

    v3 is the version stamped on the test scores of END (conftest: churn_model_version "3").
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("mlflow-home")
    (home / "mlflow").mkdir()
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(
        "lifecycle-churn", artifact_location=(home / "mlflow" / "artifacts").as_uri()
    )
    client.create_registered_model("lifecycle_churn")
    roc = home / "roc.png"
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    xs = np.linspace(0, 1, 20)
    ax.plot(xs, np.sqrt(xs), label="churn_model")
    ax.plot(xs, xs, "k:")
    fig.savefig(roc, dpi=80)
    for i, auc in enumerate((0.7702, 0.7901, METRICS["churn_model"]["roc_auc"])):
        run = client.create_run(exp, run_name=f"churn-{i}")
        rid = run.info.run_id
        for scorer, values in METRICS.items():
            for metric, value in values.items():
                v = auc if (scorer, metric) == ("churn_model", "roc_auc") else value
                client.log_metric(rid, f"{scorer}.{metric}", v)
        # the bootstrap interval of ROC AUC(model) - ROC AUC(BG/NBD) on the holdout
        for key, value in (("", 0.0468), ("_low", 0.0312), ("_high", 0.0621)):
            client.log_metric(rid, f"churn_model_vs_bgnbd.roc_auc_diff{key}", value)
        client.log_param(rid, "as_of", END.isoformat())
        client.log_param(rid, "holdout_date", "2024-03-31")
        client.log_artifact(rid, str(roc), artifact_path="plots")
        client.set_tag(rid, "promotion_reason", f"roc_auc {auc} beats champion v{i}")
        client.set_terminated(rid)
        mv = client.create_model_version("lifecycle_churn", f"runs:/{rid}/model", run_id=rid)
        client.set_registered_model_alias("lifecycle_churn", "champion", mv.version)
    mlflow.set_tracking_uri(None)
    return home


def test_model_section_shows_the_logged_metrics_of_the_scoring_model(
    report_world, mlflow_home
) -> None:
    settings = make_settings(mlflow_home, LIFECYCLE_WAREHOUSE_URL=report_world.url)
    result = build_report(END, settings)
    assert "model" in result.rendered and not result.unavailable
    page = read_page(result.path.read_text(encoding="utf-8"))
    assert page.sections["model"]["available"]
    assert int(page.kpis["kpi-model-version"]) == 3  # the version that scored END
    assert int(page.kpis["kpi-champion-version"]) == 3
    assert Decimal(page.kpis["kpi-roc-auc"]) == Decimal("0.8123")
    assert Decimal(page.kpis["kpi-best-baseline-auc"]) == Decimal("0.7655")
    table = {r["metric"]: r for r in page.tables["model-metrics"]}
    assert set(table) == {"roc_auc", "pr_auc", "brier", "lift_top_decile"}
    for scorer, values in METRICS.items():
        for metric, value in values.items():
            assert float(table[metric][scorer]) == pytest.approx(value), (scorer, metric)
    assert {"model-auc", "model-roc"} <= set(page.charts)
    assert page.charts["model-roc"] >= 1  # the logged PNG, inline
    assert "Promotion of v3: roc_auc 0.8123 beats champion v2" in page.sections["model"]["text"]
    assert Decimal(page.kpis["kpi-auc-vs-bgnbd"]) == Decimal("0.0468")
    assert (
        "ROC AUC difference with BG/NBD expected purchases on the holdout: +0.0468, bootstrap "
        "95% interval [+0.0312, +0.0621]: better than BG/NBD beyond the noise."
    ) in page.sections["model"]["text"]
    assert page.external == []


def test_model_section_of_a_day_without_scores_shows_the_champion(
    report_world, mlflow_home, tmp_path
) -> None:
    settings = make_settings(mlflow_home, LIFECYCLE_WAREHOUSE_URL=report_world.url)
    result = build_report(dt.date(2024, 5, 31), settings, out=tmp_path / "may.html")
    page = read_page(result.path.read_text(encoding="utf-8"))
    assert int(page.kpis["kpi-model-version"]) == 3
    assert (
        "No scores for 2024-05-31: showing the current champion."
        in (page.sections["model"]["text"])
    )


def test_metric_table_reads_scorer_dot_metric_keys() -> None:
    table = metric_table(
        {"bgnbd.roc_auc": 0.7, "churn_model.roc_auc": 0.8, "roc_auc": 0.8, "oracle.roc_auc": 0.9,
         "churn_model.brier": 0.1, "customers": 10}
    )  # fmt: skip
    assert table == [
        {"metric": "roc_auc", "churn_model": 0.8, "bgnbd": 0.7, "oracle": 0.9},
        {"metric": "brier", "churn_model": 0.1, "bgnbd": None, "oracle": None},
    ]
    assert metric_table({"roc_auc": 0.8}) == [{"metric": "roc_auc", "churn_model": 0.8}]


def test_status_shows_the_registered_champions(report_world, mlflow_home) -> None:
    from lifecycle.status import collect_status

    settings = make_settings(mlflow_home, LIFECYCLE_WAREHOUSE_URL=report_world.url)
    part = collect_status(settings).part("models")
    assert part.note is None
    assert part.rows == [{"model": "lifecycle_churn", "champion": 3, "challenger": None}]


def test_unreachable_tracking_server_is_said_not_waited_for(report_world, tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(
        tmp_path,
        LIFECYCLE_WAREHOUSE_URL=report_world.url,
        LIFECYCLE_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
    )
    result = build_report(END, settings)
    assert result.unavailable["model"].startswith(
        f"cannot reach the MLflow server at http://127.0.0.1:{port}"
    )
    assert "churn" in result.rendered  # the rest of the report stands
