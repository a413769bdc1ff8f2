"""Read a report page with the standard library's HTML parser: sections, KPIs, charts, tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}


@dataclass
class Page:
    """What a test needs from a report page."""

    body: dict[str, str] = field(default_factory=dict)  # attributes of <body>
    sections: dict[str, dict] = field(default_factory=dict)  # key -> {available, text}
    kpis: dict[str, str] = field(default_factory=dict)  # kpi id -> data-value
    kpi_section: dict[str, str] = field(default_factory=dict)  # kpi id -> section key
    charts: dict[str, int] = field(default_factory=dict)  # chart name -> SVG elements drawn
    tables: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # key -> rows
    external: list[str] = field(default_factory=list)  # src/href pointing off the page
    scripts: int = 0


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.section: str | None = None
        self.chart: str | None = None
        self.table: str | None = None
        self.row: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            value = a.get(key, "")
            if value and not value.startswith(("#", "data:")):
                self.page.external.append(value)
        if tag == "body":
            self.page.body = a
        if tag == "script":
            self.page.scripts += 1
        if tag == "section" and "data-section" in a:
            self.section = a["data-section"]
            self.page.sections[self.section] = {
                "available": a.get("data-available") == "true",
                "text": "",
            }
        if a.get("class", "").startswith("kpi") and a.get("id", "").startswith("kpi-"):
            self.page.kpis[a["id"]] = a.get("data-value", "")
            self.page.kpi_section[a["id"]] = self.section or ""
        if tag == "figure" and "data-chart" in a:
            self.chart = a["data-chart"]
            self.page.charts[self.chart] = 0
        elif self.chart is not None and tag in (
            "path",
            "rect",
            "line",
            "polygon",
            "text",
            "image",
            "use",
        ):
            self.page.charts[self.chart] += 1
        if tag == "table" and "data-table" in a:
            self.table = a["data-table"]
            self.page.tables[self.table] = []
        if tag == "tr" and self.table is not None:
            self.row = {}
        if tag == "td" and self.row is not None and "data-col" in a:
            self.row[a["data-col"]] = a.get("data-value", "")
        if tag not in VOID and not self._self_closing:
            self.stack.append((tag, a))

    _self_closing = False

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._self_closing = True
        self.handle_starttag(tag, attrs)
        self._self_closing = False

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == tag:
                break
        if tag == "section":
            self.section = None
        elif tag == "figure":
            self.chart = None
        elif tag == "table":
            self.table = None
        elif tag == "tr" and self.row is not None and self.table is not None:
            if self.row:
                self.page.tables[self.table].append(self.row)
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.section is not None and data.strip():
            self.page.sections[self.section]["text"] += " " + " ".join(data.split())


def read_page(html: str) -> Page:
    """Return the sections, KPI values, chart sizes and tables of a report page."""
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page
