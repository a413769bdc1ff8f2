"""Fixtures of the ML tests: one generated sample world, landed and built once per session.

The world has 3000 people over two years (2023-2024): about 1,450 eligible customers at
the holdout snapshot (2024-10-02) and 4,800 labelled training rows — enough for the model
to beat both baselines by a margin larger than the holdout's noise, small enough to
build in about a minute. It is landed with the real loader and built with dbt as of its
last day; ML tests never write to its raw data (the leakage test builds its own).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifecycle.sample.world import WorldConfig, generate_world
from lifecycle.settings import Settings
from lifecycle.transform import transform
from tests.transform.conftest import land, scratch_database, settings_for

WORLD_START, WORLD_END = dt.date(2023, 1, 1), dt.date(2024, 12, 31)
WORLD_CUSTOMERS, WORLD_SEED = 3000, 5


@dataclass(frozen=True)
class MlWorld:
    """A built sample world: its warehouse URL, the folder of its files, and its end date."""

    url: str
    world_dir: Path
    end: dt.date
    dbt_home: Path

    def settings(self, home: Path) -> Settings:
        """Return settings reading this world's warehouse, with `home` for MLflow state."""
        return settings_for(home, self.url, self.world_dir)


def temp_home(prefix: str) -> Iterator[Path]:
    """Yield a fresh LIFECYCLE_HOME (MLflow store, scratch plots), removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def ml_world(embedded_settings, tmp_path_factory) -> Iterator[MlWorld]:
    """The session's sample world, landed and built as of its last day."""
    out = tmp_path_factory.mktemp("ml_world")
    generate_world(
        WorldConfig(customers=WORLD_CUSTOMERS, start=WORLD_START, end=WORLD_END, seed=WORLD_SEED),
        out,
    )
    for dbt_home in temp_home("lifecycle-ml-dbt-"):
        with scratch_database(embedded_settings) as url:
            settings = settings_for(dbt_home, url, out)
            land(settings, WORLD_END, full=True)
            transform(WORLD_END, settings, quiet=True)
            yield MlWorld(url=url, world_dir=out, end=WORLD_END, dbt_home=dbt_home)


@dataclass(frozen=True)
class Trained:
    """The session world after one full training run in its own MLflow store."""

    world: MlWorld
    settings: Settings
    result: object  # ml.train.TrainResult


@pytest.fixture(scope="session")
def trained(ml_world: MlWorld) -> Iterator[Trained]:
    """The whole training step run once on the session world (fresh MLflow store)."""
    from ml.train import train

    for home in temp_home("lifecycle-ml-train-"):
        settings = ml_world.settings(home)
        result = train(ml_world.end, settings)
        print("\n" + result.summary())
        yield Trained(ml_world, settings, result)
