"""The activation step of the daily DAG: scores → audience membership → exports → push."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.activation.audiences import Audience, load_audiences
from lifecycle.activation.exports import ExportFacts, export_audience, log_failed_export
from lifecycle.activation.membership import MembershipFacts, update_membership
from lifecycle.activation.push import PushFacts, push_audience
from lifecycle.activation.scores import ActivationError, ScoresFacts, write_scores
from lifecycle.activation.tables import ensure_activation_tables
from lifecycle.settings import Settings, get_settings
from lifecycle.warehouse import connect, warehouse_url

log = logging.getLogger(__name__)

#: Serialises activation runs on one warehouse (membership replays must not interleave).
_LOCK_SQL = "select pg_advisory_lock(hashtext('lifecycle.activation'))"
_UNLOCK_SQL = "select pg_advisory_unlock(hashtext('lifecycle.activation'))"


@dataclass
class AudienceOutcome:
    """What happened to one audience in a run."""

    membership: MembershipFacts
    export: ExportFacts
    push: PushFacts | None = None

    def facts(self) -> dict[str, Any]:
        """Return JSON-able facts of the audience."""
        m, e, p = self.membership, self.export, self.push
        out: dict[str, Any] = {
            "members": m.members,
            "control": m.control,
            "entered": m.entered,
            "exited": m.exited,
            "sent": e.sent,
            "adds": e.adds,
            "removes": e.removes,
            "no_consent": e.no_consent,
            "files": len(e.files),
            "folder": str(e.folder),
            "previous_export_date": (
                e.previous_export_date.isoformat() if e.previous_export_date else None
            ),
        }
        if p is not None:
            out.update(
                push_batches=p.batches,
                pushed=p.delivered,
                push_skipped=p.skipped,
                push_rows=p.rows_delivered,
                push_attempts=p.attempts,
            )
        return out


@dataclass
class ActivationResult:
    """The outcome of one activation run for a logical date."""

    day: dt.date
    run_id: str
    scores: ScoresFacts
    audiences: dict[str, AudienceOutcome] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for the task log
    lift: str | None = None  # the lift summary, or why it was not measured

    def summary(self) -> str:
        """Return a short, readable text for a task log."""
        s = self.scores
        score = f"scores of {s.score_date}" if s.score_date else "no scores yet"
        if s.first_later_score:
            score = f"no scores on or before {self.day}: the first are of {s.first_later_score}"
        lines = [
            f"activation {self.day}: {s.customers} customers ({s.scored} scored, {score}; "
            f"{s.with_consent} with marketing consent)"
        ]
        for name, o in self.audiences.items():
            m, e, p = o.membership, o.export, o.push
            line = (
                f"  {name}: {m.members} members ({m.control} control; +{m.entered} -{m.exited}); "
                f"export {e.sent} to send, +{e.adds} -{e.removes} since "
                f"{e.previous_export_date or 'never'}, {len(e.files)} files"
            )
            if p is not None:
                line += f"; push {p.delivered} batch(es) sent, {p.skipped} already delivered"
            lines.append(line)
        if self.lift:
            lines.extend("  " + line for line in self.lift.splitlines())
        if self.seconds:
            lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)

    def facts(self) -> dict[str, Any]:
        """Return small JSON-able facts (for XCom)."""
        return {
            "day": self.day.isoformat(),
            "run_id": self.run_id,
            "customers": self.scores.customers,
            "scored": self.scores.scored,
            "score_date": self.scores.score_date.isoformat() if self.scores.score_date else None,
            "audiences": {n: o.facts() for n, o in self.audiences.items()},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "lift": self.lift,
        }


def _select(audiences: list[Audience], name: str | None) -> list[Audience]:
    if name is None:
        return audiences
    chosen = [a for a in audiences if a.name == name]
    if not chosen:
        known = ", ".join(a.name for a in audiences) or "none"
        raise ActivationError(f"no audience named {name!r} (known: {known})")
    return chosen


def _measure_lift(conn, day: dt.date, audience: str | None) -> str:
    """Measure the lift as of `day` into activation.audience_lift; return its summary (or
    why it was skipped: the mart is built by `lifecycle transform --date D` before)."""
    from lifecycle.activation.lift import LiftError, measure_lift, summary

    try:
        return summary(measure_lift(conn, day, audience), day)
    except LiftError as exc:
        log.warning("lift not measured: %s", exc)
        return f"lift not measured: {exc}"


def export_root(settings: Settings) -> Path:
    """Return the root folder of the audience exports."""
    return settings.export_dir or settings.home / "exports"


def run_activation(
    day: dt.date,
    settings: Settings | None = None,
    *,
    audience: str | None = None,
    run_id: str | None = None,
) -> ActivationResult:
    """Write scores, audience membership, exports and pushes for `day`; return what was done.

    Idempotent per day: a rerun replaces the day's scores and membership, rewrites
    byte-identical export files and sends no batch twice. `audience` limits the run to one
    audience (the scores are written in full either way).
    """
    settings = settings or get_settings()
    run_id = run_id or f"manual__{day.isoformat()}"
    audiences = _select(load_audiences(settings.audiences_file or Path("audiences.yml")), audience)
    root = export_root(settings)
    url = warehouse_url(settings)
    with connect(url, autocommit=True) as lock_conn:
        lock_conn.execute(_LOCK_SQL)
        try:
            with connect(url, autocommit=True) as conn:
                t0 = time.perf_counter()
                with conn.transaction():
                    ensure_activation_tables(conn)
                    scores = write_scores(conn, day, run_id)
                    t1 = time.perf_counter()
                    memberships = {a.name: update_membership(conn, a, day) for a in audiences}
                t2 = time.perf_counter()
                result = ActivationResult(day, run_id, scores)
                result.seconds.update(scores=t1 - t0, membership=t2 - t1)
                for a in audiences:
                    try:
                        with conn.transaction():
                            facts = export_audience(conn, a, day, root, run_id)
                    except Exception as exc:
                        with conn.transaction():
                            log_failed_export(
                                conn,
                                a.name,
                                day,
                                root / day.isoformat() / a.name,
                                run_id,
                                f"{type(exc).__name__}: {exc}",
                            )
                        raise
                    result.audiences[a.name] = AudienceOutcome(memberships[a.name], facts)
                result.seconds["exports"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            for a in audiences:
                if a.push is None:
                    continue
                o = result.audiences[a.name]
                o.push = push_audience(
                    lock_conn,
                    a.name,
                    day,
                    a.push,
                    send_rows=o.export.send_rows,
                    add_rows=o.export.add_rows,
                    remove_rows=o.export.remove_rows,
                    run_id=run_id,
                    token=settings.push_token,
                    retries=settings.http_retries,
                    backoff_s=settings.http_backoff_s,
                    redirect_hosts=settings.push_redirect_hosts,
                )
            result.seconds["push"] = time.perf_counter() - t3
            t4 = time.perf_counter()
            result.lift = _measure_lift(lock_conn, day, audience)
            result.seconds["lift"] = time.perf_counter() - t4
        finally:
            lock_conn.execute(_UNLOCK_SQL)
    log.info("%s", result.summary())
    return result
