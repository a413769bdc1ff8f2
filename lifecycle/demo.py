"""The main job as `make demo` runs it: warehouse, sample world, sources, daily loads."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifecycle import warehouse as wh
from lifecycle.settings import Settings

#: The demo world's period: fixed dates, so every run of the demo gives the same data.
DEMO_START = dt.date(2023, 1, 1)
DEMO_END = dt.date(2024, 12, 31)
#: Logical dates the demo runs the daily pipeline for: the first run loads everything
#: up to its date, the next ones load one day each (as the scheduler would).
DEMO_DAYS = 3


def run_demo(
    settings: Settings,
    *,
    customers: int = 2000,
    seed: int = 42,
    echo: Callable[[str], None] = print,
) -> str:
    """Run the demo end to end through Airflow and return a summary of where things are.

    Raises :class:`lifecycle.orchestration.runner.PipelineRunError` when a run fails.
    """
    from lifecycle.orchestration.config import TRAIN_DAG_ID
    from lifecycle.orchestration.runner import run_dates
    from lifecycle.sample.crm_server import load_contacts, make_server
    from lifecycle.sample.shop_db import load_shop_db
    from lifecycle.sample.world import WorldConfig, generate_world

    echo(f"[1/6] warehouse: starting ({'external' if settings.warehouse_url else 'embedded'})")
    url = wh.up(settings)

    world: Path = settings.world_dir
    echo(f"[2/6] sample world: {customers} people, {DEMO_START}..{DEMO_END}, seed {seed}")
    summary = generate_world(
        WorldConfig(customers=customers, start=DEMO_START, end=DEMO_END, seed=seed), world
    )

    echo("[3/6] shop database: loading orders and order items")
    shop_url = wh.shop_db_url(settings)
    shop = load_shop_db(world, shop_url)

    store = load_contacts(world / "crm" / "contacts.csv")
    token = settings.crm_token or secrets.token_urlsafe(24)
    days = [DEMO_END - dt.timedelta(days=n) for n in reversed(range(DEMO_DAYS))]
    first, later = days[0], days[1:]
    with make_server(store, token=token) as server:
        env = {
            "LIFECYCLE_HOME": str(settings.home),
            "LIFECYCLE_WORLD_DIR": str(world),
            "LIFECYCLE_CRM_API_URL": server.url,
            "LIFECYCLE_CRM_TOKEN": token,
            "LIFECYCLE_SHOP_DB_URL": shop_url,
            "LIFECYCLE_ORDERS_SOURCE": "db",
        }
        if settings.warehouse_url:
            env["LIFECYCLE_WAREHOUSE_URL"] = settings.warehouse_url
        echo(
            f"[4/6] Airflow: lifecycle_daily for {first}: lands every source up to that day and "
            f"builds the warehouse (CRM API at {server.url}, orders from the shop database; "
            "no champion model yet, so scoring and exports skip)"
        )
        reports = run_dates([first], env=env, echo=echo)
        echo(f"[5/6] Airflow: lifecycle_train as of {first}: churn, CLV, segmentation → MLflow")
        # a training run for logical date D trains as of D - 1: here, as of the first day
        train_reports = run_dates(
            [first + dt.timedelta(days=1)], dag_id=TRAIN_DAG_ID, env=env, echo=echo
        )
        echo(
            f"[6/6] Airflow: lifecycle_daily for {', '.join(map(str, later))}: one new day each, "
            "scored with the champion models, audiences exported, report written"
        )
        reports += run_dates(later, env=env, echo=echo)

    loaded: dict[str, int] = {}
    for report in reports:
        for task in report.tasks:
            if task.task_id.startswith("extract_") and isinstance(task.result, dict):
                for table, rows in task.result.items():
                    if isinstance(rows, int):
                        loaded[table] = loaded.get(table, 0) + rows
    results = {t.task_id: t.result for t in reports[-1].tasks}
    trained = {t.task_id: t.result for t in train_reports[-1].tasks}
    marts = _mart_counts(url)
    lines = [
        "",
        "Lifecycle demo finished.",
        f"  state folder (LIFECYCLE_HOME): {settings.home}",
        f"  warehouse:    {wh.redact(url)}",
        f"  sample world: {world}",
        f"                {summary}",
        f"  shop database: {wh.redact(shop_url)} "
        f"({', '.join(f'shop.{r.table}: {r.rows_written} rows' for r in shop)})",
        "  rows loaded into raw over the demo's days:",
        *(f"      {table:<28} {rows:>8}" for table, rows in loaded.items()),
        "  marts (rows):",
        *(f"      marts.{table:<22} {rows:>8}" for table, rows in marts.items()),
        *_result_lines(results, trained, settings),
        f"  Airflow run logs: {settings.home / 'airflow' / 'logs' / 'local-runs'}",
        "  run log: select * from ops.load_runs order by started_at;",
        "  next: `lifecycle status`, "
        '`psql "$(lifecycle warehouse url)"`, `lifecycle pipeline run --date YYYY-MM-DD`',
    ]
    return "\n".join(lines)


def _result_lines(daily: dict[str, Any], train: dict[str, Any], settings: Settings) -> list[str]:
    """Return the lines that say where the gates, scores, models, exports and report are."""
    lines: list[str] = []
    for task in ("validate_raw", "validate_marts"):
        gate = daily.get(task)
        if isinstance(gate, dict) and gate.get("summary"):
            lines.append(f"  {str(gate['summary']).splitlines()[0]}")
    if lines:
        lines.append("      (every result: select * from ops.dq_results)")
    score = daily.get("score")
    if isinstance(score, dict):
        lines.append(
            f"  scores: {score.get('rows', '?')} customers scored as of {score.get('score_date')} "
            "in ml.scores_history (one row per customer: activation.customer_scores)"
        )
    promote = train.get("promote")
    if isinstance(promote, dict):
        lines.append("  models (MLflow registry):")
        for name, decision in (promote.get("promotions") or {}).items():
            state = "champion" if decision.get("promoted") else "challenger"
            version, reason = decision.get("version"), decision.get("reason")
            lines.append(f"      {name} v{version} {state}: {reason}")
    lines.append(
        f"  MLflow: {settings.home / 'mlflow'} — browse with `.venv/bin/mlflow ui "
        f"--backend-store-uri sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}`"
    )
    activate = daily.get("activate")
    audiences = (activate or {}).get("audiences") if isinstance(activate, dict) else None
    if audiences:
        first = next(iter(audiences.values()))
        root = Path(first["folder"]).parent if first.get("folder") else settings.export_dir
        lines.append(f"  audience exports (CSV layouts + manifest.json): {root}")
        for name, facts in audiences.items():
            lines.append(
                f"      {name:<22} {facts.get('members', 0):>5} members "
                f"({facts.get('control', 0)} control), {facts.get('sent', 0):>5} to send, "
                f"+{facts.get('adds', 0)} / -{facts.get('removes', 0)} since "
                f"{facts.get('previous_export_date') or 'the start'}"
            )
    report = daily.get("report")
    if isinstance(report, dict) and report.get("path"):
        lines.append(f"  report: {report['path']}  (open it in a browser; works offline)")
    return lines


def _mart_counts(url: str) -> dict[str, int]:
    """Return the row count of every table in the marts schema."""
    with wh.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "select table_name from information_schema.tables "
                "where table_schema = 'marts' and table_type = 'BASE TABLE' order by 1"
            )
        ]
        return {t: conn.execute(f'select count(*) from marts."{t}"').fetchone()[0] for t in tables}
