"""`lifecycle export --date D [--audience NAME]`: the activation step from the command line."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from lifecycle.errors import print_error
from lifecycle.options import parse_date
from lifecycle.settings import get_settings


@click.command("export")
@click.option(
    "--date",
    "day",
    required=True,
    callback=parse_date,
    help="Logical date (YYYY-MM-DD): stage and scores as of this day.",
)
@click.option("--audience", default=None, help="Only this audience (default: every one).")
@click.option("--run-id", default=None, help="Run id recorded in the logs (default manual__D).")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def export_command(day: dt.date, audience: str | None, run_id: str | None, as_json: bool) -> None:
    """Score table, audiences, export files and pushes for a date (idempotent)."""
    from lifecycle.activation import ActivationError, AudienceFileError, PushError, run_activation
    from lifecycle.warehouse import WarehouseError

    try:
        result = run_activation(day, get_settings(), audience=audience, run_id=run_id)
    except (ActivationError, AudienceFileError, PushError, WarehouseError) as exc:
        print_error(exc)
        sys.exit(1)
    click.echo(json.dumps(result.facts(), indent=2) if as_json else result.summary())


@click.command("lift")
@click.option(
    "--date",
    "day",
    required=True,
    callback=parse_date,
    help="Logical date (YYYY-MM-DD): marts.audience_outcomes must be built as of it.",
)
@click.option("--audience", default=None, help="Only this audience (default: every one).")
@click.option("--json", "as_json", is_flag=True, help="Print the lifts as JSON.")
def lift_command(day: dt.date, audience: str | None, as_json: bool) -> None:
    """Measured campaign lift (treatment vs control) as of a date, into activation.audience_lift."""
    from lifecycle.activation.lift import LiftError, measure_lift, summary
    from lifecycle.warehouse import WarehouseError, connect, warehouse_url

    try:
        with connect(warehouse_url(get_settings()), autocommit=True) as conn:
            lifts = measure_lift(conn, day, audience)
    except (LiftError, WarehouseError) as exc:
        print_error(exc)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps([x.facts() for x in lifts], indent=2))
    else:
        click.echo(summary(lifts, day))
