"""activation.customer_scores: every known customer with stage, scores and playbook action.

The stage is the one the customer had on the logical date, read from the rebuildable stage
history (``marts.customer_stage_history``), so a backfilled day gets the stage that day
had; contact data and consent come from ``marts.customers`` as last built (a later opt-out
is honoured by an earlier day's rerun too). Scores are the ``ml.scores_history`` partition
of the latest score date on or before the logical date; customers without one (prospects,
customers first seen after scoring) keep null scores and ``is_scored`` false.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from psycopg import sql

from lifecycle.activation.tables import SCORE_COLUMNS
from ml.tables import ensure_ml_tables

log = logging.getLogger(__name__)


class ActivationError(RuntimeError):
    """Activation cannot run for this date; the message says what to do."""


@dataclass(frozen=True)
class ScoresFacts:
    """What writing the scores of one date did."""

    as_of_date: dt.date
    score_date: dt.date | None  # the ml.scores_history partition used (None: no scores yet)
    customers: int
    scored: int
    with_consent: int
    #: without scores on or before the date: the first score date after it, if any
    first_later_score: dt.date | None = None


def _exists(conn, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


def check_marts(conn, day: dt.date) -> None:
    """Raise ActivationError unless the marts exist and are built as of `day` or later."""
    for relation in ("marts.customers", "marts.customer_stage_history", "marts.lifecycle_stages"):
        if not _exists(conn, relation):
            raise ActivationError(
                f"{relation} does not exist: run `lifecycle transform --date {day}` first"
            )
    built = conn.execute("select max(as_of_date) from marts.customers").fetchone()[0]
    if built is not None and built < day:
        raise ActivationError(
            f"the marts are built as of {built}, before {day}: "
            f"run `lifecycle transform --date {day}` first"
        )


def write_scores(conn, day: dt.date, run_id: str) -> ScoresFacts:
    """Replace the `day` partition of the scores history, refresh customer_scores; return facts.

    Runs inside the caller's transaction.
    """
    check_marts(conn, day)
    ensure_ml_tables(conn)
    score_date = conn.execute(
        "select max(score_date) from ml.scores_history where score_date <= %s", (day,)
    ).fetchone()[0]
    later = None
    if score_date is None:
        later = conn.execute(
            "select min(score_date) from ml.scores_history where score_date > %s", (day,)
        ).fetchone()[0]
    if later is not None:  # a date before the first scoring: the next export counts from it
        log.warning(
            "no scores on or before %s (the first are of %s): audiences that filter on "
            "scores are empty; run `lifecycle score --date %s` first to fill them",
            day,
            later,
            day,
        )
    conn.execute("delete from activation.customer_scores_history where as_of_date = %s", (day,))
    columns = sql.SQL(", ").join(map(sql.Identifier, SCORE_COLUMNS))
    conn.execute(
        sql.SQL(
            """
            insert into activation.customer_scores_history ({columns})
            with stage_on_day as (
                select customer_key, stage, valid_from, previous_stage
                from marts.customer_stage_history
                where valid_from <= %(day)s and (valid_to is null or valid_to > %(day)s)
            ),
            scores as (
                select * from ml.scores_history where score_date = %(score_date)s
            )
            select
                c.customer_key,
                nullif(lower(btrim(c.primary_email)), ''),
                c.first_name,
                c.last_name,
                c.country_code,
                coalesce(c.has_marketing_consent, false),
                s.stage,
                s.valid_from,
                (%(day)s::date - s.valid_from) + 1,
                s.previous_stage,
                playbook.recommended_action,
                sc.customer_key is not null,
                sc.churn_probability,
                sc.risk_band,
                sc.top_reasons,
                sc.segment_id,
                sc.segment_name,
                sc.p_alive,
                sc.expected_purchases_12m,
                sc.expected_order_value,
                sc.clv_12m,
                sc.churn_model_version,
                sc.segmentation_model_version,
                sc.clv_model_version,
                sc.score_date,
                sc.run_id,
                %(day)s,
                %(run_id)s
            from stage_on_day as s
            inner join marts.customers as c on c.customer_key = s.customer_key
            inner join marts.lifecycle_stages as playbook on playbook.stage = s.stage
            left join scores as sc on sc.customer_key = s.customer_key
            """
        ).format(columns=columns),
        {"day": day, "score_date": score_date, "run_id": run_id},
    )
    # fresh statistics: the membership queries join this partition right away
    conn.execute("analyze activation.customer_scores_history")
    # The current table mirrors the newest date of the history, so a backfill of an older
    # day never replaces newer scores.
    conn.execute("delete from activation.customer_scores")
    conn.execute(
        sql.SQL(
            "insert into activation.customer_scores ({c}) select {c} "
            "from activation.customer_scores_history where as_of_date = "
            "(select max(as_of_date) from activation.customer_scores_history)"
        ).format(c=columns)
    )
    customers, scored, consent = conn.execute(
        "select count(*), count(*) filter (where is_scored), "
        "count(*) filter (where has_marketing_consent) "
        "from activation.customer_scores_history where as_of_date = %s",
        (day,),
    ).fetchone()
    return ScoresFacts(day, score_date, customers, scored, consent, later)
