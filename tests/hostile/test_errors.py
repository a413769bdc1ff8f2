"""Issue 20 §2: every failure reaches the user as one ``error:`` line naming the file,
line, field or setting; no command prints a Python traceback for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from lifecycle.cli import main
from lifecycle.settings import get_settings
from tests.conftest import run_cli
from tests.hostile.helpers import ORDERS_HEADER, checksum, day_orders, rows, write


def _invoke(args: list[str], env: dict[str, str]):
    """Run the CLI in-process with exactly `env` as LIFECYCLE_* settings."""
    clean = {k: None for k in os.environ if k.startswith("LIFECYCLE_")}
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, args, env={**clean, **env}, catch_exceptions=True)
    finally:
        get_settings.cache_clear()


def _assert_clean_failure(result, code: int | None = None) -> str:
    """Assert a clean exit: no escaped exception, no traceback; return the error line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    if code is not None:
        assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    return errors[-1] if errors else ""


@pytest.fixture
def base(tmp_path: Path, fresh_db: str) -> dict[str, str]:
    write(tmp_path / "world/orders/orders.csv", ORDERS_HEADER + day_orders("2024-01-01", 3, "A"))
    write(tmp_path / "afile", "not a folder\n")
    return {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": fresh_db,
        "LIFECYCLE_WORLD_DIR": str(tmp_path / "world"),
    }


BAD_SETTINGS = {
    "LIFECYCLE_MAX_REJECT_SHARE=lots": "LIFECYCLE_MAX_REJECT_SHARE must be a number, not 'lots'",
    "LIFECYCLE_MAX_REJECT_SHARE=1.5": (
        "LIFECYCLE_MAX_REJECT_SHARE must be between 0 and 1, not '1.5'"
    ),
    "LIFECYCLE_MAX_REJECT_SHARE=nan": "LIFECYCLE_MAX_REJECT_SHARE must be a number, not 'nan'",
    "LIFECYCLE_ORDERS_SOURCE=ftp": "LIFECYCLE_ORDERS_SOURCE must be db or csv, not 'ftp'",
    "LIFECYCLE_WEB_LOOKBACK_DAYS=seven": (
        "LIFECYCLE_WEB_LOOKBACK_DAYS must be an integer, not 'seven'"
    ),
    "LIFECYCLE_WEB_LOOKBACK_DAYS=-1": (
        "LIFECYCLE_WEB_LOOKBACK_DAYS must be between 0 and 3660, not '-1'"
    ),
    "LIFECYCLE_HTTP_RETRIES=2.5": "LIFECYCLE_HTTP_RETRIES must be an integer, not '2.5'",
    "LIFECYCLE_HTTP_BACKOFF_S=fast": "LIFECYCLE_HTTP_BACKOFF_S must be a number, not 'fast'",
    "LIFECYCLE_LOCK_WAIT_S=forever": "LIFECYCLE_LOCK_WAIT_S must be a number, not 'forever'",
    "LIFECYCLE_AIRFLOW_PARALLELISM=0": "LIFECYCLE_AIRFLOW_PARALLELISM must be at least 1, not '0'",
    "LIFECYCLE_WAREHOUSE_URL=not a url": (
        "LIFECYCLE_WAREHOUSE_URL is not a PostgreSQL connection URL"
    ),
}


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
@pytest.mark.parametrize("command", [["extract", "--date", "2024-01-01"], ["status"]])
def test_a_bad_setting_is_one_error_line_naming_it(
    setting: str, command: list[str], base: dict[str, str]
) -> None:
    name, value = setting.split("=", 1)
    result = _invoke(command, {**base, name: value})
    assert _assert_clean_failure(result, 1).startswith(f"error: {BAD_SETTINGS[setting]}")


def test_a_state_folder_that_cannot_be_created(base: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "afile" / "home"
    result = _invoke(["extract", "--date", "2024-01-01"], {**base, "LIFECYCLE_HOME": str(home)})
    assert _assert_clean_failure(result, 1) == (
        f"error: LIFECYCLE_HOME={home} cannot be used as a folder: it is under "
        f"{tmp_path / 'afile'}, which is a file"
    )


def test_a_state_folder_the_system_refuses_names_its_setting(base: dict[str, str]) -> None:
    """LIFECYCLE_HOME=/proc/nope said only "/proc/nope: does not exist"."""
    env = {**base, "LIFECYCLE_HOME": "/proc/nope"}
    del env["LIFECYCLE_WORLD_DIR"]  # the world goes under the home
    result = _invoke(["generate", "--customers", "3", "--quiet"], env)
    assert _assert_clean_failure(result, 1) == (
        "error: /proc/nope: does not exist (set by LIFECYCLE_HOME=/proc/nope)"
    )


def test_an_output_folder_that_cannot_be_created(base: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "afile" / "world"
    result = _invoke(["generate", "--customers", "3", "--out", str(out), "--quiet"], base)
    line = _assert_clean_failure(result, 1)
    assert line.startswith(f"error: {out}") and "is under a path that is a file" in line


def test_a_file_where_an_output_folder_is_wanted_is_said_so(
    base: dict[str, str], tmp_path: Path
) -> None:
    """A report folder that is a file said only "already exists"."""
    afile = tmp_path / "afile"
    result = _invoke(["generate", "--customers", "3", "--out", str(afile), "--quiet"], base)
    line = _assert_clean_failure(result, 1)
    assert line == f"error: {afile}: is a file, where a folder is wanted", line


@pytest.mark.parametrize(
    "args",
    [
        ["warehouse", "up"],
        ["export", "--date", "2024-01-05"],
        ["report", "--date", "2024-01-05"],
        ["lift", "--date", "2024-01-05"],
        ["transform", "--date", "2024-01-05"],
    ],
    ids=lambda a: a[0],
)
def test_a_warehouse_that_refuses_connections_is_one_error_line(
    tmp_path: Path, args: list[str]
) -> None:
    """libpq's "Connection refused" comes with a second line ("Is the server running on
    that host...?"): export, report, lift and warehouse up printed both."""
    env = {"LIFECYCLE_HOME": str(tmp_path / "home"),
           "LIFECYCLE_WAREHOUSE_URL": "postgresql://x@127.0.0.1:1/db"}  # fmt: skip
    result = _invoke(args, env)
    line = _assert_clean_failure(result)
    assert result.exit_code != 0
    assert "port 1 failed: Connection refused Is the server running" in line, result.stderr
    assert [x for x in result.stderr.splitlines() if x.strip()][-1] == line


def test_a_yaml_alias_bomb_is_refused_in_a_short_message(
    base: dict[str, str], tmp_path: Path
) -> None:
    bomb = ["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb.append("audiences: [*i]")
    path = write(tmp_path / "audiences.yml", "\n".join(bomb) + "\n")
    result = _invoke(
        ["export", "--date", "2024-01-01"], {**base, "LIFECYCLE_AUDIENCES_FILE": str(path)}
    )
    line = _assert_clean_failure(result, 1)
    assert line == f"error: {path} is not valid YAML: aliases (*a) are not allowed, line 2"


def test_chart_labels_with_dollars_print_as_text() -> None:
    from lifecycle.report import charts

    labels = ["$\\x$", "a$b", "$\\frac{1}{$", "^_$$", "\\", "$x^2$"]
    values = {"n": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
    for horizontal in (False, True):
        svg = charts.bars(labels, values, "c", "$\\x$ channels", "$ spent", horizontal=horizontal)
        assert "$\\x$" in svg and "$x^2$" in svg
    svg = charts.lines({"$\\x$": ([0, 1], [1, 2])}, "l", "t", "$\\x$", "y")
    assert "$\\x$" in svg
    svg = charts.sankey([("$\\x$", "new", 3), ("none", "$\\x$", 2)], ("none", "$\\x$", "new"), "t")
    assert "$\\x$" in svg


def test_an_unusable_dbt_selection_is_one_line(base: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")} | base
    out = run_cli(
        ["transform", "--date", "2024-01-01", "--select", "path:/etc", "--select", "nosuch"],
        env,
        timeout=300,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --select path:/etc nosuch: dbt cannot use this selection: "
        "Non-relative patterns are unsupported"
    )
    assert len((out.stdout + out.stderr).splitlines()) < 15


def test_the_warehouse_gone_mid_copy_is_one_line_and_changes_nothing(
    tmp_path: Path, fresh_db: str, base: dict[str, str]
) -> None:
    big = ORDERS_HEADER + "".join(
        f"O{i},C{i},c{i}@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,1.00,1\n"
        for i in range(300_000)
    )
    write(tmp_path / "world/orders/orders.csv", big)
    before = checksum(fresh_db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")} | base
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifecycle.cli", "extract", "--source", "orders"]
        + ["--date", "2024-01-01"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dbname = conninfo_to_dict(fresh_db)["dbname"]
    killed = 0
    with psycopg.connect(fresh_db, autocommit=True) as admin:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline and proc.poll() is None:
            killed = admin.execute(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where datname = %s and query ilike 'copy raw.%%' and state = 'active'",
                (dbname,),
            ).fetchone()[0]
            time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert killed, "the COPY was never seen running"
    assert proc.returncode == 1 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("error: ")][-1]
    assert line.startswith("error: the warehouse connection failed: ")
    assert checksum(fresh_db) == before
    assert rows(fresh_db, "select count(*) from raw.orders__orders") == [(0,)]


def test_an_ended_postmaster_not_yet_reaped_is_seen_as_ended() -> None:
    import psutil

    from lifecycle.warehouse import _is_zombie

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    process = psutil.Process(child.pid)
    while not _is_zombie(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _is_zombie(process)  # ended, not reaped: its pid still "runs"
    assert process.is_running()
    child.wait()
    assert not _is_zombie(process)


#: Bad input for every command: dates, paths, settings, files. None may end in a traceback.
MATRIX = [
    ["extract", "--date", "2024-02-30"],
    ["extract", "--date", "yesterday"],
    ["extract", "--date", "2024-01-01", "--source", "ftp"],
    ["extract", "--date", "99999-01-01"],
    ["transform", "--date", "0000-01-01"],
    ["transform", "--date", ""],
    ["validate", "--date", "2024-01-01"],
    ["validate", "--layer", "marts", "--date", "2024-01-01"],
    ["validate", "--layer", "raw", "--date", "2024-13-01"],
    ["export", "--date", "2024-01-01"],
    ["export", "--date", "2024-01-01", "--audience", "../../etc/passwd"],
    ["lift", "--date", "2024-01-01"],
    ["lift", "--date", "2024-02-30", "--json"],
    ["score", "--date", "2024-01-01"],
    ["score", "--date", "2024-01-01", "--chunk-size", "0"],
    ["train", "--as-of", "2024-01-01"],
    ["train", "--set", "nonsense"],
    ["report", "--date", "2024-01-01"],
    ["report", "--date", "2024-01-01", "--out", "{afile}/x"],
    ["status"],
    ["status", "--json"],
    ["generate", "--customers", "0"],
    ["generate", "--customers", "3", "--start", "2024-01-02", "--end", "2024-01-01"],
    ["generate", "--customers", "3", "--out", "{afile}", "--quiet"],
    ["generate", "--customers", "3", "--campaign-export", "{missing}", "--quiet"],
    ["generate", "--customers", "3", "--campaign-export", "{afile}", "--campaign-boost", "2"],
    ["sources", "serve-crm"],
    ["sources", "serve-crm", "--world", "{afile}"],
    ["sources", "load-shop", "--world", "{missing}"],
    ["pipeline", "run", "--date", "2024-01-01", "--conf", "[1]"],
    ["pipeline", "run", "--date", "2024-01-01", "--conf", "{{"],
    ["pipeline", "backfill", "--start", "2024-01-05", "--end", "2024-01-01"],
    ["warehouse", "status", "--bogus"],
    ["nosuchcommand"],
]
BAD_ENV = [
    {},
    {"LIFECYCLE_SOURCES_FILE": "{afile}"},
    {"LIFECYCLE_SOURCES_FILE": "{missing}"},
    {"LIFECYCLE_MAX_REJECT_SHARE": "lots"},
    {"LIFECYCLE_WAREHOUSE_URL": "postgresql://nobody@127.0.0.1:1/x"},
]


@pytest.mark.parametrize("env_extra", BAD_ENV, ids=lambda e: ",".join(e) or "plain")
def test_no_command_prints_a_traceback_for_bad_input(
    env_extra: dict[str, str], base: dict[str, str], tmp_path: Path
) -> None:
    subs = {"afile": str(tmp_path / "afile"), "missing": str(tmp_path / "missing")}
    env = {**base, **{k: v.format(**subs) for k, v in env_extra.items()}}
    failures = []
    for command in MATRIX:
        args = [a.format(**subs) if "{" in a and "}" in a and "{{" not in a else a for a in command]
        result = _invoke(args, env)
        escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
        if escaped or "Traceback" in result.output or "Traceback" in result.stderr:
            failures.append((args, repr(result.exception), result.stderr[-300:]))
        elif result.exit_code != 0 and "error: " not in result.output:
            failures.append((args, result.exit_code, "no error: line", result.output[-300:]))
    assert failures == []


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["train", "--as-of", "0001-01-01"], "--as-of", "0001-01-01"),
        (["extract", "--date", "9999-12-31", "--allow-future"], "--date", "9999-12-31"),
        (["score", "--date", "1899-12-31"], "--date", "1899-12-31"),
        (
            ["pipeline", "backfill", "--start", "0100-01-01", "--end", "0100-01-02"],
            "--start",
            "0100-01-01",
        ),
    ],
)
def test_a_date_at_the_ends_of_the_calendar_is_refused_naming_its_option(
    args: list[str], option: str, value: str, base: dict[str, str]
) -> None:
    """Days computed around it overflowed ("error: date value out of range", no option
    named); the option is refused before anything runs."""
    error = _assert_clean_failure(_invoke(args, base), 2)
    assert error.startswith(
        f"error: Invalid value for '{option}': {value} is outside 1900-01-01 .. 9998-12-31"
    )


def test_pipeline_run_with_a_wrong_sources_file_says_what_is_wrong_in_one_line(
    base: dict[str, str], tmp_path: Path
) -> None:
    """The DAG files read the sources file when Airflow imports them: a mistake in it came
    back as the DAG folder's import error, a Python traceback (exit 2)."""
    sources = write(
        tmp_path / "sources.yml",
        "version: 1\nsources:\n  orders:\n    kind: csv\n    entities:\n      orders:\n"
        f"        path: {tmp_path}/world/orders/orders.csv\n        grain: lines\n"
        "      order_items:\n        skip: true\n",
    )
    result = _invoke(
        ["pipeline", "run", "--date", "2024-01-01"],
        {**base, "LIFECYCLE_SOURCES_FILE": str(sources)},
    )
    error = _assert_clean_failure(result, 2)
    assert error.startswith(f"error: {sources}: sources.orders.entities.orders.grain: 'lines'"), (
        error
    )


def test_a_transform_before_any_extract_builds_empty_marts(base: dict[str, str]) -> None:
    """It built every model, then failed to record the publication: `schema "ops" does
    not exist` (the extract creates it)."""
    result = _invoke(["transform", "--date", "2024-01-01"], base)
    assert result.exit_code == 0, result.output
    assert "marts published to marts" in result.output


@pytest.mark.parametrize("seed", ["-5", "99999999999999999999"])
def test_a_seed_out_of_range_is_refused_naming_the_option(
    seed: str, base: dict[str, str], tmp_path: Path
) -> None:
    """numpy's "expected non-negative integer" and "Python int too large to convert to C
    long" named no option."""
    result = _invoke(
        ["generate", "--customers", "1", "--seed", seed, "--out", str(tmp_path / "g")], base
    )
    line = _assert_clean_failure(result, 2)
    assert f"Invalid value for '--seed': {seed} is not in the range 0<=x<=4294967295" in line


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        (
            "http://127.0.0.1:1",
            "LIFECYCLE_MLFLOW_TRACKING_URI: cannot reach the MLflow server at "
            "http://127.0.0.1:1: [Errno 111] Connection refused",
        ),
        (
            "garbage://x",
            "LIFECYCLE_MLFLOW_TRACKING_URI: Model registry functionality is unavailable; got "
            "unsupported URI 'garbage://x'",
        ),
    ],
)
def test_an_mlflow_store_that_cannot_be_used_is_named_not_taken_for_no_champion(
    uri: str, said: str, base: dict[str, str]
) -> None:
    """A closed MLflow port was retried for 260 s, then reported as "no champion of
    lifecycle_churn: run `lifecycle train` first"; an unknown scheme was MLflow's words."""
    for args in (["score", "--date", "2024-01-05"], ["train", "--as-of", "2024-01-05"]):
        result = _invoke(args, {**base, "LIFECYCLE_MLFLOW_TRACKING_URI": uri})
        line = _assert_clean_failure(result)
        assert result.exit_code != 0
        assert line.startswith(f"error: {said}"), line
