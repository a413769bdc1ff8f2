"""Campaign lift: treatment against control per audience and export day, with 95% intervals.

Reads ``marts.audience_outcomes`` (built by ``lifecycle transform --date D``: one row per
audience, cohort day and experiment group) and writes ``activation.audience_lift``, one row
per audience, cohort (and every complete cohort pooled, ``cohort_date`` null) and metric:

* ``conversion``: share of members with a completed order in the window. The absolute
  lift has the unpooled two-proportion (Wald) interval; the relative lift the Katz
  log-ratio interval, exp(log(pT/pC) ± z·se) - 1.
* ``revenue_per_member``: revenue in the window per member, zeros included. The absolute
  lift has Welch's interval (t with Welch-Satterthwaite degrees of freedom) from each
  group's mean and variance, which the mart's ``revenue`` and ``revenue_squared_sum`` give
  exactly; the relative lift a delta-method interval; the incremental revenue is the
  absolute lift (and its interval) times the treatment members.

The formulas are written here rather than taken from statsmodels (not a dependency) because
they work from the mart's aggregates, not per-member rows; scipy gives the quantiles.
Pooling counts a customer once per cohort they were in: cohorts overlap when members stay
in an audience across export days, so the pooled interval is a little too narrow then; the
per-cohort rows are exact.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats

from lifecycle.activation.tables import ensure_activation_tables

#: Two-sided confidence level of every interval.
CONFIDENCE = 0.95


class LiftError(RuntimeError):
    """Lift cannot be measured for the date (e.g. the mart is as of another date)."""


@dataclass(frozen=True)
class GroupOutcome:
    """One experiment group of one cohort: what the mart row says."""

    members: int
    converted: int
    revenue: float
    revenue_squared_sum: float


@dataclass(frozen=True)
class Lift:
    """Treatment against control on one metric, with 95% intervals (None: not estimable)."""

    metric: str
    count_treatment: int
    count_control: int
    treatment_value: float | None
    control_value: float | None
    absolute_lift: float | None
    absolute_lift_low: float | None
    absolute_lift_high: float | None
    relative_lift: float | None
    relative_lift_low: float | None
    relative_lift_high: float | None
    incremental_revenue: float | None = None
    incremental_revenue_low: float | None = None
    incremental_revenue_high: float | None = None

    def covers(self, value: float) -> bool:
        """Return True when the absolute lift's interval contains `value`."""
        return (
            self.absolute_lift_low is not None
            and self.absolute_lift_low <= value <= self.absolute_lift_high
        )


def _z() -> float:
    return float(stats.norm.ppf(0.5 + CONFIDENCE / 2))


def conversion_lift(treatment: GroupOutcome, control: GroupOutcome) -> Lift:
    """Return the conversion lift: Wald interval on the difference, Katz on the ratio."""
    nt, nc = treatment.members, control.members
    if nt == 0 or nc == 0:
        return Lift("conversion", nt, nc, None, None, None, None, None, None, None, None)
    pt, pc = treatment.converted / nt, control.converted / nc
    diff = pt - pc
    se = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
    z = _z()
    rel = rel_low = rel_high = None
    if pc > 0:
        rel = pt / pc - 1
        if pt > 0:
            se_log = math.sqrt((1 - pt) / (nt * pt) + (1 - pc) / (nc * pc))
            rel_low = (pt / pc) * math.exp(-z * se_log) - 1
            rel_high = (pt / pc) * math.exp(z * se_log) - 1
    return Lift(
        "conversion", nt, nc, pt, pc, diff, diff - z * se, diff + z * se, rel, rel_low, rel_high
    )


def _mean_var(group: GroupOutcome) -> tuple[float, float]:
    """Return the group's mean revenue per member and its sample variance (n - 1)."""
    n = group.members
    mean = group.revenue / n
    if n < 2:
        return mean, float("nan")
    var = (group.revenue_squared_sum - n * mean * mean) / (n - 1)
    return mean, max(var, 0.0)  # rounding can make an all-equal group a hair negative


def revenue_lift(treatment: GroupOutcome, control: GroupOutcome) -> Lift:
    """Return the revenue-per-member lift (Welch) and the incremental revenue."""
    nt, nc = treatment.members, control.members
    if nt < 2 or nc < 2:
        mt = treatment.revenue / nt if nt else None
        mc = control.revenue / nc if nc else None
        return Lift("revenue_per_member", nt, nc, mt, mc, None, None, None, None, None, None)
    mt, vt = _mean_var(treatment)
    mc, vc = _mean_var(control)
    diff = mt - mc
    at, ac = vt / nt, vc / nc
    se = math.sqrt(at + ac)
    if se == 0:
        low = high = diff
    else:
        df = (at + ac) ** 2 / (at * at / (nt - 1) + ac * ac / (nc - 1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
        low, high = diff - half, diff + half
    rel = rel_low = rel_high = None
    if mc > 0:
        rel = mt / mc - 1
        se_rel = (mt / mc) * math.sqrt(at / mt**2 + ac / mc**2) if mt > 0 else ac**0.5 / mc
        rel_low, rel_high = rel - _z() * se_rel, rel + _z() * se_rel
    return Lift(
        "revenue_per_member",
        nt,
        nc,
        mt,
        mc,
        diff,
        low,
        high,
        rel,
        rel_low,
        rel_high,
        incremental_revenue=diff * nt,
        incremental_revenue_low=low * nt,
        incremental_revenue_high=high * nt,
    )


@dataclass(frozen=True)
class CohortLift:
    """Both metrics of one audience and cohort (cohort_date None: complete cohorts pooled)."""

    audience: str
    cohort_date: dt.date | None
    lift_window_days: int
    is_window_complete: bool
    conversion: Lift
    revenue: Lift

    def facts(self) -> dict[str, Any]:
        """Return JSON-able facts."""
        return {
            "audience": self.audience,
            "cohort_date": self.cohort_date.isoformat() if self.cohort_date else None,
            "lift_window_days": self.lift_window_days,
            "is_window_complete": self.is_window_complete,
            "conversion": asdict(self.conversion),
            "revenue_per_member": asdict(self.revenue),
        }


def _outcome(row: dict) -> GroupOutcome:
    return GroupOutcome(
        int(row["count_members"]),
        int(row["count_converted"]),
        float(row["revenue"]),
        float(row["revenue_squared_sum"]),
    )


def _pool(groups: list[GroupOutcome]) -> GroupOutcome:
    return GroupOutcome(
        sum(g.members for g in groups),
        sum(g.converted for g in groups),
        sum(g.revenue for g in groups),
        sum(g.revenue_squared_sum for g in groups),
    )


def lifts_from_rows(rows: list[dict]) -> list[CohortLift]:
    """Return the lift of every cohort in mart rows, then of each audience's complete
    cohorts pooled (when it has any)."""
    cohorts: dict[tuple[str, dt.date], dict[str, dict]] = {}
    for r in rows:
        cohorts.setdefault((r["audience"], r["cohort_date"]), {})[r["experiment_group"]] = r
    out: list[CohortLift] = []
    pooled: dict[str, list[tuple[GroupOutcome, GroupOutcome, int]]] = {}
    for (audience, cohort), groups in sorted(cohorts.items()):
        empty = {"count_members": 0, "count_converted": 0, "revenue": 0, "revenue_squared_sum": 0}
        t = _outcome(groups.get("treatment", empty))
        c = _outcome(groups.get("control", empty))
        any_row = next(iter(groups.values()))
        window = int(any_row["lift_window_days"])
        complete = bool(any_row["is_window_complete"])
        out.append(
            CohortLift(
                audience, cohort, window, complete, conversion_lift(t, c), revenue_lift(t, c)
            )
        )
        if complete:
            pooled.setdefault(audience, []).append((t, c, window))
    for audience, parts in sorted(pooled.items()):
        t = _pool([p[0] for p in parts])
        c = _pool([p[1] for p in parts])
        window = max(p[2] for p in parts)
        out.append(
            CohortLift(audience, None, window, True, conversion_lift(t, c), revenue_lift(t, c))
        )
    return out


_COLUMNS = (
    "as_of_date",
    "audience",
    "cohort_date",
    "metric",
    "lift_window_days",
    "is_window_complete",
    "count_treatment",
    "count_control",
    "treatment_value",
    "control_value",
    "absolute_lift",
    "absolute_lift_low",
    "absolute_lift_high",
    "relative_lift",
    "relative_lift_low",
    "relative_lift_high",
    "incremental_revenue",
    "incremental_revenue_low",
    "incremental_revenue_high",
)


def read_outcomes(conn, day: dt.date, audience: str | None = None) -> list[dict]:
    """Return the rows of marts.audience_outcomes, checked to be as of `day`."""
    from psycopg.rows import dict_row

    found = conn.execute("select to_regclass('marts.audience_outcomes')").fetchone()[0]
    if found is None:
        raise LiftError(
            f"marts.audience_outcomes does not exist: run `lifecycle transform --date {day}` first"
        )
    dates = [r[0] for r in conn.execute("select distinct as_of_date from marts.audience_outcomes")]
    if dates and dates != [day]:
        raise LiftError(
            f"marts.audience_outcomes is as of {', '.join(map(str, dates))}, not {day}: "
            f"run `lifecycle transform --date {day}` first"
        )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from marts.audience_outcomes where %(a)s::text is null or audience = %(a)s "
            "order by audience, cohort_date, experiment_group",
            {"a": audience},
        ).fetchall()


def measure_lift(conn, day: dt.date, audience: str | None = None) -> list[CohortLift]:
    """Compute the lift as of `day` from the mart and replace the day's rows of
    activation.audience_lift (for `audience`, or every audience) in one transaction."""
    rows = read_outcomes(conn, day, audience)
    lifts = lifts_from_rows(rows)
    with conn.transaction():
        ensure_activation_tables(conn)
        conn.execute(
            "delete from activation.audience_lift where as_of_date = %(d)s "
            "and (%(a)s::text is null or audience = %(a)s)",
            {"d": day, "a": audience},
        )
        with conn.cursor() as cur:
            for cl in lifts:
                for lift in (cl.conversion, cl.revenue):
                    values = asdict(lift)
                    cur.execute(
                        f"insert into activation.audience_lift ({', '.join(_COLUMNS)}) "
                        f"values ({', '.join(['%s'] * len(_COLUMNS))})",
                        (
                            day,
                            cl.audience,
                            cl.cohort_date,
                            lift.metric,
                            cl.lift_window_days,
                            cl.is_window_complete,
                            *(values[c] for c in _COLUMNS[6:]),
                        ),
                    )
    return lifts


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.2f} pts"


def summary(lifts: list[CohortLift], day: dt.date) -> str:
    """Return a readable text of the lifts (pooled first, then each cohort)."""
    if not lifts:
        return f"lift {day}: no export day before {day} yet (nothing to measure)"
    lines = [f"lift as of {day} (95% intervals):"]
    for cl in sorted(lifts, key=lambda x: (x.audience, x.cohort_date is not None, x.cohort_date)):
        c, r = cl.conversion, cl.revenue
        label = "complete cohorts pooled" if cl.cohort_date is None else f"export {cl.cohort_date}"
        flag = "" if cl.is_window_complete else "  [too early: window incomplete]"
        lines.append(
            f"  {cl.audience} ({label}, {c.count_treatment} treatment / {c.count_control} "
            f"control, {cl.lift_window_days}-day window){flag}"
        )
        if c.absolute_lift is None:
            lines.append("    not measurable: a group is empty")
            continue
        lines.append(
            f"    conversion {c.treatment_value:.2%} vs {c.control_value:.2%}: "
            f"{_pts(c.absolute_lift)} [{_pts(c.absolute_lift_low)}, "
            f"{_pts(c.absolute_lift_high)}], relative {_pct(c.relative_lift)}"
        )
        if r.absolute_lift is not None:
            lines.append(
                f"    revenue/member {r.treatment_value:.2f} vs {r.control_value:.2f}: "
                f"{r.absolute_lift:+.2f} [{r.absolute_lift_low:+.2f}, "
                f"{r.absolute_lift_high:+.2f}]; incremental revenue "
                f"{r.incremental_revenue:+.0f} [{r.incremental_revenue_low:+.0f}, "
                f"{r.incremental_revenue_high:+.0f}]"
            )
    return "\n".join(lines)
