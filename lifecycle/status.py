"""``lifecycle status``: a data engineer's first look at the pipeline's state.

What ran last (the DAG runs in Airflow's metadata DB: the local SQLite file, or the
server of ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` of a distributed deployment; and
``ops.load_runs``), the watermark of each source, the data-quality gates' latest
verdicts, the champion model versions, the last scores and exports, and the newest
report. Every part tolerates the absence of what it reads (no Airflow home yet, no
MLflow store, tables not created) and says "none yet" with the command that produces it.
Nothing is started: a stopped embedded warehouse is reported as such, never started by
looking.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg

from lifecycle.report.model import jsonable
from lifecycle.settings import Settings, get_settings
from lifecycle.sources_file import business_zone

NONE_YET = "none yet"


@dataclass
class Part:
    """One part of the status: rows of facts, or a note saying why there are none."""

    key: str
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None  # e.g. "none yet (run `lifecycle extract --date D`)"


@dataclass
class Status:
    """Everything `lifecycle status` shows."""

    parts: list[Part]

    def part(self, key: str) -> Part:
        """Return the part named `key`."""
        return next(p for p in self.parts if p.key == key)

    def to_dict(self) -> dict[str, Any]:
        """Return the status as JSON-able data: {part: {rows, note}}."""
        return {p.key: jsonable({"rows": p.rows, "note": p.note}) for p in self.parts}

    def summary(self) -> str:
        """Return the status as readable text: one aligned table (or a note) per part."""
        out = []
        for p in self.parts:
            out.append(f"{p.title}:")
            if p.note:
                out.append(f"  {p.note}")
            if p.rows:
                keys = list(p.rows[0])
                cells = [keys] + [[_text(r.get(k)) for k in keys] for r in p.rows]
                widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
                for row in cells:
                    out.append(
                        "  "
                        + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                    )
        return "\n".join(out)


def _text(value: Any) -> str:
    """Return `value` as table text (UTC times, 2 decimals, "-" for none)."""
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _rows(conn: psycopg.Connection, query: str, params: tuple = ()) -> list[dict[str, Any]]:
    """Return the rows of `query` as dicts keyed by column name."""
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    """Return whether the table or view `relation` exists."""
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


# ------------------------------------------------------------------------------ parts


_LAST_RUNS = (
    "select dag_id, run_id, logical_date, state, start_date, end_date, run_after from dag_run d "
    "where logical_date = (select max(logical_date) from dag_run where dag_id = d.dag_id) "
    "order by dag_id"
)
_FAILED_TASKS = (
    "select task_id from task_instance where dag_id = :dag_id and run_id = :run_id "
    "and state in ('failed', 'upstream_failed') order by task_id"
)


def _metadata_engine(settings: Settings):
    """Return (SQLAlchemy engine, name, note) of Airflow's metadata DB, read-only: the
    server of ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (a distributed deployment), else the
    local SQLite file. The engine is None (and the note says why) when there is nothing."""
    import sqlalchemy as sa

    from lifecycle.orchestration.config import load_orchestration_settings

    cfg = load_orchestration_settings(settings)
    if cfg.metadata_db_url and not cfg.metadata_db_url.startswith("sqlite"):
        url = sa.make_url(cfg.metadata_db_url)
        name = url.render_as_string(hide_password=True)
        # a server answers in seconds or is reported as unreachable, never waited for
        timeout = {"connect_timeout": 5} if url.get_backend_name() == "postgresql" else {}
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=timeout)
        return engine, name, None
    db = cfg.metadata_db
    if not db.exists():
        note = f"{NONE_YET}: no local Airflow at {db.parent} (`lifecycle pipeline run --date D`)"
        return None, str(db), note
    # read-only: looking never locks or migrates Airflow's database
    engine = sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5),
        poolclass=sa.pool.NullPool,
    )
    return engine, str(db), None


def _utc(value: Any) -> dt.datetime | None:
    """Return a metadata DB timestamp as an aware UTC datetime (SQLite gives naive text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def airflow_part(settings: Settings) -> Part:
    """Return the latest run of each DAG in Airflow's metadata DB, with its failed tasks."""
    import sqlalchemy as sa

    engine, name, note = _metadata_engine(settings)
    local = engine is None or engine.dialect.name == "sqlite"
    part = Part("airflow", "Airflow runs (local)" if local else f"Airflow runs ({name})")
    if engine is None:
        part.note = note
        return part
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("set transaction read only")
            if not sa.inspect(conn).has_table("dag_run"):
                part.note = (
                    f"{NONE_YET}: {name} holds no Airflow metadata (`lifecycle airflow init`)"
                )
                return part
            zone = business_zone(settings)
            runs = conn.execute(sa.text(_LAST_RUNS)).all()
            for dag_id, run_id, logical, state, start, end, run_after in runs:
                logical, start, end, run_after = map(_utc, (logical, start, end, run_after))
                if start is not None and start == logical and run_after is not None:
                    start = run_after  # dag.test stamps the logical date as the start
                failed = conn.execute(
                    sa.text(_FAILED_TASKS), {"dag_id": dag_id, "run_id": run_id}
                ).scalars()
                part.rows.append(
                    {
                        "dag": dag_id,
                        # the day the run is of: the logical instant's day in the
                        # business zone (its UTC date is the day before east of UTC)
                        "logical_date": (
                            str(logical.astimezone(zone).date()) if logical is not None else None
                        ),
                        "state": state,
                        "started": start,
                        "ended": end,
                        "failed_tasks": ",".join(failed) or None,
                    }
                )
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else str(exc)
        part.note = f"cannot read {name}: {first}"
        return part
    finally:
        engine.dispose()
    if not part.rows:
        part.note = f"{NONE_YET}: {'the local Airflow' if local else name} has no DAG run"
    return part


def load_parts(conn: psycopg.Connection) -> list[Part]:
    """Return the last load run and the watermark of each source entity."""
    runs = Part("loads", "Last load per source (ops.load_runs)")
    marks = Part("watermarks", "Watermarks (ops.watermarks)")
    if not _exists(conn, "ops.load_runs"):
        runs.note = marks.note = f"{NONE_YET} (`lifecycle extract --date D`)"
        return [runs, marks]
    runs.rows = _rows(
        conn,
        "select distinct on (source, entity) source, entity, logical_date, status, "
        "rows_loaded, rows_quarantined, round(duration_s::numeric, 2)::float as seconds, "
        "finished_at, left(error, 200) as error from ops.load_runs "
        "order by source, entity, started_at desc",
    )
    marks.rows = _rows(
        conn,
        "select source, entity, value as watermark, batch_id from ops.watermarks order by 1, 2",
    )
    if not runs.rows:
        runs.note = f"{NONE_YET} (`lifecycle extract --date D`)"
    if not marks.rows:
        marks.note = NONE_YET
    return [runs, marks]


def marts_part(conn: psycopg.Connection) -> Part:
    """Return the date the marts were built as of, and their customer count."""
    part = Part("marts", "Marts (dbt)")
    if not _exists(conn, "marts.stage_counts_daily"):
        part.note = f"{NONE_YET} (`lifecycle transform --date D`)"
        return part
    part.rows = _rows(
        conn,
        "select max(date_day) as as_of_date, (select sum(count_customers)::int from "
        "marts.stage_counts_daily where date_day = (select max(date_day) from "
        "marts.stage_counts_daily)) as customers from marts.stage_counts_daily",
    )
    return part


def gates_part(conn: psycopg.Connection) -> Part:
    """Return the verdict of the latest data-quality run of each layer."""
    part = Part("gates", "Data-quality gates (ops.dq_runs, latest run per layer)")
    if not _exists(conn, "ops.dq_runs"):
        part.note = f"{NONE_YET} (`lifecycle validate --layer raw|marts --date D`)"
        return part
    part.rows = _rows(
        conn,
        "select distinct on (layer) layer, logical_date, "
        "case when not passed then 'fail' when count_failed_warning > 0 then 'warn' "
        "else 'pass' end as verdict, count_expectations as checks, "
        "count_failed_critical as failed, count_failed_warning as warnings, run_id "
        "from ops.dq_runs order by layer, logical_date desc, recorded_at desc",
    )
    order = {"raw": 0, "marts": 1, "scores": 2, "activation": 3}  # pipeline order
    part.rows.sort(key=lambda r: (order.get(r["layer"], 9), r["layer"]))
    if not part.rows:
        part.note = NONE_YET
    return part


def _link_data_docs(part: Part, settings: Settings) -> None:
    """Add to each gate row the GX Data Docs site of its run (None when none was built)."""
    from lifecycle.quality.gate import data_docs_index

    for row in part.rows:
        index = data_docs_index(settings, row["logical_date"], row["layer"], row["run_id"])
        row["data_docs"] = str(index) if index else None


def scores_part(conn: psycopg.Connection) -> Part:
    """Return the latest score date and how many customers it scored, with model versions."""
    part = Part("scores", "Scores (ml.scores_history)")
    if not _exists(conn, "ml.scores_history"):
        part.note = f"{NONE_YET} (`lifecycle score --date D`)"
        return part
    part.rows = _rows(
        conn,
        "select score_date, count(*)::int as customers, min(churn_model_version) as churn, "
        "min(segmentation_model_version) as segmentation, min(clv_model_version) as clv "
        "from ml.scores_history where score_date = (select max(score_date) "
        "from ml.scores_history) group by score_date",
    )
    if not part.rows:
        part.note = NONE_YET
    return part


def exports_part(conn: psycopg.Connection) -> Part:
    """Return the last export of each audience."""
    part = Part("exports", "Last exports (activation.export_log)")
    if not _exists(conn, "activation.export_log"):
        part.note = f"{NONE_YET} (`lifecycle export --date D`)"
        return part
    part.rows = _rows(
        conn,
        "select distinct on (audience) audience, as_of_date, status, count_sent, "
        "count_control, count_adds, count_removes, folder "
        "from activation.export_log order by audience, as_of_date desc, export_id desc",
    )
    if not part.rows:
        part.note = NONE_YET
    return part


def models_part(settings: Settings) -> Part:
    """Return the champion and challenger versions of each registered model in MLflow."""
    from lifecycle.report.evaluation import mlflow_client
    from lifecycle.report.model import Unavailable
    from ml.tracking import CHALLENGER, CHAMPION

    part = Part("models", "Models (MLflow registry)")
    try:
        client = mlflow_client(settings)
    except Unavailable as exc:
        part.note = f"{NONE_YET}: {exc}"
        return part
    from mlflow.exceptions import MlflowException

    from ml.tracking import EXPERIMENTS

    for name in EXPERIMENTS:  # one registered model per experiment
        row: dict[str, Any] = {"model": name}
        for alias in (CHAMPION, CHALLENGER):
            try:
                row[alias] = int(client.get_model_version_by_alias(name, alias).version)
            except MlflowException:
                row[alias] = None
        if row["champion"] is not None or row["challenger"] is not None:
            part.rows.append(row)
    if not part.rows:
        part.note = f"{NONE_YET}: no registered model with a champion (`lifecycle train`)"
    return part


def report_part(settings: Settings) -> Part:
    """Return the newest report file under ``$LIFECYCLE_HOME/reports``."""
    part = Part("report", "Report")
    files = sorted(
        (settings.report_dir or settings.home / "reports").glob("lifecycle-report-*.html")
    )
    if not files:
        part.note = f"{NONE_YET} (`lifecycle report --date D`)"
    else:
        part.rows = [{"latest": str(files[-1])}]
    return part


def collect_status(settings: Settings | None = None) -> Status:
    """Return the pipeline's status; never starts the warehouse, tolerates missing parts."""
    from lifecycle import warehouse as wh

    settings = settings or get_settings()
    st = wh.status(settings)
    head = Part(
        "warehouse",
        "Warehouse",
        [{"mode": st.mode, "running": st.running, "url": wh.redact(st.url) if st.url else None}],
    )
    parts = [head, airflow_part(settings)]
    db_parts = [
        ("loads", "Last load per source (ops.load_runs)"),
        ("watermarks", "Watermarks (ops.watermarks)"),
        ("marts", "Marts (dbt)"),
        ("gates", "Data-quality gates (ops.dq_runs, latest run per layer)"),
        ("scores", "Scores (ml.scores_history)"),
        ("exports", "Last exports (activation.export_log)"),
    ]
    if not st.running or not st.url:
        reason = "the warehouse is not running (`lifecycle warehouse up`)"
        parts += [Part(k, t, note=f"unknown: {reason}") for k, t in db_parts]
    else:
        with psycopg.connect(st.url, connect_timeout=5) as conn:
            conn.read_only = True
            parts += load_parts(conn)
            gates = gates_part(conn)
            _link_data_docs(gates, settings)
            parts += [marts_part(conn), gates, scores_part(conn), exports_part(conn)]
    parts += [models_part(settings), report_part(settings)]
    return Status(parts)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(as_json: bool) -> None:
    """Show what ran last, watermarks, gate verdicts, champion models and last exports."""
    status = collect_status(get_settings())
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2, default=str))
    else:
        click.echo(status.summary())
