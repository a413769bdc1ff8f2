"""Measured campaign lift: the statistics on hand-built cases, and the whole loop on
generated worlds with a known treatment effect (lifecycle/sample/campaign.py).

The world test runs the loop a marketer would: a 1,500-person world is landed and built as
of the export day E, two audiences with the same rule (stage at_risk or churned) and a 50%
control group are exported, then the world is generated again with a campaign effect on
`lapsed`'s treatment members (each places one extra order in the 30 days after E with
probability 0.3), landed in full and built as of E + 31, and the lift is measured.

Size and power, computed before choosing them: lapsed customers convert ~5% in 30 days on
their own, so the true conversion lift is about 0.3 × 0.95 ≈ 0.28; the two-proportion
standard error with n members per group is sqrt((0.05·0.95 + 0.33·0.67) / n) ≈ 0.52/√n,
and 80% power at the 5% level needs lift / se ≥ 2.8, i.e. n ≥ 27 per group. The world gives
~250 per group (se ≈ 0.033, lift/se ≈ 8: power ≈ 1). `lapsed_twin` has the same members
split by another hash, so `lapsed`'s treated members fall evenly into its treatment and
control: its true lift is 0 and its interval must cover 0.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
import yaml
from scipy import stats

from lifecycle.activation import AudienceFileError, run_activation
from lifecycle.activation.audiences import parse_audiences
from lifecycle.activation.lift import (
    GroupOutcome,
    LiftError,
    conversion_lift,
    lifts_from_rows,
    measure_lift,
    revenue_lift,
)
from lifecycle.sample.campaign import load_campaign
from lifecycle.sample.world import WorldConfig, generate_world
from lifecycle.transform import transform
from tests.activation.scores_data import write_scores
from tests.conftest import make_settings
from tests.transform.conftest import land, rows, scratch_database, snapshot

# ------------------------------------------------------------------ statistics by hand


def test_conversion_lift_two_proportion_interval() -> None:
    lift = conversion_lift(GroupOutcome(200, 60, 0, 0), GroupOutcome(100, 10, 0, 0))
    assert lift.treatment_value == 0.3 and lift.control_value == 0.1
    assert lift.absolute_lift == pytest.approx(0.2)
    se = (0.3 * 0.7 / 200 + 0.1 * 0.9 / 100) ** 0.5  # 0.04583
    assert lift.absolute_lift_low == pytest.approx(0.2 - 1.959964 * se, abs=1e-6)
    assert lift.absolute_lift_high == pytest.approx(0.2 + 1.959964 * se, abs=1e-6)
    assert lift.relative_lift == pytest.approx(2.0)
    se_log = (0.7 / 60 + 0.9 / 10) ** 0.5
    assert lift.relative_lift_low == pytest.approx(3 * np.exp(-1.959964 * se_log) - 1, abs=1e-6)
    assert lift.covers(0.2) and not lift.covers(0.0)


def test_revenue_lift_matches_welch_on_the_members() -> None:
    rng = np.random.default_rng(3)
    t = np.where(rng.random(300) < 0.3, rng.gamma(2, 40, 300), 0.0)
    c = np.where(rng.random(150) < 0.2, rng.gamma(2, 40, 150), 0.0)
    lift = revenue_lift(
        GroupOutcome(300, int((t > 0).sum()), t.sum(), (t * t).sum()),
        GroupOutcome(150, int((c > 0).sum()), c.sum(), (c * c).sum()),
    )
    welch = stats.ttest_ind(t, c, equal_var=False).confidence_interval(0.95)
    assert lift.absolute_lift == pytest.approx(t.mean() - c.mean())
    assert lift.absolute_lift_low == pytest.approx(welch.low)
    assert lift.absolute_lift_high == pytest.approx(welch.high)
    assert lift.incremental_revenue == pytest.approx((t.mean() - c.mean()) * 300)
    assert lift.incremental_revenue_low == pytest.approx(welch.low * 300)


def test_empty_group_is_not_measurable() -> None:
    lift = conversion_lift(GroupOutcome(10, 2, 0, 0), GroupOutcome(0, 0, 0, 0))
    assert lift.absolute_lift is None and not lift.covers(0.0)
    assert revenue_lift(GroupOutcome(1, 1, 5, 25), GroupOutcome(5, 1, 5, 25)).absolute_lift is None


def test_pooled_lift_counts_only_complete_cohorts() -> None:
    def row(day, group, members, converted, complete):
        return {
            "audience": "a", "cohort_date": day, "experiment_group": group,
            "lift_window_days": 30, "is_window_complete": complete, "count_members": members,
            "count_converted": converted, "revenue": converted * 10.0,
            "revenue_squared_sum": converted * 100.0,
        }  # fmt: skip

    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 3, 1)
    lifts = lifts_from_rows(
        [
            row(d1, "treatment", 100, 30, True),
            row(d1, "control", 100, 10, True),
            row(d2, "treatment", 50, 20, True),
            row(d2, "control", 50, 5, True),
            row(d3, "treatment", 80, 0, False),
            row(d3, "control", 20, 0, False),
        ]  # fmt: skip
    )
    assert [(x.cohort_date, x.is_window_complete) for x in lifts] == [
        (d1, True), (d2, True), (d3, False), (None, True),
    ]  # fmt: skip
    pooled = lifts[-1]
    assert (pooled.conversion.count_treatment, pooled.conversion.count_control) == (150, 150)
    assert pooled.conversion.absolute_lift == pytest.approx(50 / 150 - 15 / 150)


@pytest.mark.parametrize(
    "window, message",
    [
        (0, "lift_window_days must be a whole number of days in [1, 365], got 0"),
        (400, "got 400"),
        (7.5, "got 7.5"),
        ("30", "got '30'"),
        (True, "got True"),
    ],
)
def test_lift_window_is_validated(window, message) -> None:
    doc = {
        "audiences": [
            {
                "name": "a",
                "description": "d",
                "filter": [{"column": "stage", "op": "eq", "value": "churned"}],
                "lift_window_days": window,
            }
        ]
    }
    with pytest.raises(AudienceFileError, match=r"audience 'a': lift_window_days") as err:
        parse_audiences(doc)
    assert message in str(err.value)


def test_lift_window_defaults_to_30_days() -> None:
    doc = {"audiences": [{"name": "a", "description": "d", "filter": [{"column": "stage",
           "op": "eq", "value": "new"}]}]}  # fmt: skip
    assert parse_audiences(doc)[0].lift_window_days == 30
    doc["audiences"][0]["lift_window_days"] = 14
    assert parse_audiences(doc)[0].lift_window_days == 14


# ------------------------------------------------------------------ generated worlds

START, EXPORT = dt.date(2023, 1, 1), dt.date(2024, 5, 1)
EARLY, MEASURE = EXPORT + dt.timedelta(days=10), EXPORT + dt.timedelta(days=31)
BOOST = 0.3


def _rule() -> list[dict]:
    """The lapsed rule (a fresh list per audience: YAML aliases are refused)."""
    return [{"column": "stage", "op": "in", "value": ["at_risk", "churned"]}]


def _audiences(path: Path) -> Path:
    doc = {
        "version": 1,
        "audiences": [
            {"name": name, "description": "Lapsed buyers.", "filter": _rule(),
             "control_share": 0.5, "lift_window_days": 30, "layouts": ["generic"]}
            for name in ("lapsed", "lapsed_twin")
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _ids(folder: Path) -> list[dict[str, str]]:
    with (folder / "customer_ids.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def loop(embedded_settings, tmp_path_factory):
    """Export on EXPORT from the plain world, then measure on the campaign world."""
    base = tmp_path_factory.mktemp("lift")
    config = WorldConfig(customers=1500, start=START, end=MEASURE, seed=17)
    plain, treated = base / "plain", base / "treated"
    generate_world(config, plain)
    audiences = _audiences(base / "audiences.yml")
    exports = base / "exports"
    with scratch_database(embedded_settings) as url:
        env = {
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_AUDIENCES_FILE": str(audiences),
            "LIFECYCLE_EXPORT_DIR": str(exports),
        }
        settings = make_settings(base / "home", LIFECYCLE_WORLD_DIR=str(plain), **env)
        land(settings, EXPORT, full=True)
        transform(EXPORT, settings, quiet=True)
        write_scores(url, EXPORT)
        run_activation(EXPORT, settings)
        folder = exports / EXPORT.isoformat() / "lapsed"
        campaign = load_campaign(folder, BOOST, 30)
        generate_world(config, treated, campaign=campaign)
        settings = make_settings(base / "home", LIFECYCLE_WORLD_DIR=str(treated), **env)
        land(settings, MEASURE, full=True)
        transform(EARLY, settings, quiet=True)
        with psycopg.connect(url, autocommit=True) as conn:
            early = measure_lift(conn, EARLY)
        transform(MEASURE, settings, quiet=True)
        with psycopg.connect(url, autocommit=True) as conn:
            lifts = measure_lift(conn, MEASURE)
            table = snapshot(url, "activation.audience_lift")
            again = measure_lift(conn, MEASURE)
            with pytest.raises(LiftError, match="is as of 2024-06-01, not 2024-05-11"):
                measure_lift(conn, EARLY)
        transform(EARLY, settings, quiet=True)  # a backfill, with everything up to MEASURE loaded
        with psycopg.connect(url, autocommit=True) as conn:
            backfill = measure_lift(conn, EARLY)
        yield {
            "url": url,
            "settings": settings,
            "exports": exports,
            "truth": json.loads((treated / "truth" / "campaign.json").read_text("utf-8")),
            "early": early,
            "backfill": backfill,
            "lifts": lifts,
            "again": again,
            "table": table,
        }


def _cohort(lifts, audience):
    (found,) = [x for x in lifts if x.audience == audience and x.cohort_date == EXPORT]
    return found


def test_known_effect_is_covered_and_not_zero(loop) -> None:
    truth = loop["truth"]
    lapsed = _cohort(loop["lifts"], "lapsed")
    assert lapsed.is_window_complete and lapsed.lift_window_days == 30
    conv = lapsed.conversion
    assert conv.count_treatment >= 150 and conv.count_control >= 150  # the size the power needs
    assert truth["treatment_members"] == conv.count_treatment
    assert truth["true_conversion_lift"] > 0.2
    assert conv.covers(truth["true_conversion_lift"]), (conv, truth)
    assert conv.absolute_lift_low > 0
    # revenue: the campaign orders' revenue per treatment member, in USD at the fixed rates
    usd = truth["campaign_revenue_by_currency"].get("USD", 0) + 1.08 * truth[
        "campaign_revenue_by_currency"
    ].get("EUR", 0)
    rev = lapsed.revenue
    assert rev.covers(usd / conv.count_treatment), (rev, usd)
    assert rev.absolute_lift_low > 0 and rev.incremental_revenue_low > 0


def test_no_effect_interval_covers_zero(loop) -> None:
    twin = _cohort(loop["lifts"], "lapsed_twin")
    assert twin.conversion.covers(0.0), twin.conversion
    assert twin.revenue.covers(0.0), twin.revenue


def test_control_members_are_never_sent_and_always_measured(loop) -> None:
    for audience in ("lapsed", "lapsed_twin"):
        folder = loop["exports"] / EXPORT.isoformat() / audience
        ids = _ids(folder)
        control = {r["customer_key"] for r in ids if r["group"] == "control"}
        treatment = {r["customer_key"] for r in ids if r["group"] == "treatment"}
        sent = {
            r[0]
            for r in rows(
                loop["url"],
                "select customer_key from activation.export_members "
                "where audience = %s and as_of_date = %s and list = 'send'",
                (audience, EXPORT),
            )
        }
        assert control and not (control & sent)
        measured = dict(
            rows(
                loop["url"],
                "select experiment_group, count_members from marts.audience_outcomes "
                "where audience = %s and cohort_date = %s",
                (audience, EXPORT),
            )
        )
        assert measured == {"control": len(control), "treatment": len(treatment)}


def test_too_early_while_the_window_is_open(loop) -> None:
    early = _cohort(loop["early"], "lapsed")
    assert not early.is_window_complete
    assert not [x for x in loop["early"] if x.cohort_date is None]  # nothing pooled yet
    days = rows(loop["url"], "select distinct days_observed from marts.audience_outcomes")
    assert days == [(10,)]  # the mart is as of EARLY again after the backfill


def test_backfill_gives_the_same_answer(loop) -> None:
    assert [x.facts() for x in loop["backfill"]] == [x.facts() for x in loop["early"]]


def test_lift_is_idempotent_and_stored(loop) -> None:
    assert [x.facts() for x in loop["again"]] == [x.facts() for x in loop["lifts"]]
    assert snapshot(loop["url"], "activation.audience_lift") == loop["table"]
    stored = rows(
        loop["url"],
        "select audience, cohort_date, metric, is_window_complete from activation.audience_lift "
        "where as_of_date = %s order by 1, 2 nulls last, 3",
        (MEASURE,),
    )
    assert len(stored) == 8  # 2 audiences × (the cohort + pooled) × 2 metrics
    assert {r[3] for r in stored} == {True}
    assert (
        rows(loop["url"], "select count(*) from activation.audience_lift where as_of_date = %s",
             (EARLY,))[0][0] == 4
    )  # fmt: skip


def test_the_transformer_reads_only_the_lift_inputs_of_activation(fresh_db) -> None:
    from lifecycle import warehouse as wh
    from lifecycle.activation.tables import ensure_activation_tables

    wh.bootstrap(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_activation_tables(conn)
        conn.execute("set role lifecycle_transformer")
        for table in ("export_log", "audience_membership"):
            assert conn.execute(f"select count(*) from activation.{table}").fetchone() == (0,)
        for table in ("export_members", "customer_scores", "audience_lift"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select count(*) from activation.{table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into activation.audience_membership values ('a', 'k', "
                         "'2024-01-01', null, false)")  # fmt: skip


def test_report_charts_lift_per_audience_and_flags_too_early(loop, tmp_path) -> None:
    from lifecycle.report.build import build_report
    from lifecycle.report.sections import lift

    result = build_report(EARLY, loop["settings"], out=tmp_path / "early.html")
    assert "lift" in result.rendered and result.facts["lift"] == {"cohorts": 2, "too_early": 2}
    html = (tmp_path / "early.html").read_text("utf-8")
    assert "Campaign lift on 2024-05-11" in html and "too early" in html
    with psycopg.connect(loop["url"]) as conn:
        section = lift(conn, MEASURE)
    assert [c.name for c in section.charts] == ["lift-lapsed", "lift-lapsed_twin"]
    assert section.facts == {"cohorts": 2, "too_early": 0}
    (table,) = [b for b in section.blocks if getattr(b, "key", "") == "lift"]
    assert [(r["audience"], r["cohort"], r["status"]) for r in table.rows] == [
        ("lapsed", "2024-05-01", "complete"),
        ("lapsed", "complete, pooled", "complete"),
        ("lapsed_twin", "2024-05-01", "complete"),
        ("lapsed_twin", "complete, pooled", "complete"),
    ]


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """Run `lifecycle` commands in-process against a warehouse URL set per test."""
    from lifecycle.settings import get_settings

    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_lift_cli_says_what_to_run_first(cli_env, fresh_db) -> None:
    from click.testing import CliRunner

    from lifecycle.cli import main

    cli_env.setenv("LIFECYCLE_WAREHOUSE_URL", fresh_db)
    result = CliRunner().invoke(main, ["lift", "--date", "2024-05-01"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: marts.audience_outcomes does not exist: run `lifecycle transform --date "
        "2024-05-01` first"
    )


def test_lift_cli_prints_the_stored_lift(cli_env, loop) -> None:
    from click.testing import CliRunner

    from lifecycle.cli import main

    cli_env.setenv("LIFECYCLE_WAREHOUSE_URL", loop["url"])
    result = CliRunner().invoke(main, ["lift", "--date", EARLY.isoformat(), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [x.facts() for x in loop["early"]]
    text = CliRunner().invoke(main, ["lift", "--date", EARLY.isoformat(), "--audience", "lapsed"])
    assert text.exit_code == 0 and "[too early: window incomplete]" in text.output
    assert "lapsed_twin" not in text.output


def test_stage_moves_are_counted(loop) -> None:
    moved = {
        group: (int(churned), int(reactivated))
        for group, churned, reactivated in rows(
            loop["url"],
            "select experiment_group, count_churned_at_cohort, count_reactivated "
            "from marts.audience_outcomes where audience = 'lapsed'",
        )
    }  # as of EARLY: 10 days of the window
    (tc, tr), (cc, cr) = moved["treatment"], moved["control"]
    assert tc > 50 and cc > 50  # churned members on the export day, in both groups
    assert tr > cr  # the campaign orders of churned treatment members reactivate them
