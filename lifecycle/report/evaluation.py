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
from pathlib import Path

from lifecycle.report import charts
from lifecycle.report.model import Chart, Kpi, Note, Section, Table, Unavailable
from lifecycle.settings import Settings

#: Registered model name and alias of the churn champion (DESIGN.md §7).
CHURN_MODEL = "lifecycle_churn"
CHAMPION = "champion"
TRAIN = "run `lifecycle train`"


def tracking_uri(settings: Settings) -> str:
    """Return the MLflow tracking URI of `settings` (local SQLite store by default)."""
    uri = getattr(settings, "mlflow_tracking_uri", None)
    return uri or f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"


def mlflow_client(settings: Settings):  # -> mlflow.MlflowClient
    """Return an MLflow client on the tracking store, or raise Unavailable when it is absent."""
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise Unavailable(f"no MLflow tracking store at {uri.removeprefix('sqlite:///')}: {TRAIN}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_section(settings: Settings, day: dt.date) -> Section:
    """Return the champion churn model's holdout evaluation vs baselines and previous champion."""
    client = mlflow_client(settings)
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(CHURN_MODEL, CHAMPION)
    except MlflowException as exc:
        raise Unavailable(f"no {CHURN_MODEL}@{CHAMPION} in the MLflow registry: {TRAIN}") from exc
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    section = Section("model", f"Churn model evaluation: {CHURN_MODEL} v{version.version}")
    table = metric_table(metrics)
    if not table:
        raise Unavailable(
            f"run {version.run_id} of {CHURN_MODEL} v{version.version} logged no metrics"
        )
    candidates = [c for c in table[0] if c != "metric"]
    section.blocks.append(Kpi("champion-version", "champion version", int(version.version)))
    for row in table:
        if row["metric"] == "roc_auc" and "model" in row:
            section.blocks.append(Kpi("roc-auc", "holdout ROC AUC", row["model"]))
    auc = next((r for r in table if r["metric"] == "roc_auc"), None)
    if auc:
        names = [c for c in candidates if auc.get(c) is not None]
        section.blocks.append(
            Chart(
                "model-auc",
                charts.bars(
                    names,
                    {"ROC AUC": [auc[c] for c in names]},
                    "model-auc",
                    "Holdout ROC AUC: model vs baselines",
                    "ROC AUC",
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
    reason = run.data.tags.get("promotion_reason") or run.data.tags.get("promotion")
    if reason:
        section.blocks.append(Note(f"Promotion: {reason}"))
    section.facts = {"version": int(version.version), "run_id": version.run_id}
    return section


def metric_table(metrics: dict[str, float]) -> list[dict]:
    """Return the run's metrics as rows of metric name × candidate (model, baselines, ...).

    Metric keys are ``<candidate>_<metric>`` or ``<candidate>.<metric>`` for baselines and
    the previous champion, and bare ``<metric>`` for the model itself.
    """
    known = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile")
    rows: dict[str, dict] = {}
    for key, value in sorted(metrics.items()):
        metric = next((m for m in known if key == m or key.endswith(m)), None)
        if metric is None:
            continue
        prefix = key[: -len(metric)].rstrip("._/") or "model"
        rows.setdefault(metric, {"metric": metric})[prefix] = value
    ordered = [rows[m] for m in known if m in rows]
    cols = sorted({c for r in ordered for c in r if c != "metric"}, key=lambda c: (c != "model", c))
    return [{"metric": r["metric"], **{c: r.get(c) for c in cols}} for r in ordered]


def plots(client, run_id: str) -> list[tuple[str, str]]:
    """Return the run's evaluation plots as inline markup: SVG text or a PNG data-URI image."""
    out = []
    try:
        artifacts = _walk(client, run_id, "")
    except Exception:  # noqa: BLE001 - a missing artifact store only loses the plots
        return out
    for path in artifacts:
        name = Path(path).stem
        if not any(k in name for k in ("roc", "calibration", "lift")):
            continue
        local = Path(client.download_artifacts(run_id, path))
        if path.endswith(".svg"):
            text = local.read_text(encoding="utf-8")
            out.append((name, text[text.index("<svg") :]))
        elif path.endswith(".png"):
            png = local.read_bytes()
            # width and height are the first fields of the IHDR chunk (PNG spec, bytes 16-24)
            w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
            data = base64.b64encode(png).decode("ascii")
            out.append(
                (
                    name,
                    f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{name}" '
                    f'viewBox="0 0 {w} {h}"><image width="{w}" height="{h}" '
                    f'href="data:image/png;base64,{data}"/></svg>',
                )
            )
    return out


def _walk(client, run_id: str, path: str) -> list[str]:
    found = []
    for info in client.list_artifacts(run_id, path or None):
        if info.is_dir:
            found += _walk(client, run_id, info.path)
        else:
            found.append(info.path)
    return sorted(found)
