"""The days of the DAGs are the business time zone's (the sources file's business.timezone)."""

from __future__ import annotations

import datetime as dt

import pytest

# 21:00 on 2024-03-05 in New York
MOMENT = dt.datetime(2024, 3, 6, 2, tzinfo=dt.UTC)

# The DAG modules import Airflow: the session's local Airflow home is activated first
# (importing Airflow elsewhere would fix its home for the whole process).
pytestmark = pytest.mark.usefixtures("airflow_cfg")


def test_logical_days_in_the_business_zone(tmp_path, monkeypatch) -> None:
    from lifecycle.orchestration.daily import business_zone, logical_day
    from lifecycle.orchestration.training import as_of_day

    path = tmp_path / "sources.yml"
    path.write_text("version: 1\nbusiness: {timezone: America/New_York}\n", encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_SOURCES_FILE", str(path))
    assert business_zone().key == "America/New_York"
    assert logical_day({"logical_date": MOMENT}) == dt.date(2024, 3, 5)
    assert as_of_day({"logical_date": MOMENT}) == dt.date(2024, 3, 4)


def test_logical_days_default_to_utc(tmp_path, monkeypatch) -> None:
    from lifecycle.orchestration.daily import business_zone, logical_day

    monkeypatch.delenv("LIFECYCLE_SOURCES_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./sources.yml: the built-in mapping
    assert business_zone().key == "UTC"
    assert logical_day({"logical_date": MOMENT}) == dt.date(2024, 3, 6)
