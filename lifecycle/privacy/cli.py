"""`lifecycle privacy forget|report`: erasure requests from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lifecycle.errors import print_error
from lifecycle.settings import get_settings


def _fail(message: str) -> None:
    print_error(message)
    sys.exit(1)


@click.group("privacy")
def privacy_group() -> None:
    """Erasure requests (GDPR Art. 17 / CCPA): forget people, report what was removed."""


@privacy_group.command("forget")
@click.option("--email", "emails", multiple=True, help="Email of the person (repeatable).")
@click.option("--customer-id", "customer_ids", multiple=True, help="Shop customer id.")
@click.option("--crm-contact-id", "crm_ids", multiple=True, help="CRM contact id.")
@click.option("--anonymous-id", "anonymous_ids", multiple=True, help="Web anonymous id.")
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV of requests with the header `kind,identifier` (kind: email, customer_id, "
    "crm_contact_id, anonymous_id).",
)
def forget_command(
    emails: tuple[str, ...],
    customer_ids: tuple[str, ...],
    crm_ids: tuple[str, ...],
    anonymous_ids: tuple[str, ...],
    path: Path | None,
) -> None:
    """Record erasure requests (hashed) and apply every pending one at once."""
    from lifecycle.activation.run import export_root
    from lifecycle.privacy import (
        ErasureError,
        apply_pending,
        file_requests,
        parse_request,
        read_requests,
        site_key,
    )
    from lifecycle.warehouse import WarehouseError, connect, warehouse_url

    given = [
        ("email", emails),
        ("customer_id", customer_ids),
        ("crm_contact_id", crm_ids),
        ("anonymous_id", anonymous_ids),
    ]
    settings = get_settings()
    try:
        requests = [
            parse_request(kind, v, f"--{kind.replace('_', '-')}") for kind, vs in given for v in vs
        ]
        if path is not None:
            requests += read_requests(path)
        if not requests:
            raise ErasureError(
                "nothing to forget: give --email, --customer-id, --crm-contact-id, "
                "--anonymous-id or --file"
            )
        key = site_key(settings.environ)
        url = warehouse_url(settings)
        with connect(url) as conn:
            ids = file_requests(conn, key, requests)
        click.echo(f"{len(ids)} request(s) on file: {', '.join(ids)}")
        result = apply_pending(url, settings.environ, export_root(settings))
    except (ErasureError, WarehouseError) as exc:
        _fail(str(exc))
    click.echo(result.summary())
    for location, (action, n) in sorted(result.removed.items()):
        click.echo(f"  {location}: {n} row(s) {action}")


@privacy_group.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_command(as_json: bool) -> None:
    """What the erasure ledger holds: requests, and rows removed per table and file."""
    from lifecycle.privacy import format_report, report
    from lifecycle.warehouse import WarehouseError, connect, warehouse_url

    try:
        with connect(warehouse_url(get_settings())) as conn:
            facts = report(conn)
    except WarehouseError as exc:
        _fail(str(exc))
    click.echo(json.dumps(facts, indent=2) if as_json else format_report(facts))
