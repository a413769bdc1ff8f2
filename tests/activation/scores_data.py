"""Deterministic test scores in ``ml.scores_history`` for a built world's buyers (test data).

Every value is a pure function of the customer key, so tests can recompute them. Real
scoring (ml/score.py) writes the same contract; the lead's end-to-end test covers it.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import psycopg

from ml.tables import SCORE_COLUMNS, ensure_ml_tables

SEGMENTS = {0: "bargain hunters", 1: "steady regulars", 2: "big spenders", 3: "one-timers"}


def _u(key: str, salt: str) -> float:
    """Uniform [0, 1) draw from the key."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def score_row(key: str, day: dt.date, run_id: str = "test-scoring") -> tuple:
    """Return the ml.scores_history row of `key` on `day`."""
    p = round(_u(key, "churn"), 4)
    band = "low" if p < 0.3 else "medium" if p < 0.6 else "high"
    segment = int(_u(key, "segment") * 4)
    eov = round(20 + 180 * _u(key, "eov"), 2)
    purchases = round(6 * _u(key, "purchases"), 3)
    return (
        day, key, p, band, "recency 120 days; few web sessions", segment, SEGMENTS[segment],
        round(1 - p, 4), purchases, eov, round(purchases * eov, 2), "3", "2", "1", run_id,
    )  # fmt: skip


def write_scores(
    url: str,
    day: dt.date,
    overrides: dict[str, dict] | None = None,
    known_by: dt.date | None = None,
) -> int:
    """Replace the `day` partition of ml.scores_history with scores of buyers; return rows.

    Buyers are those of marts.customers, limited to those known by `known_by` when given;
    `overrides` replaces columns of some customers' rows.
    """
    overrides = overrides or {}
    cols = list(SCORE_COLUMNS)
    with psycopg.connect(url) as conn:
        ensure_ml_tables(conn)
        keys = [
            r[0]
            for r in conn.execute(
                "select customer_key from marts.customers where is_buyer "
                "and known_from_date <= coalesce(%s, known_from_date) order by 1",
                (known_by,),
            )
        ]
        conn.execute("delete from ml.scores_history where score_date = %s", (day,))
        rows = []
        for key in keys:
            row = dict(zip(cols, score_row(key, day), strict=True))
            row.update(overrides.get(key, {}))
            rows.append(tuple(row[c] for c in cols))
        with conn.cursor() as cur:
            cur.executemany(
                f"insert into ml.scores_history ({', '.join(cols)}) "
                f"values ({', '.join(['%s'] * len(cols))})",
                rows,
            )
    return len(rows)
