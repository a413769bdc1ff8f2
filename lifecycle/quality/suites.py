"""The versioned expectation suites in ``expectations/`` and what each one checks.

One JSON file per checked table, ``expectations/<layer>/<table>.json``, in Great
Expectations 1.x's own suite format (``name``, ``expectations`` with ``type``,
``kwargs``, ``severity``, ``meta``), so ``gx.ExpectationSuite(**json)`` reads it. What GX
cannot know — which relation and which rows of it are the batch of a logical date —
sits in the suite's ``meta.lifecycle``:

- ``table``: the relation, e.g. ``raw.web__events`` or ``{schema}.customers``;
- ``batch``: an SQL filter selecting the rows of the logical date (optional);
- ``requires_batch``: the raw entity whose load batch of the date must exist, else the
  suite is skipped (the source was not configured that day);
- ``row_count``: bounds on the batch's row count relative to recent days (raw only).

Tokens in ``table``, ``batch`` and SQL of ``unexpected_rows_expectation`` are replaced
before GX sees them: ``{schema}`` (the schema validated: ``marts__build`` for a pending
build), ``{as_of_date}`` (``YYYY-MM-DD``), ``{day_end}`` (the end of that day in the
business zone, ``2018-10-17T00:00:00-03:00``: the bound of a timestamp, which PostgreSQL
would otherwise read as the session zone's midnight) and ``{batch_id}`` (the raw batch of
the date).
``{batch}`` is GX's own token for the batch's rows.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.raw import ENTITIES

#: The suites folder (``expectations/`` at the top of the repository).
SUITES_DIR = Path(__file__).resolve().parent.parent.parent / "expectations"

#: Layers in pipeline order, and the schema each validates by default.
LAYERS: dict[str, str] = {
    "raw": "raw",
    "marts": "marts",
    "scores": "ml",
    "activation": "activation",
}

#: Severities of GX 1.x expectations; only ``critical`` failures fail a gate.
SEVERITIES = ("critical", "warning", "info")


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class RowCountRule:
    """Bounds on a raw batch's row count relative to the same table's recent daily batches."""

    history_days: int = 14  # look this many days back for earlier batches
    history_batches: int = 7  # use at most this many of them (the latest)
    min_history: int = 3  # fewer earlier one-day batches: no bound (nothing to compare)
    min_median: float = 20  # smaller typical days are too noisy to judge
    min_ratio: float = 0.3  # fewer rows than this share of the median fails
    max_ratio: float = 10.0  # more rows than this multiple of the median fails


@dataclass(frozen=True)
class Suite:
    """One suite file: the GX suite and the relation it validates."""

    name: str
    layer: str
    path: Path
    table: str
    batch: str | None
    requires_batch: str | None
    row_count: RowCountRule | None
    spec: dict[str, Any] = field(repr=False)

    def relation(self, schema: str) -> str:
        """Return the schema-qualified relation this suite validates in `schema`."""
        return self.table.replace("{schema}", schema)

    def query(self, tokens: dict[str, str]) -> str:
        """Return the SQL that selects the suite's batch, with `tokens` substituted."""
        sql = f"select * from {self.table}"
        if self.batch:
            sql += f" where {self.batch}"
        return substitute(sql, tokens)

    def gx_spec(self, tokens: dict[str, str], *, grouped: bool = True) -> dict[str, Any]:
        """Return the GX suite JSON with `tokens` substituted in the expectations' SQL.

        With `grouped`, each ``expect_compound_columns_to_be_unique`` runs as the
        ``unexpected_rows_expectation`` of :func:`grouped_uniqueness` (see there).
        """
        spec = copy.deepcopy(self.spec)
        for i, exp in enumerate(spec["expectations"]):
            if grouped and exp["type"] == COMPOUND_UNIQUE:
                spec["expectations"][i] = exp = grouped_uniqueness(exp)
            kwargs = exp.get("kwargs", {})
            if "unexpected_rows_query" in kwargs:
                kwargs["unexpected_rows_query"] = substitute(
                    kwargs["unexpected_rows_query"], tokens
                )
        spec.setdefault("meta", {}).pop("lifecycle", None)
        return spec


COMPOUND_UNIQUE = "expect_compound_columns_to_be_unique"


def grouped_uniqueness(exp: dict[str, Any]) -> dict[str, Any]:
    """Return `exp` (a compound uniqueness expectation) as an unexpected-rows query: the
    keys that occur more than once.

    GX's own check joins every row to a count of its key over the whole table (a second
    scan, and a join as large as the table: 0.8-0.9 s per check on a 100k-customer mart,
    1.2-1.9 s at 200k), where grouping by the key answers in one scan; written here
    because GX has no grouped form. Its count is of duplicated keys, not rows; a gate
    that finds some runs GX's own expectation for the rows and examples (the second pass
    of lifecycle.quality.gate). Rows whose key columns are all empty are left out, as
    GX's default ``ignore_row_if`` does (``any_value_is_missing`` and ``never`` are
    honoured too).
    """
    kwargs = exp.get("kwargs") or {}
    columns = ", ".join(f'"{c}"' for c in kwargs["column_list"])
    ignore = kwargs.get("ignore_row_if", "all_values_are_missing")
    missing = [f'"{c}" is null' for c in kwargs["column_list"]]
    where = {
        "all_values_are_missing": f" where not ({' and '.join(missing)})",
        "any_value_is_missing": f" where not ({' or '.join(missing)})",
    }.get(ignore, "")
    query = (
        f"select {columns}, count(*) as copies from {{batch}}{where} "
        f"group by {columns} having count(*) > 1"
    )
    return {
        "type": "unexpected_rows_expectation",
        "kwargs": {"unexpected_rows_query": query},
        "severity": exp.get("severity", "critical"),
        "description": exp.get("description")
        or f"({', '.join(kwargs['column_list'])}) unique: keys that occur more than once",
        **({"meta": exp["meta"]} if "meta" in exp else {}),
    }


def substitute(text: str, tokens: dict[str, str]) -> str:
    """Return `text` with every ``{token}`` of `tokens` replaced (``{batch}`` is GX's)."""
    for key, value in tokens.items():
        text = text.replace("{" + key + "}", value)
    return text


def _load(path: Path, layer: str) -> Suite:
    """Return the suite in `path`, checked; raise SuiteError naming what is wrong."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SuiteError(f"{path}: not a readable JSON suite: {exc}") from exc
    binding = (spec.get("meta") or {}).get("lifecycle")
    if not isinstance(binding, dict) or "table" not in binding:
        raise SuiteError(f"{path}: meta.lifecycle.table (the relation to validate) is missing")
    expected = f"{layer}.{path.stem}"
    if spec.get("name") != expected:
        raise SuiteError(f"{path}: suite name must be {expected!r}, not {spec.get('name')!r}")
    exps = spec.get("expectations")
    if not isinstance(exps, list) or not exps:
        raise SuiteError(f"{path}: no expectations")
    for i, exp in enumerate(exps):
        if "type" not in exp:
            raise SuiteError(f"{path}: expectation {i} has no type")
        severity = exp.get("severity", "critical")
        if severity not in SEVERITIES:
            raise SuiteError(
                f"{path}: expectation {i} ({exp['type']}) has severity {severity!r}; "
                f"one of {', '.join(SEVERITIES)}"
            )
    requires = binding.get("requires_batch")
    if requires is not None and requires not in ENTITIES:
        raise SuiteError(
            f"{path}: requires_batch {requires!r} is not a raw table; one of {', '.join(ENTITIES)}"
        )
    rule = binding.get("row_count")
    return Suite(
        name=spec["name"],
        layer=layer,
        path=path,
        table=binding["table"],
        batch=binding.get("batch"),
        requires_batch=requires,
        row_count=RowCountRule(**rule) if isinstance(rule, dict) else None,
        spec=spec,
    )


def load_suites(layer: str, directory: Path | None = None) -> list[Suite]:
    """Return the suites of `layer` from ``expectations/<layer>/*.json``, by name."""
    if layer not in LAYERS:
        raise SuiteError(f"unknown layer {layer!r}; one of: {', '.join(LAYERS)}")
    folder = (directory or SUITES_DIR) / layer
    suites = [_load(path, layer) for path in sorted(folder.glob("*.json"))]
    if not suites:
        raise SuiteError(f"no suites in {folder}")
    return suites


def tokens_for(
    day: dt.date, schema: str, batch_id: str | None = None, timezone: str = "UTC"
) -> dict[str, str]:
    """Return the token values of a validation of `day` (a day in `timezone`, the business
    zone) in `schema`."""
    from lifecycle.load import day_window

    out = {
        "schema": schema,
        "as_of_date": day.isoformat(),
        "day_end": day_window(day, timezone).end.isoformat(),
    }
    if batch_id:
        out["batch_id"] = batch_id
    return out
