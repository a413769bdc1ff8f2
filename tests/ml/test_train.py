"""The training step on a generated world: model vs baselines vs oracle, MLflow registry,
and champion/challenger promotion both ways."""

from __future__ import annotations

import pandas as pd
import pytest

from ml import tracking
from ml.churn import fit_churn, load_churn_spec
from ml.train import (
    build_training_sets,
    evaluate,
    load_current,
    load_frames,
    register_churn,
)
from tests.ml.conftest import temp_home


def test_churn_model_beats_both_baselines_on_the_time_based_holdout(trained) -> None:
    result = trained.result
    m = result.metrics
    print(
        f"\nholdout {result.holdout_date}, {result.holdout_rows} customers: ROC AUC "
        + ", ".join(f"{k} {v['roc_auc']:.4f}" for k, v in m.items())
    )
    assert result.holdout_rows > 1000
    assert m["churn_model"]["roc_auc"] > m["recency_rule"]["roc_auc"] + 0.01
    assert m["churn_model"]["roc_auc"] > m["bgnbd"]["roc_auc"] + 0.01
    assert m["churn_model"]["lift_top_decile"] >= m["recency_rule"]["lift_top_decile"]


def test_orders_only_variant_is_as_good_as_bgnbd(trained) -> None:
    m = trained.result.metrics
    # Same information as BG/NBD (the order history); on ~1,450 holdout customers the
    # standard error of a difference in ROC AUC is about 0.01, hence the tolerance.
    assert m["orders_only"]["roc_auc"] >= m["bgnbd"]["roc_auc"] - 0.01
    assert m["orders_only"]["roc_auc"] > m["recency_rule"]["roc_auc"]


def test_oracle_is_printed_next_to_the_model(trained) -> None:
    oracle = trained.result.oracle
    print(
        f"\noracle ROC AUC {oracle['oracle_roc_auc']:.4f} vs model {oracle['model_roc_auc']:.4f} "
        f"on the same {int(oracle['n'])} customers"
    )
    assert oracle["n"] == trained.result.holdout_rows
    assert oracle["model_roc_auc"] == pytest.approx(
        trained.result.metrics["churn_model"]["roc_auc"]
    )
    # the oracle knows each person's true rate and drop-out: no model can beat it here
    assert oracle["oracle_roc_auc"] > oracle["model_roc_auc"]
    assert "oracle (ground truth) ROC AUC" in trained.result.summary()


def test_probabilities_are_calibrated(trained) -> None:
    model = trained.result.metrics["churn_model"]
    assert model["ece"] < 0.05
    assert model["brier"] < trained.result.metrics["recency_rule"]["brier"]
    assert 0 < model["log_loss"] < 0.6


def test_everything_is_registered_with_aliases_and_artifacts(trained) -> None:
    result, settings = trained.result, trained.settings
    assert result.versions == {
        tracking.CHURN_MODEL: "1",
        tracking.CLV_MODEL: "1",
        tracking.SEGMENTATION_MODEL: "1",
    }
    assert all(p["promoted"] for p in result.promotions.values())
    client = tracking.configure(settings)
    for name, experiment in tracking.EXPERIMENTS.items():
        assert str(client.get_model_version_by_alias(name, tracking.CHAMPION).version) == "1"
        exp = client.get_experiment_by_name(experiment)
        assert exp.artifact_location.startswith((settings.home / "mlflow" / "artifacts").as_uri())
    run = client.get_run(result.run_ids[tracking.CHURN_MODEL])
    assert run.data.params["holdout_date"] == result.holdout_date.isoformat()
    assert run.data.metrics["bgnbd.roc_auc"] == pytest.approx(result.metrics["bgnbd"]["roc_auc"])
    assert run.data.tags["promotion"] == "champion"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/roc.png", "plots/calibration.png", "plots/lift.png"}
    assert str(tracking.tracking_uri(settings)).startswith("sqlite:///")


def test_interval_against_bgnbd_and_the_candidates_are_logged(trained) -> None:
    result = trained.result
    m = result.metrics
    full = result.uncertainty["churn_model_vs_bgnbd"]
    assert full["diff"] == pytest.approx(m["churn_model"]["roc_auc"] - m["bgnbd"]["roc_auc"])
    assert 0 < full["low"] < full["diff"] < full["high"]  # web + CRM: beyond the noise
    assert full["resamples"] == 300 and full["level"] == 0.95
    orders = result.uncertainty["orders_only_vs_bgnbd"]
    assert orders["low"] < 0 < orders["high"]  # orders alone on 1,450 customers: a tie
    assert set(result.candidates) == {"hgb", "hgb_btyd", "hgb_btyd_monotone"}
    assert result.chosen == max(
        result.candidates, key=lambda n: result.candidates[n]["validation_roc_auc"]
    )
    assert result.candidates[result.chosen]["holdout_roc_auc"] == pytest.approx(
        m["churn_model"]["roc_auc"]
    )
    client = tracking.configure(trained.settings)
    run = client.get_run(result.run_ids[tracking.CHURN_MODEL])
    assert run.data.params["candidate"] == result.chosen
    assert run.data.metrics["churn_model_vs_bgnbd.roc_auc_diff_low"] == pytest.approx(full["low"])
    for name, figures in result.candidates.items():
        assert run.data.metrics[f"candidate.{name}.validation_roc_auc"] == pytest.approx(
            figures["validation_roc_auc"]
        )
    assert "churn_model_vs_bgnbd: ROC AUC difference" in result.summary()


def test_champion_explains_and_bands_its_scores(trained) -> None:
    model, version = tracking.load_champion(trained.settings, tracking.CHURN_MODEL, sklearn=True)
    assert version == "1"
    frames = load_frames(trained.world.end, trained.settings, load_churn_spec())
    sample = frames.holdout.head(200)
    p = model.churn_probability(sample)
    bands = model.risk_band(p)
    assert set(bands[p >= model.high]) <= {"high"} and set(bands[p < model.medium]) <= {"low"}
    reasons = model.explain(sample, p)
    assert len(reasons) == 200
    for text in reasons:
        parts = text.split("; ")
        assert 1 <= len(parts) <= 3
        assert all(part.endswith(("(raises risk)", "(lowers risk)")) for part in parts) or (
            text == "typical customer profile"
        )
    assert any("last order" in r for r in reasons)


def _register(settings, frames, spec):
    """Fit a churn model from `spec`, evaluate it on the holdout, register and promote it."""
    model = fit_churn(frames.train, frames.calibration, spec)
    metrics, _, curves = evaluate(frames, model, model, spec)
    return register_churn(settings, frames, spec, model, metrics, curves)


def test_promotion_both_ways(trained) -> None:
    """A crippled model is champion only while alone; a better one replaces it; a worse
    later one stays challenger with the reason recorded."""
    world = trained.world
    full_spec = load_churn_spec()
    crippled_spec = load_churn_spec(
        {"features": {"numeric": ["count_refunds", "refund_share"], "categorical": []}}
    )
    for home in temp_home("lifecycle-ml-promo-"):
        settings = world.settings(home)
        build_training_sets(world.end, settings, full_spec)
        frames = load_frames(world.end, settings, full_spec)
        v1, first, _ = _register(settings, frames, crippled_spec)
        assert (v1, first.promoted, first.reason) == ("1", True, "first model: no champion yet")
        v2, better, _ = _register(settings, frames, full_spec)
        assert v2 == "2" and better.promoted and better.previous_champion == "1"
        assert "beats champion v1" in better.reason
        v3, worse, run_id = _register(settings, frames, crippled_spec)
        assert v3 == "3" and not worse.promoted
        assert "does not beat champion v2" in worse.reason
        client = tracking.configure(settings)
        assert (
            str(client.get_model_version_by_alias(tracking.CHURN_MODEL, "champion").version) == "2"
        )
        assert (
            str(client.get_model_version_by_alias(tracking.CHURN_MODEL, "challenger").version)
            == "3"
        )
        tags = client.get_model_version(tracking.CHURN_MODEL, "3").tags
        assert tags["promotion"] == "challenger"
        assert tags["promotion_reason"] == worse.reason
        assert client.get_run(run_id).data.tags["promotion_reason"] == worse.reason
        # the champion's twin: the same ROC AUC on every resample, so the interval is
        # [0, 0] and its lower end never reaches the margin — the champion stays
        v4, twin, _ = _register(settings, frames, full_spec)
        assert v4 == "4" and not twin.promoted
        assert "gain +0.0000, bootstrap interval [+0.0000, +0.0000]" in twin.reason


def test_the_holdout_alone_is_the_holdout_of_the_whole_load(trained) -> None:
    """evaluate and promote read the holdout and calibration snapshots alone: the same
    rows and features, BTYD columns included, as the whole load gives them."""
    spec = load_churn_spec()
    whole = load_frames(trained.world.end, trained.settings, spec)
    alone = load_frames(trained.world.end, trained.settings, spec, holdout_only=True)
    assert (alone.holdout_date, alone.calibration_date) == (
        whole.holdout_date,
        whole.calibration_date,
    )
    assert len(alone.holdout) > 100 and alone.train.empty and alone.current.empty
    pd.testing.assert_frame_equal(alone.holdout, whole.holdout, check_exact=True)
    pd.testing.assert_frame_equal(alone.calibration, whole.calibration, check_exact=True)
    # and the CLV and segmentation stages read today's customers alone: the whole load's
    today = load_current(trained.world.end, trained.settings, spec, ["sessions_90d"])
    assert today.train.empty and today.holdout.empty and today.dropped == whole.dropped == {}
    pd.testing.assert_frame_equal(today.current, whole.current, check_exact=True)
    assert today.btyd_fit == whole.btyd_fit
