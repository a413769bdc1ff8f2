"""The report's data-quality section on a real failing gate: verdict FAIL, failures listed."""

from __future__ import annotations

import datetime as dt

import psycopg

from lifecycle.report import sections
from lifecycle.sample.world import WorldConfig, generate_world
from tests.conftest import make_settings
from tests.transform.conftest import land

DAY = dt.date(2024, 3, 31)


def test_quality_section_lists_the_failed_expectations(
    embedded_settings, fresh_db, tmp_path
) -> None:
    from lifecycle.quality.gate import validate_layer

    world = tmp_path / "world"
    generate_world(WorldConfig(customers=150, start=dt.date(2024, 1, 1), end=DAY, seed=3), world)
    settings = make_settings(
        tmp_path, LIFECYCLE_WAREHOUSE_URL=fresh_db, LIFECYCLE_WORLD_DIR=str(world)
    )
    land(settings, DAY, full=True, sources=("orders",))
    assert validate_layer("raw", DAY, settings).passed
    # break the landed batch (test data in the real table): two negative amounts
    with psycopg.connect(fresh_db) as conn:
        conn.execute(
            "update raw.orders__orders set amount = -5 where order_id in "
            "(select order_id from raw.orders__orders order by order_id limit 2)"
        )
    failed = validate_layer("raw", DAY, settings)
    assert not failed.passed
    with psycopg.connect(fresh_db) as conn:
        section = sections.quality(conn, DAY)
    [tile] = section.kpis
    assert (tile.key, tile.value) == ("dq-raw", "FAIL")  # the latest run of the day counts
    tables = {b.key: b for b in section.blocks if hasattr(b, "rows")}
    [verdict] = tables["dq-verdicts"].rows
    assert verdict["run_id"] == failed.run_id and verdict["count_failed_critical"] == 1
    [failure] = tables["dq-failures"].rows
    assert failure["suite"] == "raw.orders__orders"
    assert failure["column_name"] == "amount" and failure["unexpected_count"] == 2
    assert failure["severity"] == "critical"
    assert section.facts == {"verdicts": {"raw": "fail"}}
