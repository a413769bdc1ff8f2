"""Fixtures for activation: a generated sample world, landed and built once per session."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.sample.world import WorldConfig, generate_world
from lifecycle.transform import transform
from tests.transform.conftest import land, scratch_database, settings_for

START, END = dt.date(2023, 1, 1), dt.date(2024, 6, 30)


@pytest.fixture(scope="session")
def activation_home() -> Iterator[Path]:
    """LIFECYCLE_HOME of the activation tests (dbt target, exports)."""
    home = Path(tempfile.mkdtemp(prefix="lifecycle-activation-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def built_world(embedded_settings, activation_home) -> Iterator[tuple[str, Path]]:
    """(warehouse URL, world dir): an 800-person world landed and built as of END."""
    world = activation_home / "world"
    generate_world(WorldConfig(customers=800, start=START, end=END, seed=11), world)
    with scratch_database(embedded_settings) as url:
        settings = settings_for(activation_home, url, world)
        land(settings, END, full=True)
        transform(END, settings, quiet=True)
        yield url, world
