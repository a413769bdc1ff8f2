"""Loading generated sample worlds: every defect is quarantined, clean worlds load whole."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from lifecycle.extract import SOURCES, extract
from lifecycle.sample.world import WorldConfig, generate_world
from tests.conftest import make_settings

START, END = dt.date(2024, 1, 1), dt.date(2024, 4, 30)

#: What the quarantine reason says for each kind of defect the generator injects.
REASONS = {
    "malformed_row": r"^malformed row: (expected \d+ fields, got \d+|unbalanced double quote)",
    "bad_type": r"is not a valid (timestamp|numeric|integer|date|boolean)",
    "duplicate": r"^duplicate of an earlier row of this batch \(",
    "future_date": r"is in the future \(after the end of the load interval",
    "negative_amount": r" is negative",
    "bad_encoding": r"^broken encoding: byte 0x[0-9a-f]{2} at position \d+ is not valid UTF-8",
    "malformed_json": r"^malformed JSON: ",
}


@pytest.fixture(scope="module")
def dirty_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dirty") / "world"
    generate_world(WorldConfig(customers=600, start=START, end=END, seed=11, dirty_rate=0.03), out)
    return out


def _full_load(world: Path, url: str, home: Path, **env: str) -> list:
    s = make_settings(home, LIFECYCLE_WAREHOUSE_URL=url, LIFECYCLE_WORLD_DIR=str(world), **env)
    return [r for source in SOURCES for r in extract(source, END, s, full=True)]


def test_every_injected_defect_is_quarantined_with_its_reason(
    dirty_world: Path, fresh_db: str, tmp_path: Path
) -> None:
    results = _full_load(dirty_world, fresh_db, tmp_path / "home", LIFECYCLE_MAX_REJECT_SHARE="0.2")
    # The sample world has no rates file: the fx source is skipped, every other loads.
    assert {(r.source, r.status) for r in results if r.status != "success"} == {("fx", "skipped")}
    defects = pd.read_csv(dirty_world / "truth" / "dirty.csv")
    assert set(defects.kind) == set(REASONS)  # the world has every kind
    with psycopg.connect(fresh_db) as conn:
        quarantine = pd.DataFrame(
            conn.execute("select _source, _line, reason from raw.quarantine").fetchall(),
            columns=["source", "line", "reason"],
        )
    quarantine["file"] = quarantine.source.str.replace(
        rf"^(file://)?{re.escape(str(dirty_world))}/", "", regex=True
    )
    defects["line"] = defects.locator.str.extract(r"line=(\d+)")[0].astype(int)
    matched = defects.merge(quarantine, on=["file", "line"], how="left")
    missing = matched[matched.reason.isna()]
    assert missing.empty, f"defects not quarantined:\n{missing.head(10).to_string()}"
    for row in matched.itertuples():
        assert re.search(REASONS[row.kind], row.reason), (row.kind, row.reason, row.detail)
    # Nothing else was quarantined: every quarantined row is an injected defect.
    assert len(quarantine) == len(defects)
    assert sum(r.rows_quarantined for r in results) == len(defects)


def test_a_clean_world_loads_every_row_and_a_rerun_changes_nothing(
    fresh_db: str, tmp_path: Path
) -> None:
    world = tmp_path / "world"
    summary = generate_world(WorldConfig(customers=400, start=START, end=END, seed=5), world)
    first = {r.entity: r for r in _full_load(world, fresh_db, tmp_path / "home")}
    assert sum(r.rows_quarantined for r in first.values()) == 0
    assert first["contacts"].rows_loaded == summary.contacts
    assert first["orders"].rows_loaded == summary.orders
    assert first["order_items"].rows_loaded == summary.order_items
    assert first["spend"].rows_loaded == summary.spend_rows
    # Web: every event once per batch; repeated deliveries of an event_id collapse.
    events = pd.concat(
        pd.read_json(f, lines=True, dtype=False)
        for f in sorted((world / "web" / "events").rglob("*.jsonl.gz"))
    )
    assert first["events"].rows_loaded == events.event_id.nunique()
    assert first["events"].rows_duplicate == len(events) - events.event_id.nunique() > 0

    def snapshot() -> dict[str, list]:
        with psycopg.connect(fresh_db) as conn:
            return {
                t: conn.execute(
                    f"select md5(string_agg(t::text, '|' order by t::text)) from "
                    f"(select * from raw.{t}) t"
                ).fetchall()
                for t in ("crm__contacts", "orders__orders", "web__events", "marketing__spend")
            }

    def without_load_time() -> None:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            for t in ("crm__contacts", "orders__orders", "web__events", "marketing__spend"):
                conn.execute(f"update raw.{t} set _loaded_at = 'epoch'")

    without_load_time()
    before = snapshot()
    _full_load(world, fresh_db, tmp_path / "home")
    without_load_time()
    assert snapshot() == before
