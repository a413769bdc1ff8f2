"""activation.audience_membership: who is in each audience, since when, and the control group.

Membership is derived from the dated scores history, one logical date after another: a
customer enters on the first date they match and exits on the first later processed date
they no longer match; each stay is a row, so exited members keep their history. Running a
date first undoes what that date and any later date did, then replays them in order, so a
rerun gives the same table and a backfill of an older date leaves later dates consistent.

The control group is a deterministic hash of (audience, customer_key): the first 52 bits
of its SHA-256 read as a number in [0, 1), compared with the audience's control share.
It is the same in SQL (used for membership) and in :func:`control_value` (for tests and
anyone checking a list), stable across runs and independent of everything else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from psycopg import sql

from lifecycle.activation.audiences import Audience

#: 2**52: the hash's 52 bits are exact in a double precision number.
_SCALE = 4503599627370496

CONTROL_SQL = (
    "(('x' || substr(encode(sha256(convert_to({audience} || '|' || {key}, 'UTF8')), 'hex'),"
    " 1, 13))::bit(52)::bigint::double precision / 4503599627370496.0)"
)


def control_value(customer_key: str, audience: str) -> float:
    """Return the customer's control-group draw for the audience: uniform in [0, 1)."""
    digest = hashlib.sha256(f"{audience}|{customer_key}".encode()).hexdigest()
    return int(digest[:13], 16) / _SCALE


def is_control(customer_key: str, audience: str, share: float) -> bool:
    """Return True when the customer is held out of the audience's sends."""
    return control_value(customer_key, audience) < share


@dataclass(frozen=True)
class MembershipFacts:
    """Audience membership on one date."""

    audience: str
    as_of_date: dt.date
    members: int
    control: int
    entered: int
    exited: int
    replayed_dates: tuple[dt.date, ...]  # later dates re-derived after a backfill


def _apply(conn, audience: Audience, day: dt.date) -> tuple[int, int]:
    """Move the membership from the previous processed date to `day`; return (entered, exited)."""
    where, params = audience.where("h")
    control = sql.SQL(CONTROL_SQL).format(
        audience=sql.Literal(audience.name), key=sql.SQL("h.customer_key")
    )
    exited = conn.execute(
        sql.SQL(
            "update activation.audience_membership as m set exited_date = %s "
            "where m.audience = %s and m.exited_date is null and not exists ("
            "  select 1 from activation.customer_scores_history as h "
            "  where h.as_of_date = %s and h.customer_key = m.customer_key and {where})"
        ).format(where=where),
        [day, audience.name, day, *params],
    ).rowcount
    entered = conn.execute(
        sql.SQL(
            "insert into activation.audience_membership "
            "(audience, customer_key, entered_date, exited_date, is_control) "
            "select %s, h.customer_key, %s, null, {control} < %s "
            "from activation.customer_scores_history as h "
            "where h.as_of_date = %s and {where} and not exists ("
            "  select 1 from activation.audience_membership as m "
            "  where m.audience = %s and m.customer_key = h.customer_key "
            "  and m.exited_date is null)"
        ).format(control=control, where=where),
        [audience.name, day, audience.control_share, day, *params, audience.name],
    ).rowcount
    return entered, exited


def update_membership(conn, audience: Audience, day: dt.date) -> MembershipFacts:
    """Derive the audience's membership for `day` (and replay later dates); return facts.

    Runs inside the caller's transaction; the scores history partition of `day` must exist.
    """
    name = audience.name
    conn.execute(
        "delete from activation.audience_membership where audience = %s and entered_date >= %s",
        (name, day),
    )
    conn.execute(
        "update activation.audience_membership set exited_date = null "
        "where audience = %s and exited_date >= %s",
        (name, day),
    )
    conn.execute("analyze activation.audience_membership")
    later = [
        r[0]
        for r in conn.execute(
            "select distinct as_of_date from activation.customer_scores_history "
            "where as_of_date > %s order by 1",
            (day,),
        )
    ]
    entered, exited = _apply(conn, audience, day)
    for other in later:
        _apply(conn, audience, other)
    members, control = members_on(conn, name, day)
    return MembershipFacts(name, day, members, control, entered, exited, tuple(later))


def members_on(conn, audience: str, day: dt.date) -> tuple[int, int]:
    """Return (members, of which control) of the audience on `day`."""
    return conn.execute(
        "select count(*), count(*) filter (where is_control) "
        "from activation.audience_membership where audience = %s and entered_date <= %s "
        "and (exited_date is null or exited_date > %s)",
        (audience, day, day),
    ).fetchone()
