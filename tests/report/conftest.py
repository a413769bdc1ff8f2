"""Fixtures of the report tests: one sample world landed, built, gated, scored and activated.

The world (600 people, 18 months) is landed with the real loader and built with dbt once per
session. A report is built right after the build, when nothing downstream of the marts exists
yet ("bare"), and again after the real quality gates, test scores in ``ml.scores_history``
(a pure function of each customer key: test data in the real table, written as scoring
writes it) and the real activation step ran ("full").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from lifecycle.report import ReportResult, build_report
from lifecycle.sample.world import WorldConfig, generate_world
from lifecycle.settings import Settings
from lifecycle.transform import transform
from ml.tables import ensure_ml_tables
from tests.conftest import make_settings
from tests.transform.conftest import land, scratch_database

START, END = dt.date(2023, 1, 1), dt.date(2024, 6, 30)
REPO = Path(__file__).resolve().parents[2]
SEGMENTS = {0: "bargain hunters", 1: "steady regulars", 2: "big spenders"}


@dataclass
class ReportWorld:
    """A built warehouse and the reports made of it."""

    url: str
    settings: Settings
    bare: ReportResult  # built when only the marts and load runs existed
    bare_html: str
    full: ReportResult  # built after gates, scores and activation
    full_html: str


def _u(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def write_test_scores(url: str, day: dt.date) -> int:
    """Write ml.scores_history rows of `day` for every buyer (pure function of the key)."""
    with psycopg.connect(url) as conn:
        ensure_ml_tables(conn)
        keys = [
            r[0]
            for r in conn.execute(
                "select customer_key from marts.customers where is_buyer order by 1"
            )
        ]
        rows = []
        for key in keys:
            p = round(_u(key, "churn"), 4)
            segment = int(_u(key, "segment") * 3)
            eov = round(20 + 100 * _u(key, "eov"), 2)
            purchases = round(4 * _u(key, "purchases"), 3)
            rows.append(
                (
                    day, key, p, "low" if p < 0.3 else "medium" if p < 0.6 else "high",
                    "recency; sessions", segment, SEGMENTS[segment], round(1 - p, 4), purchases,
                    eov, round(purchases * eov, 2), "3", "2", "1", "report-test",
                )
            )  # fmt: skip
        conn.execute("delete from ml.scores_history where score_date = %s", (day,))
        with conn.cursor() as cur:
            cur.executemany(
                "insert into ml.scores_history values "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
    return len(rows)


@pytest.fixture(scope="session")
def report_home() -> Iterator[Path]:
    """LIFECYCLE_HOME of the report tests (dbt target, exports, reports)."""
    home = Path(tempfile.mkdtemp(prefix="lifecycle-report-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def report_world(embedded_settings, report_home) -> Iterator[ReportWorld]:
    """The world built as of END, with a bare and a full report of END."""
    from lifecycle.activation.run import run_activation
    from lifecycle.quality.gate import validate_layer

    world = report_home / "world"
    generate_world(WorldConfig(customers=600, start=START, end=END, seed=5), world)
    with scratch_database(embedded_settings) as url:
        settings = make_settings(
            report_home,
            LIFECYCLE_WAREHOUSE_URL=url,
            LIFECYCLE_WORLD_DIR=str(world),
            LIFECYCLE_AUDIENCES_FILE=str(REPO / "audiences.yml"),
        )
        land(settings, END, full=True)
        transform(END, settings, quiet=True)
        bare = build_report(END, settings, out=report_home / "bare.html")
        bare_html = bare.path.read_text(encoding="utf-8")
        for layer in ("raw", "marts"):
            validate_layer(layer, END, settings)
        write_test_scores(url, END)
        run_activation(END, settings)
        full = build_report(END, settings)
        yield ReportWorld(
            url, settings, bare, bare_html, full, full.path.read_text(encoding="utf-8")
        )
