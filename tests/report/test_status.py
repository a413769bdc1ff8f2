"""`lifecycle status` on a real run (landed, built, gated, scored, activated) and on nothing."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import psycopg

from lifecycle.status import collect_status
from tests.conftest import make_settings
from tests.report.conftest import END
from tests.report.test_report import _cli


def test_status_after_a_real_run(report_world) -> None:
    status = collect_status(report_world.settings)
    assert [p.key for p in status.parts] == [
        "warehouse", "airflow", "loads", "watermarks", "marts", "gates", "scores", "exports",
        "models", "report",
    ]  # fmt: skip
    wh = status.part("warehouse").rows[0]
    assert wh["mode"] == "external" and wh["running"] is True
    with psycopg.connect(report_world.url) as conn:
        runs = conn.execute(
            "select source, entity, rows_loaded from ops.load_runs order by 1, 2"
        ).fetchall()
        customers = conn.execute("select count(*) from marts.customers").fetchone()[0]
    loads = status.part("loads").rows
    assert [(r["source"], r["entity"], r["rows_loaded"]) for r in loads] == runs
    assert all(r["status"] == "success" and r["logical_date"] == END for r in loads)
    marks = status.part("watermarks").rows
    assert len(marks) == 5
    end_of_day = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    assert all(r["watermark"] == end_of_day for r in marks)
    assert status.part("marts").rows == [{"as_of_date": END, "customers": customers}]
    gates = {r["layer"]: r for r in status.part("gates").rows}
    assert set(gates) == {"raw", "marts"}
    assert all(g["verdict"] == "pass" and g["logical_date"] == END for g in gates.values())
    # each gate run's GX Data Docs site, under the state folder
    assert all(g["data_docs"] and g["data_docs"].endswith("index.html") for g in gates.values())
    assert all(Path(g["data_docs"]).is_file() for g in gates.values())
    [scores] = status.part("scores").rows
    assert scores["score_date"] == END and scores["churn"] == "3"
    exports = {r["audience"]: r for r in status.part("exports").rows}
    assert {"win_back_high_value", "at_risk_save", "welcome_series", "vip_loyalty"} <= set(exports)
    assert all(e["status"] == "ok" and e["as_of_date"] == END for e in exports.values())
    # no local Airflow ran and no model was trained here: said, not an error
    assert status.part("airflow").note.startswith("none yet: no local Airflow at")
    assert status.part("models").note.startswith("none yet: no MLflow tracking store")
    assert status.part("report").rows == [{"latest": str(report_world.full.path)}]
    text = status.summary()
    assert "Last load per source (ops.load_runs):" in text
    assert "raw    2024-06-30    pass" in text


def test_status_cli_json(report_world) -> None:
    env = {
        "LIFECYCLE_HOME": str(report_world.settings.home),
        "LIFECYCLE_WAREHOUSE_URL": report_world.url,
    }
    done = _cli(env, "status", "--json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["marts"]["rows"][0]["as_of_date"] == END.isoformat()
    assert {r["layer"]: r["verdict"] for r in facts["gates"]["rows"]} == {
        "raw": "pass",
        "marts": "pass",
    }
    assert len(facts["loads"]["rows"]) == 5
    assert facts["airflow"]["note"].startswith("none yet")
    text = _cli(env, "status")
    assert text.returncode == 0 and "Watermarks (ops.watermarks):" in text.stdout


def test_status_of_an_empty_warehouse(embedded_settings, fresh_db, tmp_path) -> None:
    status = collect_status(make_settings(tmp_path, LIFECYCLE_WAREHOUSE_URL=fresh_db))
    notes = {p.key: p.note for p in status.parts}
    assert notes["loads"] == "none yet (`lifecycle extract --date D`)"
    assert notes["marts"] == "none yet (`lifecycle transform --date D`)"
    assert notes["gates"].startswith("none yet")
    assert notes["scores"] == "none yet (`lifecycle score --date D`)"
    assert notes["exports"] == "none yet (`lifecycle export --date D`)"
    assert notes["report"] == "none yet (`lifecycle report --date D`)"
    assert all(not p.rows for p in status.parts if p.key != "warehouse")


def test_status_of_a_stopped_embedded_warehouse(tmp_path) -> None:
    # nothing runs under this home: status says so and does not start a server
    settings = make_settings(tmp_path)
    status = collect_status(settings)
    assert status.part("warehouse").rows[0]["running"] is False
    assert status.part("loads").note == (
        "unknown: the warehouse is not running (`lifecycle warehouse up`)"
    )
    assert not settings.pgdata.exists()


def test_status_reads_a_real_local_airflow(tmp_path) -> None:
    # a migrated Airflow metadata DB (Airflow's own schema), made by `lifecycle airflow init`
    done = _cli({"LIFECYCLE_HOME": str(tmp_path)}, "airflow", "init")
    assert done.returncode == 0, done.stderr
    part = collect_status(make_settings(tmp_path)).part("airflow")
    assert part.note == "none yet: the local Airflow has no DAG run"
    assert part.rows == []


def test_status_reads_a_metadata_db_server_read_only(tmp_path, external_db) -> None:
    # AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (a distributed deployment) instead of the local
    # SQLite file: an empty database, then one that does not answer. The end-to-end read
    # of real runs is tests/dags/test_celery.py.
    url = external_db.replace("postgresql://", "postgresql+psycopg2://", 1)
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
    part = collect_status(make_settings(tmp_path, **env)).part("airflow")
    assert part.title == f"Airflow runs ({url})"
    assert part.note == f"none yet: {url} holds no Airflow metadata (`lifecycle airflow init`)"
    down = "postgresql+psycopg2://airflow:s3cret-pw@127.0.0.1:1/airflow"
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": down}
    part = collect_status(make_settings(tmp_path, **env)).part("airflow")
    shown = "postgresql+psycopg2://airflow:***@127.0.0.1:1/airflow"
    assert part.title == f"Airflow runs ({shown})"
    assert part.note.startswith(f'cannot read {shown}: connection to server at "127.0.0.1"')
    assert "s3cret-pw" not in part.note


def test_status_shows_the_day_of_a_run_in_the_business_zone(tmp_path) -> None:
    """A run of 2024-01-01 in Berlin has its logical instant at 2023-12-31 23:00 UTC:
    status showed the UTC date, the day before, and as its start the logical instant
    (dag.test stamps it as the start; the real start is run_after)."""
    import sqlite3

    done = _cli({"LIFECYCLE_HOME": str(tmp_path)}, "airflow", "init")
    assert done.returncode == 0, done.stderr
    sources = tmp_path / "sources.yml"
    sources.write_text("version: 1\nbusiness: {timezone: Europe/Berlin}\n", encoding="utf-8")
    # the row `lifecycle pipeline run --date 2024-01-01` leaves (Airflow's own schema)
    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        db.execute(
            "insert into dag_run (dag_id, run_id, run_type, state, logical_date, start_date, "
            "end_date, run_after) values ('lifecycle_daily', 'manual__x', 'manual', 'success', "
            "'2023-12-31 23:00:00.000000', '2023-12-31 23:00:00.000000', "
            "'2026-12-07 23:06:09.125501', '2026-12-07 23:05:45.933430')"
        )
    settings = make_settings(tmp_path, LIFECYCLE_SOURCES_FILE=str(sources))
    [row] = collect_status(settings).part("airflow").rows
    assert row["logical_date"] == "2024-01-01"
    assert row["started"] == dt.datetime(2026, 12, 7, 23, 5, 45, 933430, tzinfo=dt.UTC)
    assert row["ended"] == dt.datetime(2026, 12, 7, 23, 6, 9, 125501, tzinfo=dt.UTC)
