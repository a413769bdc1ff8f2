"""What `lifecycle pipeline run` prints of a run: a task's warnings in full, under the
task lines (each task's own line is cut at 100 characters)."""

from __future__ import annotations

import datetime as dt

import pytest

from lifecycle.orchestration.runner import RunReport, TaskReport
from ml.score import ScoreResult

DAY = dt.date(2026, 12, 7)
WARNING = (
    "the newest order in the data is of 2024-06-30, 890 days before 2026-12-07 (more than "
    "the 90-day horizon): every customer is scored as gone quiet since; score as of a day "
    "the data reaches (--date 2024-06-30) or load the orders since"
)


def _daily_run(*tasks: TaskReport) -> RunReport:
    return RunReport(
        "lifecycle_daily", DAY, "manual__2026-12-07", "success", 30.0, "/tmp/log", list(tasks)
    )


def test_a_task_warning_is_printed_whole_under_the_task_lines() -> None:
    from lifecycle.orchestration.daily import _facts

    scored = ScoreResult(DAY, "score:2026-12-07", 785, 1, {}, {"high": 785}, {}, 3.8)
    scored.warnings.append(WARNING)
    report = _daily_run(
        TaskReport("score", "success", 1, 3.9, _facts(scored)),
        TaskReport("activate", "success", 1, 2.0, {"customers": 785}),
        TaskReport("report", "success", 1, 2.2, None),
    )
    lines = report.describe().splitlines()
    assert len(lines) == 5
    assert lines[1].startswith("  score") and lines[1].endswith("...")
    assert lines[-1] == f"  warning: score: {WARNING}"


def test_a_run_without_warnings_prints_the_task_lines_alone() -> None:
    report = _daily_run(TaskReport("score", "success", 1, 3.9, {"rows": 785}))
    assert "warning" not in report.describe()
    assert len(report.describe().splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "resume"),
    [
        (
            ["run", "--date", "2026-12-07", "--dag", "lifecycle_train"],
            "lifecycle pipeline run --date 2026-12-07 --dag lifecycle_train",
        ),
        (
            [
                "backfill",
                "--start",
                "2026-12-07",
                "--end",
                "2026-12-08",
                "--dag",
                "lifecycle_train",
            ],
            "lifecycle pipeline backfill --start 2026-12-07 --end 2026-12-08 --dag lifecycle_train",
        ),
        (["run", "--date", "2026-12-07"], "lifecycle pipeline run --date 2026-12-07"),
    ],
)
def test_the_resume_hint_names_the_dag_that_failed(monkeypatch, args, resume) -> None:
    from click.testing import CliRunner

    from lifecycle.orchestration import runner
    from lifecycle.orchestration.cli import pipeline

    def failing(dates, *, dag_id, **_kw):
        failed = RunReport(dag_id, dates[0], "manual", "failed", 1.0, "/tmp/log")
        raise runner.PipelineRunError(failed, dates[1:])

    monkeypatch.setattr(runner, "run_dates", failing)
    done = CliRunner().invoke(pipeline, [*args, "--allow-future"])
    assert done.exit_code == 1
    assert done.stderr.splitlines()[-1] == f"fix the cause, then resume with: {resume}"
