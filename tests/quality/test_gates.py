"""Acceptance of the quality gates on a generated world: clean data passes, broken data fails.

Every broken input is applied directly to a copy of a real warehouse (raw rows, the
unpublished marts build, scores, exports): test data, not a mock. Each one must fail the
right expectation, block publishing, and leave the published marts exactly as they were
(same relations, same OIDs, same rows), with every result queryable in ``ops.dq_results``.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from lifecycle.quality.gate import GateFailed, gate_and_publish, run_validate, validate_layer
from lifecycle.quality.publish import pending_build
from lifecycle.settings import Settings
from lifecycle.transform import transform
from ml.tables import ensure_ml_tables
from tests.quality.conftest import DAY, PREVIOUS, execute, marts_checksums

BATCH = "'{entity}:" + DAY.isoformat() + "'"


def daily_gates(day: dt.date, settings: Settings) -> None:
    """The daily DAG's order: raw gate, build (unpublished), marts gate, publish."""
    run_validate(day, settings, layer="raw")
    with psycopg.connect(settings.warehouse_url) as conn:
        built = pending_build(conn)
    if built != day:  # the template already holds the day's build
        transform(day, settings, quiet=True, publish=False)
    gate_and_publish(day, settings)


def dq_failures(url: str, run_id: str) -> set[tuple[str, str, str | None]]:
    """Return (suite, expectation, column) of the failed critical rows of a stored run."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select suite, expectation, column_name from ops.dq_results "
            "where run_id = %s and not success and severity = 'critical'",
            (run_id,),
        ).fetchall()
    return set(rows)


def expect_blocked(url: str, settings: Settings, expected: set, run=daily_gates) -> GateFailed:
    """Run the gates, assert they fail on exactly `expected` and publish nothing."""
    before = marts_checksums(url)
    with pytest.raises(GateFailed) as caught:
        run(DAY, settings)
    verdict = caught.value.verdict
    assert verdict.failing() == expected, verdict.summary()
    assert dq_failures(url, verdict.run_id) == expected
    for suite, expectation, _ in expected:
        assert f"{suite}: {expectation}" in str(caught.value)
    assert marts_checksums(url) == before  # yesterday's marts, byte for byte
    return caught.value


# ------------------------------------------------------------------ clean data


def test_clean_world_passes_every_gate_and_publishes(warehouse) -> None:
    url, settings = warehouse
    before = marts_checksums(url)
    run_id = "scheduled__2024-03-31T00:00:00+00:00"  # the DAG passes one run id to every gate
    raw = run_validate(DAY, settings, layer="raw", run_id=run_id)
    assert raw.passed and not raw.skipped and len(raw.suites) == 5
    assert not raw.warnings, raw.summary()
    gate_and_publish(DAY, settings, run_id=run_id)
    retried = run_validate(DAY, settings, layer="raw", run_id=run_id)  # a retry replaces
    assert retried.passed
    after = marts_checksums(url)
    assert after.keys() == before.keys() and after != before  # today's marts are live
    with psycopg.connect(url) as conn:
        assert conn.execute("select max(as_of_date) from marts.customers").fetchone() == (DAY,)
        runs = conn.execute(
            "select layer, schema_name, passed, count_expectations, count_failed_critical "
            "from ops.dq_runs order by layer"
        ).fetchall()
        stored = conn.execute(
            "select layer, count(*), bool_and(success) from ops.dq_results where run_id = %s "
            "group by 1 order by 1",
            (run_id,),
        ).fetchall()
        published = conn.execute(
            "select logical_date from ops.marts_publications order by logical_date"
        ).fetchall()
    assert [(r[0], r[1], r[2], r[4]) for r in runs] == [
        ("marts", "marts__build", True, 0),
        ("raw", "raw", True, 0),
    ]
    assert [(layer, ok) for layer, _, ok in stored] == [("marts", True), ("raw", True)]
    assert {layer: n for layer, n, _ in stored} == {r[0]: r[3] for r in runs}
    assert all(n > 40 for _, n, _ in stored)
    assert published == [(PREVIOUS,), (DAY,)]
    # the published marts pass too; a rerun of the gate gives the same outcomes
    first = validate_layer("marts", DAY, settings)
    again = validate_layer("marts", DAY, settings)
    assert first.schema == "marts" and first.passed
    assert _outcomes(first) == _outcomes(again) and first.run_id != again.run_id


def _outcomes(verdict) -> list[tuple]:
    """Return what a verdict found, without its run id."""
    return [
        (o.suite, o.expectation, o.column, o.success, o.observed_value) for o in verdict.outcomes
    ]


def test_row_count_bounds_come_from_recent_days(warehouse) -> None:
    url, settings = warehouse
    from lifecycle.quality.gate import row_count_bounds
    from lifecycle.quality.suites import load_suites

    rule = {s.name: s for s in load_suites("raw")}["raw.web__events"].row_count
    with psycopg.connect(url) as conn:
        low, high, history = row_count_bounds(conn, "web__events", DAY, rule)
        expected = conn.execute(
            "select count(*) from raw.web__events where _batch_id "
            "between 'web__events:2024-03-24' and 'web__events:2024-03-30' group by _batch_id"
        ).fetchall()
    assert len(history) == 7 and sorted(history) == sorted(n for (n,) in expected)
    median = sorted(history)[3]
    assert low == -(-median * 3 // 10) and high == median * 10


# ------------------------------------------------------------------ broken raw data


def test_null_key_in_raw_orders_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    b = BATCH.format(entity="orders__orders")
    assert (
        execute(
            url,
            f"update raw.orders__orders set customer_id = null where ctid = "
            f"(select min(ctid) from raw.orders__orders where _batch_id = {b})",
        )
        == 1
    )
    expect_blocked(
        url,
        settings,
        {("raw.orders__orders", "expect_column_values_to_not_be_null", "customer_id")},
    )


def test_duplicate_event_ids_block_publishing(warehouse) -> None:
    url, settings = warehouse
    b = BATCH.format(entity="web__events")
    assert (
        execute(
            url,
            f"insert into raw.web__events select * from raw.web__events "
            f"where _batch_id = {b} limit 2",
        )
        == 2
    )
    expect_blocked(
        url, settings, {("raw.web__events", "expect_column_values_to_be_unique", "event_id")}
    )


def test_negative_amount_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    b = BATCH.format(entity="orders__orders")
    assert (
        execute(
            url,
            f"update raw.orders__orders set amount = -12.50 where ctid = "
            f"(select min(ctid) from raw.orders__orders where _batch_id = {b})",
        )
        == 1
    )
    failed = expect_blocked(
        url, settings, {("raw.orders__orders", "expect_column_values_to_be_between", "amount")}
    )
    assert "1 unexpected" in str(failed) and "-12.5" in str(failed)


def test_a_day_with_90_percent_fewer_events_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    b = BATCH.format(entity="web__events")
    with psycopg.connect(url) as conn:
        total = conn.execute(
            f"select count(*) from raw.web__events where _batch_id = {b}"
        ).fetchone()[0]
    deleted = execute(
        url,
        f"delete from raw.web__events where _batch_id = {b} and ctid not in "
        f"(select ctid from raw.web__events where _batch_id = {b} "
        f"order by event_id limit {total // 10})",
    )
    assert total > 50 and deleted == total - total // 10
    failed = expect_blocked(
        url, settings, {("raw.web__events", "expect_table_row_count_to_be_between", None)}
    )
    [outcome] = failed.verdict.failures
    assert outcome.observed_value == total // 10 and outcome.kwargs["min_value"] > total // 10


def test_unknown_event_name_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    b = BATCH.format(entity="web__events")
    assert (
        execute(
            url,
            f"update raw.web__events set event = 'page_vewed' where ctid = "
            f"(select min(ctid) from raw.web__events where _batch_id = {b})",
        )
        == 1
    )
    failed = expect_blocked(
        url, settings, {("raw.web__events", "expect_column_values_to_be_in_set", "event")}
    )
    assert "page_vewed" in str(failed)


def test_order_in_the_future_of_the_day_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    b = BATCH.format(entity="orders__orders")
    execute(
        url,
        f"update raw.orders__orders set ordered_at = '2024-04-03T10:00:00Z' where ctid = "
        f"(select min(ctid) from raw.orders__orders where _batch_id = {b})",
    )
    expect_blocked(url, settings, {("raw.orders__orders", "unexpected_rows_expectation", None)})


# ------------------------------------------------------------------ broken marts build


def test_stage_gap_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    # drop a middle interval of a customer with at least three
    removed = execute(
        url,
        "delete from marts__build.customer_stage_history where (customer_key, valid_from) = ("
        "select customer_key, valid_from from (select customer_key, valid_from, "
        "row_number() over (partition by customer_key order by valid_from) as n, "
        "count(*) over (partition by customer_key) as k "
        "from marts__build.customer_stage_history) as s where n = 2 and k >= 3 "
        "order by customer_key limit 1)",
    )
    assert removed == 1
    failed = expect_blocked(
        url,
        settings,
        {("marts.customer_stage_history", "unexpected_rows_expectation", None)},
        run=gate_and_publish,
    )
    [outcome] = failed.verdict.failures
    assert outcome.description.startswith("no gap and no overlap") and outcome.observed_value == 1


def test_duplicate_identifier_in_a_mart_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    added = execute(
        url,
        "insert into marts__build.customer_identities select * "
        "from marts__build.customer_identities where not is_anchor limit 1",
    )
    assert added == 1
    failed = expect_blocked(
        url,
        settings,
        {
            (
                "marts.customer_identities",
                "expect_compound_columns_to_be_unique",
                "identifier_type,identifier_value",
            )
        },
        run=gate_and_publish,
    )
    # Counted grouped (one key twice), then run as GX's own for the rows and examples.
    [dup] = [o for o in failed.verdict.outcomes if not o.success]
    assert dup.unexpected_count == 2 and len(dup.partial_unexpected) == 2
    assert dup.partial_unexpected[0] == dup.partial_unexpected[1]
    # A clean one is stored as the suite declares it, with the grouped query's count.
    [clean] = [
        o
        for o in failed.verdict.outcomes
        if o.suite == "marts.customer_stage_history"
        and o.expectation == "expect_compound_columns_to_be_unique"
    ]
    assert (clean.column, clean.success, clean.observed_value) == (
        "customer_key,valid_from",
        True,
        0,
    )


def test_retention_above_one_blocks_publishing(warehouse) -> None:
    url, settings = warehouse
    execute(
        url,
        "update marts__build.cohort_retention set retention_rate = 1.2500 where ctid = "
        "(select min(ctid) from marts__build.cohort_retention where months_since_acquisition = 1)",
    )
    expect_blocked(
        url,
        settings,
        {("marts.cohort_retention", "expect_column_values_to_be_between", "retention_rate")},
        run=gate_and_publish,
    )


def test_missing_mart_fails_the_gate(warehouse) -> None:
    url, settings = warehouse
    execute(url, "drop table marts__build.funnel")
    failed = expect_blocked(
        url,
        settings,
        {
            (
                "marts.funnel",
                "expect_compound_columns_to_be_unique",
                "cohort_month,acquisition_channel",
            ),
            ("marts.funnel", "expect_column_values_to_be_between", "lead_rate"),
            ("marts.funnel", "expect_column_values_to_be_between", "first_purchase_rate"),
            ("marts.funnel", "expect_column_values_to_be_between", "repeat_purchase_rate"),
            ("marts.funnel", "expect_column_values_to_be_between", "referral_rate"),
            ("marts.funnel", "unexpected_rows_expectation", None),
        },
        run=gate_and_publish,
    )
    assert "marts__build.funnel does not exist" in str(failed)


# ------------------------------------------------------------------ scores and exports


def _write_scores(url: str) -> int:
    """Write scores of DAY for every buyer of the build (deterministic test data)."""
    with psycopg.connect(url) as conn:
        ensure_ml_tables(conn)
        return conn.execute(
            "insert into ml.scores_history select %s, customer_key, "
            "(abs(hashtext(customer_key)) %% 1000) / 1000.0, 'low', 'recency', 1, 'core', "
            "0.5, 1.0, 20.0, 20.0, '1', '1', '1', 'test' from marts.customers where is_buyer",
            (DAY,),
        ).rowcount


def test_probability_outside_zero_one_fails_the_scores_gate(warehouse) -> None:
    url, settings = warehouse
    gate_and_publish(DAY, settings)
    assert _write_scores(url) > 100
    assert run_validate(DAY, settings, layer="scores").passed
    # a scorer writing into a table without the contract's checks
    execute(
        url, "alter table ml.scores_history drop constraint scores_history_churn_probability_check"
    )
    execute(
        url,
        "update ml.scores_history set churn_probability = 1.2 where customer_key = "
        "(select min(customer_key) from ml.scores_history)",
    )
    expect_blocked(
        url,
        settings,
        {("scores.scores_history", "expect_column_values_to_be_between", "churn_probability")},
        run=lambda day, s: run_validate(day, s, layer="scores"),
    )


def test_opted_out_contact_in_an_export_fails_the_activation_gate(warehouse) -> None:
    from lifecycle.activation.run import run_activation

    url, settings = warehouse
    gate_and_publish(DAY, settings)
    run_activation(DAY, settings)
    clean = run_validate(DAY, settings, layer="activation")
    assert clean.passed and not clean.skipped
    with psycopg.connect(url) as conn:
        assert (
            conn.execute(
                "select count(*) from activation.export_members where as_of_date = %s", (DAY,)
            ).fetchone()[0]
            > 0
        )
    added = execute(
        url,
        "insert into activation.export_members (audience, as_of_date, customer_key, email, list) "
        "select 'win_back_high_value', as_of_date, customer_key, 'optout@example.com', 'send' "
        "from activation.customer_scores_history where as_of_date = %s "
        "and not has_marketing_consent limit 1",
        (DAY,),
    )
    assert added == 1
    failed = expect_blocked(
        url,
        settings,
        {("activation.export_members", "unexpected_rows_expectation", None)},
        run=lambda day, s: run_validate(day, s, layer="activation"),
    )
    assert "without marketing consent" in str(failed)
    # the published customer table says the same: reported as a warning
    assert [w.suite for w in failed.verdict.warnings] == ["activation.export_members"]


def test_the_raw_gate_fetches_counts_and_bounded_examples_never_the_batch(warehouse) -> None:
    """GX probes a query asset's columns by running its query: that probe returns no row,
    and no statement of the gate brings back more rows than the examples kept (20)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    url, settings = warehouse
    b = BATCH.format(entity="web__events")
    # 30 events of the day with an unknown name: more unexpected values than examples kept
    assert (
        execute(
            url,
            f"update raw.web__events set event = 'page_vewed' where ctid in "
            f"(select ctid from raw.web__events where _batch_id = {b} limit 30)",
        )
        == 30
    )
    with psycopg.connect(url) as conn:
        [(batch_rows,)] = conn.execute(
            f"select count(*) from raw.web__events where _batch_id = {b}"
        ).fetchall()
    assert batch_rows > 100
    fetched: list[tuple[int, str]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if cursor.description is not None:
            fetched.append((cursor.rowcount, " ".join(statement.split())[:200]))

    event.listen(Engine, "after_cursor_execute", record)
    try:
        verdict = validate_layer("raw", DAY, settings, run_id="bounded")
    finally:
        event.remove(Engine, "after_cursor_execute", record)
    assert len(fetched) > 50  # every suite's metrics ran in the database
    assert max(fetched)[0] <= 20, max(fetched)
    web = {(o.expectation, o.column): o for o in verdict.outcomes if o.suite == "raw.web__events"}
    in_set = web[("expect_column_values_to_be_in_set", "event")]
    assert (in_set.success, in_set.unexpected_count, in_set.element_count) == (
        False,
        30,
        batch_rows,
    )
    assert in_set.partial_unexpected == ["page_vewed"] * 20
    assert web[("expect_table_row_count_to_be_between", None)].observed_value == batch_rows
    assert verdict.failing() == {("raw.web__events", "expect_column_values_to_be_in_set", "event")}


def test_examples_are_fetched_only_for_expectations_that_found_unexpected_values(
    warehouse, monkeypatch
) -> None:
    """The gate's first pass counts without examples; a second pass over the expectations
    with unexpected values fetches theirs. The stored outcomes equal one pass with examples
    for every expectation, and a clean expectation sends no example query that scans."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from lifecycle.quality import gate

    url, settings = warehouse
    b = BATCH.format(entity="web__events")
    # unexpected values of two kinds in one suite (a map expectation, with examples; an
    # unexpected-rows query, a count) and a duplicate event id (a uniqueness check)
    assert (
        execute(
            url,
            f"update raw.web__events set event = 'page_vewed', anonymous_id = null, "
            f"user_id = null where ctid in "
            f"(select ctid from raw.web__events where _batch_id = {b} limit 3)",
        )
        == 3
    )
    assert (
        execute(
            url,
            f"insert into raw.web__events select * from raw.web__events "
            f"where _batch_id = {b} and anonymous_id is not null limit 1",
        )
        == 1
    )
    sent: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        sent.append((" ".join(statement.split()), dict(parameters or {})))

    event.listen(Engine, "after_cursor_execute", record)
    try:
        verdict = validate_layer("raw", DAY, settings, run_id="two-passes")
        raw_statements = len(sent)
        validate_layer("marts", DAY, settings, run_id="two-passes")  # unexpected-rows joins
    finally:
        event.remove(Engine, "after_cursor_execute", record)
    monkeypatch.setattr(gate, "COUNTS_ONLY", gate.RESULT_FORMAT)
    single = validate_layer("raw", DAY, settings, run_id="one-pass")

    def facts(v) -> list[tuple]:
        return [
            (o.suite, o.ordinal, o.expectation, o.column, o.success, o.observed_value,
             o.unexpected_count, o.unexpected_percent, o.element_count, o.partial_unexpected,
             o.exception)
            for o in v.outcomes
        ]  # fmt: skip

    assert facts(verdict) == facts(single)
    assert verdict.failing() == {
        ("raw.web__events", "expect_column_values_to_be_in_set", "event"),
        ("raw.web__events", "expect_column_values_to_be_unique", "event_id"),
    }
    [anonymous] = [o for o in verdict.warnings if o.suite == "raw.web__events"]
    assert (anonymous.expectation, anonymous.observed_value) == ("unexpected_rows_expectation", 3)
    web = {(o.expectation, o.column): o for o in verdict.outcomes if o.suite == "raw.web__events"}
    assert (
        web[("expect_column_values_to_be_in_set", "event")].partial_unexpected == ["page_vewed"] * 3
    )
    assert len(web[("expect_column_values_to_be_unique", "event_id")].partial_unexpected) == 2
    # example queries that may scan (a limit above 0) ran for those two expectations alone
    examples = [
        s for s, p in sent[:raw_statements] if "AS unexpected_values" in s and 0 not in p.values()
    ]
    assert len(examples) == 2, examples
    assert all(" event " in s or "event_id" in s for s in examples)
    # the rows of unexpected-rows queries (never shown in the SUMMARY format) are not run:
    # each query GX counts is sent bare only as `limit 0`, with or without a join
    counted = [
        s.removeprefix(count).removesuffix(") AS substituted_batch_subquery")
        for s, _ in sent
        if s.startswith(count := "SELECT COUNT(*) as unexpected_row_count FROM (")
    ]
    assert len(counted) > 10 and any(" join " in q for q in counted)
    executed = {s for s, _ in sent}
    for query in counted:
        assert query not in executed, query
        assert f"select * from ({query}) as gx_unused_rows limit 0" in executed, query
