"""Sections of the lifecycle report: one function per section, each reading its tables by SQL.

Every number shown comes from a mart or pipeline table through the SQL below: sums and
filters of mart columns at most, never a metric recomputed in Python. A section whose
table does not exist yet (e.g. no scoring run) raises :class:`Unavailable` with the
reason and the command that produces it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import psycopg

from lifecycle.report import charts
from lifecycle.report.model import Chart, Kpi, Note, Section, Table, Unavailable

#: Lifecycle stages in order (seed lifecycle_stages), for layouts when a table lacks them.
STAGES = ("prospect", "new", "active", "loyal", "at_risk", "churned", "reactivated")
#: Stages counted as "active customers": bought within the active window (DESIGN.md §6).
ACTIVE_STAGES = ("new", "active", "loyal", "reactivated")
#: How far back the stage-over-time chart reaches.
HISTORY_DAYS = 730
#: Cohorts in the retention heatmaps and LTV curves (most recent first).
HEATMAP_COHORTS = 12
CURVE_COHORTS = 6


# Aggregates of floating-point columns cast to numeric first: a float sum depends on the
# order PostgreSQL adds the rows in, and the report must be the same file on every rerun.
def _rows(conn: psycopg.Connection, query: str, params: dict[str, Any] | None = None) -> list[dict]:
    """Return the rows of `query` as dicts keyed by column name."""
    cur = conn.execute(query, params or {})
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def exists(conn: psycopg.Connection, relation: str) -> bool:
    """Return whether the table or view `relation` (schema.name) exists."""
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


def require(conn: psycopg.Connection, relation: str, how: str, day: dt.date) -> None:
    """Raise :class:`Unavailable` saying `how` to produce `relation` when it is missing."""
    if not exists(conn, relation):
        raise Unavailable(f"{relation} does not exist yet: {how.format(day=day)}")


TRANSFORM = "run `lifecycle transform --date {day}`"


def marts_as_of(conn: psycopg.Connection) -> dt.date | None:
    """Return the logical date the marts were last built for (None when there are none)."""
    if not exists(conn, "marts.stage_counts_daily"):
        return None
    return conn.execute("select max(date_day) from marts.stage_counts_daily").fetchone()[0]


# ----------------------------------------------------------------------------- marts


def overview(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the KPI tiles: customers per stage on `day`, active customers, revenue."""
    require(conn, "marts.stage_counts_daily", TRANSFORM, day)
    stages = _rows(
        conn,
        "select stage, count_customers, count_entered, count_exited "
        "from marts.stage_counts_daily where date_day = %(day)s order by stage_order",
        {"day": day},
    )
    if not stages:
        raise Unavailable(f"marts.stage_counts_daily has no row for {day}")
    totals = conn.execute(
        "select sum(count_customers)::int, "
        "sum(count_customers) filter (where stage = any(%(active)s))::int "
        "from marts.stage_counts_daily where date_day = %(day)s",
        {"day": day, "active": list(ACTIVE_STAGES)},
    ).fetchone()
    section = Section("overview", f"Overview on {day}")
    section.blocks.append(Kpi("customers", "known customers", totals[0]))
    section.blocks.append(
        Kpi("active", "active customers", totals[1], hint="new + active + loyal + reactivated")
    )
    if exists(conn, "marts.channel_ltv"):
        ltv = _rows(
            conn,
            "select count_buyers, revenue, average_order_value, ltv, as_of_date "
            "from marts.channel_ltv where acquisition_channel = 'all'",
        )
        if ltv:
            to = ltv[0]["as_of_date"]
            section.blocks += [
                Kpi("buyers", f"buyers to {to}", ltv[0]["count_buyers"]),
                Kpi("revenue", f"revenue to {to}", ltv[0]["revenue"], "money"),
                Kpi("aov", "average order value", ltv[0]["average_order_value"], "money"),
                Kpi("ltv", "planning LTV", ltv[0]["ltv"], "money"),
            ]
    if exists(conn, "marts.cohort_retention"):
        month = conn.execute(
            "select sum(revenue) from marts.cohort_retention "
            "where acquisition_channel = 'all' and activity_month = date_trunc('month', "
            "%(day)s::date)::date",
            {"day": day},
        ).fetchone()[0]
        section.blocks.append(Kpi("revenue-month", f"revenue in {day:%B %Y}", month, "money"))
    for row in stages:
        section.blocks.append(Kpi(f"stage-{row['stage']}", row["stage"], row["count_customers"]))
    section.blocks.append(
        Table(
            "stage-counts",
            f"Customers per stage at the end of {day} (marts.stage_counts_daily)",
            [
                ("stage", "stage"),
                ("count_customers", "customers"),
                ("count_entered", "entered that day"),
                ("count_exited", "left that day"),
            ],
            stages,
        )
    )
    section.facts = {
        "customers": totals[0],
        "active": totals[1],
        "stages": {r["stage"]: r["count_customers"] for r in stages},
    }
    return section


def stages_over_time(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the stacked area of customers per stage per day up to `day`."""
    require(conn, "marts.stage_counts_daily", TRANSFORM, day)
    rows = _rows(
        conn,
        "select date_day, stage, count_customers from marts.stage_counts_daily "
        "where date_day <= %(day)s and date_day > %(day)s::date - %(n)s "
        "order by date_day, stage_order",
        {"day": day, "n": HISTORY_DAYS},
    )
    if not rows:
        raise Unavailable(f"marts.stage_counts_daily has no day up to {day}")
    days = sorted({r["date_day"] for r in rows})
    index = {d: i for i, d in enumerate(days)}
    order = [s for s in STAGES if any(r["stage"] == s for r in rows)]
    series = {s: [0] * len(days) for s in order}
    for r in rows:
        series[r["stage"]][index[r["date_day"]]] = r["count_customers"]
    section = Section("stages", "Customers by lifecycle stage over time")
    section.blocks.append(
        Chart(
            "stage-area",
            charts.stage_area(days, series),
            f"Customers per stage at the end of each day, {days[0]} to {days[-1]} "
            "(marts.stage_counts_daily).",
        )
    )
    section.facts = {"first_day": days[0].isoformat(), "days": len(days)}
    return section


def transitions(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the stage flow (Sankey) of the month of `day` and the reactivation rate."""
    require(conn, "marts.stage_transitions", TRANSFORM, day)
    rows = _rows(
        conn,
        "select period_start, period_end, from_stage, to_stage, count_customers, "
        "count_from_stage_customers, transition_rate from marts.stage_transitions "
        "where period_type = 'month' and period_start = date_trunc('month', %(day)s::date)::date "
        "order by from_stage, to_stage",
        {"day": day},
    )
    if not rows:
        raise Unavailable(f"marts.stage_transitions has no month holding {day}")
    start, end = rows[0]["period_start"], rows[0]["period_end"]
    flows = [(r["from_stage"], r["to_stage"], r["count_customers"]) for r in rows]
    section = Section("transitions", f"Stage transitions, {start} to {end}")
    section.blocks.append(
        Chart(
            "stage-sankey",
            charts.sankey(flows, ("none", *STAGES), f"{start} → {end}"),
            "Stage on the day before the month (left) → stage on its last day or the report "
            "date (right); 'new this period' = became known during the month "
            "(marts.stage_transitions, period_type = month).",
        )
    )
    if exists(conn, "marts.reactivation_rates"):
        react = _rows(
            conn,
            "select count_churned_at_start, count_newly_churned, count_reactivated, "
            "reactivation_rate from marts.reactivation_rates "
            "where period_type = 'month' and period_start = %(start)s",
            {"start": start},
        )
        if react:
            r = react[0]
            section.blocks += [
                Kpi("churned-at-start", "churned at month start", r["count_churned_at_start"]),
                Kpi("newly-churned", "newly churned", r["count_newly_churned"]),
                Kpi("reactivated", "reactivated", r["count_reactivated"]),
                Kpi("reactivation-rate", "reactivation rate", r["reactivation_rate"], "pct"),
            ]
    moved = [r for r in rows if r["from_stage"] != r["to_stage"]]
    moved.sort(key=lambda r: -r["count_customers"])
    section.blocks.append(
        Table(
            "transitions",
            "Moves between stages (stayers left out), largest first",
            [
                ("from_stage", "from"),
                ("to_stage", "to"),
                ("count_customers", "customers"),
                ("transition_rate", "share of from-stage"),
            ],
            moved,
            {"transition_rate": "pct"},
        )
    )
    section.facts = {"period_start": start.isoformat(), "flows": len(rows)}
    return section


def cohorts(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the customer and revenue retention heatmaps of the latest cohorts."""
    require(conn, "marts.cohort_retention", TRANSFORM, day)
    rows = _rows(
        conn,
        "with c as (select distinct cohort_month from marts.cohort_retention "
        "  where cohort_month <= %(day)s order by cohort_month desc limit %(n)s) "
        "select r.cohort_month, r.months_since_acquisition, r.count_cohort_customers, "
        "r.retention_rate, r.revenue_retention_rate from marts.cohort_retention r "
        "join c using (cohort_month) where r.acquisition_channel = 'all' "
        "and r.activity_month <= %(day)s order by 1, 2",
        {"day": day, "n": HEATMAP_COHORTS},
    )
    if not rows:
        raise Unavailable(f"marts.cohort_retention has no cohort up to {day}")
    labels = {
        r["cohort_month"]: f"{r['cohort_month']:%Y-%m} (n={r['count_cohort_customers']})"
        for r in rows
    }
    names = [labels[c] for c in sorted(labels)]
    months = sorted({r["months_since_acquisition"] for r in rows})
    cust = {
        (labels[r["cohort_month"]], r["months_since_acquisition"]): r["retention_rate"]
        for r in rows
    }
    rev = {
        (labels[r["cohort_month"]], r["months_since_acquisition"]): r["revenue_retention_rate"]
        for r in rows
    }
    rev_max = max([float(v) for v in rev.values() if v is not None] + [1.0])
    section = Section("cohorts", "Cohort retention")
    section.blocks += [
        Chart(
            "retention-customers",
            charts.heatmap(names, months, cust, "retention-customers", "Customer retention (%)"),
            "Share of each acquisition cohort (month of first order) with a completed order "
            "in each later month (marts.cohort_retention.retention_rate, all channels).",
        ),
        Chart(
            "retention-revenue",
            charts.heatmap(
                names, months, rev, "retention-revenue", "Revenue retention (%)", min(rev_max, 2.0)
            ),
            "Cohort revenue in each month relative to its first month "
            "(marts.cohort_retention.revenue_retention_rate).",
        ),
    ]
    section.facts = {"cohorts": len(names), "max_months": months[-1]}
    return section


def ltv(conn: psycopg.Connection, day: dt.date, absent: Mapping[str, str] | None = None) -> Section:
    """Return LTV curves by cohort and by channel, and LTV/CAC by channel.

    Without CRM contacts every channel is "unknown" and without marketing spend there is no
    CAC (`absent`: raw table -> "no such source: ..."): those charts give way to a note.
    """
    absent = absent or {}
    require(conn, "marts.cohort_retention", TRANSFORM, day)
    by_cohort = _rows(
        conn,
        "with c as (select distinct cohort_month from marts.cohort_retention "
        "  where cohort_month <= %(day)s order by cohort_month desc limit %(n)s) "
        "select r.cohort_month, r.months_since_acquisition, "
        "r.cumulative_revenue_per_customer from marts.cohort_retention r "
        "join c using (cohort_month) where r.acquisition_channel = 'all' "
        "and r.activity_month <= %(day)s order by 1, 2",
        {"day": day, "n": CURVE_COHORTS},
    )
    if not by_cohort:
        raise Unavailable(f"marts.cohort_retention has no cohort up to {day}")
    # Channel curves pool the cohorts: cumulative revenue over cohort customers, both summed
    # over the cohorts that have reached month m (a customer-weighted mean of the mart's
    # cumulative_revenue_per_customer).
    by_channel = _rows(
        conn,
        "select acquisition_channel, months_since_acquisition, "
        "round(sum(cumulative_revenue) / nullif(sum(count_cohort_customers), 0), 2) "
        "as revenue_per_customer, sum(count_cohort_customers)::int as customers "
        "from marts.cohort_retention where acquisition_channel <> 'all' "
        "and activity_month <= %(day)s group by 1, 2 order by 1, 2",
        {"day": day},
    )
    section = Section("ltv", "Customer value (LTV)")
    series: dict[str, tuple[list, list]] = {}
    for r in by_cohort:
        xs, ys = series.setdefault(f"{r['cohort_month']:%Y-%m}", ([], []))
        xs.append(r["months_since_acquisition"])
        ys.append(float(r["cumulative_revenue_per_customer"]))
    section.blocks.append(
        Chart(
            "ltv-cohort",
            charts.lines(
                series, "ltv-cohort", "LTV curve by cohort", "months since acquisition", "USD"
            ),
            "Cumulative revenue per cohort customer "
            "(marts.cohort_retention.cumulative_revenue_per_customer).",
        )
    )
    chan: dict[str, tuple[list, list]] = {}
    for r in by_channel:
        # months reached by fewer than 20 customers are noise
        if r["customers"] >= 20 and r["revenue_per_customer"] is not None:
            xs, ys = chan.setdefault(r["acquisition_channel"], ([], []))
            xs.append(r["months_since_acquisition"])
            ys.append(float(r["revenue_per_customer"]))
    if "crm__contacts" in absent:
        section.blocks.append(
            Note(f"LTV by channel: {absent['crm__contacts']} (no acquisition channel).", "warn")
        )
    elif chan:
        section.blocks.append(
            Chart(
                "ltv-channel",
                charts.lines(
                    chan, "ltv-channel", "LTV curve by channel", "months since acquisition", "USD"
                ),
                "Cumulative revenue per customer by acquisition channel, all cohorts that "
                "reached the month pooled (months with at least 20 customers).",
            )
        )
    if exists(conn, "marts.channel_ltv"):
        ch = _rows(
            conn,
            "select acquisition_channel, count_buyers, average_order_value, "
            "orders_per_year, expected_relationship_years, ltv, cac, ltv_to_cac_ratio "
            "from marts.channel_ltv order by acquisition_channel = 'all', acquisition_channel",
        )
        named = [r for r in ch if r["acquisition_channel"] != "all"]
        no_cac = [absent[t] for t in ("crm__contacts", "marketing__spend") if t in absent]
        if no_cac:
            section.blocks.append(Note(f"LTV/CAC by channel: {'; '.join(no_cac)}.", "warn"))
        elif named:
            section.blocks.append(
                Chart(
                    "ltv-cac",
                    charts.bars(
                        [r["acquisition_channel"] for r in named],
                        {
                            "LTV": [r["ltv"] for r in named],
                            "CAC": [r["cac"] for r in named],
                        },
                        "ltv-cac",
                        "Planning LTV and CAC by channel",
                        "USD",
                    ),
                    "LTV = average order value × orders per year × expected relationship years; "
                    "CAC where marketing spend is known (marts.channel_ltv).",
                )
            )
        section.blocks.append(
            Table(
                "channel-ltv",
                "LTV planning by acquisition channel (marts.channel_ltv)",
                [
                    ("acquisition_channel", "channel"),
                    ("count_buyers", "buyers"),
                    ("average_order_value", "AOV"),
                    ("orders_per_year", "orders/year"),
                    ("expected_relationship_years", "years"),
                    ("ltv", "LTV"),
                    ("cac", "CAC"),
                    ("ltv_to_cac_ratio", "LTV/CAC"),
                ],
                ch,
                {"average_order_value": "money", "ltv": "money", "cac": "money"},
            )
        )
    section.facts = {"cohort_curves": len(series), "channel_curves": len(chan)}
    return section


def rfm(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the RFM segment sizes and their value."""
    require(conn, "marts.customer_rfm", TRANSFORM, day)
    rows = _rows(
        conn,
        "select rfm_segment, rfm_segment_label, count(*)::int as customers, "
        "round(avg(recency_days), 1) as avg_recency_days, "
        "round(avg(count_orders), 2) as avg_orders, "
        "round(avg(total_revenue), 2) as avg_revenue, "
        "sum(total_revenue) as revenue "
        "from marts.customer_rfm group by 1, 2 order by 3 desc, 1",
    )
    if not rows:
        raise Unavailable("marts.customer_rfm is empty (no buyer yet)")
    section = Section("rfm", "RFM segments")
    section.blocks.append(
        Chart(
            "rfm-segments",
            charts.bars(
                [r["rfm_segment_label"] for r in rows],
                {"customers": [r["customers"] for r in rows]},
                "rfm-segments",
                "Buyers per RFM segment",
                "customers",
                horizontal=True,
            ),
            "Recency, frequency and monetary quintile scores mapped to the common segment "
            "grid (marts.customer_rfm).",
        )
    )
    section.blocks.append(
        Table(
            "rfm",
            "RFM segment profiles",
            [
                ("rfm_segment_label", "segment"),
                ("customers", "buyers"),
                ("avg_recency_days", "avg days since last order"),
                ("avg_orders", "avg orders"),
                ("avg_revenue", "avg revenue"),
                ("revenue", "revenue"),
            ],
            rows,
            {"avg_revenue": "money", "revenue": "money"},
        )
    )
    section.facts = {"segments": {r["rfm_segment"]: r["customers"] for r in rows}}
    return section


def funnel(
    conn: psycopg.Connection, day: dt.date, absent: Mapping[str, str] | None = None
) -> Section:
    """Return the AARRR funnel of the latest cohort months, all channels (not available
    when neither web events nor CRM contacts exist: visitors and leads come from them)."""
    absent = absent or {}
    missing = [absent[t] for t in ("web__events", "crm__contacts") if t in absent]
    if len(missing) == 2:
        raise Unavailable("; ".join(missing))
    require(conn, "marts.funnel", TRANSFORM, day)
    rows = _rows(
        conn,
        "select cohort_month, count_visitors, count_leads, count_first_purchases, "
        "count_repeat_purchases, count_referrers, lead_rate, first_purchase_rate, "
        "repeat_purchase_rate from marts.funnel where acquisition_channel = 'all' "
        "and cohort_month <= %(day)s order by cohort_month desc limit 6",
        {"day": day},
    )
    if not rows:
        raise Unavailable(f"marts.funnel has no cohort month up to {day}")
    section = Section("funnel", "Acquisition funnel (AARRR)")
    section.blocks += [Note(f"{why}.", "warn") for why in missing]
    section.blocks.append(
        Table(
            "funnel",
            "Visitors → leads → first purchase → repeat → referral, by cohort month "
            "(marts.funnel, all channels)",
            [
                ("cohort_month", "cohort"),
                ("count_visitors", "visitors"),
                ("count_leads", "leads"),
                ("count_first_purchases", "first purchases"),
                ("count_repeat_purchases", "repeat"),
                ("count_referrers", "referrers"),
                ("lead_rate", "lead rate"),
                ("first_purchase_rate", "purchase rate"),
                ("repeat_purchase_rate", "repeat rate"),
            ],
            rows,
            {"lead_rate": "pct", "first_purchase_rate": "pct", "repeat_purchase_rate": "pct"},
        )
    )
    return section


# -------------------------------------------------------------------------------- ml

BAND_COLORS = {"low": "#2f9e44", "medium": "#f08c00", "high": "#c92a2a"}
SCORE = "run `lifecycle train`, then `lifecycle score --date {day}`"


def churn_risk(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the churn-probability distribution and risk bands of the scores of `day`."""
    require(conn, "ml.scores_history", SCORE, day)
    summary = _rows(
        conn,
        "select count(*)::int as scored, "
        "round(avg(churn_probability::numeric), 4) as mean_probability, "
        "count(*) filter (where risk_band = 'high')::int as high, "
        "round(sum(clv_12m::numeric), 2) as clv_12m, min(churn_model_version) as model_version "
        "from ml.scores_history where score_date = %(day)s",
        {"day": day},
    )[0]
    if not summary["scored"]:
        raise Unavailable(f"ml.scores_history has no scores for {day}: {SCORE.format(day=day)}")
    bins = 20
    hist = _rows(
        conn,
        "select least(width_bucket(churn_probability, 0, 1, %(bins)s), %(bins)s) as bin, "
        "count(*)::int as customers from ml.scores_history where score_date = %(day)s "
        "group by 1 order by 1",
        {"day": day, "bins": bins},
    )
    bands = _rows(
        conn,
        "select risk_band, count(*)::int as customers, min(churn_probability) as min_probability, "
        "max(churn_probability) as max_probability, "
        "round(avg(clv_12m::numeric), 2) as avg_clv_12m "
        "from ml.scores_history where score_date = %(day)s group by 1 "
        "order by array_position(array['low', 'medium', 'high'], risk_band)",
        {"day": day},
    )
    counts = [0] * bins
    for r in hist:
        counts[r["bin"] - 1] = r["customers"]
    edges = [i / bins for i in range(bins + 1)]
    section = Section("churn", f"Churn risk on {day}")
    section.blocks += [
        Kpi("scored", "customers scored", summary["scored"]),
        Kpi("high-risk", "high churn risk", summary["high"]),
        Kpi("mean-churn", "mean churn probability", summary["mean_probability"], "pct"),
        Kpi("clv-12m", "predicted 12-month CLV", summary["clv_12m"], "money"),
        Chart(
            "churn-histogram",
            charts.histogram(
                edges, counts, "churn-histogram", "Churn probability", "probability of no order"
            ),
            "Calibrated probability of no completed order in the next 90 days "
            f"(ml.scores_history, churn model version {summary['model_version']}).",
        ),
        Chart(
            "risk-bands",
            charts.bars(
                [r["risk_band"] for r in bands],
                {"customers": [r["customers"] for r in bands]},
                "risk-bands",
                "Customers per risk band",
                "customers",
                bar_colors=[BAND_COLORS.get(r["risk_band"], "#868e96") for r in bands],
            ),
            "Risk bands of the churn model's thresholds.",
        ),
        Table(
            "risk-bands",
            "Risk bands",
            [
                ("risk_band", "band"),
                ("customers", "customers"),
                ("min_probability", "min p"),
                ("max_probability", "max p"),
                ("avg_clv_12m", "avg CLV 12m"),
            ],
            bands,
            {"avg_clv_12m": "money"},
        ),
    ]
    section.facts = {
        "scored": summary["scored"],
        "high": summary["high"],
        "bands": {r["risk_band"]: r["customers"] for r in bands},
    }
    return section


def segments(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the profile of each behavioural segment of the scores of `day`."""
    require(conn, "ml.scores_history", SCORE, day)
    join_ltv = exists(conn, "marts.customer_ltv")
    value_cols = (
        "round(avg(l.count_orders), 2) as avg_orders, "
        "round(avg(l.historical_ltv), 2) as avg_historical_ltv, "
        "round(avg(l.days_since_last_order), 1) as avg_days_since_last_order, "
        if join_ltv
        else ""
    )
    rows = _rows(
        conn,
        f"select s.segment_id, s.segment_name, count(*)::int as customers, {value_cols}"
        "round(avg(s.churn_probability::numeric), 4) as avg_churn_probability, "
        "round(avg(s.p_alive::numeric), 4) as avg_p_alive, "
        "round(avg(s.expected_purchases_12m::numeric), 2) as avg_expected_purchases_12m, "
        "round(avg(s.clv_12m::numeric), 2) as avg_clv_12m, "
        "round(sum(s.clv_12m::numeric), 2) as clv_12m "
        "from ml.scores_history s "
        + ("left join marts.customer_ltv l using (customer_key) " if join_ltv else "")
        + "where s.score_date = %(day)s group by 1, 2 order by 1",
        {"day": day},
    )
    if not rows:
        raise Unavailable(f"ml.scores_history has no scores for {day}: {SCORE.format(day=day)}")
    labels = [f"{r['segment_id']}: {r['segment_name']}" for r in rows]
    section = Section("segments", "Customer segments")
    section.blocks.append(
        Chart(
            "segment-profiles",
            charts.bars(
                labels,
                {
                    "customers": [r["customers"] for r in rows],
                },
                "segment-profiles",
                "Customers per segment",
                "customers",
                horizontal=True,
            ),
            "Segments of the segmentation model's champion (ml.scores_history).",
        )
    )
    section.blocks.append(
        Chart(
            "segment-value",
            charts.bars(
                labels,
                {"avg CLV 12m": [r["avg_clv_12m"] for r in rows]},
                "segment-value",
                "Predicted 12-month CLV per customer",
                "USD",
                horizontal=True,
                colors=["#2f9e44"],
            ),
            "Mean predicted 12-month CLV (BG/NBD × Gamma-Gamma) per segment.",
        )
    )
    cols = [("segment_id", "id"), ("segment_name", "segment"), ("customers", "customers")]
    if join_ltv:
        cols += [
            ("avg_orders", "avg orders"),
            ("avg_historical_ltv", "avg revenue to date"),
            ("avg_days_since_last_order", "avg days since last order"),
        ]
    cols += [
        ("avg_churn_probability", "avg churn p"),
        ("avg_p_alive", "avg P(alive)"),
        ("avg_expected_purchases_12m", "exp. orders 12m"),
        ("avg_clv_12m", "avg CLV 12m"),
    ]
    section.blocks.append(
        Table(
            "segments",
            "Segment profiles",
            cols,
            rows,
            {
                "avg_historical_ltv": "money",
                "avg_clv_12m": "money",
                "avg_churn_probability": "pct",
                "avg_p_alive": "pct",
            },
        )
    )
    section.facts = {"segments": {r["segment_name"]: r["customers"] for r in rows}}
    return section


# ------------------------------------------------------------------------ activation

EXPORT = "run `lifecycle export --date {day}` after scoring"


def audiences(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return audience sizes on `day` (members, of which control) and the exports of `day`."""
    require(conn, "activation.audience_membership", EXPORT, day)
    # every audience that had members by the day, also one whose members all left
    rows = _rows(
        conn,
        "with known as (select distinct audience from activation.audience_membership "
        "  where entered_date <= %(day)s) "
        "select k.audience, count(m.customer_key)::int as members, "
        "count(m.customer_key) filter (where m.is_control)::int as control, "
        "count(m.customer_key) filter (where not m.is_control)::int as treatment, "
        "count(m.customer_key) filter (where m.entered_date = %(day)s)::int as entered_today, "
        "(select count(*)::int from activation.audience_membership x "
        "  where x.audience = k.audience and x.exited_date = %(day)s) as exited_today "
        "from known k left join activation.audience_membership m on m.audience = k.audience "
        "and m.entered_date <= %(day)s and (m.exited_date is null or m.exited_date > %(day)s) "
        "group by k.audience order by k.audience",
        {"day": day},
    )
    if not rows:
        raise Unavailable(f"no audience membership on {day}: {EXPORT.format(day=day)}")
    section = Section("audiences", f"Audiences on {day}")
    if rows:
        section.blocks.append(
            Chart(
                "audience-sizes",
                charts.bars(
                    [r["audience"] for r in rows],
                    {
                        "treatment": [r["treatment"] for r in rows],
                        "control (held out)": [r["control"] for r in rows],
                    },
                    "audience-sizes",
                    "Audience members",
                    "customers",
                    colors=["#4c9be8", "#adb5bd"],
                    horizontal=True,
                ),
                "Members of each audience on the date: the treatment group (exported when they "
                "consented to marketing) and the deterministic control group held out to measure "
                "lift (activation.audience_membership).",
            )
        )
    section.blocks.append(
        Table(
            "audiences",
            "Audience membership",
            [
                ("audience", "audience"),
                ("members", "members"),
                ("treatment", "treatment"),
                ("control", "control"),
                ("entered_today", "entered today"),
                ("exited_today", "left today"),
            ],
            rows,
        )
    )
    if exists(conn, "activation.export_log"):
        exports = _rows(
            conn,
            "select distinct on (audience) audience, status, count_sent, count_control, "
            "count_adds, count_removes, count_no_consent, folder "
            "from activation.export_log where as_of_date = %(day)s "
            "order by audience, export_id desc",
            {"day": day},
        )
        if exports:
            section.blocks.append(
                Table(
                    "exports",
                    f"Exports of {day} (activation.export_log, latest per audience)",
                    [
                        ("audience", "audience"),
                        ("status", "status"),
                        ("count_sent", "sent"),
                        ("count_control", "control list"),
                        ("count_adds", "adds"),
                        ("count_removes", "removes"),
                        ("count_no_consent", "left out: no consent"),
                        ("folder", "folder"),
                    ],
                    exports,
                )
            )
        else:
            section.blocks.append(Note(f"No export logged for {day}.", "warn"))
    section.facts = {
        "audiences": {
            r["audience"]: {"members": r["members"], "control": r["control"]} for r in rows
        }
    }
    return section


# ------------------------------------------------------------------------------- ops


def quality(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the data-quality verdicts of `day`: the latest gate run per layer."""
    how = "run `lifecycle validate --layer raw|marts --date {day}`"
    require(conn, "ops.dq_runs", how, day)
    require(conn, "ops.dq_results", how, day)
    runs = _rows(
        conn,
        "select distinct on (layer) layer, passed, count_suites, count_skipped_suites, "
        "count_expectations, count_failed_critical, count_failed_warning, run_id "
        "from ops.dq_runs where logical_date = %(day)s order by layer, recorded_at desc",
        {"day": day},
    )
    if not runs:
        raise Unavailable(f"no data-quality run for {day} in ops.dq_runs: {how.format(day=day)}")
    order = {"raw": 0, "marts": 1, "scores": 2, "activation": 3}
    runs.sort(key=lambda r: (order.get(r["layer"], 9), r["layer"]))
    for r in runs:
        r["verdict"] = (
            "pass" if r["passed"] and not r["count_failed_warning"] else
            "warn" if r["passed"] else "fail"
        )  # fmt: skip
    bad = _rows(
        conn,
        "select r.layer, r.suite, r.relation, r.expectation, r.column_name, r.severity, "
        "r.unexpected_count, left(r.observed_value::text, 80) as observed_value "
        "from ops.dq_results r where r.run_id = any(%(runs)s) and not r.success "
        "order by r.layer, r.severity, r.suite, r.ordinal",
        {"runs": [r["run_id"] for r in runs]},
    )
    section = Section("quality", f"Data quality on {day}")
    for r in runs:
        section.blocks.append(
            Kpi(
                f"dq-{r['layer']}",
                f"{r['layer']} gate",
                r["verdict"].upper(),
                hint=f"{r['count_expectations']} expectations, {r['count_failed_critical']} "
                f"critical failures, {r['count_failed_warning']} warnings",
            )
        )
    section.blocks.append(
        Table(
            "dq-verdicts",
            "Verdict per layer (latest gate run of the day: ops.dq_runs)",
            [
                ("layer", "layer"),
                ("verdict", "verdict"),
                ("count_suites", "suites"),
                ("count_skipped_suites", "skipped"),
                ("count_expectations", "expectations"),
                ("count_failed_critical", "failed (critical)"),
                ("count_failed_warning", "failed (warning)"),
                ("run_id", "run"),
            ],
            runs,
        )
    )
    if bad:
        section.blocks.append(
            Table(
                "dq-failures",
                "Failed expectations (ops.dq_results)",
                [
                    ("layer", "layer"),
                    ("suite", "suite"),
                    ("expectation", "expectation"),
                    ("column_name", "column"),
                    ("severity", "severity"),
                    ("unexpected_count", "unexpected rows"),
                    ("observed_value", "observed"),
                ],
                bad,
            )
        )
    else:
        total = sum(r["count_expectations"] for r in runs)
        section.blocks.append(Note(f"All {total} expectations passed."))
    section.facts = {"verdicts": {r["layer"]: r["verdict"] for r in runs}}
    return section


def loads(
    conn: psycopg.Connection, day: dt.date, absent: Mapping[str, str] | None = None
) -> Section:
    """Return the load runs of `day` (the latest run per batch) from ops.load_runs, and
    the sources this deployment does not have (`absent`)."""
    require(conn, "ops.load_runs", "run `lifecycle extract --date {day}`", day)
    rows = _rows(
        conn,
        "select distinct on (source, entity) source, entity, status, rows_read, rows_loaded, "
        "rows_quarantined, rows_duplicate, rows_out_of_window, "
        "round(duration_s::numeric, 2) as duration_s, error "
        "from ops.load_runs where logical_date = %(day)s "
        "order by source, entity, started_at desc",
        {"day": day},
    )
    if not rows:
        raise Unavailable(f"no load run for {day} in ops.load_runs")
    section = Section("loads", f"Load runs of {day}")
    section.blocks += [
        Kpi("rows-loaded", "rows loaded", sum(r["rows_loaded"] or 0 for r in rows)),
        Kpi("rows-quarantined", "rows quarantined", sum(r["rows_quarantined"] or 0 for r in rows)),
        Kpi("loads-failed", "failed loads", sum(r["status"] == "failed" for r in rows)),
        Table(
            "load-runs",
            "Latest run per source entity (ops.load_runs)",
            [
                ("source", "source"),
                ("entity", "entity"),
                ("status", "status"),
                ("rows_read", "read"),
                ("rows_loaded", "loaded"),
                ("rows_quarantined", "quarantined"),
                ("rows_duplicate", "duplicate"),
                ("rows_out_of_window", "outside window"),
                ("duration_s", "seconds"),
                ("error", "error"),
            ],
            rows,
        ),
    ]
    section.blocks += [Note(f"{why}.", "warn") for _, why in sorted((absent or {}).items())]
    section.facts = {"runs": len(rows), "failed": sum(r["status"] == "failed" for r in rows)}
    return section


LIFT = "run `lifecycle lift --date {day}` (the daily activation step does) after the transform"


def lift(conn: psycopg.Connection, day: dt.date) -> Section:
    """Return the measured campaign lift on `day`: per audience, the conversion lift of each
    export day (and of the complete cohorts pooled) with its 95% interval."""
    require(conn, "activation.audience_lift", LIFT, day)
    rows = _rows(
        conn,
        "select audience, cohort_date, metric, is_window_complete, lift_window_days, "
        "count_treatment, count_control, treatment_value, control_value, absolute_lift, "
        "absolute_lift_low, absolute_lift_high, relative_lift, incremental_revenue, "
        "incremental_revenue_low, incremental_revenue_high "
        "from activation.audience_lift where as_of_date = %(day)s "
        "order by audience, cohort_date nulls last, metric",
        {"day": day},
    )
    section = Section("lift", f"Campaign lift on {day}")
    if not rows:
        section.blocks.append(
            Note(
                f"No lift measured on {day}: there is no export day before it yet (lift is "
                "measured from the day after an audience's first export), or "
                + LIFT.format(day=day)
                + "."
            )
        )
        section.facts = {"cohorts": 0, "too_early": 0}
        return section
    conversion = [r for r in rows if r["metric"] == "conversion"]
    revenue = {(r["audience"], r["cohort_date"]): r for r in rows if r["metric"] != "conversion"}
    early = sum(1 for r in conversion if not r["is_window_complete"])
    if early:
        section.blocks.append(
            Note(
                f"{early} export day(s) are too early: their window is still open, so their "
                "lift will move (grey, hollow). Read the complete ones; see docs/activation.md "
                '"Reading lift; how long to wait".',
                level="warning",
            )
        )
    table_rows = []
    for audience in dict.fromkeys(r["audience"] for r in conversion):
        mine = [r for r in conversion if r["audience"] == audience and r["absolute_lift_low"]
                is not None]  # fmt: skip
        if mine:
            section.blocks.append(
                Chart(
                    f"lift-{audience}",
                    charts.intervals(
                        [str(r["cohort_date"] or "pooled") for r in mine],
                        [100 * r["absolute_lift"] for r in mine],
                        [100 * r["absolute_lift_low"] for r in mine],
                        [100 * r["absolute_lift_high"] for r in mine],
                        [r["is_window_complete"] for r in mine],
                        f"lift-{audience}",
                        f"{audience}: conversion lift, treatment - control",
                        "percentage points (95% interval)",
                    ),
                    f"{audience}: conversion of treatment minus control members in the "
                    f"{mine[0]['lift_window_days']} days after each export day "
                    "(marts.audience_outcomes); an interval clear of the dashed zero line is a "
                    "measured effect.",
                )
            )
        for r in (r for r in conversion if r["audience"] == audience):
            rev = revenue.get((audience, r["cohort_date"])) or {}
            table_rows.append(
                {
                    "audience": audience,
                    "cohort": str(r["cohort_date"] or "complete, pooled"),
                    "status": "complete" if r["is_window_complete"] else "too early",
                    "treatment": r["count_treatment"],
                    "control": r["count_control"],
                    "conv_t": r["treatment_value"],
                    "conv_c": r["control_value"],
                    "lift": r["absolute_lift"],
                    "interval": _interval(
                        r["absolute_lift_low"], r["absolute_lift_high"], 100, " pts"
                    ),
                    "incremental": rev.get("incremental_revenue"),
                    "incremental_interval": _interval(
                        rev.get("incremental_revenue_low"),
                        rev.get("incremental_revenue_high"),
                        1,
                        "",
                    ),
                }
            )
    section.blocks.append(
        Table(
            "lift",
            "Measured lift per audience and export day (activation.audience_lift)",
            [
                ("audience", "audience"),
                ("cohort", "export day"),
                ("status", "window"),
                ("treatment", "treatment"),
                ("control", "control"),
                ("conv_t", "conversion (treatment)"),
                ("conv_c", "conversion (control)"),
                ("lift", "lift"),
                ("interval", "95% interval"),
                ("incremental", "incremental revenue"),
                ("incremental_interval", "95% interval"),
            ],
            table_rows,
            units={"conv_t": "pct", "conv_c": "pct", "lift": "pct", "incremental": "money"},
        )
    )
    section.facts = {
        "cohorts": len([r for r in conversion if r["cohort_date"] is not None]),
        "too_early": early,
    }
    return section


def _interval(low: float | None, high: float | None, scale: float, unit: str) -> str:
    """Return "[low, high]" scaled, or "-" when not estimable."""
    if low is None or high is None:
        return "-"
    return f"[{low * scale:+.1f}, {high * scale:+.1f}]{unit}"
