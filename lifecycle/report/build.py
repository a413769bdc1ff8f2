"""Build the lifecycle report of a logical date: one self-contained HTML file.

:func:`build_report` reads every section's tables in one read-only, repeatable-read
transaction (all sections see the same snapshot), renders the charts as inline SVG and
writes the page atomically (a temporary file renamed into place), so a failed build
never leaves half a report. The page works offline: no script, style or font is fetched.
Nothing in it depends on the wall clock: the same warehouse gives the same file.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from lifecycle import __version__
from lifecycle.report import charts, sections
from lifecycle.report.model import Note, Section, Unavailable, fmt, jsonable, raw
from lifecycle.settings import Settings, get_settings
from lifecycle.sources_file import load_sources
from lifecycle.warehouse import connect, redact, warehouse_url

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"

SectionBuilder = Callable[[psycopg.Connection, dt.date], Section]

#: The report's sections in page order: (key, title when unavailable, builder).
SECTIONS: tuple[tuple[str, str, SectionBuilder], ...] = (
    ("overview", "Overview", sections.overview),
    ("stages", "Customers by lifecycle stage over time", sections.stages_over_time),
    ("transitions", "Stage transitions", sections.transitions),
    ("cohorts", "Cohort retention", sections.cohorts),
    ("ltv", "Customer value (LTV)", sections.ltv),
    ("rfm", "RFM segments", sections.rfm),
    ("funnel", "Acquisition funnel (AARRR)", sections.funnel),
    ("churn", "Churn risk", sections.churn_risk),
    ("model", "Churn model evaluation", None),  # reads MLflow, not the warehouse
    ("segments", "Customer segments", sections.segments),
    ("audiences", "Audiences", sections.audiences),
    ("lift", "Campaign lift", sections.lift),
    ("quality", "Data quality", sections.quality),
    ("loads", "Load runs", sections.loads),
)

#: Sections that show what an absent source means (called with ``absent=``, raw table ->
#: "no such source: ...", see lifecycle.availability).
SOURCE_AWARE = frozenset({"ltv", "funnel", "loads"})

#: Charts drawn across the whole page width.
WIDE_CHARTS = frozenset({"stage-area", "stage-sankey", "retention-customers", "retention-revenue"})


class ReportError(RuntimeError):
    """The report cannot be built; the message says what to run first."""


@dataclass
class ReportResult:
    """What :func:`build_report` wrote."""

    day: dt.date
    path: Path
    marts_as_of: dt.date | None
    rendered: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # section -> reason
    charts: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Return a short, readable account for a task log or the CLI."""
        lines = [
            f"lifecycle report {self.day}: {len(self.rendered)} sections, {self.charts} charts, "
            f"{self.bytes / 1024:,.0f} KiB in {self.elapsed_s:.1f}s -> {self.path}"
        ]
        for key, reason in self.unavailable.items():
            lines.append(f"  not available: {key}: {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able facts of the result (for XCom or --json)."""
        return jsonable(
            {
                "day": self.day,
                "path": str(self.path),
                "marts_as_of": self.marts_as_of,
                "rendered": self.rendered,
                "unavailable": self.unavailable,
                "charts": self.charts,
                "bytes": self.bytes,
                "facts": self.facts,
            }
        )


def default_path(day: dt.date, settings: Settings) -> Path:
    """Return where the report of `day` goes by default."""
    folder = settings.report_dir or settings.home / "reports"
    return folder / f"lifecycle-report-{day.isoformat()}.html"


def _is_number(value: Any) -> bool:
    """Return whether `value` is shown as a number (right-aligned)."""
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)


def render_html(
    day: dt.date,
    built: list[Section],
    *,
    marts_as_of: dt.date | None,
    warehouse: str,
    warnings: list[str],
    currency: str = "USD",
) -> str:
    """Return the report page for the built sections, money in `currency`."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    return template.render(
        day=day,
        sections=built,
        available=[s for s in built if s.available],
        marts_as_of=marts_as_of,
        warehouse=warehouse,
        warnings=warnings,
        version=__version__,
        fmt=functools.partial(fmt, currency=currency),
        raw=raw,
        is_number=_is_number,
        stage_colors=charts.STAGE_COLORS,
        wide=WIDE_CHARTS,
    )


def collect_sections(conn: psycopg.Connection, day: dt.date, settings: Settings) -> list[Section]:
    """Return every section of the report of `day`, available or with its reason."""
    from lifecycle.availability import absent_entities
    from lifecycle.report import evaluation

    absent = absent_entities(settings, conn)
    scored_version = None
    if sections.exists(conn, "ml.scores_history"):
        row = conn.execute(
            "select min(churn_model_version) from ml.scores_history where score_date = %s", (day,)
        ).fetchone()
        scored_version = row[0]
    built = []
    for key, title, builder in SECTIONS:
        try:
            if builder is None:
                section = evaluation.model_section(settings, day, scored_version)
            elif key in SOURCE_AWARE:
                section = builder(conn, day, absent=absent)
            else:
                section = builder(conn, day)
        except Unavailable as exc:
            section = Section(key, title, reason=str(exc))
        if key == "quality" and section.available:
            section.blocks.extend(_data_docs_notes(conn, day, settings))
        built.append(section)
    return built


def _data_docs_notes(conn: psycopg.Connection, day: dt.date, settings: Settings) -> list[Note]:
    """Return one line per layer linking the GX Data Docs site of its latest gate run."""
    from lifecycle.quality.gate import data_docs_index

    runs = conn.execute(
        "select distinct on (layer) layer, run_id from ops.dq_runs where logical_date = %s "
        "order by layer, recorded_at desc",
        (day,),
    ).fetchall()
    notes = []
    for layer, run_id in runs:
        index = data_docs_index(settings, day, layer, run_id)
        if index is not None:
            notes.append(
                Note(f"GX Data Docs of the {layer} gate run {run_id}:", link=index.as_uri())
            )
    return notes


def build_report(
    day: dt.date, settings: Settings | None = None, *, out: Path | None = None
) -> ReportResult:
    """Write the HTML report of `day` (default under ``$LIFECYCLE_HOME/reports/``); return it.

    Raises :class:`ReportError` when the marts are missing or were built as of a date
    before `day` (the report would show another day's numbers as `day`'s).
    """
    settings = settings or get_settings()
    started = time.perf_counter()
    url = warehouse_url(settings)
    path = Path(out) if out else default_path(day, settings)
    with connect(url) as conn:
        conn.execute("set transaction isolation level repeatable read, read only")
        as_of = sections.marts_as_of(conn)
        if as_of is None:
            raise ReportError(
                f"the marts are not built in {redact(url)}: run `lifecycle transform --date {day}`"
            )
        if as_of < day:
            raise ReportError(
                f"the marts are built as of {as_of}, before {day}: "
                f"run `lifecycle transform --date {day}` first"
            )
        built = collect_sections(conn, day, settings)
        conn.rollback()
    warnings = []
    if as_of > day:
        warnings.append(
            f"The marts were built as of {as_of}, after {day}: the stage numbers are those of "
            f"{day} (the stage history is reproducible), but cohorts, LTV and RFM reflect the "
            f"orders known on {as_of}."
        )
    currency = load_sources(settings).business.currency  # the marts' reporting currency
    html = render_html(
        day, built, marts_as_of=as_of, warehouse=redact(url), warnings=warnings, currency=currency
    )
    _write_atomically(path, html)
    result = ReportResult(
        day=day,
        path=path,
        marts_as_of=as_of,
        rendered=[s.key for s in built if s.available],
        unavailable={s.key: s.reason for s in built if not s.available},
        charts=sum(len(s.charts) for s in built),
        bytes=len(html.encode("utf-8")),
        elapsed_s=time.perf_counter() - started,
        facts={s.key: s.facts for s in built if s.available and s.facts},
    )
    log.debug("%s", result.summary())
    return result


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
