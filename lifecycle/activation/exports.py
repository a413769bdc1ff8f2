"""Audience exports: CSV files per layout (full list, adds, removes), a manifest, the export log.

One folder per audience and logical date, ``<export root>/<date>/<audience>/``, written to a
hidden temporary folder first and renamed into place, so a failed export never leaves a
half-written folder. File content depends on the warehouse only (rows sorted, numbers
formatted, no timestamps), so rerunning a date gives byte-identical files.

The send list is the audience's members on the date who are not in the control group,
have marketing consent and an email; the control group (same conditions, flagged) goes to
its own, clearly named file and is never in a send file. The delta (adds, removes) is
against the send list of the last successful export of the audience before the date.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from lifecycle.activation.audiences import Audience
from lifecycle.redact import redact

CONTROL_FILE = "control_group_DO_NOT_SEND.csv"
#: Every member by customer id and group, without contact data (see :func:`ids_rows`).
IDS_FILE = "customer_ids.csv"
IDS_HEADER = (
    "customer_key",
    "customer_id",
    "group",
    "stage",
    "risk_band",
    "churn_probability",
    "segment_name",
    "clv_12m",
    "audience",
    "as_of_date",
)
MANIFEST = "manifest.json"
LISTS = ("full", "adds", "removes")

#: HubSpot's lifecycle stage property (internal values) for each of our stages.
HUBSPOT_STAGE = {
    "prospect": "lead",
    "new": "customer",
    "active": "customer",
    "loyal": "evangelist",
    "at_risk": "customer",
    "churned": "other",
    "reactivated": "customer",
}

#: Fields of a member row read from the warehouse (also the generic layout's first columns).
MEMBER_FIELDS = (
    "customer_key",
    "email",
    "first_name",
    "last_name",
    "country_code",
    "stage",
    "recommended_action",
    "churn_probability",
    "risk_band",
    "segment_id",
    "segment_name",
    "clv_12m",
    "top_reasons",
    "score_date",
)


def email_sha256(email: str) -> str:
    """Return the SHA-256 hex digest of the trimmed, lower-cased email (ad-platform matching)."""
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


#: First characters that make a spreadsheet program read a cell as a formula (OWASP "CSV
#: Injection": = + - @ tab CR), plus LF and the full-width forms some East Asian locales of
#: Excel also evaluate. Leading spaces do not protect a cell, so they are looked through.
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")


def neutralise(text: str) -> str:
    """Return `text` made inert for spreadsheets: a leading ``'`` if it could start a formula.

    OWASP's recommendation: prefix such a cell with a single quote, which spreadsheet
    programs take as "this cell is text" and do not display. The CSV writer quotes the cell
    when it holds a tab, CR, LF, quote or comma. Numbers never pass through here (their
    columns are formatted from numeric values), so a negative probability stays a number.
    """
    # (the first character alone decides unless it is a space: every cell of every export
    # passes here, so the common case costs one lookup)
    first = text[:1]
    if first in FORMULA_TRIGGERS or (first == " " and text.lstrip(" ")[:1] in FORMULA_TRIGGERS):
        return "'" + text
    return text


def _text(value: Any, digits: int | None = None) -> str:
    """Return the cell for `value`: numbers formatted, text from source data neutralised."""
    if value is None:
        return ""
    if digits is not None:
        return f"{float(value):.{digits}f}"
    if type(value) is str:  # most cells: checked before the numeric types
        return neutralise(value)
    if isinstance(value, int | float | Decimal | dt.date):
        return str(value)  # never a formula: a number (possibly negative) or an ISO date
    return neutralise(str(value))


def _generic(row: dict, audience: str, day: dt.date) -> list[str]:
    return [
        _text(row["customer_key"]),
        _text(row["email"]),
        _text(row["first_name"]),
        _text(row["last_name"]),
        _text(row["country_code"]),
        _text(row["stage"]),
        _text(row["recommended_action"]),
        _text(row["churn_probability"], 4),
        _text(row["risk_band"]),
        _text(row["segment_id"]),
        _text(row["segment_name"]),
        _text(row["clv_12m"], 2),
        _text(row["top_reasons"]),
        _text(row["score_date"]),
        _text(audience),
        day.isoformat(),
    ]


#: layout -> (header, row formatter(row, audience, day) -> values)
LAYOUTS: dict[str, tuple[list[str], Callable[[dict, str, dt.date], list[str]]]] = {
    "generic": ([*MEMBER_FIELDS, "audience", "as_of_date"], _generic),
    "mailchimp": (
        ["Email Address", "First Name", "Last Name", "Tags"],
        lambda r, a, d: [
            _text(r["email"]),
            _text(r["first_name"]),
            _text(r["last_name"]),
            _text(f"{a},stage_{r['stage']}" if r["stage"] else a),
        ],
    ),
    "hubspot": (
        [
            "Email",
            "First Name",
            "Last Name",
            "Lifecycle Stage",
            "Lifecycle Audience",
            "Churn Risk",
            "Recommended Action",
        ],
        lambda r, a, d: [
            _text(r["email"]),
            _text(r["first_name"]),
            _text(r["last_name"]),
            HUBSPOT_STAGE.get(r["stage"] or "", ""),
            _text(a),
            _text(r["risk_band"]),
            _text(r["recommended_action"]),
        ],
    ),
    "klaviyo": (
        [
            "Email",
            "First Name",
            "Last Name",
            "Country",
            "lifecycle_stage",
            "lifecycle_audience",
            "churn_risk",
            "churn_probability",
            "segment",
            "clv_12m",
            "recommended_action",
        ],
        lambda r, a, d: [
            _text(r["email"]),
            _text(r["first_name"]),
            _text(r["last_name"]),
            _text(r["country_code"]),
            _text(r["stage"]),
            _text(a),
            _text(r["risk_band"]),
            _text(r["churn_probability"], 4),
            _text(r["segment_name"]),
            _text(r["clv_12m"], 2),
            _text(r["recommended_action"]),
        ],
    ),
    # Customer Match (Google Ads) and Custom Audiences (Meta): normalized, SHA-256 hashed email
    "google_ads": (["Email"], lambda r, a, d: [email_sha256(r["email"])]),
    "meta": (["email"], lambda r, a, d: [email_sha256(r["email"])]),
}


@dataclass(frozen=True)
class ExportFile:
    """One written file: its name, data rows, size and checksum."""

    name: str
    rows: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """Return the file's facts as JSON-able values."""
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class ExportFacts:
    """What one audience export wrote."""

    audience: str
    as_of_date: dt.date
    folder: Path
    previous_export_date: dt.date | None
    members: int
    control: int
    sent: int
    adds: int
    removes: int
    no_consent: int
    no_email: int
    files: list[ExportFile] = field(default_factory=list)
    # rows for the push step (not JSON-able facts)
    send_rows: list[dict] = field(default_factory=list, repr=False)
    add_rows: list[dict] = field(default_factory=list, repr=False)
    remove_rows: list[dict] = field(default_factory=list, repr=False)


def render_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """Return an RFC 4180 CSV (UTF-8 without BOM, CRLF line ends) of the header and rows."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


# --------------------------------------------------------------------------- reading

_MEMBERS_SQL = """
select
    m.customer_key, h.email, h.first_name, h.last_name, h.country_code, h.stage,
    h.recommended_action, h.churn_probability, h.risk_band, h.segment_id, h.segment_name,
    h.clv_12m, h.top_reasons, h.score_date, m.is_control, h.has_marketing_consent,
    c.primary_customer_id as customer_id
from activation.audience_membership as m
inner join activation.customer_scores_history as h
    on h.customer_key = m.customer_key and h.as_of_date = %(day)s
left join marts.customers as c on c.customer_key = m.customer_key
where m.audience = %(audience)s and m.entered_date <= %(day)s
    and (m.exited_date is null or m.exited_date > %(day)s)
order by h.email nulls last, m.customer_key
"""


def ids_rows(members: list[dict], audience: str, day: dt.date) -> list[list[str]]:
    """Return the rows of the customer-id file: every member (treatment and control), by
    customer key and the shop's customer id, with no contact data (no email, name or
    country). It is not a send list: it joins the audience to the company's own systems
    (and measures lift) also when no member has an email or consent, e.g. an orders-only
    deployment; whoever contacts them must honour consent there."""
    return [
        [
            r["customer_key"],
            _text(r.get("customer_id")),
            "control" if r["is_control"] else "treatment",
            _text(r["stage"]),
            _text(r["risk_band"]),
            _text(r["churn_probability"], 4),
            _text(r["segment_name"]),
            _text(r["clv_12m"], 2),
            audience,
            day.isoformat(),
        ]
        for r in sorted(members, key=lambda r: r["customer_key"])
    ]


def _split(members: list[dict]) -> tuple[list[dict], list[dict], int, int]:
    """Return (send rows, control rows, no-consent count, no-email count)."""
    send: list[dict] = []
    control: list[dict] = []
    no_consent = no_email = 0
    seen: set[str] = set()
    for row in members:
        if row["has_marketing_consent"] is not True:
            no_consent += 1
            continue
        if not row["email"]:
            no_email += 1
            continue
        if row["email"] in seen:  # one row per address: two keys never share one after identity
            continue
        seen.add(row["email"])
        (control if row["is_control"] else send).append(row)
    return send, control, no_consent, no_email


def previous_export(conn, audience: str, day: dt.date) -> dt.date | None:
    """Return the date of the last successful export of `audience` before `day`, if any."""
    return conn.execute(
        "select max(as_of_date) from activation.export_log "
        "where audience = %s and status = 'ok' and as_of_date < %s",
        (audience, day),
    ).fetchone()[0]


def _previous_send(conn, audience: str, previous: dt.date | None, day: dt.date) -> list[dict]:
    if previous is None:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """
            select
                e.customer_key, e.email, h.first_name, h.last_name, h.country_code, h.stage,
                h.recommended_action, h.churn_probability, h.risk_band, h.segment_id,
                h.segment_name, h.clv_12m, h.top_reasons, h.score_date
            from activation.export_members as e
            left join activation.customer_scores_history as h
                on h.customer_key = e.customer_key and h.as_of_date = %(day)s
            where e.audience = %(audience)s and e.as_of_date = %(previous)s and e.list = 'send'
            order by e.email, e.customer_key
            """,
            {"audience": audience, "previous": previous, "day": day},
        ).fetchall()


# --------------------------------------------------------------------------- writing


def _write_folder(target: Path, files: dict[str, bytes]) -> None:
    """Write `files` into `target` atomically: a temporary sibling folder, then renames."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*-*"):  # from a killed earlier run
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            with (tmp / name).open("wb") as fh:
                fh.write(data)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_audience(
    conn,
    audience: Audience,
    day: dt.date,
    root: Path,
    run_id: str,
) -> ExportFacts:
    """Write the audience's export folder for `day`, record it in the log; return the facts.

    Runs in the caller's transaction; the folder is put in place just before the caller
    commits, so a failure before that leaves the previous folder (if any) as it was.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        members = cur.execute(_MEMBERS_SQL, {"day": day, "audience": audience.name}).fetchall()
    send, control, no_consent, no_email = _split(members)
    previous = previous_export(conn, audience.name, day)
    before = _previous_send(conn, audience.name, previous, day)
    before_keys = {r["customer_key"] for r in before}
    now_keys = {r["customer_key"] for r in send}
    adds = [r for r in send if r["customer_key"] not in before_keys]
    removes = [r for r in before if r["customer_key"] not in now_keys]

    lists = {"full": send, "adds": adds, "removes": removes}
    blobs: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    for layout in audience.layouts:
        header, fmt = LAYOUTS[layout]
        # each send row formatted once: the adds are send rows too
        sent_cells = {r["customer_key"]: fmt(r, audience.name, day) for r in send}
        for kind in LISTS:
            name = f"{layout}_{kind}.csv"
            cells = (
                [fmt(r, audience.name, day) for r in lists[kind]]
                if kind == "removes"
                else [sent_cells[r["customer_key"]] for r in lists[kind]]
            )
            blobs[name] = render_csv(header, cells)
            counts[name] = len(lists[kind])
    blobs[IDS_FILE] = render_csv(IDS_HEADER, ids_rows(members, audience.name, day))
    counts[IDS_FILE] = len(members)
    if audience.control_share > 0:
        header, fmt = LAYOUTS["generic"]
        blobs[CONTROL_FILE] = render_csv(header, [fmt(r, audience.name, day) for r in control])
        counts[CONTROL_FILE] = len(control)
    files = [
        ExportFile(n, counts[n], len(b), hashlib.sha256(b).hexdigest())
        for n, b in sorted(blobs.items())
    ]
    facts = ExportFacts(
        audience=audience.name,
        as_of_date=day,
        folder=root / day.isoformat() / audience.name,
        previous_export_date=previous,
        members=len(members),
        control=len(control),
        sent=len(send),
        adds=len(adds),
        removes=len(removes),
        no_consent=no_consent,
        no_email=no_email,
        files=files,
        send_rows=send,
        add_rows=adds,
        remove_rows=removes,
    )
    manifest = {
        "audience": audience.name,
        "description": audience.description,
        "as_of_date": day.isoformat(),
        "previous_export_date": previous.isoformat() if previous else None,
        "control_share": audience.control_share,
        "definition_sha256": audience.definition_sha256(),
        "counts": {
            "members": facts.members,
            # the members held out as the control group, contactable or not (the group
            # column of customer_ids.csv); "control" counts the held-out file's rows:
            # those that would have been sent
            "members_control": sum(1 for m in members if m["is_control"]),
            "control": facts.control,
            "sent": facts.sent,
            "adds": facts.adds,
            "removes": facts.removes,
            "left_out_no_consent": facts.no_consent,
            "left_out_no_email": facts.no_email,
        },
        "files": [f.as_dict() for f in files],
        "encoding": "UTF-8 without BOM, RFC 4180 CSV with CRLF line ends",
    }
    blobs[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    conn.execute(
        "delete from activation.export_members where audience = %s and as_of_date = %s",
        (audience.name, day),
    )
    with (
        conn.cursor() as cur,
        cur.copy(
            "copy activation.export_members (audience, as_of_date, customer_key, email, list) "
            "from stdin"
        ) as copy,
    ):
        for kind, members_ in (("send", send), ("control", control)):
            for r in members_:
                copy.write_row((audience.name, day, r["customer_key"], r["email"], kind))
    log_export(
        conn, facts, run_id, "ok", audience.definition_sha256(), window=audience.lift_window_days
    )
    _write_folder(facts.folder, blobs)
    return facts


def log_export(
    conn,
    facts: ExportFacts,
    run_id: str,
    status: str,
    definition_sha256: str | None,
    error: str | None = None,
    window: int | None = None,
) -> None:
    """Append one row to activation.export_log; return nothing."""
    conn.execute(
        """
        insert into activation.export_log (
            audience, as_of_date, run_id, status, previous_export_date, count_members,
            count_control, count_sent, count_adds, count_removes, count_no_consent,
            count_no_email, folder, files, definition_sha256, error, lift_window_days
        ) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            facts.audience,
            facts.as_of_date,
            run_id,
            status,
            facts.previous_export_date,
            facts.members,
            facts.control,
            facts.sent,
            facts.adds,
            facts.removes,
            facts.no_consent,
            facts.no_email,
            str(facts.folder),
            Jsonb([f.as_dict() for f in facts.files]),
            definition_sha256,
            error,
            window,
        ),
    )


def log_failed_export(
    conn, audience: str, day: dt.date, folder: Path, run_id: str, error: str
) -> None:
    """Record a failed export attempt in activation.export_log; return nothing."""
    conn.execute(
        "insert into activation.export_log (audience, as_of_date, run_id, status, folder, error) "
        "values (%s, %s, %s, 'failed', %s, %s)",
        (audience, day, run_id, str(folder), (redact(error) or "")[:2000]),
    )
