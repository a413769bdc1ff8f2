"""Charts of the report: matplotlib figures rendered to inline SVG text (no JavaScript, no CDN).

Every function takes rows already queried from the warehouse and only draws them: no
number is computed here. The SVG is deterministic (fixed hash salt per chart, no date
metadata), so the same data gives the same file byte for byte, and each chart's internal
ids (clip paths, markers) are salted with the chart's name so that several SVGs can live
in one HTML page without their ids colliding.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import textwrap
from collections.abc import Sequence

import matplotlib

# Figures are built with the object API (matplotlib.figure.Figure), never pyplot: no GUI
# backend is selected and nothing global is touched, so this is safe inside any process.
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path as MplPath
from matplotlib.text import Text

#: Stage colours, in lifecycle order (shared by every stage chart and the KPI tiles).
STAGE_COLORS: dict[str, str] = {
    "prospect": "#9aa5b1",
    "new": "#4c9be8",
    "active": "#2f9e44",
    "loyal": "#1b6e32",
    "at_risk": "#f08c00",
    "churned": "#c92a2a",
    "reactivated": "#7048e8",
    "none": "#dee2e6",
}
PALETTE = ("#4c9be8", "#f08c00", "#2f9e44", "#c92a2a", "#7048e8", "#0b7285", "#e64980", "#868e96")


def _figure(width: float, height: float) -> Figure:
    """Return an empty figure of the size in inches (constrained layout)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def to_svg(fig: Figure, name: str) -> str:
    """Return `fig` as an inline ``<svg>`` element (deterministic, ids salted by `name`)."""
    buf = io.StringIO()
    # Labels come from data (channel and audience names): a `$...$` in one must print
    # as it is, not be read as math text (which fails on `$\x$`). Texts made so far are
    # told so; tick labels made while drawing take it from the rc context.
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    with matplotlib.rc_context(
        {
            "svg.hashsalt": f"lifecycle-{name}",
            "svg.fonttype": "none",
            "font.size": 9,
            "text.parse_math": False,
        }
    ):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    # drop the XML prolog and the RDF metadata block: neither belongs inline in HTML
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)
    # matplotlib numbers its element ids per figure (figure_1, patch_1, ...): prefix every id
    # and every reference with the chart's name so ids stay unique across the page
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{name}" ', 1)


def _style(ax) -> None:
    """Give `ax` the report's look: no top/right spines, light horizontal grid."""
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e9ecef", linewidth=0.8)
    ax.set_axisbelow(True)


def stage_area(days: Sequence[dt.date], series: dict[str, Sequence[int]]) -> str:
    """Return a stacked area chart of customers per stage over `days`."""
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    stages = list(series)
    ax.stackplot(
        days,
        [series[s] for s in stages],
        labels=stages,
        colors=[STAGE_COLORS.get(s, "#adb5bd") for s in stages],
        linewidth=0,
    )
    ax.set_ylabel("customers")
    ax.set_xlim(days[0], days[-1])
    ax.legend(loc="upper left", ncols=len(stages), frameon=False, fontsize=8)
    _style(ax)
    return to_svg(fig, "stage-area")


def sankey(flows: Sequence[tuple[str, str, int]], order: Sequence[str], title: str) -> str:
    """Return a two-column flow diagram (Sankey) of (from_stage, to_stage, customers).

    Hand-drawn with Bézier bands: matplotlib's own ``Sankey`` draws one flow's inputs and
    outputs, not a two-column flow between stages, and a JavaScript Sankey (plotly) would
    have to inline megabytes of script into the report.
    """
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    total = sum(n for _, _, n in flows)
    gap = total * 0.02
    rank = {s: i for i, s in enumerate(order)}
    left = sorted({f for f, _, _ in flows}, key=lambda s: rank.get(s, 99))
    right = sorted({t for _, t, _ in flows}, key=lambda s: rank.get(s, 99))

    def place(nodes: list[str], side: int) -> dict[str, tuple[float, float]]:
        """Return the (top, bottom) of each node of one column, stacked with gaps."""
        y = 0.0
        out: dict[str, tuple[float, float]] = {}
        for node in nodes:
            size = sum(n for f, t, n in flows if (f if side == 0 else t) == node)
            out[node] = (y, y + size)  # top, bottom (the y axis is inverted)
            y += size + gap
        return out

    lpos, rpos = place(left, 0), place(right, 1)
    height = max(max(v[1] for v in lpos.values()), max(v[1] for v in rpos.values()))
    x0, x1, w = 0.0, 1.0, 0.04
    # bands leave each left node and enter each right node in stage order
    lnext = {f: v[0] for f, v in lpos.items()}
    rnext = {t: v[0] for t, v in rpos.items()}
    for f, t, n in sorted(flows, key=lambda f: (rank.get(f[0], 99), rank.get(f[1], 99))):
        ly0 = lnext[f]
        lnext[f] += n
        ry0 = rnext[t]
        rnext[t] += n
        xa, xb = x0 + w, x1 - w
        xm = (xa + xb) / 2
        verts = [
            (xa, ly0),
            (xm, ly0),
            (xm, ry0),
            (xb, ry0),
            (xb, ry0 + n),
            (xm, ry0 + n),
            (xm, ly0 + n),
            (xa, ly0 + n),
            (xa, ly0),
        ]
        codes = [
            MplPath.MOVETO,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.LINETO,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.CLOSEPOLY,
        ]
        ax.add_patch(
            PathPatch(
                MplPath(verts, codes),
                facecolor=STAGE_COLORS.get(t, "#adb5bd"),
                alpha=0.45,
                edgecolor="none",
            )
        )
    for nodes, pos, x, ha, dx in (
        (left, lpos, x0, "right", -0.01),
        (right, rpos, x1 - w, "left", w + 0.01),
    ):
        for node in nodes:
            bottom, top = pos[node]
            ax.add_patch(
                Rectangle((x, bottom), w, top - bottom, color=STAGE_COLORS.get(node, "#adb5bd"))
            )
            label = "new this period" if node == "none" else node
            ax.text(
                x + dx,
                (bottom + top) / 2,
                f"{label} ({top - bottom:,.0f})",
                ha=ha,
                va="center",
                fontsize=9,
            )
    ax.set_xlim(-0.25, 1.25)
    ax.set_ylim(height + gap, -gap)  # first stage on top
    ax.set_title(title, fontsize=10)
    return to_svg(fig, "stage-sankey")


def heatmap(
    rows: Sequence[str],
    cols: Sequence[int],
    values: dict[tuple[str, int], float],
    name: str,
    title: str,
    vmax: float = 1.0,
) -> str:
    """Return a cohort × months heatmap of rates (shown as percentages in each cell)."""
    import numpy as np

    grid = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) in values and values[(r, c)] is not None:
                grid[i, j] = float(values[(r, c)])
    fig = _figure(10, 0.32 * len(rows) + 1.3)
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(grid), cmap="Blues", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("months since acquisition")
    ax.set_title(title, fontsize=10)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v * 100:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > vmax * 0.55 else "#212529",
                )
    return to_svg(fig, name)


def lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    name: str,
    title: str,
    xlabel: str,
    ylabel: str,
) -> str:
    """Return a line chart of several named (x, y) series."""
    fig = _figure(5, 3.4)
    ax = fig.add_subplot()
    for i, (label, (xs, ys)) in enumerate(series.items()):
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=2.5,
            linewidth=1.4,
            label=label,
            color=PALETTE[i % len(PALETTE)],
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=7, ncols=2)
    _style(ax)
    return to_svg(fig, name)


def bars(
    labels: Sequence[str],
    groups: dict[str, Sequence[float | None]],
    name: str,
    title: str,
    ylabel: str,
    colors: Sequence[str] | None = None,
    horizontal: bool = False,
    bar_colors: Sequence[str] | None = None,
    ylim: tuple[float, float] | None = None,
) -> str:
    """Return a (grouped) bar chart: one bar per label and group; None is left out.

    `colors` colour the groups; `bar_colors` (one group only) colour each label's bar.
    """
    import numpy as np

    fig = _figure(5, 3.4)
    ax = fig.add_subplot()
    k = len(groups)
    width = 0.8 / k
    x = np.arange(len(labels))
    for i, (group, values) in enumerate(groups.items()):
        vals = [np.nan if v is None else float(v) for v in values]
        color = (
            list(bar_colors)
            if bar_colors
            else colors[i % len(colors)]
            if colors
            else PALETTE[i % len(PALETTE)]
        )
        if horizontal:
            ax.barh(x + i * width - 0.4 + width / 2, vals, height=width, label=group, color=color)
        else:
            ax.bar(x + i * width - 0.4 + width / 2, vals, width=width, label=group, color=color)
    if horizontal:
        ax.set_yticks(x, [textwrap.fill(label, 24) for label in labels])
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(
            x,
            labels,
            rotation=30 if max(map(len, labels)) > 8 else 0,
            ha="right" if max(map(len, labels)) > 8 else "center",
        )
        ax.set_ylabel(ylabel)
    if ylim:
        (ax.set_xlim if horizontal else ax.set_ylim)(*ylim)
    ax.set_title(title, fontsize=10)
    if k > 1:
        ax.legend(frameon=False, fontsize=7)
    _style(ax)
    return to_svg(fig, name)


def histogram(
    edges: Sequence[float],
    counts: Sequence[int],
    name: str,
    title: str,
    xlabel: str,
    colors: Sequence[str] | None = None,
) -> str:
    """Return a histogram drawn from precomputed bin edges and counts (binned in SQL)."""
    fig = _figure(5, 3.4)
    ax = fig.add_subplot()
    widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
    ax.bar(
        edges[:-1],
        counts,
        width=widths,
        align="edge",
        color=colors or "#4c9be8",
        edgecolor="white",
        linewidth=0.5,
    )
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("customers")
    ax.set_title(title, fontsize=10)
    _style(ax)
    return to_svg(fig, name)


def intervals(
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    complete: Sequence[bool],
    name: str,
    title: str,
    ylabel: str,
) -> str:
    """Return a dot-and-interval chart (one row per label) around a zero line; rows whose
    `complete` is False are drawn hollow and grey, labelled "too early"."""
    import numpy as np

    fig = _figure(5, 0.6 + 0.42 * max(len(labels), 1))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    for i, (v, lo, hi, ok) in enumerate(zip(values, lows, highs, complete, strict=True)):
        color = "#1f77b4" if ok else "#adb5bd"
        ax.plot([lo, hi], [y[i], y[i]], color=color, linewidth=2)
        ax.plot([v], [y[i]], "o", color=color, markerfacecolor=color if ok else "white")
    ax.axvline(0, color="#495057", linewidth=0.8, linestyle="--")
    ax.set_yticks(
        y, [lab if ok else f"{lab} (too early)" for lab, ok in zip(labels, complete, strict=True)]
    )
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e9ecef", linewidth=0.8)
    ax.set_axisbelow(True)
    return to_svg(fig, name)
