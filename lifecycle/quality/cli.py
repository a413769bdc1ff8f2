"""``lifecycle validate``: run a layer's quality gate for a logical date (and publish the marts)."""

from __future__ import annotations

import datetime as dt
import sys

import click

from lifecycle.errors import print_error
from lifecycle.options import parse_date
from lifecycle.quality.suites import LAYERS


@click.command("validate")
@click.option(
    "--layer",
    type=click.Choice(list(LAYERS)),
    required=True,
    help="raw: the day's load batches; marts: the pending build (else the published marts); "
    "scores: ml.scores_history of the day; activation: the day's exports.",
)
@click.option(
    "--date", "day", required=True, callback=parse_date, help="Logical date (YYYY-MM-DD)."
)
@click.option("--schema", default=None, help="Validate this schema instead (e.g. marts).")
@click.option(
    "--publish",
    is_flag=True,
    help="marts only: publish the pending build into `marts` if the gate passes "
    "(after `lifecycle transform --date D --no-publish`).",
)
@click.option("--run-id", default=None, help="Id of the run in ops.dq_results (default: new).")
def validate_command(
    layer: str, day: dt.date, schema: str | None, publish: bool, run_id: str | None
) -> None:
    """Run the Great Expectations suites of a layer for a date; exit 1 when the gate fails."""
    from lifecycle.quality.gate import GateFailed, QualityError, gate_and_publish, validate_layer
    from lifecycle.quality.publish import PublishError
    from lifecycle.quality.suites import SuiteError
    from lifecycle.settings import get_settings

    if publish and (layer != "marts" or schema):
        raise click.UsageError("--publish goes with --layer marts (and no --schema)")
    try:
        if publish:
            click.echo(gate_and_publish(day, get_settings(), run_id=run_id).summary())
            return
        verdict = validate_layer(layer, day, get_settings(), schema=schema, run_id=run_id)
    except GateFailed as exc:
        click.secho(str(exc), fg="red", err=True)
        click.secho("nothing was published: marts keep their previous build", err=True)
        sys.exit(1)
    except (QualityError, SuiteError, PublishError) as exc:
        print_error(exc)
        sys.exit(2)
    click.echo(verdict.summary())
    if not verdict.passed:
        sys.exit(1)
