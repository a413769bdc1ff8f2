"""A plain-Python, day-by-day statement of the lifecycle rules (DESIGN.md §6).

The dbt stage engine computes stage intervals set-based from change points; this module
evaluates the same rules naively, one day at a time, so tests can check the engine
against it on hand-made cases and on a generated world.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Rules:
    """The thresholds (the dbt vars' defaults)."""

    new_days: int = 30
    active_days: int = 90
    churn_days: int = 180
    loyal_orders: int = 4
    loyal_window_days: int = 365
    at_risk_gap_multiplier: float = 2
    reactivated_days: int = 30


@dataclass(frozen=True)
class Span:
    """Days [start, end) on which an order counted as completed (end None = still)."""

    order_id: str
    order_date: dt.date
    start: dt.date
    end: dt.date | None = None


def stage_on(day: dt.date, spans: Iterable[Span], rules: Rules = Rules()) -> str:
    """Return the stage on `day` (evaluated at the end of the day) of a known customer."""
    orders = {
        s.order_id: s.order_date for s in spans if s.start <= day and (s.end is None or day < s.end)
    }
    if not orders:
        return "prospect"
    dates = sorted(orders.values())
    days = sorted(set(dates))
    first, last = days[0], days[-1]
    recency = (day - last).days
    winback = None
    for prev, cur in zip(days, days[1:], strict=False):
        if (cur - prev).days > rules.churn_days + 1:  # churned on the day before `cur`
            winback = cur
    gap_limit = (
        rules.at_risk_gap_multiplier * (last - first).days / (len(days) - 1)
        if len(days) >= 2
        else math.inf
    )
    in_window = sum(1 for d in dates if (day - d).days < rules.loyal_window_days)
    if (day - first).days < rules.new_days:
        return "new"
    if winback is not None and (day - winback).days < rules.reactivated_days:
        return "reactivated"
    if recency > rules.churn_days:
        return "churned"
    if recency >= rules.active_days:
        return "at_risk"
    if recency > gap_limit:
        return "at_risk"
    if in_window >= rules.loyal_orders:
        return "loyal"
    return "active"


def stage_intervals(
    known_from: dt.date, spans: list[Span], until: dt.date, rules: Rules = Rules()
) -> list[tuple[str, dt.date, dt.date | None]]:
    """Return (stage, valid_from, valid_to) intervals from `known_from` to `until` inclusive.

    The last interval is open (valid_to None), as in marts.customer_stage_history.
    """
    out: list[list] = []
    day = known_from
    while day <= until:
        stage = stage_on(day, spans, rules)
        if out and out[-1][0] == stage:
            pass
        else:
            if out:
                out[-1][2] = day
            out.append([stage, day, None])
        day += DAY
    return [tuple(x) for x in out]
