"""Data-quality gates (Great Expectations) and write-audit-publish of the marts.

The daily DAG calls, in order: ``run_validate(D, settings, layer="raw")`` after extract;
``transform(D, settings, publish=False)`` (dbt builds the marts into ``marts__build``);
``gate_and_publish(D, settings)`` (the marts gate, then the atomic swap into ``marts``).
See docs/data-quality.md.
"""

from lifecycle.quality.gate import (
    GateFailed,
    GateResult,
    Outcome,
    QualityError,
    Verdict,
    gate_and_publish,
    run_validate,
    validate_layer,
)
from lifecycle.quality.publish import PublishError, PublishResult, publish_marts

__all__ = [
    "GateFailed",
    "GateResult",
    "Outcome",
    "PublishError",
    "PublishResult",
    "QualityError",
    "Verdict",
    "gate_and_publish",
    "publish_marts",
    "run_validate",
    "validate_layer",
]
