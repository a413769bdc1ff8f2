"""The local Airflow home: idempotent set-up, the shell environment, guard rails of the runner."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from click.testing import CliRunner

from lifecycle.orchestration import home
from lifecycle.orchestration.cli import airflow_group, pipeline
from lifecycle.orchestration.config import load_orchestration_settings
from lifecycle.settings import load_settings
from tests.dags.conftest import lifecycle_env, scratch_database


def test_init_migrates_once_then_is_a_no_op(airflow_cfg) -> None:
    assert home.is_initialized(airflow_cfg)
    stamp = (airflow_cfg.airflow_home / home.STAMP_FILE).read_text().split()
    assert stamp[0] == home.airflow_version()
    started = time.perf_counter()
    assert home.ensure_initialized(airflow_cfg) is False  # no second `airflow db migrate`
    assert time.perf_counter() - started < 1.0


def test_airflow_env_points_a_shell_at_the_local_home(airflow_cfg, lifecycle_home) -> None:
    with lifecycle_env(LIFECYCLE_HOME=str(lifecycle_home)):
        result = CliRunner().invoke(airflow_group, ["env"])
    assert result.exit_code == 0, result.output
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in result.output.splitlines()
    )
    assert exports["AIRFLOW_HOME"] == str(lifecycle_home / "airflow")
    assert exports["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert exports["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")
    assert exports["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert int(exports["AIRFLOW__CORE__PARALLELISM"]) <= 8
    assert len(exports["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64
    mode = (lifecycle_home / "airflow" / ".jwt_secret").stat().st_mode & 0o777
    assert mode == 0o600


def test_a_second_airflow_home_is_refused_once_airflow_is_imported(airflow_cfg, tmp_path) -> None:
    import airflow.sdk  # noqa: F401 - Airflow is now configured for this process

    other = load_orchestration_settings(load_settings({"LIFECYCLE_HOME": str(tmp_path)}), {})
    with pytest.raises(home.OrchestrationError, match="already imported"):
        home.activate(other)


def test_runner_refuses_a_date_before_the_dags_start(embedded_settings, airflow_cfg, tmp_path):
    from lifecycle.orchestration.runner import run_dates

    with (
        scratch_database(embedded_settings) as url,
        lifecycle_env(LIFECYCLE_HOME=str(tmp_path), LIFECYCLE_WAREHOUSE_URL=url),
        pytest.raises(home.OrchestrationError, match="before the start_date"),
    ):
        run_dates([dt.date(1969, 12, 31)], cfg=airflow_cfg, echo=lambda _m: None)


def test_runner_refuses_an_unknown_param(embedded_settings, airflow_cfg, tmp_path):
    from lifecycle.orchestration.runner import run_dates

    with (
        scratch_database(embedded_settings) as url,
        lifecycle_env(LIFECYCLE_HOME=str(tmp_path), LIFECYCLE_WAREHOUSE_URL=url),
        pytest.raises(home.OrchestrationError, match="unknown param.*full_relaod"),
    ):
        run_dates(
            [dt.date(2024, 1, 1)], conf={"full_relaod": True}, cfg=airflow_cfg, echo=lambda _m: None
        )


def test_backfill_rejects_an_inverted_range() -> None:
    result = CliRunner().invoke(
        pipeline, ["backfill", "--start", "2024-03-02", "--end", "2024-03-01"]
    )
    assert result.exit_code == 2
    assert "--end is before --start" in result.output
