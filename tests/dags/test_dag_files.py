"""Every DAG file: imports cleanly and fast, stays thin, and carries the house-style settings.

Each file is parsed by Airflow's ``DagBag`` in a fresh interpreter (the way a DAG
processor parses it), after Airflow itself is imported: the time measured is the DAG
file's own cost, and the modules present afterwards show what it pulled in.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from lifecycle.orchestration.config import DAGS_FOLDER

DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
#: Modules a DAG file must not import at parse time (heavy, or touching data).
HEAVY = ("pandas", "sklearn", "mlflow", "great_expectations", "dbt", "pyarrow", "cosmos", "psycopg")
#: Budget for one DAG file's own import (the scheduler parses every file every 30 s).
IMPORT_BUDGET_S = 1.0

PROBE = r"""
import json, sys, tempfile, time
from pathlib import Path

t0 = time.perf_counter()
import airflow.sdk  # what every DAG file needs; a DAG processor has it loaded already
from airflow.dag_processing.dagbag import DagBag

# Warm up: a trivial DAG makes Airflow load what it loads once per process (plugins,
# cluster policies), so what follows is the DAG file's own cost.
warm = Path(tempfile.mkdtemp()) / "warmup.py"
warm.write_text("from airflow.sdk import DAG\nDAG('warmup', schedule=None)\n")
DagBag(dag_folder=str(warm), collect_dags=True)
t1 = time.perf_counter()
before = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1], collect_dags=True)  # parse the file as Airflow does
t2 = time.perf_counter()

dags = []
for value in bag.dags.values():
    dags.append({
        "dag_id": value.dag_id,
        "tags": sorted(value.tags or []),
        "owners": sorted({t.owner for t in value.tasks}),
        "retries": {t.task_id: t.retries for t in value.tasks},
        "callbacks": {t.task_id: bool(t.on_failure_callback) for t in value.tasks},
        "timeouts": {t.task_id: bool(t.execution_timeout) for t in value.tasks},
        "max_active_runs": value.max_active_runs,
        "doc_md": bool(value.doc_md and value.doc_md.strip()),
        "schedule": type(value.timetable).__name__,
        "start_date": value.start_date.isoformat() if value.start_date else None,
        "catchup": value.catchup,
        "params": sorted(value.params.keys()),
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in value.tasks},
        "outlets": {t.task_id: sorted(a.name for a in t.outlets) for t in value.tasks},
    })
print(json.dumps({
    "airflow_s": t1 - t0,
    "dag_file_s": t2 - t1,
    "import_errors": bag.import_errors,
    "new_modules": sorted(set(sys.modules) - before),
    "dags": dags,
}))
"""


@pytest.fixture(scope="module")
def probes(airflow_cfg) -> dict[str, dict]:
    """Import every DAG file in a fresh interpreter; return what each probe saw."""
    import os

    from lifecycle.orchestration.home import environment

    env = {**os.environ, **environment(airflow_cfg)}
    out = {}
    for path in DAG_FILES:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{path.name} failed to import:\n{proc.stderr[-4000:]}"
        out[path.name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_the_dags_folder_holds_the_daily_dag_and_no_dbt_named_module() -> None:
    assert "lifecycle_daily.py" in {p.name for p in DAG_FILES}
    assert not [p for p in DAGS_FOLDER.rglob("dbt_*.py")]  # dbt would import it as a plugin


def test_every_dag_file_imports_fast_without_heavy_modules(probes) -> None:
    for name, probe in probes.items():
        assert not probe["import_errors"], probe["import_errors"]
        assert probe["dags"], f"{name} defines no DAG"
        assert probe["dag_file_s"] < IMPORT_BUDGET_S, (name, probe["dag_file_s"])
        heavy = [m for m in probe["new_modules"] if m.split(".")[0] in HEAVY]
        assert not heavy, f"{name} imports {sorted({m.split('.')[0] for m in heavy})} at parse time"
        print(
            f"{name}: DAG file {probe['dag_file_s'] * 1000:.0f} ms "
            f"(+ importing Airflow {probe['airflow_s']:.2f} s, once per process)"
        )


def test_every_dag_has_owner_tags_retries_timeouts_callback_and_docs(probes) -> None:
    for name, probe in probes.items():
        for dag in probe["dags"]:
            where = f"{name}:{dag['dag_id']}"
            assert dag["tags"], where
            assert dag["owners"] and "airflow" not in dag["owners"], (where, dag["owners"])
            assert min(dag["retries"].values()) >= 2, (where, dag["retries"])
            assert all(dag["callbacks"].values()), (where, dag["callbacks"])
            assert all(dag["timeouts"].values()), (where, dag["timeouts"])
            assert dag["doc_md"], where
            assert dag["start_date"] and dag["start_date"].endswith("+00:00"), where


def test_daily_dag_shape(probes) -> None:
    [dag] = probes["lifecycle_daily.py"]["dags"]
    assert dag["dag_id"] == "lifecycle_daily"
    assert dag["schedule"] == "CronDataIntervalTimetable"
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["params"] == ["dbt_full_refresh", "dbt_select", "full_reload"]
    extracts = {f"extract_{s}" for s in ("crm", "web", "orders", "marketing", "fx")}
    after = [
        "validate_raw",
        "transform",
        "validate_marts",
        "score",
        "validate_scores",
        "activate",
        "validate_activation",
        "report",
    ]
    assert set(dag["upstream"]) == {"apply_erasures"} | extracts | set(after)
    assert dag["upstream"]["apply_erasures"] == []  # forgotten people go before any load
    # then the sources run in parallel
    assert all(dag["upstream"][t] == ["apply_erasures"] for t in extracts)
    assert dag["upstream"]["validate_raw"] == sorted(extracts)  # the raw gate waits for all
    for before, task in zip(after, after[1:], strict=False):
        assert dag["upstream"][task] == [before], task  # then one step after the other
    assert dag["outlets"]["extract_orders"] == ["raw.orders__order_items", "raw.orders__orders"]
    # the assets consumers wait for: published marts (after the gate), scores, activation
    assert dag["outlets"]["validate_marts"] == ["marts"]
    assert dag["outlets"]["score"] == ["ml.scores_history"]
    assert dag["outlets"]["activate"] == ["activation.customer_scores"]
    assert dag["outlets"]["transform"] == []  # an unpublished build is no asset event


def test_raw_tables_of_the_dag_match_the_extractors(airflow_cfg) -> None:
    from lifecycle.extract import SOURCES
    from lifecycle.orchestration.daily import RAW_TABLES

    assert {s: tuple(e.table for e in entities) for s, entities in SOURCES.items()} == RAW_TABLES


def test_an_interrupted_task_fails_without_a_retry() -> None:
    """Ctrl-C during `lifecycle pipeline run` failed the running task like any error: up
    for retry, and the run went on (and succeeded) minutes later."""
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.orchestration import daily, training

    assert training.task is daily.task  # both DAGs' tasks

    @daily.task(task_id="stopped")
    def stopped(n: int) -> int:
        raise KeyboardInterrupt

    assert list(inspect.signature(stopped.function).parameters) == ["n"]
    with pytest.raises(AirflowFailException, match=r"^interrupted \(SIGINT\): not retried$"):
        stopped.function(1)
