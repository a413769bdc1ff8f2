"""``lifecycle train [--as-of D]`` and ``lifecycle score --date D``: the ML step from the shell.

Registered in ``lifecycle/cli.py``; importing this module loads neither sklearn nor MLflow
(they are imported when a command runs).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys

import click

from lifecycle.errors import print_error
from lifecycle.options import parse_date
from lifecycle.settings import get_settings

#: Exit code of `lifecycle train` when some models were trained and registered but not all
#: (the summary says which and what the data lacks; their champions, if any, stay).
PARTIAL_EXIT = 3


def _quiet_mlflow() -> None:
    # MLflow sets its loggers' level when it is imported (later than this): its own
    # setting says which ("Creating initial MLflow database tables..." is no news)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    print_error(message)
    sys.exit(1)


@click.command("train")
@click.option(
    "--as-of",
    "as_of",
    callback=parse_date,
    default=None,
    help="Date the data is complete to (default: the date the marts were last built as of).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=JSON",
    help="Override a key of models/churn.yaml, e.g. --set snapshots.count=8 (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_command(as_of: dt.date | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Train churn, CLV and segmentation, evaluate against baselines, register and promote.

    Exits 3 when a model could not be trained on this data (e.g. CLV with too few repeat
    buyers); the others are registered and the summary says what the data lacks.
    """
    from ml.features import FeatureError
    from ml.train import TrainError, train

    _quiet_mlflow()
    try:
        result = train(as_of, get_settings(), overrides=_parse_overrides(overrides))
    except (TrainError, FeatureError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if result.not_trained:  # e.g. CLV on too few repeat buyers: the rest is registered
        sys.exit(PARTIAL_EXIT)


def _parse_overrides(items: tuple[str, ...]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@click.command("score")
@click.option(
    "--date", "day", required=True, callback=parse_date, help="Score as of this day (YYYY-MM-DD)."
)
@click.option("--run-id", default=None, help="Id stamped on every row (default score:<date>).")
@click.option(
    "--chunk-size",
    type=click.IntRange(min=100),
    default=50_000,
    show_default=True,
    help="Customers per chunk (memory is bounded by it).",
)
def score_command(day: dt.date, run_id: str | None, chunk_size: int) -> None:
    """Score every eligible customer as of a date with the champions into ml.scores_history."""
    from ml.features import FeatureError
    from ml.score import ScoreError, score

    _quiet_mlflow()
    try:
        result = score(day, get_settings(), run_id=run_id, chunk_size=chunk_size)
    except (ScoreError, FeatureError) as exc:
        _fail(str(exc))
    click.echo(result.summary())
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
