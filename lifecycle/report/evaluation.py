"""The churn model's evaluation section: read from MLflow (the champion's run), not recomputed.

The training step logs, on one time-based holdout, the model's metrics next to its
baselines' and the previous champion's, and the ROC / calibration / lift plots as
artifacts. This section finds the registered champion of the churn model, reads its run's
metrics and plots, and shows them; when MLflow has no tracking store or no champion yet,
the section says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.report import charts
from lifecycle.report.model import Chart, Kpi, Note, Section, Table, Unavailable
from lifecycle.settings import Settings
from ml.tracking import CHAMPION, CHURN_MODEL

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRAIN = "run `lifecycle train`"


def tracking_uri(settings: Settings) -> str:
    """Return the MLflow tracking URI the training step uses (one definition: ml.tracking)."""
    from ml.tracking import tracking_uri as ml_tracking_uri

    return ml_tracking_uri(settings)


def mlflow_client(settings: Settings) -> MlflowClient:
    """Return an MLflow client on the tracking store, or raise Unavailable when it is absent."""
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise Unavailable(f"no MLflow tracking store at {uri.removeprefix('sqlite:///')}: {TRAIN}")
    if uri.startswith(("http://", "https://")):
        # MLflow's client retries an unreachable server for minutes: ask its health endpoint
        # once, briefly, and show the section as unavailable instead of stalling the report
        from ml.tracking import TrackingStoreError, check_reachable

        try:
            check_reachable(uri)
        except TrackingStoreError as exc:
            raise Unavailable(str(exc)) from exc
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # task logs, not TTYs
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_section(settings: Settings, day: dt.date, scored_version: str | None = None) -> Section:
    """Return the holdout evaluation of the churn model that scored `day` (else the champion).

    `scored_version` is the ``churn_model_version`` stamped on the day's scores; when the
    day has no scores, or that version is not in this registry, the current champion's
    evaluation is shown and a note says so.
    """
    client = mlflow_client(settings)
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(CHURN_MODEL, CHAMPION)
    except MlflowException as exc:
        raise Unavailable(f"no {CHURN_MODEL}@{CHAMPION} in the MLflow registry: {TRAIN}") from exc
    notes = []
    version = champion
    if scored_version is None:
        notes.append(f"No scores for {day}: showing the current champion.")
    elif str(scored_version) != str(champion.version):
        try:
            version = client.get_model_version(CHURN_MODEL, scored_version)
            notes.append(
                f"The scores of {day} were made by v{scored_version}; the current champion is "
                f"v{champion.version}."
            )
        except MlflowException:
            notes.append(
                f"The scores of {day} were made by v{scored_version}, which this registry does "
                f"not hold: showing the current champion."
            )
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    section = Section("model", f"Churn model evaluation: {CHURN_MODEL} v{version.version}")
    table = metric_table(metrics)
    if not table:
        raise Unavailable(
            f"run {version.run_id} of {CHURN_MODEL} v{version.version} logged no metrics"
        )
    candidates = [c for c in table[0] if c != "metric"]
    section.blocks.append(Kpi("model-version", "model version shown", int(version.version)))
    section.blocks.append(Kpi("champion-version", "current champion", int(champion.version)))
    section.blocks += [Note(n, "warn") for n in notes]
    auc = next((r for r in table if r["metric"] == "roc_auc"), None)
    if auc and auc.get(MODEL_SCORER) is not None:
        section.blocks.append(Kpi("roc-auc", "holdout ROC AUC", auc[MODEL_SCORER]))
        best = max((auc[c] for c in candidates if c not in (MODEL_SCORER, "oracle") and
                    auc.get(c) is not None), default=None)  # fmt: skip
        if best is not None:
            section.blocks.append(Kpi("best-baseline-auc", "best other ROC AUC", best))
    diff = metrics.get("churn_model_vs_bgnbd.roc_auc_diff")
    if diff is not None:
        low = metrics.get("churn_model_vs_bgnbd.roc_auc_diff_low", float("nan"))
        high = metrics.get("churn_model_vs_bgnbd.roc_auc_diff_high", float("nan"))
        section.blocks.append(Kpi("auc-vs-bgnbd", "ROC AUC minus BG/NBD's", diff))
        verdict = (
            "better than BG/NBD beyond the noise"
            if low > 0
            else "not distinguishable from BG/NBD on this holdout"
        )
        section.blocks.append(
            Note(
                f"ROC AUC difference with BG/NBD expected purchases on the holdout: {diff:+.4f}, "
                f"bootstrap 95% interval [{low:+.4f}, {high:+.4f}]: {verdict}."
            )
        )
    if auc:
        names = [c for c in candidates if auc.get(c) is not None]
        section.blocks.append(
            Chart(
                "model-auc",
                charts.bars(
                    names,
                    {"ROC AUC": [auc[c] for c in names]},
                    "model-auc",
                    "Holdout ROC AUC: model, variants, baselines",
                    "ROC AUC",
                    ylim=(0.5, 1.0),
                ),
                "Same time-based holdout for every candidate (MLflow run metrics).",
            )
        )
    section.blocks.append(
        Table(
            "model-metrics",
            f"Holdout metrics of run {version.run_id} (MLflow)",
            [("metric", "metric")] + [(c, c) for c in candidates],
            table,
        )
    )
    for name, svg_or_png in plots(client, version.run_id):
        section.blocks.append(Chart(f"model-{name}", svg_or_png, f"{name} (MLflow artifact)"))
    reason = run.data.tags.get("promotion_reason")
    if reason:
        # the previous champion is re-scored on this holdout at promotion time
        section.blocks.append(Note(f"Promotion of v{version.version}: {reason}"))
    as_of = run.data.params.get("as_of")
    holdout = run.data.params.get("holdout_date")
    if as_of or holdout:
        section.blocks.append(
            Note(f"Trained as of {as_of or '?'}; time-based holdout snapshot {holdout or '?'}.")
        )
    section.facts = {"version": int(version.version), "run_id": version.run_id}
    return section


#: Holdout metrics the training step logs per scorer, in display order.
METRICS = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile")
#: The model's own scorer name in the metric keys; shown first.
MODEL_SCORER = "churn_model"


def metric_table(metrics: dict[str, float]) -> list[dict]:
    """Return the run's holdout metrics as rows: one per metric, one column per scorer.

    The training step logs ``<scorer>.<metric>`` for the model (``churn_model``), its
    variants, the baselines (``recency_rule``, ``bgnbd``), the previous champion and the
    oracle when known; a run that logged bare ``<metric>`` keys only shows them as
    ``churn_model``.
    """
    rows: dict[str, dict] = {m: {"metric": m} for m in METRICS}
    dotted = [k for k in metrics if "." in k and k.rsplit(".", 1)[1] in METRICS]
    for key in dotted:
        scorer, metric = key.rsplit(".", 1)
        rows[metric][scorer] = metrics[key]
    if not dotted:
        for metric in METRICS:
            if metric in metrics:
                rows[metric][MODEL_SCORER] = metrics[metric]
    scorers = sorted(
        {c for r in rows.values() for c in r if c != "metric"},
        key=lambda c: (c != MODEL_SCORER, c == "oracle", c),
    )
    return [
        {"metric": m, **{c: rows[m].get(c) for c in scorers}} for m in METRICS if len(rows[m]) > 1
    ]


def plots(client: MlflowClient, run_id: str) -> list[tuple[str, str]]:
    """Return the run's evaluation plots as inline markup: SVG text or a PNG data-URI image."""
    out = []
    try:
        artifacts = _walk(client, run_id, "")
    except Exception:  # noqa: BLE001 - a missing artifact store only loses the plots
        return out
    with tempfile.TemporaryDirectory(prefix="lifecycle-report-") as tmp:
        for path in artifacts:
            name = Path(path).stem
            if not any(k in name for k in ("roc", "calibration", "lift")):
                continue
            local = Path(client.download_artifacts(run_id, path, dst_path=tmp))
            if path.endswith(".svg"):
                text = local.read_text(encoding="utf-8")
                out.append((name, text[text.index("<svg") :]))
            elif path.endswith(".png"):
                out.append((name, _png_svg(name, local.read_bytes())))
    order = {"roc": 0, "calibration": 1, "lift": 2}
    return sorted(out, key=lambda item: order.get(item[0], 9))


def _png_svg(name: str, png: bytes) -> str:
    """Return `png` wrapped in an inline SVG of its own size (a data URI: no file to fetch)."""
    # width and height are the first fields of the IHDR chunk (PNG spec: bytes 16-24)
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{name}" '
        f'viewBox="0 0 {w} {h}"><image width="{w}" height="{h}" '
        f'href="data:image/png;base64,{data}"/></svg>'
    )


def _walk(client: MlflowClient, run_id: str, path: str) -> list[str]:
    """Return the paths of every artifact file of the run under `path`."""
    found = []
    for info in client.list_artifacts(run_id, path or None):
        if info.is_dir:
            found += _walk(client, run_id, info.path)
        else:
            found.append(info.path)
    return sorted(found)
