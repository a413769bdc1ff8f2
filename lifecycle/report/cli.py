"""CLI: ``lifecycle report --date D [--out PATH] [--json]``."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from lifecycle.errors import print_error
from lifecycle.options import parse_date


@click.command("report")
@click.option(
    "--date", "day", required=True, callback=parse_date, help="Logical date (YYYY-MM-DD)."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="HTML file to write [default: $LIFECYCLE_HOME/reports/lifecycle-report-<date>.html].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def report_command(day: dt.date, out: Path | None, as_json: bool) -> None:
    """Write the lifecycle report of a logical date: one self-contained HTML file."""
    from lifecycle.report import ReportError, build_report
    from lifecycle.settings import get_settings
    from lifecycle.warehouse import WarehouseError

    try:
        result = build_report(day, get_settings(), out=out)
    except (ReportError, WarehouseError) as exc:
        print_error(exc)
        sys.exit(1)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
