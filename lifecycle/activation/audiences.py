"""Audiences: the declarative definitions in ``audiences.yml``, validated and compiled to SQL.

An audience is a name, a description and a filter over the columns of
``activation.customer_scores``: a list of ``{column, op, value}`` conditions that must all
hold, where an item may also be ``{any: [conditions...]}`` (at least one holds). Filters
are compiled to parameterised SQL against a whitelist of columns; no text from the file is
ever pasted into SQL. The validator is written here rather than with a schema library
because its errors must speak the marketer's terms (which audience, which condition, which
column and the allowed values) and value types depend on the column the condition names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from lifecycle.config_yaml import load_config

#: Columns a filter may name, with their type (see ``activation.customer_scores``).
FILTER_COLUMNS: dict[str, str] = {
    "stage": "text",
    "previous_stage": "text",
    "days_in_stage": "integer",
    "country_code": "text",
    "has_marketing_consent": "boolean",
    "churn_probability": "number",
    "risk_band": "text",
    "top_reasons": "text",
    "segment_id": "integer",
    "segment_name": "text",
    "p_alive": "number",
    "expected_purchases_12m": "number",
    "expected_order_value": "number",
    "clv_12m": "number",
    "is_scored": "boolean",
}

#: Values a text column may take, where the set is closed.
CLOSED_VALUES: dict[str, tuple[str, ...]] = {
    "stage": ("prospect", "new", "active", "loyal", "at_risk", "churned", "reactivated"),
    "previous_stage": ("prospect", "new", "active", "loyal", "at_risk", "churned", "reactivated"),
    "risk_band": ("low", "medium", "high"),
}

#: Comparison operators and the SQL they compile to.
COMPARISONS: dict[str, str] = {
    "eq": "=",
    "ne": "<>",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
}
#: Every operator a condition may use.
OPS: tuple[str, ...] = (*COMPARISONS, "in", "not_in", "is_null", "not_null", "contains")

#: Export layouts (see lifecycle/activation/exports.py).
LAYOUTS: tuple[str, ...] = ("generic", "mailchimp", "hubspot", "klaviyo", "google_ads", "meta")

#: Days after an export day over which treatment and control are compared, by default.
LIFT_WINDOW_DAYS = 30

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PUSH_MODES = ("delta", "full")


class AudienceFileError(ValueError):
    """The audiences file is missing or invalid; the message lists every problem found."""


@dataclass(frozen=True)
class Push:
    """Where and how an audience is POSTed to a campaign tool."""

    url: str
    batch_size: int = 500
    mode: str = "delta"  # "delta": adds and removes; "full": the whole list every run


@dataclass(frozen=True)
class Audience:
    """One validated audience definition."""

    name: str
    description: str
    filter: tuple[Any, ...]  # validated conditions: dicts, or ("any", (conditions...))
    control_share: float = 0.0
    layouts: tuple[str, ...] = LAYOUTS
    push: Push | None = None
    lift_window_days: int = 30  # days after an export day over which lift is measured
    definition: dict = field(default_factory=dict, compare=False)  # as written in the file

    def definition_sha256(self) -> str:
        """Return a checksum of the definition (recorded with every export)."""
        text = json.dumps(self.definition, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def where(self, alias: str = "") -> tuple[sql.Composable, list[Any]]:
        """Return the filter as a SQL boolean expression and its parameters."""
        params: list[Any] = []
        expr = _compile_all(self.filter, alias, params)
        return expr, params


# --------------------------------------------------------------------------- loading


def load_audiences(path: Path) -> list[Audience]:
    """Return the audiences of the YAML file at `path`, or raise AudienceFileError."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AudienceFileError(
            f"audiences file {path} {what} (set LIFECYCLE_AUDIENCES_FILE to another one)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AudienceFileError(f"{path} cannot be read: {_capped(str(exc))}") from None
    try:
        doc = load_config(text)
    except yaml.YAMLError as exc:
        raise AudienceFileError(f"{path} is not valid YAML: {_capped(str(exc))}") from None
    except RecursionError:
        raise AudienceFileError(f"{path} is nested too deeply to be an audiences file") from None
    return parse_audiences(doc, source=str(path))


#: Longest piece of the file an error message quotes (a problem is named, not echoed).
ECHO_LIMIT = 200


def _capped(text: str, limit: int = ECHO_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def parse_audiences(doc: Any, source: str = "audiences.yml") -> list[Audience]:
    """Return the audiences of a parsed YAML document, or raise AudienceFileError."""
    errors: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("audiences"), list):
        raise AudienceFileError(f"{source}: expected a mapping with a list under 'audiences'")
    unknown = sorted(set(doc) - {"version", "audiences"})
    if unknown:
        errors.append(f"unknown top-level key(s) {unknown} (allowed: version, audiences)")
    out: list[Audience] = []
    seen: set[str] = set()
    for i, item in enumerate(doc["audiences"]):
        where = f"audiences[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: expected a mapping, got {type(item).__name__}")
            continue
        name = item.get("name")
        if isinstance(name, str):
            where = f"audience {name!r}"
        audience = _parse_audience(item, where, errors)
        if audience is None:
            continue
        if audience.name in seen:
            errors.append(f"{where}: name is used twice")
        seen.add(audience.name)
        out.append(audience)
    if errors:
        # one line, as every error the CLI prints
        listed = "; ".join(_capped(e) for e in errors[:20])
        if len(errors) > 20:
            listed += f"; ... and {len(errors) - 20} more"
        raise AudienceFileError(f"{source} has {len(errors)} problem(s): {listed}")
    return out


def _parse_audience(item: dict, where: str, errors: list[str]) -> Audience | None:
    n_before = len(errors)
    allowed = {
        "name",
        "description",
        "filter",
        "control_share",
        "layouts",
        "push",
        "lift_window_days",
    }
    extra = sorted(set(item) - allowed)
    if extra:
        errors.append(f"{where}: unknown key(s) {extra} (allowed: {sorted(allowed)})")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(
            f"{where}: name must be lower-case letters, digits and _ (starting with a letter), "
            f"got {name!r}"
        )
    description = item.get("description")
    if not isinstance(description, str) or not description.strip():
        errors.append(f"{where}: description is required")
    raw_filter = item.get("filter")
    if not isinstance(raw_filter, list) or not raw_filter:
        errors.append(f"{where}: filter must be a non-empty list of conditions")
        conditions: tuple[Any, ...] = ()
    else:
        conditions = tuple(
            _parse_condition(c, f"{where}: filter[{j}]", errors) for j, c in enumerate(raw_filter)
        )
    share = item.get("control_share", 0.0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
        errors.append(f"{where}: control_share must be a number in [0, 1), got {share!r}")
        share = 0.0
    layouts = item.get("layouts", list(LAYOUTS))
    if (
        not isinstance(layouts, list)
        or not layouts
        or any(not isinstance(x, str) or x not in LAYOUTS for x in layouts)
    ):
        errors.append(
            f"{where}: layouts must be a non-empty list from {list(LAYOUTS)}, got {layouts!r}"
        )
        layouts = list(LAYOUTS)
    push = _parse_push(item.get("push"), where, errors) if item.get("push") is not None else None
    window = item.get("lift_window_days", LIFT_WINDOW_DAYS)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 365:
        errors.append(
            f"{where}: lift_window_days must be a whole number of days in [1, 365], got {window!r}"
        )
    if len(errors) > n_before:
        return None
    return Audience(
        name=name,
        description=description.strip(),
        filter=conditions,
        control_share=float(share),
        layouts=tuple(dict.fromkeys(layouts)),
        push=push,
        lift_window_days=window,
        definition=item,
    )


def _parse_push(raw: Any, where: str, errors: list[str]) -> Push | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: push must be a mapping with a url")
        return None
    extra = sorted(set(raw) - {"url", "batch_size", "mode"})
    if extra:
        errors.append(f"{where}: push has unknown key(s) {extra} (allowed: url, batch_size, mode)")
    url = raw.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        errors.append(f"{where}: push.url must be an http(s) URL, got {url!r}")
    size = raw.get("batch_size", 500)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 10_000:
        errors.append(f"{where}: push.batch_size must be an integer in [1, 10000], got {size!r}")
    mode = raw.get("mode", "delta")
    if mode not in PUSH_MODES:
        errors.append(f"{where}: push.mode must be one of {list(PUSH_MODES)}, got {mode!r}")
    return Push(url=url, batch_size=size, mode=mode) if isinstance(url, str) else None


def _parse_condition(raw: Any, where: str, errors: list[str]) -> Any:
    if isinstance(raw, dict) and set(raw) == {"any"}:
        items = raw["any"]
        if not isinstance(items, list) or not items:
            errors.append(f"{where}: any must be a non-empty list of conditions")
            return ("any", ())
        return (
            "any",
            tuple(_parse_condition(c, f"{where}.any[{k}]", errors) for k, c in enumerate(items)),
        )
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected {{column, op, value}} or {{any: [...]}}, got {raw!r}")
        return {}
    extra = sorted(set(raw) - {"column", "op", "value"})
    if extra:
        errors.append(f"{where}: unknown key(s) {extra} (a condition has column, op, value)")
    column, op = raw.get("column"), raw.get("op")
    if column not in FILTER_COLUMNS:
        errors.append(
            f"{where}: unknown column {column!r} (filterable columns: {', '.join(FILTER_COLUMNS)})"
        )
        return {}
    if op not in OPS:
        errors.append(f"{where}: unknown op {op!r} for column {column} (ops: {', '.join(OPS)})")
        return {}
    kind = FILTER_COLUMNS[column]
    value = raw.get("value")
    if op in ("is_null", "not_null"):
        if "value" in raw:
            errors.append(f"{where}: op {op} takes no value")
        return {"column": column, "op": op}
    if "value" not in raw:
        errors.append(f"{where}: op {op} on {column} needs a value")
        return {}
    values = value if op in ("in", "not_in") else [value]
    if op in ("in", "not_in") and (not isinstance(value, list) or not value):
        errors.append(f"{where}: op {op} needs a non-empty list as value, got {value!r}")
        return {}
    if op == "contains" and kind != "text":
        errors.append(f"{where}: op contains works on text columns only, not {column} ({kind})")
        return {}
    if kind in ("number", "integer") and op in COMPARISONS | {"in": 0, "not_in": 0}:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                errors.append(f"{where}: {column} is a number: value {v!r} is not one")
                return {}
            if kind == "integer" and not float(v).is_integer():
                errors.append(f"{where}: {column} is an integer: value {v!r} is not one")
                return {}
        cast = int if kind == "integer" else float
        value = [cast(v) for v in values] if op in ("in", "not_in") else cast(value)
    elif kind == "boolean":
        if op not in ("eq", "ne") or not isinstance(value, bool):
            errors.append(f"{where}: {column} is true/false: use eq or ne with true or false")
            return {}
    elif kind == "text":
        if op in ("lt", "lte", "gt", "gte"):
            errors.append(f"{where}: op {op} does not apply to the text column {column}")
            return {}
        for v in values:
            if not isinstance(v, str):
                errors.append(f"{where}: {column} is text: value {v!r} is not a string")
                return {}
            if op != "contains" and column in CLOSED_VALUES and v not in CLOSED_VALUES[column]:
                errors.append(
                    f"{where}: {v!r} is not a {column} (one of {', '.join(CLOSED_VALUES[column])})"
                )
                return {}
    return {"column": column, "op": op, "value": value}


# ------------------------------------------------------------------------- compiling


def _compile_all(conditions: tuple[Any, ...], alias: str, params: list[Any]) -> sql.Composable:
    parts = [_compile(c, alias, params) for c in conditions]
    return sql.SQL("(") + sql.SQL(" and ").join(parts) + sql.SQL(")")


def _compile(cond: Any, alias: str, params: list[Any]) -> sql.Composable:
    if isinstance(cond, tuple) and cond[0] == "any":
        parts = [_compile(c, alias, params) for c in cond[1]]
        return sql.SQL("(") + sql.SQL(" or ").join(parts) + sql.SQL(")")
    column, op = cond["column"], cond["op"]
    if column not in FILTER_COLUMNS:  # validated already; never trust a dict blindly
        raise AudienceFileError(f"unknown column {column!r}")
    col = sql.Identifier(alias, column) if alias else sql.Identifier(column)
    if op == "is_null":
        return sql.SQL("{} is null").format(col)
    if op == "not_null":
        return sql.SQL("{} is not null").format(col)
    if op == "contains":
        params.append(cond["value"])
        return sql.SQL("coalesce(strpos({}, %s) > 0, false)").format(col)
    if op in ("in", "not_in"):
        params.append(list(cond["value"]))
        # a null column is in no list and (like SQL's <>) not "not in" one either
        return sql.SQL("{} = any(%s)" if op == "in" else "not ({} = any(%s))").format(col)
    params.append(cond["value"])
    return sql.SQL("{} " + COMPARISONS[op] + " %s").format(col)
