"""MLflow: tracking store, one experiment per model, registry, aliases and promotion.

Local default: a SQLite tracking store ``$LIFECYCLE_HOME/mlflow/mlflow.db`` and artifacts
under ``$LIFECYCLE_HOME/mlflow/artifacts/<experiment>`` (MLflow 3 refuses the plain file
store). ``LIFECYCLE_MLFLOW_TRACKING_URI`` points everything at another store or a tracking
server (``http://...``) instead; nothing else changes. With a database tracking store
(``postgresql://...``), ``LIFECYCLE_MLFLOW_ARTIFACT_URI`` says where new experiments keep
their artifacts (S3, or a folder every worker mounts). Telemetry is off.

Registered models ``lifecycle_churn``, ``lifecycle_segmentation`` and ``lifecycle_clv``
carry the aliases ``champion`` (what scoring loads: ``models:/<name>@champion``) and
``challenger`` (the latest version that was not promoted). Registry stages are
deprecated in MLflow 3 and not used.

Serialization: the churn model is logged with the sklearn flavour in the skops format
with an explicit list of trusted types (:data:`CHURN_TRUSTED_TYPES`) — no pickle. CLV and
segmentation are plain Python objects (scipy parameters, a KMeans with a naming table)
logged as pyfunc wrappers (cloudpickle, the pyfunc default): they come from our own
package and training run, never from outside.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifecycle.settings import Settings

log = logging.getLogger(__name__)

CHURN_MODEL = "lifecycle_churn"
SEGMENTATION_MODEL = "lifecycle_segmentation"
CLV_MODEL = "lifecycle_clv"
#: Experiment of each registered model.
EXPERIMENTS = {
    CHURN_MODEL: "lifecycle-churn",
    SEGMENTATION_MODEL: "lifecycle-segmentation",
    CLV_MODEL: "lifecycle-clv",
}
CHAMPION, CHALLENGER = "champion", "challenger"

#: Types skops may load for the churn model beyond its defaults: our wrapper, the
#: calibrated classifier's parts and HistGradientBoosting's tree predictors.
CHURN_TRUSTED_TYPES = [
    "ml.churn.ChurnModel",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
    "functools.partial",
    # the BTYD fit saved with a churn model that reads BTYD features (frozen dataclasses)
    "ml.features.BtydFit",
    "ml.clv.BetaGeoParams",
    "ml.clv.GammaGammaParams",
]


class NoChampionError(RuntimeError):
    """A registered model has no champion version yet."""


def tracking_uri(settings: Settings) -> str:
    """Return the MLflow tracking URI: the setting, else the local SQLite store."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return f"sqlite:///{(settings.home / 'mlflow' / 'mlflow.db').resolve()}"


def _is_local(settings: Settings) -> bool:
    return not settings.mlflow_tracking_uri


def configure(settings: Settings):  # -> MlflowClient
    """Point MLflow at the configured store (telemetry off) and return a client for it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(settings)
    if _is_local(settings):
        (settings.home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
    else:
        try:
            check_reachable(uri)
        except TrackingStoreError as exc:
            raise TrackingStoreError(f"LIFECYCLE_MLFLOW_TRACKING_URI: {exc}") from exc
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except MlflowException as exc:  # an unsupported scheme, say
        raise TrackingStoreError(f"LIFECYCLE_MLFLOW_TRACKING_URI: {exc.message}") from exc


class TrackingStoreError(RuntimeError):
    """The configured MLflow store cannot be used (unreachable, or not a store)."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when an MLflow server does not answer.

    MLflow's client retries a refused connection for minutes, and the registry's "no such
    alias" then read as "no champion: run `lifecycle train` first". Any HTTP answer
    (even 401 or 404) means a server is there; only a connection that fails is refused.
    """
    import urllib.error
    import urllib.request

    from lifecycle.redact import redact

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingStoreError(
            f"cannot reach the MLflow server at {redact(uri)}: {reason}"
        ) from exc


def experiment_id(settings: Settings, client, registered_model: str) -> str:
    """Return the id of the model's experiment, creating it (with its artifact folder)."""
    name = EXPERIMENTS[registered_model]
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if settings.mlflow_artifact_uri:  # e.g. a DB tracking store with artifacts on S3
        location = f"{settings.mlflow_artifact_uri.rstrip('/')}/{name}"
    elif _is_local(settings):
        location = (settings.home / "mlflow" / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def pip_requirements() -> list[str]:
    """Return pinned requirements of the logged models (explicit: faster than inference)."""
    from importlib.metadata import version

    names = ("scikit-learn", "pandas", "numpy", "scipy", "skops", "cloudpickle")
    return [f"{n}=={version(n)}" for n in names]


def version_by_alias(client, name: str, alias: str):  # -> ModelVersion | None
    """Return the version of registered model `name` behind `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # no such model, or no such alias; anything else (a store that stopped answering)
        # is not "no champion"
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register(client, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name` (created if needed); return the version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # already registered
        client.create_registered_model(name)
    with _quiet():
        mv = mlflow.register_model(model_uri, name, tags=tags)
    client.set_model_version_tag(name, mv.version, "run_id", run_id)
    return str(mv.version)


@contextlib.contextmanager
def registered(
    client, name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> Iterator[str]:
    """Register as :func:`register` does, for a block that gives the version its alias.

    When the block fails or is interrupted (Ctrl-C), the version is deleted: the registry
    keeps no version without an alias whose run failed, and the rerun's version is the
    one after the last kept.
    """
    version = register(client, name, model_uri, run_id, tags)
    try:
        yield version
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_model_version(name, version)
            log.warning("%s version %s deleted: its training did not finish", name, version)
        raise


@dataclass(frozen=True)
class Promotion:
    """The outcome of a promotion decision."""

    model: str
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None = None
    metric: str | None = None
    value: float | None = None
    champion_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-able dict."""
        return asdict(self)


def apply_promotion(client, decision: Promotion, run_id: str | None = None) -> Promotion:
    """Set the aliases of `decision` (champion or challenger) and record why, on run and version."""
    alias = CHAMPION if decision.promoted else CHALLENGER
    client.set_registered_model_alias(decision.model, alias, decision.version)
    client.set_model_version_tag(decision.model, decision.version, "promotion", alias)
    client.set_model_version_tag(
        decision.model, decision.version, "promotion_reason", decision.reason[:4000]
    )
    if run_id:
        client.set_tag(run_id, "promotion", alias)
        client.set_tag(run_id, "promotion_reason", decision.reason[:4000])
    log.info("%s version %s is %s: %s", decision.model, decision.version, alias, decision.reason)
    return decision


#: What a metric scores for a model that ranks at random (or gives one score to all).
CHANCE = {"roc_auc": 0.5}


def decide(
    model: str,
    version: str,
    *,
    metric: str,
    value: float,
    champion_version: str | None,
    champion_value: float | None,
    min_improvement: float,
    greater_is_better: bool = True,
    gain_interval: tuple[float, float] | None = None,
) -> Promotion:
    """Return whether `version` replaces the champion: first ever, or better by the margin.

    With `gain_interval` (a bootstrap interval of the gain, e.g. of the ROC AUC difference
    on the same holdout), the *lower end* of the interval must reach the margin: a gain
    within the noise never replaces a champion.
    """
    floor = CHANCE.get(metric) if greater_is_better else None
    if floor is not None and not value > floor + 1e-9:
        # A constant score (a tiny world: too few rows for a split) ranks no one. It is
        # still promoted when there is no champion (a shop's first days need one), but
        # the user hears that its scores tell no one apart.
        log.warning(
            "%s v%s: %s %.4f on the holdout is no better than chance (%s): the model tells "
            "no one apart (too few customers, or too little history), so its scores and "
            "risk bands are alike for everyone",
            model,
            version,
            metric,
            value,
            floor,
        )
    if champion_version is None:
        return Promotion(model, version, True, "first model: no champion yet", None, metric, value)
    if champion_value is None:
        return Promotion(
            model,
            version,
            True,
            f"champion v{champion_version} could not be evaluated on this holdout",
            champion_version,
            metric,
            value,
        )
    gain = value - champion_value if greater_is_better else champion_value - value
    if gain_interval is not None:
        low, high = gain_interval
        verdict = "beats" if low >= min_improvement else "does not beat"
        reason = (
            f"{metric} {value:.4f} {verdict} champion v{champion_version} "
            f"({champion_value:.4f}): gain {gain:+.4f}, bootstrap interval [{low:+.4f}, "
            f"{high:+.4f}], whose lower end must reach {min_improvement}"
        )
        return Promotion(
            model,
            version,
            low >= min_improvement,
            reason,
            champion_version,
            metric,
            value,
            champion_value,
        )
    if gain >= min_improvement:
        reason = (
            f"{metric} {value:.4f} beats champion v{champion_version} ({champion_value:.4f}) "
            f"by {gain:.4f} >= {min_improvement}"
        )
        return Promotion(
            model, version, True, reason, champion_version, metric, value, champion_value
        )
    reason = (
        f"{metric} {value:.4f} does not beat champion v{champion_version} "
        f"({champion_value:.4f}) by the required {min_improvement} (gain {gain:+.4f})"
    )
    return Promotion(model, version, False, reason, champion_version, metric, value, champion_value)


def champion_uri(name: str) -> str:
    """Return the models:/ URI of the champion of `name`."""
    return f"models:/{name}@{CHAMPION}"


def load_champion(settings: Settings, name: str, *, sklearn: bool = False) -> tuple[Any, str]:
    """Return (model object, version) of the champion of `name`, or raise NoChampionError."""
    client = configure(settings)
    mv = version_by_alias(client, name, CHAMPION)
    if mv is None:
        raise NoChampionError(
            f"no champion of {name} in the MLflow registry at {tracking_uri(settings)}: "
            "run `lifecycle train` first"
        )
    import mlflow

    uri = champion_uri(name)
    with _quiet():  # the pyfunc wrapper's class, unpickled, warns of its type hints again
        if sklearn:
            return mlflow.sklearn.load_model(uri), str(mv.version)
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().model, str(mv.version)


def _python_model_class():
    import mlflow.pyfunc

    class WrappedModel(mlflow.pyfunc.PythonModel):
        """A fitted model object of ours served through pyfunc's predict."""

        def __init__(self, model: Any) -> None:
            self.model = model

        def predict(self, context, model_input, params=None):  # noqa: ANN001
            """Return the wrapped model's predictions for `model_input`."""
            return self.model.predict(model_input)

    return WrappedModel


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep MLflow's advice to library authors and its registry chatter out of the output.

    Logging or registering a model printed, on every `lifecycle train`, warnings with raw
    colour codes ("Add type hints to the predict method", "Inferred schema contains
    integer column(s)"), the CloudPickle notice of pyfunc, and "Registered model ...
    already exists. Creating a new version" (MLflow's ``eprint``, to its own stream),
    none of which a user can act on. They go to this module's debug log instead.
    """
    import io
    import warnings

    import mlflow.utils.logging_utils as mlflow_logging

    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level, stream = pyfunc_log.level, mlflow_logging.MLFLOW_LOGGING_STREAM
    said = io.StringIO()
    # recorded, not filtered: MLflow's own wrapper puts a "once" filter before any of ours
    with warnings.catch_warnings(record=True) as caught:
        pyfunc_log.setLevel(logging.ERROR)
        mlflow_logging.MLFLOW_LOGGING_STREAM = said
        try:
            yield
        finally:
            mlflow_logging.MLFLOW_LOGGING_STREAM = stream
            pyfunc_log.setLevel(level)
            if said.getvalue().strip():
                log.debug("mlflow: %s", " ".join(said.getvalue().split()))
    for w in caught:
        if any(text in str(w.message) for text in _MLFLOW_ADVICE):
            log.debug("mlflow: %s", w.message)
        else:  # anything else is shown as it would have been
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


#: MLflow's warnings to library authors, which `_quiet` keeps out of the output.
_MLFLOW_ADVICE = ("Add type hints", "Inferred schema contains integer", "CloudPickle")


def log_pyfunc(model: Any, input_example, name: str = "model"):  # -> ModelInfo
    """Log a fitted object with a ``predict(frame)`` as a pyfunc model in the active run."""
    import mlflow
    from mlflow.models import infer_signature

    output = model.predict(input_example)
    with _quiet():
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=_python_model_class()(model),
            signature=infer_signature(input_example, output),
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )


def log_churn_model(model: Any, input_example, name: str = "model"):  # -> ModelInfo
    """Log the churn model (sklearn flavour, skops, explicit trusted types) in the active run."""
    import mlflow
    from mlflow.models import infer_signature

    with _quiet():
        return mlflow.sklearn.log_model(
            model,
            name=name,
            serialization_format="skops",
            skops_trusted_types=CHURN_TRUSTED_TYPES,
            signature=infer_signature(input_example, model.predict(input_example)),
            input_example=input_example,
            pip_requirements=pip_requirements(),
            pyfunc_predict_fn="predict",
        )


def artifacts_dir(settings: Settings) -> Path:
    """Return the local folder for scratch artifacts (plots) before they are logged."""
    path = settings.home / "mlflow" / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path
