"""Write-audit-publish: builds wait in marts__build, publishing swaps them in atomically."""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from lifecycle.pii import pii_columns
from lifecycle.quality.cli import validate_command
from lifecycle.quality.gate import QualityError, gate_and_publish
from lifecycle.quality.publish import PublishError, publish_marts
from lifecycle.settings import environment, get_settings
from tests.quality.conftest import DAY, PREVIOUS, execute, marts_checksums


def _one(url: str, sql: str, params: tuple = ()):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_a_build_waits_beside_the_published_marts(warehouse) -> None:
    url, _ = warehouse
    assert _one(url, "select max(as_of_date) from marts.customers") == PREVIOUS
    assert _one(url, "select max(as_of_date) from marts__build.customers") == DAY
    # the published views survived the next day's build (they depend on marts only)
    assert _one(
        url, "select count(*) from marts.customer_stage_daily where date_day = %s", (PREVIOUS,)
    ) == _one(url, "select count(*) from marts.customers")
    assert _one(url, "select obj_description('marts__build'::regnamespace, 'pg_namespace')") == (
        '{"as_of_date": "2024-03-31"}'
    )


def test_publish_moves_everything_and_views_follow_their_tables(warehouse) -> None:
    url, settings = warehouse
    built = _one(
        url,
        "select count(*) from pg_class where relnamespace = 'marts__build'::regnamespace "
        "and relkind in ('r', 'v')",
    )
    result = gate_and_publish(DAY, settings)
    assert len(result.published.relations) == built == 16
    assert "published 16 relation(s) of 2024-03-31" in result.summary()
    assert (
        _one(url, "select count(*) from pg_class where relnamespace = 'marts__build'::regnamespace")
        == 0
    )
    assert _one(url, "select max(as_of_date) from marts.customers") == DAY
    for view in ("customer_stage_daily", "customer_stages_current"):
        text = _one(url, "select pg_get_viewdef(%s::regclass)", (f"marts.{view}",))
        assert "marts.customer_stage_history" in text and "marts__build" not in text
    assert _one(
        url, "select count(*) from marts.customer_stage_daily where date_day = %s", (DAY,)
    ) == _one(url, "select count(*) from marts.customers")


def test_published_marts_are_readable_by_bi_and_the_build_is_not(warehouse) -> None:
    url, settings = warehouse
    gate_and_publish(DAY, settings)
    with psycopg.connect(url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "select relname from pg_class where relnamespace = 'marts'::regnamespace "
                "and relkind in ('r', 'v')"
            )
        ]
        pii = pii_columns()
        for name in names:
            columns = [
                r[0]
                for r in conn.execute(
                    "select attname from pg_attribute where attrelid = %s::regclass "
                    "and attnum > 0 and not attisdropped",
                    (f"marts.{name}",),
                )
            ]
            for column in columns:  # every column but the PII ones, of every relation
                assert conn.execute(
                    "select has_column_privilege('lifecycle_bi', %s, %s, 'select')",
                    (f"marts.{name}", column),
                ).fetchone()[0] is (column not in pii.get(name, ())), (name, column)
        assert not conn.execute(
            "select has_schema_privilege('lifecycle_bi', 'marts__build', 'usage')"
        ).fetchone()[0]
        conn.execute("set role lifecycle_bi")
        assert conn.execute("select count(*) from marts.customer_stages_current").fetchone()[0] > 0
        # every stage and cohort mart works in full; no personal column of customers does
        for name in sorted(n for n in names if n not in pii):
            conn.execute(f"select * from marts.{name} limit 1")
        assert {"stage_counts_daily", "stage_transitions", "cohort_retention"} <= set(names)
        assert conn.execute("select count(distinct current_stage) from marts.customers").fetchone()
        conn.commit()
        for column in ("primary_email", "first_name", "last_name"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select {column} from marts.customers")
            conn.rollback()
            conn.execute("set role lifecycle_bi")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from marts__build.customers")


def test_publish_refuses_what_was_not_built_for_the_day(warehouse) -> None:
    url, settings = warehouse
    before = marts_checksums(url)
    with pytest.raises(PublishError, match="marts__build holds a build of 2024-03-31"):
        publish_marts(PREVIOUS, settings)
    with pytest.raises(QualityError, match="holds a build of 2024-03-31"):
        gate_and_publish(PREVIOUS, settings)
    assert marts_checksums(url) == before
    gate_and_publish(DAY, settings)
    after = marts_checksums(url)
    with pytest.raises(PublishError, match="no pending build"):
        publish_marts(DAY, settings)  # a second publish of the same day: nothing to swap
    assert marts_checksums(url) == after


def test_cli_validates_and_publishes_only_when_the_gate_passes(warehouse) -> None:
    url, settings = warehouse
    env = {
        "LIFECYCLE_HOME": str(settings.home),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_WORLD_DIR": str(settings.world_dir),
    }
    runner = CliRunner()
    with environment(env):
        get_settings.cache_clear()
        try:
            ok = runner.invoke(validate_command, ["--layer", "raw", "--date", "2024-03-31"])
            execute(url, "update marts__build.funnel set lead_rate = -1")
            before = marts_checksums(url)
            bad = runner.invoke(
                validate_command, ["--layer", "marts", "--date", "2024-03-31", "--publish"]
            )
            after = marts_checksums(url)
            usage = runner.invoke(validate_command, ["--layer", "raw", "--date", "31/03/2024"])
            wrong = runner.invoke(
                validate_command, ["--layer", "raw", "--date", "2024-03-31", "--publish"]
            )
        finally:
            get_settings.cache_clear()
    assert ok.exit_code == 0, ok.output
    assert "quality gate raw 2024-03-31 PASSED" in ok.output
    assert bad.exit_code == 1
    assert "FAIL [critical] marts.funnel: expect_column_values_to_be_between(lead_rate)" in (
        bad.output
    )
    assert "nothing was published" in bad.output
    assert after == before
    assert usage.exit_code == 2 and "is not a date in YYYY-MM-DD form" in usage.output
    assert wrong.exit_code == 2 and "--publish goes with --layer marts" in wrong.output
