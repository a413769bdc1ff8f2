"""Run tasks of a DAG run through Airflow, each in a process of its own, to be killed.

``python -m tests.adversarial.task_runner <dag_id> <logical date> <log folder>`` imports
Airflow (on the local Airflow home of ``LIFECYCLE_HOME``), parses the DAG and imports the
heavy libraries the tasks use (dbt, Great Expectations, MLflow, scikit-learn) once, then
reads task ids from stdin, one a line. For each it forks a child that runs that task
instance of the DAG run of the date as ``airflow tasks test <dag_id> <task> <date>``
does (Airflow's ``_run_task``: the task runner, its context, XCom and the task instance's
state in the metadata DB), as Airflow's own executors fork a process per task. It prints
``started <pid>`` when the child runs and ``ended <pid> <code>`` when it is gone (the exit
code, or minus the signal that ended it: ``-9`` after a SIGKILL); the child exits 0 only
when the task instance succeeded. The child's output goes to ``<log folder>/<task>-<n>.log``.

Forking from a warmed-up process saves the ~10 s of imports and parsing that a fresh
``airflow tasks test`` pays per task, which keeps the fault-injection suite within its
time budget; what runs in the child is the same code path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _warm_up(dag_id: str):
    """Import Airflow and the tasks' libraries; return (SDK DAG, scheduler DAG)."""
    from lifecycle.orchestration import home
    from lifecycle.orchestration.config import load_orchestration_settings

    home.activate(load_orchestration_settings())
    from airflow.utils.cli import get_bagged_dag, get_db_dag

    sdk_dag = get_bagged_dag(None, dag_id)
    scheduler_dag = get_db_dag(None, dag_id)
    # what the tasks import lazily (each costs seconds in a fresh process)
    import airflow.api_fastapi.execution_api.app  # noqa: F401 - the in-process API
    import airflow.sdk.execution_time.supervisor  # noqa: F401
    import airflow.sdk.execution_time.task_runner  # noqa: F401
    import dbt.cli.main  # noqa: F401
    import great_expectations  # noqa: F401
    import mlflow  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    import lifecycle.activation.run  # noqa: F401
    import lifecycle.extract  # noqa: F401
    import lifecycle.quality.gate  # noqa: F401
    import lifecycle.report.build  # noqa: F401
    import ml.score  # noqa: F401

    # The task talks to Airflow's execution API, in process; building its versioned routes
    # (cadwyn) takes ~10 s on a first request: build them here, once, without a thread.
    in_process_api_server().app._cadwyn_initialize()
    return sdk_dag, scheduler_dag


def _run_child(sdk_dag, scheduler_dag, task_id: str, day: str, log: Path) -> None:
    """Run one task instance in this (forked) process and exit with its outcome."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        from airflow.cli.commands.task_command import _get_ti
        from airflow.sdk.definitions.dag import _run_task

        task = scheduler_dag.get_task(task_id)
        ti, _ = _get_ti(task, -1, logical_date_or_run_id=day, create_if_necessary=False)
        _run_task(ti=ti, task=sdk_dag.get_task(task_id), run_triggerer=True)
        state = str(getattr(ti.state, "value", ti.state))
        print(f"task_runner: {task_id} ended {state}", flush=True)
        code = 0 if state == "success" else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    dag_id, day, folder = sys.argv[1:4]
    logs = Path(folder)
    logs.mkdir(parents=True, exist_ok=True)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    # Airflow and dbt talk on stdout: keep this process's own chatter out of the protocol
    os.dup2(os.open(logs / "runner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 1)
    sdk_dag, scheduler_dag = _warm_up(dag_id)
    out.write("ready\n")
    runs = 0
    for line in sys.stdin:
        task_id = line.strip()
        if not task_id:
            continue
        runs += 1
        log = logs / f"{task_id}-{runs}.log"
        pid = os.fork()
        if pid == 0:
            _run_child(sdk_dag, scheduler_dag, task_id, day, log)
        out.write(f"started {pid} {log}\n")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.write(f"ended {pid} {code}\n")


if __name__ == "__main__":
    main()
