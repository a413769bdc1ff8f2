"""A failing task: the CLI fails loudly and the failure callback reaches a webhook on loopback.

The pipeline runs in a child process (``python -m lifecycle.orchestration.cli pipeline
run``), as a user runs it; the webhook is a real HTTP server in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from tests.dags.conftest import scratch_database

DAY = "2024-03-05"
REPO = Path(__file__).resolve().parents[2]


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(
            {"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)}
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP endpoint on 127.0.0.1 that records what is POSTed to it."""
    _Webhook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/lifecycle-secret", _Webhook.received
    finally:
        server.shutdown()
        server.server_close()


def _bad_orders_world(world: Path) -> Path:
    """A world whose orders export is half unparseable: the batch must be rejected."""
    rows = ["order_id,customer_id,email,ordered_at,updated_at,status,currency,amount,quantity"]
    for i in range(10):
        amount = "not-a-number" if i % 2 else "10.00"
        rows.append(
            f"O{i},C{i},c{i}@example.com,2024-03-05T10:00:00Z,2024-03-05T10:00:00Z,"
            f"completed,USD,{amount},1"
        )
    (world / "orders").mkdir(parents=True)
    (world / "orders" / "orders.csv").write_text("\n".join(rows) + "\n")
    return world


def test_failing_task_fails_the_run_loudly_and_posts_the_alert(
    embedded_settings, airflow_cfg, lifecycle_home, tmp_path, webhook
) -> None:
    url_hook, received = webhook
    world = _bad_orders_world(tmp_path / "world")
    with scratch_database(embedded_settings) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
        env.update(
            LIFECYCLE_HOME=str(lifecycle_home),
            LIFECYCLE_WAREHOUSE_URL=url,
            LIFECYCLE_WORLD_DIR=str(world),
            LIFECYCLE_ALERT_WEBHOOK_URL=url_hook,
        )
        proc = subprocess.run(
            [sys.executable, "-m", "lifecycle.orchestration.cli", "pipeline", "run", "--date", DAY],
            env=env,
            cwd=tmp_path,  # no .env here
            capture_output=True,
            text=True,
            timeout=240,
        )
        with psycopg.connect(url) as conn:
            published = conn.execute("select count(*) from raw.orders__orders").fetchone()[0]
            quarantined = conn.execute(
                "select count(*) from raw.quarantine where _batch_id = %s",
                (f"orders__orders:{DAY}",),
            ).fetchone()[0]

    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    log_file = airflow_cfg.run_log_folder / "lifecycle_daily" / f"{DAY}.log"
    # The console says which task failed, for which date, why, and where the log is.
    assert f"lifecycle_daily failed for logical date {DAY}: task(s) extract_orders." in proc.stderr
    assert "rows rejected" in proc.stderr
    assert f"log: {log_file}" in proc.stderr
    assert f"resume with: lifecycle pipeline run --date {DAY}\n" in proc.stderr
    # ... and the per-task table shows the dbt step was not run after the failed load.
    assert "extract_orders           failed" in proc.stdout
    assert "transform                upstream_failed" in proc.stdout
    # The log file holds the task's traceback.
    text = log_file.read_text()
    assert "Task failed with exception" in text and "rows rejected" in text
    # A data error is not retried: exactly one alert, from the callback of try 1.
    assert len(received) == 1, received
    alert = received[0]
    assert alert["path"] == "/hooks/lifecycle-secret"
    assert alert["type"] == "application/json"
    payload = alert["json"]
    assert payload["event"] == "task_failed"
    assert (payload["dag_id"], payload["task_id"], payload["logical_date"]) == (
        "lifecycle_daily",
        "extract_orders",
        DAY,
    )
    assert payload["try_number"] == 1
    assert payload["log_file"] == str(log_file)
    assert "/tasks/extract_orders" in payload["log_url"]
    assert "rows rejected" in payload["error"]
    assert "extract_orders" in payload["text"] and DAY in payload["text"]
    # Nothing of the rejected batch was published; its bad rows are quarantined with reasons.
    assert published == 0
    assert quarantined == 5
