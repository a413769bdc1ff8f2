"""What a report is made of: sections of blocks (KPI tiles, charts, tables, notes).

Section builders return these; the HTML template renders them generically, giving every
KPI tile a stable ``id`` and ``data-value`` and every table cell ``data-col`` and
``data-value`` attributes, so tests and scrapers can read the numbers without parsing
formatted text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from typing import Any


class Unavailable(Exception):  # noqa: N818 - a signal, not an error: the section says why
    """A section cannot be drawn; the message says why (shown as "not available: ...")."""


@dataclass(frozen=True)
class Kpi:
    """One number on a tile: `key` gives the element id ``kpi-<key>``."""

    key: str
    label: str
    value: Any  # int, Decimal, float or None (shown as "-")
    unit: str = ""  # "money" (the business currency), "pct" or ""
    hint: str = ""


@dataclass(frozen=True)
class Chart:
    """An inline SVG chart with a caption."""

    name: str
    svg: str
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A small table: `columns` are (key, label) pairs, rows are dicts of raw values."""

    key: str
    caption: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    units: dict[str, str] = field(default_factory=dict)  # column key -> "money" / "pct"


@dataclass(frozen=True)
class Note:
    """A line of text (level "info" or "warn")."""

    text: str
    level: str = "info"
    link: str | None = None  # a URL the line points to (e.g. a GX Data Docs site)


Block = Kpi | Chart | Table | Note


@dataclass
class Section:
    """One section of the report: available with blocks, or not available with a reason."""

    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    reason: str | None = None  # set when not available
    facts: dict[str, Any] = field(default_factory=dict)  # small JSON-able key numbers

    @property
    def available(self) -> bool:
        """Return whether the section has content (no reason to be unavailable)."""
        return self.reason is None

    @property
    def kpis(self) -> list[Kpi]:
        """Return the KPI tiles of the section."""
        return [b for b in self.blocks if isinstance(b, Kpi)]

    @property
    def charts(self) -> list[Chart]:
        """Return the charts of the section."""
        return [b for b in self.blocks if isinstance(b, Chart)]


def jsonable(value: Any) -> Any:
    """Return `value` as a JSON-friendly value (Decimal → float, dates → ISO text)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def fmt(value: Any, unit: str = "", currency: str = "USD") -> str:
    """Return `value` formatted for people: thousands separators, ``pct`` as %, ``money``
    in `currency` (the business's reporting currency: $1,234.56, €1,234.56, TRY1,234.56)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    if unit == "pct" and isinstance(value, int | float | decimal.Decimal):
        return f"{float(value) * 100:.1f}%"
    if unit == "money" and isinstance(value, int | float | decimal.Decimal):
        # Babel (already beneath dbt and Airflow) knows every currency's sign and digits
        from babel.numbers import format_currency

        if not math.isfinite(float(value)):
            return "-"
        return format_currency(float(value), currency, locale="en_US")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, decimal.Decimal | float):
        return f"{float(value):,.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    return str(value)


def raw(value: Any) -> str:
    """Return `value` as the text of a ``data-value`` attribute (exact, unformatted)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)
