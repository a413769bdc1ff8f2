"""The lifecycle report: sections, key numbers equal to the mart queries, reruns, errors, CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from decimal import Decimal

import psycopg
import pytest

from lifecycle.report import ReportError, build_report
from lifecycle.report.build import SECTIONS
from tests.conftest import run_cli
from tests.report.conftest import END, REPO
from tests.report.page import read_page

STAGES = ("prospect", "new", "active", "loyal", "at_risk", "churned", "reactivated")


def one(url: str, sql: str, params: tuple = ()):
    """Return the single value of a query."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchone()[0]


def rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Return the rows of a query."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def test_bare_report_says_what_is_missing(report_world) -> None:
    page = read_page(report_world.bare_html)
    assert list(page.sections) == [key for key, _, _ in SECTIONS]
    missing = {k for k, s in page.sections.items() if not s["available"]}
    assert missing == {"churn", "model", "segments", "audiences", "lift", "quality"}
    assert set(report_world.bare.unavailable) == missing
    text = page.sections["churn"]["text"]
    assert "not available: ml.scores_history does not exist yet" in text
    assert f"lifecycle score --date {END}" in text
    assert "activation.audience_membership does not exist yet" in page.sections["audiences"]["text"]
    assert f"lifecycle validate --layer raw|marts --date {END}" in page.sections["quality"]["text"]
    assert "no MLflow tracking store" in page.sections["model"]["text"]
    # the mart sections drew their charts even so
    assert {"stage-area", "stage-sankey", "retention-customers", "ltv-cohort"} <= set(page.charts)


def test_full_report_renders_every_section(report_world) -> None:
    page = read_page(report_world.full_html)
    available = {k for k, s in page.sections.items() if s["available"]}
    # the model section reads MLflow's registry, which these tests do not train into
    assert available == {key for key, _, _ in SECTIONS} - {"model"}
    assert report_world.full.rendered == [k for k, _, _ in SECTIONS if k != "model"]
    expected = {
        "stage-area", "stage-sankey", "retention-customers", "retention-revenue", "ltv-cohort",
        "ltv-channel", "ltv-cac", "rfm-segments", "churn-histogram", "risk-bands",
        "segment-profiles", "segment-value", "audience-sizes",
    }  # fmt: skip
    assert set(page.charts) == expected
    assert report_world.full.charts == len(expected)
    for name, drawn in page.charts.items():
        assert drawn > 10, f"chart {name} drew only {drawn} SVG elements"
    # offline: nothing is fetched from anywhere; the only links off the page are the
    # local GX Data Docs sites of the day's gate runs (followed only when clicked)
    docs = report_world.settings.state_dir / "data_docs" / str(END)
    links = [u for u in page.external if u.startswith(docs.as_uri() + "/")]
    assert len(links) == 2 and all(u.endswith("/index.html") for u in links)  # raw, marts
    assert [u for u in page.external if u not in links] == []
    assert not re.search(
        r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?https?:|@import""",
        report_world.full_html,
    )
    # valid HTML: ids unique across the page (charts included), every reference resolves
    ids = re.findall(r'\sid="([^"]+)"', report_world.full_html)
    assert len(ids) == len(set(ids)) > 100
    refs = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', report_world.full_html)
    assert refs and {a or b for a, b in refs} <= set(ids)
    assert report_world.full.path == report_world.settings.home / "reports" / (
        f"lifecycle-report-{END}.html"
    )


def test_stage_kpis_equal_the_mart(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    counts = dict(
        rows(
            url,
            "select stage, count_customers from marts.stage_counts_daily where date_day = %s",
            (END,),
        )
    )
    assert set(counts) == set(STAGES)
    for stage in STAGES:
        assert int(page.kpis[f"kpi-stage-{stage}"]) == counts[stage], stage
    assert int(page.kpis["kpi-customers"]) == sum(counts.values())
    assert int(page.kpis["kpi-customers"]) == one(url, "select count(*) from marts.customers")
    active = sum(counts[s] for s in ("new", "active", "loyal", "reactivated"))
    assert int(page.kpis["kpi-active"]) == active
    table = {r["stage"]: int(r["count_customers"]) for r in page.tables["stage-counts"]}
    assert table == counts


def test_money_kpis_equal_the_marts(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    buyers, revenue, ltv = rows(
        url,
        "select count_buyers, revenue, ltv from marts.channel_ltv "
        "where acquisition_channel = 'all'",
    )[0]
    assert int(page.kpis["kpi-buyers"]) == buyers
    assert Decimal(page.kpis["kpi-revenue"]) == revenue
    assert Decimal(page.kpis["kpi-ltv"]) == ltv
    # revenue to date is also the sum of the buyers' revenue in marts.customers
    assert revenue == one(url, "select sum(total_revenue) from marts.customers")
    month = one(
        url,
        "select sum(revenue) from marts.cohort_retention "
        "where acquisition_channel = 'all' and activity_month = '2024-06-01'",
    )
    assert Decimal(page.kpis["kpi-revenue-month"]) == month
    channels = {r["acquisition_channel"]: r for r in page.tables["channel-ltv"]}
    for channel, ltv, cac in rows(
        url, "select acquisition_channel, ltv, cac from marts.channel_ltv"
    ):
        assert Decimal(channels[channel]["ltv"]) == ltv
        assert channels[channel]["cac"] == ("" if cac is None else str(cac))


@pytest.mark.parametrize(
    ("currency", "shown"),
    [("USD", "$1,234.50"), ("EUR", "€1,234.50"), ("TRY", "TRY1,234.50"), ("JPY", "¥1,234")],
)
def test_money_is_shown_in_the_business_currency(currency: str, shown: str) -> None:
    """Every amount was labelled $, a Turkish or Brazilian shop's revenue too; the marts'
    amounts are in the sources file's business.currency, and so is the label."""
    from lifecycle.report.build import render_html
    from lifecycle.report.model import Kpi, Section, fmt

    assert fmt(Decimal("1234.5"), "money", currency) == shown
    section = Section("overview", "Overview", blocks=[Kpi("revenue", "revenue", 1234.5, "money")])
    html = render_html(
        END, [section], marts_as_of=END, warehouse="-", warnings=[], currency=currency
    )
    tile = re.search(r'id="kpi-revenue"[^>]*>.*?</div>', html, re.S)
    assert tile is not None and shown in tile.group(0), html[:2000]


def test_transitions_equal_the_mart(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    moved = {
        (r["from_stage"], r["to_stage"]): int(r["count_customers"])
        for r in page.tables["transitions"]
    }
    expected = dict(
        ((f, t), n)
        for f, t, n in rows(
            url,
            "select from_stage, to_stage, count_customers from marts.stage_transitions "
            "where period_type = 'month' and period_start = '2024-06-01' "
            "and from_stage <> to_stage",
        )
    )
    assert moved == expected and moved
    react = rows(
        url,
        "select count_reactivated, reactivation_rate from marts.reactivation_rates "
        "where period_type = 'month' and period_start = '2024-06-01'",
    )[0]
    assert int(page.kpis["kpi-reactivated"]) == react[0]
    assert Decimal(page.kpis["kpi-reactivation-rate"]) == react[1]


def test_score_and_segment_numbers_equal_the_table(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    scored, high = rows(
        url,
        "select count(*), count(*) filter (where risk_band = 'high') from ml.scores_history "
        "where score_date = %s",
        (END,),
    )[0]
    assert scored == one(url, "select count(*) from marts.customers where is_buyer")
    assert int(page.kpis["kpi-scored"]) == scored
    assert int(page.kpis["kpi-high-risk"]) == high
    bands = {r["risk_band"]: int(r["customers"]) for r in page.tables["risk-bands"]}
    assert sum(bands.values()) == scored and bands["high"] == high
    segments = {int(r["segment_id"]): int(r["customers"]) for r in page.tables["segments"]}
    assert segments == dict(
        rows(
            url,
            "select segment_id, count(*) from ml.scores_history where score_date = %s group by 1",
            (END,),
        )
    )


def test_audience_sizes_and_control_groups_equal_the_membership(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    shown = {
        r["audience"]: (int(r["members"]), int(r["control"])) for r in page.tables["audiences"]
    }
    expected = {
        a: (m, c)
        for a, m, c in rows(
            url,
            "select audience, count(*), count(*) filter (where is_control) "
            "from activation.audience_membership where exited_date is null group by 1",
        )
    }
    assert shown == expected
    assert {"win_back_high_value", "at_risk_save", "vip_loyalty"} <= set(shown)
    assert sum(c for _, c in shown.values()) > 0  # control groups are drawn
    sent = {r["audience"]: int(r["count_sent"]) for r in page.tables["exports"]}
    assert sent == dict(
        rows(
            url,
            "select audience, count_sent from activation.export_log where as_of_date = %s",
            (END,),
        )
    )


def test_quality_verdicts_equal_the_gate_runs(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    runs = rows(
        url,
        "select layer, passed, count_expectations from ops.dq_runs where logical_date = %s",
        (END,),
    )
    assert {r[0] for r in runs} == {"raw", "marts"}
    for layer, passed, _ in runs:
        assert page.kpis[f"kpi-dq-{layer}"] == ("PASS" if passed else "FAIL")
    verdicts = {r["layer"]: int(r["count_expectations"]) for r in page.tables["dq-verdicts"]}
    assert verdicts == {layer: n for layer, _, n in runs}


def test_load_runs_equal_the_run_log(report_world) -> None:
    url, page = report_world.url, read_page(report_world.full_html)
    shown = {(r["source"], r["entity"]): int(r["rows_loaded"]) for r in page.tables["load-runs"]}
    expected = {
        (s, e): n
        for s, e, n in rows(
            url,
            "select source, entity, rows_loaded from ops.load_runs where logical_date = %s",
            (END,),
        )
    }
    assert shown == expected and len(shown) == 5
    assert int(page.kpis["kpi-rows-loaded"]) == sum(expected.values())


def test_rebuild_gives_the_same_file(report_world, tmp_path) -> None:
    again = build_report(END, report_world.settings, out=tmp_path / "again.html")
    assert again.path.read_text(encoding="utf-8") == report_world.full_html
    assert again.rendered == report_world.full.rendered
    assert "lifecycle report 2024-06-30: 13 sections, 13 charts" in again.summary()
    assert "not available: model: no MLflow tracking store" in again.summary()
    json.dumps(again.to_dict())  # JSON-able facts for XCom


def test_report_refuses_a_day_the_marts_do_not_cover(report_world, tmp_path) -> None:
    later = END + dt.timedelta(days=1)
    out = tmp_path / "later.html"
    with pytest.raises(ReportError, match=r"built as of 2024-06-30, before 2024-07-01: run "):
        build_report(later, report_world.settings, out=out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_report_of_an_earlier_day_warns_about_snapshot_marts(report_world, tmp_path) -> None:
    day = dt.date(2024, 5, 31)
    result = build_report(day, report_world.settings, out=tmp_path / "may.html")
    html = result.path.read_text(encoding="utf-8")
    page = read_page(html)
    assert page.body["data-report-date"] == "2024-05-31"
    assert "The marts were built as of 2024-06-30, after 2024-05-31" in html
    prospect = one(
        report_world.url,
        "select count_customers from marts.stage_counts_daily "
        "where date_day = %s and stage = 'prospect'",
        (day,),
    )
    assert int(page.kpis["kpi-stage-prospect"]) == prospect
    # no scores and no gate runs for that day: said, not hidden
    assert "ml.scores_history has no scores for 2024-05-31" in page.sections["churn"]["text"]
    assert "no data-quality run for 2024-05-31" in page.sections["quality"]["text"]


def test_report_on_a_database_without_marts(embedded_settings, fresh_db, tmp_path) -> None:
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, LIFECYCLE_WAREHOUSE_URL=fresh_db)
    with pytest.raises(
        ReportError, match="the marts are not built .*: run `lifecycle transform --date 2024-06-30`"
    ):
        build_report(END, settings)
    assert not (tmp_path / "reports").exists()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # Not the AIRFLOW_* variables the DAG tests' session Airflow set in this process: the
    # command would take that Airflow's metadata DB for its own.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return run_cli(args, {**inherited, **env}, cwd=REPO, timeout=300)


def test_cli_report(report_world, tmp_path) -> None:
    env = {
        "LIFECYCLE_HOME": str(report_world.settings.home),
        "LIFECYCLE_WAREHOUSE_URL": report_world.url,
    }
    out = tmp_path / "cli.html"
    done = _cli(env, "report", "--date", str(END), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["path"] == str(out) and facts["charts"] == 13
    assert facts["facts"]["overview"]["customers"] == int(
        read_page(report_world.full_html).kpis["kpi-customers"]
    )
    assert out.read_text(encoding="utf-8") == report_world.full_html
    bad = _cli(env, "report", "--date", "2024-07-01")
    assert bad.returncode == 1
    assert "error: the marts are built as of 2024-06-30, before 2024-07-01" in bad.stderr
    typo = _cli(env, "report", "--date", "30/06/2024")
    assert typo.returncode == 2 and "is not a date in YYYY-MM-DD form" in typo.stderr
