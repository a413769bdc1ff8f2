"""The warehouse built on a hand-made raw dataset (landed by the real loader): exact values.

One build serves the module: identity, stage history, cohorts, RFM, LTV, funnel and the
views are checked against values worked out by hand from DESIGN.md §5-6. The module also
runs the dbt unit tests and `dbt docs generate` on the built warehouse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from decimal import Decimal

import pytest

from lifecycle.raw import ENTITIES
from lifecycle.transform import PROJECT_DIR, dbt_env, dbt_paths, run_dbt, transform
from tests.transform.conftest import land, rows, scratch_database, settings_for, write

AS_OF = dt.date(2024, 6, 30)
D = dt.date

CONTACTS = (
    "id,email,first_name,last_name,phone,country,created_at,updated_at,"
    "acquisition_channel,marketing_opt_in,lifecycle_stage,referred_by\n"
    # Ann's CRM email is padded and mixed-case; her second contact has opted out
    "101, Ann@X.com ,Ann,Lee,,US,2023-06-01T10:00:00Z,2024-06-01T10:00:00Z,email,true,customer,\n"
    "102,ann.b@y.com,Ann,Lee,,US,2024-05-01T10:00:00Z,2024-05-01T10:00:00Z,email,false,customer,\n"
    # Pat, a prospect referred by Ann
    "103,pat@x.com,Pat,Kim,,GB,2024-02-01T09:00:00Z,2024-02-01T09:00:00Z,social,true,lead,101\n"
    # 健太, a prospect with a CJK name
    "104,kenta@x.jp,健太,清水,,JP,2024-06-29T08:00:00Z,2024-06-29T08:00:00Z,paid_search,true,subscriber,\n"
)

ORDERS = (
    "order_id,customer_id,email,ordered_at,updated_at,status,currency,amount,quantity\n"
    # Ann: two orders with two emails -> one person with contacts 101 and 102
    "A1,C1,ann@x.com,2024-01-10T12:00:00Z,2024-01-10T12:05:00Z,completed,USD,100.00,1\n"
    "A2,C1,ANN.B@Y.COM,2024-03-01T12:00:00Z,2024-03-01T12:05:00Z,completed,USD,50.00,1\n"
    # Bob: one order long ago (churned)
    "B1,C2,bob@x.com,2023-12-01T09:00:00Z,2023-12-01T09:01:00Z,completed,USD,80.00,1\n"
    # Rita: her only order is first seen already refunded (new until the refund)
    "R1,C3,rita@x.com,2024-06-01T10:00:00Z,2024-06-10T09:00:00Z,refunded,USD,30.00,1\n"
    # Xu: a cancelled order never counts
    "X1,C4,xu@x.com,2024-06-20T10:00:00Z,2024-06-20T11:00:00Z,cancelled,USD,70.00,1\n"
    # Eve: EUR storefront
    "E1,C5,eve@x.com,2024-06-15T10:00:00Z,2024-06-15T10:01:00Z,completed,EUR,50.00,1\n"
    # Cy: back after 248 days (reactivated)
    "Y1,C6,cy@x.com,2023-10-01T10:00:00Z,2023-10-01T10:01:00Z,completed,USD,40.00,1\n"
    "Y2,C6,cy@x.com,2024-06-05T10:00:00Z,2024-06-05T10:01:00Z,completed,USD,60.00,2\n"
)

SPEND = (
    "date,channel,spend,currency\n"
    "2024-01-01,email,30.00,USD\n"
    "2024-02-01,email,20.00,USD\n"
    "2024-02-01,paid_search,100.00,USD\n"
)


def _event(event_id, anonymous_id, event, ts, user_id=None, email=None, utm=None) -> str:
    source, medium, campaign = utm or (None, None, None)
    return json.dumps(
        {
            "event_id": event_id,
            "anonymous_id": anonymous_id,
            "user_id": user_id,
            "email": email,
            "event": event,
            "timestamp": ts,
            "received_at": ts,
            "session_id": f"s-{anonymous_id}",
            "page_url": "https://shop.example.com/",
            "utm_source": source,
            "utm_medium": medium,
            "utm_campaign": campaign,
            "order_id": None,
            "product_id": None,
        }
    )


EVENTS = [
    # an anonymous visitor from paid search, never identified
    _event("e1", "anon-1", "page_viewed", "2024-06-25T10:00:00Z", utm=("google", "cpc", "x")),
    # Wes browses, then signs up on the web (a prospect known only to the website)
    _event("e2", "dev-2", "page_viewed", "2024-06-25T11:00:00Z", utm=("fb", "paid_social", "y")),
    _event("e3", "dev-2", "signed_up", "2024-06-25T11:05:00Z", user_id="W9", email="Wes@X.com"),
    # Ann logs in on a device: stitched to her through her shop customer id
    _event("e4", "dev-3", "logged_in", "2024-06-26T09:00:00Z", user_id="C1"),
    _event("e4", "dev-3", "logged_in", "2024-06-26T09:00:00Z", user_id="C1"),  # duplicate
]


def key(node: str) -> str:
    """customer_key of a person anchored on `node` ('<type>:<value>')."""
    return hashlib.md5(node.encode()).hexdigest()


ANN, BOB, RITA = key("email:ann@x.com"), key("email:bob@x.com"), key("email:rita@x.com")
XU, EVE, CY = key("email:xu@x.com"), key("email:eve@x.com"), key("email:cy@x.com")
PAT, KENTA, WES = key("email:pat@x.com"), key("email:kenta@x.jp"), key("email:wes@x.com")


@pytest.fixture(scope="module")
def built(embedded_settings, dbt_home, tmp_path_factory):
    """A warehouse with the hand-made raw data, built as of AS_OF."""
    world = tmp_path_factory.mktemp("handmade")
    write(world / "crm/contacts.csv", CONTACTS)
    write(world / "orders/orders.csv", ORDERS)
    write(world / "marketing/spend.csv", SPEND)
    write(
        world / "web/events/dt=2024-06-25/part-0-arrived-20240626.jsonl", "\n".join(EVENTS) + "\n"
    )
    with scratch_database(embedded_settings) as url:
        settings = settings_for(dbt_home, url, world)
        land(settings, AS_OF, full=True)
        result = transform(AS_OF, settings, quiet=True)
        yield url, settings, result


def test_build_succeeds_with_every_data_test(built) -> None:
    _, _, result = built
    assert result.success and not result.failed
    tests = [n for n in result.nodes if n.resource_type == "test"]
    assert len(tests) > 60 and all(n.status == "pass" for n in tests)
    assert not [n for n in result.nodes if n.resource_type == "unit_test"]  # not in daily runs


def test_identity_merges_emails_and_stitches_devices(built) -> None:
    url, _, _ = built
    identities = rows(
        url,
        "select identifier_type, identifier_value, customer_key, is_anchor "
        "from marts.customer_identities where customer_key = %s order by 1, 2",
        (ANN,),
    )
    assert identities == [
        ("anonymous_id", "dev-3", ANN, False),
        ("crm_contact_id", "101", ANN, False),
        ("crm_contact_id", "102", ANN, False),
        ("customer_id", "C1", ANN, False),
        ("email", "ann.b@y.com", ANN, False),
        ("email", "ann@x.com", ANN, True),
    ]
    # a web-only sign-up is a person: user id, email (normalized) and device
    assert rows(
        url,
        "select identifier_type, identifier_value from marts.customer_identities "
        "where customer_key = %s order by 1",
        (WES,),
    ) == [("anonymous_id", "dev-2"), ("customer_id", "W9"), ("email", "wes@x.com")]
    # the never-identified visitor is not a customer
    assert rows(
        url, "select count(*) from marts.customer_identities where identifier_value = 'anon-1'"
    ) == [(0,)]
    assert rows(url, "select count(*) from marts.customers") == [(9,)]


def test_customers_profile_orders_and_consent(built) -> None:
    url, _, _ = built
    got = {
        r[0]: r[1:]
        for r in rows(
            url,
            "select customer_key, first_name, last_name, acquisition_channel, known_from_date, "
            "first_order_date, last_order_date, count_orders, count_refunded_orders, "
            "total_revenue, has_marketing_consent, count_referred_customers, current_stage, "
            "current_stage_since from marts.customers",
        )
    }
    assert got[ANN] == (
        "Ann", "Lee", "email", D(2023, 6, 1), D(2024, 1, 10), D(2024, 3, 1), 2, 0,
        Decimal("150.00"), False, 1, "at_risk", D(2024, 5, 30),
    )  # fmt: skip
    assert got[PAT][:4] == ("Pat", "Kim", "social", D(2024, 2, 1))
    assert got[PAT][-3:] == (0, "prospect", D(2024, 2, 1))
    assert got[PAT][-4] is True  # opted in
    assert got[KENTA][:2] == ("健太", "清水")
    assert got[RITA][6:9] == (0, 1, Decimal("0.00"))
    assert got[RITA][-2:] == ("prospect", D(2024, 6, 10))
    assert got[XU][-2:] == ("prospect", D(2024, 6, 20))
    assert got[EVE][8] == Decimal("54.00")  # 50 EUR at the 1.08 planning rate
    assert got[EVE][-2:] == ("new", D(2024, 6, 15))
    assert got[CY][-2:] == ("reactivated", D(2024, 6, 5))
    assert got[BOB][2] == "unknown"  # no CRM contact, no web visit
    assert got[WES][2] == "social"  # first web touch: utm_medium paid_social
    assert got[WES][-2:] == ("prospect", D(2024, 6, 25))


def test_stage_history_follows_the_rules(built) -> None:
    url, _, _ = built

    def history(customer_key: str) -> list[tuple]:
        return rows(
            url,
            "select stage, valid_from, valid_to from marts.customer_stage_history "
            "where customer_key = %s order by valid_from",
            (customer_key,),
        )

    assert history(ANN) == [
        ("prospect", D(2023, 6, 1), D(2024, 1, 10)),
        ("new", D(2024, 1, 10), D(2024, 2, 9)),
        ("active", D(2024, 2, 9), D(2024, 5, 30)),  # 90 days after the 1 March order
        ("at_risk", D(2024, 5, 30), None),
    ]
    assert history(BOB) == [
        ("new", D(2023, 12, 1), D(2023, 12, 31)),
        ("active", D(2023, 12, 31), D(2024, 2, 29)),
        ("at_risk", D(2024, 2, 29), D(2024, 5, 30)),
        ("churned", D(2024, 5, 30), None),  # 181 days after the order
    ]
    assert history(RITA) == [
        ("new", D(2024, 6, 1), D(2024, 6, 10)),
        ("prospect", D(2024, 6, 10), None),  # the refund removed her only order
    ]
    assert history(CY) == [
        ("new", D(2023, 10, 1), D(2023, 10, 31)),
        ("active", D(2023, 10, 31), D(2023, 12, 30)),
        ("at_risk", D(2023, 12, 30), D(2024, 3, 30)),
        ("churned", D(2024, 3, 30), D(2024, 6, 5)),
        ("reactivated", D(2024, 6, 5), None),
    ]
    assert history(KENTA) == [("prospect", D(2024, 6, 29), None)]
    # the daily view answers "stage of X on D"
    assert rows(
        url,
        "select stage from marts.customer_stage_daily where customer_key = %s and date_day = %s",
        (CY, D(2024, 4, 1)),
    ) == [("churned",)]
    assert rows(
        url,
        "select stage, recommended_action from marts.customer_stages_current "
        "where customer_key = %s",
        (CY,),
    ) == [("reactivated", "Re-onboarding")]


def test_stage_counts_and_transitions(built) -> None:
    url, _, _ = built
    on_as_of = dict(
        rows(
            url,
            "select stage, count_customers from marts.stage_counts_daily where date_day = %s",
            (AS_OF,),
        )
    )
    assert on_as_of == {
        "prospect": 5, "new": 1, "active": 0, "loyal": 0, "at_risk": 1, "churned": 1,
        "reactivated": 1,
    }  # fmt: skip
    june = rows(
        url,
        "select from_stage, to_stage, count_customers from marts.stage_transitions "
        "where period_type = 'month' and period_start = '2024-06-01' order by 1, 2",
    )
    assert june == [
        ("at_risk", "at_risk", 1),  # Ann
        ("churned", "churned", 1),  # Bob
        ("churned", "reactivated", 1),  # Cy
        ("none", "new", 1),  # Eve
        ("none", "prospect", 4),  # Rita (new, then refunded), Xu, 健太, Wes
        ("prospect", "prospect", 1),  # Pat
    ]
    assert rows(
        url,
        "select count_churned_at_start, count_newly_churned, count_reactivated, reactivation_rate "
        "from marts.reactivation_rates where period_type = 'month' and period_start = '2024-06-01'",
    ) == [(2, 0, 1, Decimal("0.5000"))]


def test_cohort_retention(built) -> None:
    url, _, _ = built
    ann = rows(
        url,
        "select months_since_acquisition, count_cohort_customers, count_active_customers, "
        "retention_rate, revenue, cumulative_revenue_per_customer "
        "from marts.cohort_retention where cohort_month = '2024-01-01' "
        "and acquisition_channel = 'all' order by 1",
    )
    assert ann == [
        (0, 1, 1, Decimal("1.0000"), Decimal("100.00"), Decimal("100.00")),
        (1, 1, 0, Decimal("0.0000"), Decimal("0.00"), Decimal("100.00")),
        (2, 1, 1, Decimal("1.0000"), Decimal("50.00"), Decimal("150.00")),
        (3, 1, 0, Decimal("0.0000"), Decimal("0.00"), Decimal("150.00")),
        (4, 1, 0, Decimal("0.0000"), Decimal("0.00"), Decimal("150.00")),
        (5, 1, 0, Decimal("0.0000"), Decimal("0.00"), Decimal("150.00")),
    ]
    cohorts = rows(
        url,
        "select cohort_month, acquisition_channel, count_cohort_customers "
        "from marts.cohort_retention where months_since_acquisition = 0 order by 1, 2",
    )
    assert cohorts == [
        (D(2023, 10, 1), "all", 1), (D(2023, 10, 1), "unknown", 1),
        (D(2023, 12, 1), "all", 1), (D(2023, 12, 1), "unknown", 1),
        (D(2024, 1, 1), "all", 1), (D(2024, 1, 1), "email", 1),
        (D(2024, 6, 1), "all", 1), (D(2024, 6, 1), "unknown", 1),
    ]  # fmt: skip
    # Cy's win-back order lands in month 8 of his cohort
    assert rows(
        url,
        "select count_active_customers, revenue, revenue_retention_rate "
        "from marts.cohort_retention where cohort_month = '2023-10-01' "
        "and acquisition_channel = 'all' and months_since_acquisition = 8",
    ) == [(1, Decimal("60.00"), Decimal("1.5000"))]


def test_rfm_scores_and_segments(built) -> None:
    url, _, _ = built
    got = {
        r[0]: r[1:]
        for r in rows(
            url,
            "select customer_key, recency_days, count_orders, total_revenue, rfm_score, "
            "frequency_monetary_score, rfm_segment from marts.customer_rfm",
        )
    }
    # four buyers (Rita's order was refunded): quintiles of 4 values are 1, 2, 4, 5
    assert got == {
        BOB: (212, 1, Decimal("80.00"), "112", 2, "hibernating"),
        ANN: (121, 2, Decimal("150.00"), "245", 5, "cant_lose_them"),
        CY: (25, 2, Decimal("100.00"), "444", 4, "loyal"),
        EVE: (15, 1, Decimal("54.00"), "511", 1, "new"),
    }


def test_ltv_and_funnel(built) -> None:
    url, _, _ = built
    assert rows(
        url,
        "select count_orders, historical_ltv, average_order_value, "
        "days_since_last_order from marts.customer_ltv where customer_key = %s",
        (ANN,),
    ) == [(2, Decimal("150.00"), Decimal("75.00"), 121)]
    channels = {
        r[0]: r[1:]
        for r in rows(
            url,
            "select acquisition_channel, count_buyers, average_order_value, spend, "
            "cac, relationship_years_source from marts.channel_ltv",
        )
    }
    assert channels["email"] == (1, Decimal("75.00"), Decimal("50.00"), Decimal("50.00"), "default")
    assert channels["paid_search"][:2] == (0, None)  # spend but no buyer yet
    assert channels["paid_search"][2] == Decimal("100.00")
    # 6 orders for 384 USD; 150 USD of spend over 4 buyers
    assert channels["all"][:4] == (4, Decimal("64.00"), Decimal("150.00"), Decimal("37.50"))
    june = rows(
        url,
        "select count_visitors, count_web_visitors, count_leads, count_first_purchases, "
        "count_repeat_purchases from marts.funnel "
        "where cohort_month = '2024-06-01' and acquisition_channel = 'all'",
    )
    # Rita, Xu, Eve, 健太, Wes (people) + anon-1 (a visitor never identified)
    assert june == [(6, 2, 5, 1, 0)]
    referrers = rows(
        url,
        "select cohort_month, count_referrers from marts.funnel "
        "where acquisition_channel = 'all' and count_referrers > 0",
    )
    assert referrers == [(D(2023, 6, 1), 1)]


def test_dbt_unit_tests_pass(built) -> None:
    """Every stage rule and edge is pinned by a dbt unit test on hand-built inputs."""
    _, settings, _ = built
    result = run_dbt(
        ["test", "--select", "test_type:unit"], settings, logical_date=AS_OF, quiet=True
    )
    names = {n.unique_id.rsplit(".", 1)[-1] for n in result.nodes}
    assert result.success and all(n.status == "pass" for n in result.nodes)
    assert {
        "stage_rules_single_order_edges_30_90_180",
        "stage_rules_refund_removes_the_only_order",
        "stage_rules_churned_customer_buys_again_is_reactivated",
        "stage_rules_order_after_exactly_180_days_is_not_a_winback",
        "stage_rules_prospect_without_orders",
        "stage_rules_loyal_at_exactly_4_orders_in_365_days",
        "stage_rules_at_risk_after_twice_the_typical_gap",
        "stage_rules_thresholds_are_vars",
        "identity_two_emails_merge_into_one_customer",
        "order_versions_refund_cancel_and_late_refund",
        "order_spans_as_of_a_date",
    } <= names


def test_docs_generate(built) -> None:
    _, settings, _ = built
    run_dbt(["docs", "generate"], settings, logical_date=AS_OF, quiet=True)
    target, _ = dbt_paths(settings)
    catalog = json.loads((target / "catalog.json").read_text())
    manifest = json.loads((target / "manifest.json").read_text())
    assert "model.lifecycle.customer_stage_history" in catalog["nodes"]
    exposures = {e["name"] for e in manifest["exposures"].values()}
    assert exposures == {"lifecycle_report", "audience_exports"}
    # every model and every column of every model is documented
    for node in manifest["nodes"].values():
        if node["resource_type"] == "model":
            assert node["description"].strip(), node["unique_id"]
            for column in node["columns"].values():
                assert column["description"].strip(), (node["unique_id"], column["name"])


def test_raw_columns_macro_matches_the_raw_contracts() -> None:
    """dbt's view of the raw tables (macro raw_columns) is lifecycle/raw.py's."""
    text = (PROJECT_DIR / "macros/raw_sources.sql").read_text()
    for table, entity in ENTITIES.items():
        block = re.search(rf"'{table}': \[(.*?)\n\s*\],", text, re.S)
        assert block, table
        pairs = re.findall(r"\['(\w+)', '([\w(), ]+)'\]", block.group(1))
        expected = [(f.name, f.column_type) for f in entity.fields]
        assert pairs == expected, table


def test_profile_env_from_a_socket_url() -> None:
    env = dbt_env("postgresql://postgres:@/lifecycle?host=/tmp/x/pgdata")
    assert env["LIFECYCLE_DBT_HOST"] == "/tmp/x/pgdata"
    assert env["LIFECYCLE_DBT_DBNAME"] == "lifecycle"
    assert env["LIFECYCLE_DBT_USER"] == "postgres"
    assert env["LIFECYCLE_DBT_PASSWORD"] == ""
    env = dbt_env("postgresql://u:s3cret@db.example:6543/wh?sslmode=require")
    assert (env["LIFECYCLE_DBT_HOST"], env["LIFECYCLE_DBT_PORT"]) == ("db.example", "6543")
    assert (env["LIFECYCLE_DBT_PASSWORD"], env["LIFECYCLE_DBT_SSLMODE"]) == ("s3cret", "require")


def test_target_and_logs_live_under_lifecycle_home(built) -> None:
    _, settings, _ = built
    target, logs = dbt_paths(settings)
    assert target.is_relative_to(settings.home) and (target / "manifest.json").exists()
    assert logs.is_relative_to(settings.home)


def test_cli_command_checks_its_date() -> None:
    from click.testing import CliRunner

    from lifecycle.transform import transform_command

    result = CliRunner().invoke(transform_command, ["--date", "30/06/2024"])
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output
    help_text = CliRunner().invoke(transform_command, ["--help"]).output
    assert "--full-refresh" in help_text and "--select" in help_text
