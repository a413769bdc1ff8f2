"""Progress reporting of the long CLI commands when their output goes to a log, not a terminal."""

from __future__ import annotations

import psycopg

from tests.report.conftest import END
from tests.report.test_report import _cli


def test_extract_reports_each_source_and_a_total(report_world, fresh_db, tmp_path) -> None:
    env = {
        "LIFECYCLE_HOME": str(tmp_path),
        "LIFECYCLE_WAREHOUSE_URL": fresh_db,
        "LIFECYCLE_WORLD_DIR": str(report_world.settings.world_dir),
    }
    done = _cli(env, "extract", "--date", str(END))
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith(("[", "extract "))]
    with psycopg.connect(fresh_db) as conn:
        loaded, quarantined = conn.execute(
            "select sum(rows_loaded), sum(rows_quarantined) from ops.load_runs"
        ).fetchone()
    # The sample world has no rates file: fx is extracted as a skipped batch.
    assert progress[:5] == [
        f"[1/5] extracting crm (crm__contacts) for {END}...",
        f"[2/5] extracting web (web__events) for {END}...",
        f"[3/5] extracting orders (orders__orders, orders__order_items) for {END}...",
        f"[4/5] extracting marketing (marketing__spend) for {END}...",
        f"[5/5] extracting fx (fx__rates) for {END}...",
    ]
    assert progress[5].startswith(
        f"extract {END}: 5 source(s), {loaded:,} rows loaded, {quarantined:,} quarantined in "
    )
    # stdout keeps one line per batch, for scripts
    assert len(done.stdout.splitlines()) == 6


def test_generate_logs_progress_lines(tmp_path) -> None:
    done = _cli({"LIFECYCLE_HOME": str(tmp_path)}, "generate", "--customers", "120",
                "--out", str(tmp_path / "w"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "generating: 120/120 people (100%)" in done.stderr.splitlines()
