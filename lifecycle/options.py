"""Command-line option helpers shared by every `lifecycle` sub-command (one date parser)."""

from __future__ import annotations

import datetime as dt

import click

from lifecycle.raw import EARLIEST_DATE


def parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.date | None:
    """Return the YYYY-MM-DD option `value` as a date (None stays None); click callback."""
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from exc
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        # the pipeline computes days before and after it (windows, horizons, snapshots):
        # at the ends of the calendar they overflow with "date value out of range"
        raise click.BadParameter(f"{value} is outside {EARLIEST_DAY} .. {LATEST_DAY}")
    return day


#: The logical dates a command takes: the raw contract's earliest date, and a year of
#: room for the horizons computed after a date before the calendar ends.
EARLIEST_DAY = EARLIEST_DATE
LATEST_DAY = dt.date(9998, 12, 31)


def business_today(settings=None) -> tuple[dt.date, str]:
    """Return today's date in the business time zone, and the zone's name.

    The zone is the sources file's ``business.timezone`` (default UTC); an unreadable
    sources file falls back to UTC here (the command itself reports the file).
    """
    from zoneinfo import ZoneInfo

    from lifecycle.sources_file import SourcesFileError, business_zone

    try:
        zone = business_zone(settings)
    except SourcesFileError:
        zone = ZoneInfo("UTC")
    return dt.datetime.now(zone).date(), zone.key


allow_future_option = click.option(
    "--allow-future",
    is_flag=True,
    help="Run a logical date after today (business time zone); refused otherwise.",
)


def refuse_future(day: dt.date, allow_future: bool, option: str = "--date", settings=None) -> None:
    """Exit with an error line (code 2) when `day` is after today, unless allowed.

    A future date loads nothing real, yet would publish marts as of that date and (before
    watermarks were capped) mark every real day before it as done.
    """
    if allow_future:
        return
    today, zone = business_today(settings)
    if day > today:
        click.secho(
            f"error: {option} {day} is after today ({today} in {zone}, the business time "
            "zone); pass --allow-future to run it anyway",
            fg="red",
            err=True,
        )
        raise SystemExit(2)
