"""Wall time and peak memory of every task: first daily run, training, one incremental day.

    .venv/bin/python bench/bench_pipeline.py [--customers 20000] [--world DIR] [--keep DIR]
        [--runs full,train,incremental,scoring]

Generates a sample world of ``--customers`` people over 2023-2024 (as ``lifecycle
generate`` does; or reuses ``--world``, ending 2024-12-31), starts a private embedded
PostgreSQL in a scratch state folder, and runs, task by task in the DAGs' order:

1. **full**: ``lifecycle_daily`` for END - 1 — the first run lands every source up to that
   day and builds every model from nothing;
2. **train**: ``lifecycle_train`` as of END - 2 (what the weekly run after END - 1 does);
3. **incremental**: ``lifecycle_daily`` for END — one new day, as the scheduler runs it;
4. **scoring on precomputed features**: the features as of END written to a table with
   one set-based query (timed: that is the feature SQL), then ``ml.score.score`` reading
   that table, so the figure is prediction plus COPY alone.

Every task runs in a fresh child process calling the function its Airflow task calls
(``lifecycle/orchestration/daily.py``, ``training.py``), so "peak RSS" is that task's own
peak: the larger of the kernel's figure for the child (``os.wait4``) and the polled sum
over the child's process tree. The embedded PostgreSQL server's memory is polled
separately (every 0.2 s): the sum over its processes of resident minus shared memory
(private memory; shared_buffers once would be on top).

Prints one table (task, wall seconds, peak RSS, PostgreSQL peak) and the ratios:
incremental / full daily run, scoring customers/s (the score task, features included) and
prediction customers/s on precomputed features. Nothing is asserted: the figures are
the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lifecycle.extract import SOURCES as EXTRACT_SOURCES  # noqa: E402 - after the path

START, END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)
DAY0, DAY1 = END - dt.timedelta(days=1), END
FEATURES_TABLE = "ml.bench_features"

RUNS = ("full", "train", "incremental", "scoring")
DAILY_TASKS = (
    # one extract task per source, as the daily DAG has (fx included)
    *(f"extract_{source}" for source in EXTRACT_SOURCES),
    "validate_raw",
    "transform",
    "validate_marts",
    "score",
    "validate_scores",
    "activate",
    "validate_activation",
    "report",
)
TRAIN_TASKS = (
    "training_sets",
    "train_churn",
    "train_clv",
    "train_segmentation",
    "evaluate",
    "register",
    "promote",
)


# ------------------------------------------------------------------ child: one task


def _facts(result: Any) -> Any:
    for name in ("facts", "to_dict"):
        method = getattr(result, name, None)
        if callable(method):
            return method()
    return result


def run_task(task: str, day: dt.date, state: dict[str, Any]) -> Any:
    """Run `task` as its Airflow task does for logical date `day`; return its result."""
    from lifecycle.settings import load_settings

    settings = load_settings()
    run_id = f"bench__{day.isoformat()}"
    if task.startswith("extract_"):
        from lifecycle.extract import extract

        results = extract(task.removeprefix("extract_"), day, settings)
        return {f"{r.source}__{r.entity}": r.rows_loaded for r in results}
    if task.startswith("validate_") and task != "validate_marts":
        from lifecycle.quality.gate import run_validate

        layer = task.removeprefix("validate_")
        return _facts(run_validate(day, settings, layer=layer, run_id=run_id))["expectations"]
    if task == "transform":
        from lifecycle.transform import transform

        return transform(day, settings, publish=False).counts()
    if task == "validate_marts":
        from lifecycle.quality.gate import gate_and_publish

        return _facts(gate_and_publish(day, settings, run_id=run_id))["expectations"]
    if task in ("score", "score_precomputed"):
        from ml.score import score

        relation = FEATURES_TABLE if task == "score_precomputed" else None
        result = score(day, settings, features_relation=relation)
        return {"rows": result.rows, "seconds": round(result.elapsed_s, 2), **result.stage_s}
    if task == "features_sql":
        return _features_table(day, settings)
    if task == "activate":
        from lifecycle.activation.run import run_activation

        result = run_activation(day, settings, run_id=run_id)
        return {"customers": result.scores.customers, "scored": result.scores.scored}
    if task == "report":
        from lifecycle.report.build import build_report

        build_report(day, settings)
        return None
    return _train_task(task, day - dt.timedelta(days=1), settings, state)


def _train_task(task: str, as_of: dt.date, settings, state: dict[str, Any]) -> Any:
    from ml import stages, tracking

    if task == "training_sets":
        return stages.training_sets(as_of, settings)
    if task == "train_churn":
        return stages.fit_churn(as_of, settings)
    if task == "train_clv":
        return stages.fit_clv(as_of, settings)
    if task == "train_segmentation":
        return stages.fit_segmentation(as_of, settings)
    if task == "evaluate":
        return stages.evaluate(as_of, settings, state["train_churn"])
    run_ids = {
        tracking.CHURN_MODEL: state["train_churn"],
        tracking.CLV_MODEL: state["train_clv"],
        tracking.SEGMENTATION_MODEL: state["train_segmentation"],
    }
    if task == "register":
        return stages.register(as_of, settings, run_ids)
    if task == "promote":
        metrics = state["evaluate"]["metrics"]["churn_model"]
        return stages.promote(as_of, settings, state["register"], run_ids, metrics)
    raise ValueError(f"unknown task {task!r}")


def _features_table(day: dt.date, settings) -> int:
    """Write the features as of `day` to FEATURES_TABLE with one query; return its rows."""
    from lifecycle import warehouse as wh
    from ml import features as ft

    with wh.connect(wh.warehouse_url(settings)) as conn, conn.transaction():
        ft._plan(conn)
        conn.execute(f"drop table if exists {FEATURES_TABLE}")
        conn.execute(
            f"create table {FEATURES_TABLE} as select * from ({ft.FEATURES_SQL}) as f",
            ft._params([day], 90, day),
        )
        return conn.execute(f"select count(*) from {FEATURES_TABLE}").fetchone()[0]


#: A child's exit code when its task skipped (scoring without a champion, as the DAG does).
SKIPPED = 3


def child_main(task: str, day: str, state_file: Path) -> None:
    """The child process: run one task, add its result to the state file."""
    import logging

    from ml.score import ScoreError

    logging.basicConfig(level=logging.WARNING)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    try:
        result = run_task(task, dt.date.fromisoformat(day), state)
    except ScoreError as exc:
        if "champion" not in str(exc):
            raise
        print(f"skipped: {exc}")
        sys.exit(SKIPPED)
    state[task] = result
    state_file.write_text(json.dumps(state, default=str))


# ----------------------------------------------------------------- parent: measuring


@dataclass
class Measure:
    """One task's figures."""

    run: str
    task: str
    wall_s: float
    rss_mb: float
    pg_mb: float
    result: Any = None


@dataclass
class Poller:
    """Poll a process tree's and the PostgreSQL server's memory until stopped."""

    root: int
    pg_pid: int | None
    peak_tree: float = 0.0
    peak_pg: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def _tree(pid: int, private: bool) -> float:
        import psutil

        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0
        for p in procs:
            try:
                m = p.memory_info()
            except psutil.Error:
                continue
            total += (m.rss - m.shared) if private else m.rss
        return total / 2**20

    def run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_tree = max(self.peak_tree, self._tree(self.root, private=False))
            if self.pg_pid:
                self.peak_pg = max(self.peak_pg, self._tree(self.pg_pid, private=True))

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _pg_pid(settings) -> int | None:
    from lifecycle import warehouse as wh

    info = wh._postmaster(settings.pgdata) if settings.pgdata else None
    return int(info.pid) if info is not None else None


def measure(
    run: str,
    task: str,
    day: dt.date | None,
    state_file: Path,
    log: Path,
    pg: int | None,
    command: list[str] | None = None,
) -> Measure:
    """Run one task in a child process; return its Measure (raise when it failed).

    ``os.wait4``'s peak for a child includes what it had before ``exec`` (a copy of this
    process): the parent stays small (no world generation or pipeline code in it).
    """
    started = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"\n===== {run} {task} {day} =====\n".encode())
        out.flush()
        child = subprocess.Popen(
            command
            or [sys.executable, __file__, "--child", task, day.isoformat(), str(state_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        with Poller(child.pid, pg) as poll:
            _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode == SKIPPED:
        print(f"  {run:<12} {task:<20} skipped (no champion yet)", flush=True)
        return Measure(run, task, wall, 0.0, 0.0, "skipped")
    if child.returncode != 0:
        raise SystemExit(f"error: task {task} of {run} ({day}) failed; see {log}")
    result = json.loads(state_file.read_text()).get(task) if state_file.exists() else None
    rss = max(usage.ru_maxrss / 1024, poll.peak_tree)
    m = Measure(run, task, wall, rss, poll.peak_pg, result)
    line = f"  {run:<12} {task:<20} {wall:8.1f}s {rss:8.0f} MB  pg {poll.peak_pg:6.0f} MB"
    print(line, flush=True)
    return m


def _short(value: Any, limit: int = 60) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(measures: list[Measure]) -> str:
    """Return the figures as a Markdown table, with a total per run."""
    lines = [
        "| run | task | wall s | peak RSS MB | PG private MB | result |",
        "|---|---|---:|---:|---:|---|",
    ]
    runs: dict[str, list[Measure]] = {}
    for m in measures:
        if m.result == "skipped":
            lines.append(f"| {m.run} | {m.task} | skipped | | | no champion yet |")
            continue
        runs.setdefault(m.run, []).append(m)
        lines.append(
            f"| {m.run} | {m.task} | {m.wall_s:.1f} | {m.rss_mb:.0f} | {m.pg_mb:.0f} "
            f"| {_short(m.result)} |"
        )
    for run, ms in runs.items():
        if run == "setup":
            continue
        lines.append(
            f"| {run} | **total** | **{sum(m.wall_s for m in ms):.1f}** "
            f"| **{max(m.rss_mb for m in ms):.0f}** | {max(m.pg_mb for m in ms):.0f} | |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print its figures."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--world", type=Path, help="reuse a generated world (ending 2024-12-31)")
    ap.add_argument("--keep", type=Path, help="keep the state folder (and world) here")
    ap.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="which runs, comma-separated (default all); without `full`, --keep names the "
        "state folder of an earlier run whose warehouse is built (e.g. `--runs train` "
        "measures training again on it)",
    )
    args = ap.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := [r for r in runs if r not in RUNS]:
        ap.error(f"--runs: unknown run(s) {', '.join(unknown)} (choose from {', '.join(RUNS)})")
    if "full" not in runs and not (args.keep and (args.keep / "state.json").is_file()):
        ap.error("--runs without `full` needs --keep DIR of an earlier run (DIR/state.json)")

    from lifecycle import warehouse as wh
    from lifecycle.settings import environment, load_settings

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="lifecycle-bench-pipeline-"))
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o755)
    world = args.world or tmp / "world"
    env = {"LIFECYCLE_HOME": str(tmp / "home"), "LIFECYCLE_WORLD_DIR": str(world)}
    for key in [k for k in os.environ if k.startswith("LIFECYCLE_")]:
        del os.environ[key]
    state_file, log = tmp / "state.json", tmp / "bench.log"
    measures: list[Measure] = []
    try:
        with environment(env):
            settings = load_settings()
            print(f"tasks (log: {log}):", flush=True)
            if args.world is None and "full" in runs:
                lifecycle = str(Path(sys.executable).with_name("lifecycle"))
                generate = [lifecycle, "generate", "--customers", str(args.customers)]
                generate += ["--start", str(START), "--end", str(END), "--out", str(world)]
                generate.append("--quiet")
                measures.append(measure("setup", "generate", None, state_file, log, None, generate))
            wh.up(settings)
            pg = _pg_pid(settings)

            def daily(run: str, day: dt.date) -> None:
                skipped = False
                for task in DAILY_TASKS:
                    if skipped and task in ("validate_scores", "activate", "validate_activation"):
                        continue  # downstream of a skipped score, as in the DAG
                    m = measure(run, task, day, state_file, log, pg)
                    skipped = skipped or m.result == "skipped"
                    measures.append(m)

            if "full" in runs:
                daily("full", DAY0)
            if "train" in runs:
                for task in TRAIN_TASKS:
                    measures.append(measure("train", task, DAY0, state_file, log, pg))
            if "incremental" in runs:
                daily("incremental", DAY1)
            if "scoring" in runs:
                for task in ("features_sql", "score_precomputed"):
                    measures.append(measure("scoring", task, DAY1, state_file, log, pg))
            wh.down(settings)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    def total(run: str) -> float:
        return sum(m.wall_s for m in measures if m.run == run and m.result != "skipped")

    by = {(m.run, m.task): m for m in measures}
    print(table(measures))
    if not {"full", "incremental", "scoring"} <= set(runs):
        return
    score = by[("incremental", "score")]
    pre = by[("scoring", "score_precomputed")]
    rows = score.result["rows"]
    people = f"the world {args.world}" if args.world else f"{args.customers} people generated"
    print(f"\n{people}; {rows} customers scored")
    print(
        f"\nincremental / full daily run: {total('incremental') / total('full'):.2f} "
        f"({total('incremental'):.1f}s / {total('full'):.1f}s)\n"
        f"score task (features included): {rows / score.result['seconds']:,.0f} customers/s "
        f"(features {score.result['features']}s, models {score.result['models']}s, "
        f"write {score.result['write']}s)\n"
        f"features SQL alone: {rows / by[('scoring', 'features_sql')].wall_s:,.0f} customers/s "
        f"(child process wall, {by[('scoring', 'features_sql')].wall_s:.1f}s)\n"
        f"prediction on precomputed features: {pre.result['rows'] / pre.result['models']:,.0f} "
        f"customers/s (models {pre.result['models']}s); with read and COPY: "
        f"{pre.result['rows'] / pre.result['seconds']:,.0f} customers/s"
    )


if __name__ == "__main__":
    main()
