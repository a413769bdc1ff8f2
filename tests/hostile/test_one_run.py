"""Issue 20 §3 and §4: one run per stage at a time (real concurrent processes), and
dates after today refused; a watermark never passes the newest row loaded."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle.extract import extract
from lifecycle.load import watermark_after
from lifecycle.parse import Window
from tests.conftest import run_cli
from tests.hostile.helpers import ORDERS_HEADER, day_orders, rows, settings, write

HOLD = """
import datetime as dt, sys, time
from lifecycle.locks import WAREHOUSE, run_lock
url, stage, day, scope, seconds = sys.argv[1:6]
day = dt.date.fromisoformat(day)
with run_lock(url, stage, day, scope=WAREHOUSE if scope == "warehouse" else day, wait_s=0):
    print("held", flush=True)
    time.sleep(float(seconds))
"""

NO_TRACEBACK = "Traceback"


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    env |= {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_WORLD_DIR": str(tmp_path / "world"),
        **extra,
    }
    return env


def _hold(url: str, stage: str, day: str, scope: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, stage, day, scope, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _lifecycle(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli(args, env, timeout=300)


IN_PROGRESS = re.compile(
    r"^error: another run of (\d{4}-\d{2}-\d{2}) is in progress \(pid (\d+), host (\S+), "
    r"since (\S+); (\w[\w-]*) holds the lock\); waited 1s \(LIFECYCLE_LOCK_WAIT_S\): "
    r"try again when it ends$"
)


@pytest.mark.parametrize(
    ("held", "command"),
    [
        (("build", "2024-01-05", "warehouse"), ["transform", "--date", "2024-01-05"]),
        # the build schema is one: another date's build waits too
        (("build", "2024-01-04", "warehouse"), ["transform", "--date", "2024-01-05"]),
        (("pipeline", "2024-01-05", "warehouse"), ["pipeline", "run", "--date", "2024-01-05"]),
        (("extract-orders", "2024-01-05", "day"), ["extract", "--date", "2024-01-05"]),
        # two scorings of one day met on scores_history's key (UniqueViolation)
        (("score", "2024-01-05", "day"), ["score", "--date", "2024-01-05"]),
        # two trainings registered and promoted over each other, whatever their dates
        (("train", "2024-01-04", "warehouse"), ["train", "--as-of", "2024-01-05"]),
    ],
)
def test_a_second_run_fails_naming_the_first(
    held: tuple[str, str, str], command: list[str], tmp_path: Path, fresh_db: str
) -> None:
    stage, day, scope = held
    holder = _hold(fresh_db, stage, day, scope, 60)
    try:
        started = time.monotonic()
        out = _lifecycle(command, _env(tmp_path, fresh_db, LIFECYCLE_LOCK_WAIT_S="1"))
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1, out.stderr
    assert NO_TRACEBACK not in out.stderr
    line = [x for x in out.stderr.splitlines() if x.startswith("error:")][-1]
    m = IN_PROGRESS.match(line)
    assert m, line
    assert (m.group(1), int(m.group(2)), m.group(5)) == (day, holder.pid, stage)
    assert waited < 60


@pytest.mark.parametrize("stage", ["register", "promote"])
def test_the_training_dags_register_and_promote_wait_for_a_training(
    stage: str, tmp_path: Path, fresh_db: str
) -> None:
    """The DAG's register and promote tasks set the aliases `lifecycle train` sets."""
    from lifecycle.locks import RunInProgress
    from ml import stages

    call = {
        "register": lambda s: stages.register(dt.date(2024, 1, 5), s, {}),
        "promote": lambda s: stages.promote(dt.date(2024, 1, 5), s, {}, {}, {}),
    }[stage]
    holder = _hold(fresh_db, "train", "2024-01-04", "warehouse", 60)
    try:
        with pytest.raises(RunInProgress, match=rf"pid {holder.pid}, .* train holds the lock"):
            call(settings(tmp_path, fresh_db, LIFECYCLE_LOCK_WAIT_S="1"))
    finally:
        holder.kill()
        holder.wait()
    if stage == "register":  # the lock free, it runs (nothing to register)
        assert call(settings(tmp_path, fresh_db)) == {}


def test_a_second_run_waits_for_the_first_then_runs(tmp_path: Path, fresh_db: str) -> None:
    write(tmp_path / "world/orders/orders.csv", ORDERS_HEADER + day_orders("2024-01-01", 3, "A"))
    holder = _hold(fresh_db, "extract-orders", "2024-01-01", "day", 8)
    try:
        started = time.monotonic()
        out = _lifecycle(
            ["extract", "--source", "orders", "--date", "2024-01-01"],
            _env(tmp_path, fresh_db, LIFECYCLE_LOCK_WAIT_S="60"),
        )
        waited = time.monotonic() - started
    finally:
        holder.wait()
    assert out.returncode == 0, out.stderr
    assert waited >= 4  # it waited for the holder (its start-up takes a few seconds)
    assert "another run of 2024-01-01 is in progress" in out.stderr  # said why it waits
    assert rows(fresh_db, "select count(*) from raw.orders__orders") == [(3,)]


def test_two_real_extracts_of_one_date_at_once_load_it_once(tmp_path: Path, fresh_db: str) -> None:
    write(tmp_path / "world/orders/orders.csv", ORDERS_HEADER + day_orders("2024-01-01", 40, "A"))
    env = _env(tmp_path, fresh_db, LIFECYCLE_LOCK_WAIT_S="120")
    args = [sys.executable, "-m", "lifecycle.cli", "extract", "--source", "orders"]
    procs = [
        subprocess.Popen(
            [*args, "--date", "2024-01-01"], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all(NO_TRACEBACK not in e for e in errs)
    assert rows(fresh_db, "select count(*) from raw.orders__orders") == [(40,)]
    assert rows(fresh_db, "select count(*) from ops.load_runs where status = 'success'") == [(2,)]


@pytest.mark.parametrize(
    "command",
    [
        ["extract", "--date", "2099-01-01"],
        ["extract", "--source", "crm", "--date", "2099-01-01", "--full"],
        ["transform", "--date", "2099-01-01"],
        ["pipeline", "run", "--date", "2099-01-01"],
        ["pipeline", "backfill", "--start", "2024-01-01", "--end", "2099-01-01"],
    ],
)
def test_dates_after_today_are_refused(command: list[str], tmp_path: Path, fresh_db: str) -> None:
    out = _lifecycle(command, _env(tmp_path, fresh_db))
    assert out.returncode == 2 and NO_TRACEBACK not in out.stderr
    option = "--end" if "backfill" in command else "--date"
    today = dt.datetime.now(dt.UTC).date()
    assert out.stderr.strip() == (
        f"error: {option} 2099-01-01 is after today ({today} in UTC, the business time zone); "
        "pass --allow-future to run it anyway"
    )
    assert rows(fresh_db, "select count(*) from pg_tables where schemaname = 'ops'") == [(0,)]


def test_a_future_date_run_anyway_moves_no_watermark_past_the_data(
    tmp_path: Path, fresh_db: str
) -> None:
    write(tmp_path / "world/orders/orders.csv", ORDERS_HEADER + day_orders("2024-01-01", 3, "A"))
    out = _lifecycle(
        ["extract", "--source", "orders", "--date", "2099-01-01", "--allow-future"],
        _env(tmp_path, fresh_db),
    )
    assert out.returncode == 0, out.stderr
    marks = rows(fresh_db, "select entity, value from ops.watermarks")
    # the newest order is 2024-01-01T10:02: the mark is the first instant after it (the
    # next window, [mark, ...), does not load it again); order_items had no file, no mark
    after_newest = dt.datetime(2024, 1, 1, 10, 2, 0, 1, tzinfo=dt.UTC)
    assert marks == [("orders", after_newest)]
    # a real day after that is still caught up from the newest data
    write(
        tmp_path / "world/orders/orders.csv",
        ORDERS_HEADER + day_orders("2024-01-01", 3, "A") + day_orders("2024-01-02", 2, "B"),
    )
    s = settings(tmp_path, fresh_db)
    [res] = extract("orders", dt.date(2024, 1, 3), s)[:1]
    assert res.window.start == after_newest
    assert res.rows_loaded == 2


def test_watermark_rules() -> None:
    past = Window(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    assert watermark_after(past, None) == past.end  # a day that ended is done
    now = dt.datetime.now(dt.UTC)
    today = Window(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert watermark_after(today, None) is None
    assert watermark_after(today, now - dt.timedelta(minutes=5)) == now - dt.timedelta(minutes=5)
