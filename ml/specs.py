"""Declarative model specs: ``load_spec("churn")`` reads ``models/churn.yaml``.

One YAML file per model under the project's ``models/`` folder (features, algorithm,
hyper-parameters, promotion thresholds). The loader is generic: it checks the name and
that the file holds a mapping, and leaves the meaning of the keys to the model's code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

#: The project's ``models/`` folder (next to the ``ml`` package).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def spec_path(name: str, models_dir: Path | None = None) -> Path:
    """Return the path of the spec file of model `name` (``<models_dir>/<name>.yaml``)."""
    if not _NAME.match(name):
        raise ValueError(
            f"model spec name {name!r} is not valid: use lower-case letters, digits and _ "
            "(the file name without .yaml, e.g. 'churn')"
        )
    return (models_dir or MODELS_DIR) / f"{name}.yaml"


def available_specs(models_dir: Path | None = None) -> list[str]:
    """Return the names of the model specs in `models_dir`, sorted."""
    folder = models_dir or MODELS_DIR
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_spec(name: str, models_dir: Path | None = None) -> dict[str, Any]:
    """Return the parsed spec of model `name` as a dict (raises naming the file on error)."""
    path = spec_path(name, models_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no model spec {name!r}: {path} does not exist "
            f"(available: {', '.join(available_specs(models_dir)) or 'none'})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"model spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"model spec {path} must be a YAML mapping at the top level, got {type(data).__name__}"
        )
    declared = data.get("name", name)
    if declared != name:
        raise ValueError(f"model spec {path} declares name {declared!r}, expected {name!r}")
    return data
