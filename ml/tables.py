"""DDL of the ``ml`` tables other stages read: the contract of scoring, activation, report.

``ml.scores_history`` is written by batch scoring (``lifecycle score --date D``; one date
partition per score date, replaced on rerun) and read by activation and the report. Keep
this file the single definition of its columns: change it here and in the docs together.
"""

from __future__ import annotations

#: Risk bands of the churn probability, lowest first.
RISK_BANDS: tuple[str, ...] = ("low", "medium", "high")

#: Columns of ml.scores_history, in table (and COPY) order.
SCORE_COLUMNS: tuple[str, ...] = (
    "score_date",
    "customer_key",
    "churn_probability",
    "risk_band",
    "top_reasons",
    "segment_id",
    "segment_name",
    "p_alive",
    "expected_purchases_12m",
    "expected_order_value",
    "clv_12m",
    "churn_model_version",
    "segmentation_model_version",
    "clv_model_version",
    "run_id",
)

#: What the CLV champion predicts per customer (ml.scores_history columns of the same names).
CLV_VALUE_COLUMNS: tuple[str, ...] = (
    "p_alive",
    "expected_purchases_12m",
    "expected_order_value",
    "clv_12m",
)
#: Columns of ml.scores_history that come from the CLV champion: all null on every row of a
#: score date when there is none (the data could not fit BG/NBD; churn and segments still are).
CLV_SCORE_COLUMNS: tuple[str, ...] = (*CLV_VALUE_COLUMNS, "clv_model_version")

SCORES_HISTORY_DDL = """
create table if not exists ml.scores_history (
    score_date date not null,              -- the logical date the scores are as of
    customer_key text not null,            -- marts.customers.customer_key
    churn_probability double precision not null
        check (churn_probability >= 0 and churn_probability <= 1),
    risk_band text not null check (risk_band in ('low', 'medium', 'high')),
    top_reasons text not null,             -- human-readable, '; '-separated, strongest first
    segment_id integer not null,           -- stable across retrains
    segment_name text not null,
    p_alive double precision check (p_alive >= 0 and p_alive <= 1),
    expected_purchases_12m double precision check (expected_purchases_12m >= 0),
    expected_order_value double precision check (expected_order_value >= 0),
    clv_12m double precision check (clv_12m >= 0),
    churn_model_version text not null,     -- registered model version of each champion used
    segmentation_model_version text not null,
    clv_model_version text,                -- null with the four CLV columns: no CLV champion
    run_id text not null,                  -- the scoring run (e.g. Airflow run id or uuid)
    primary key (score_date, customer_key)
)
"""


def ensure_ml_tables(conn) -> None:
    """Create the ``ml`` tables of the contract if missing (idempotent); return nothing."""
    conn.execute("create schema if not exists ml")
    conn.execute(SCORES_HISTORY_DDL)
    # a warehouse made before scoring could run without a CLV champion has these not null:
    # relax them once (an ALTER takes an exclusive lock, so only when one is still not null)
    strict = conn.execute(
        "select column_name from information_schema.columns where table_schema = 'ml' "
        "and table_name = 'scores_history' and is_nullable = 'NO' and column_name = any(%s)",
        (list(CLV_SCORE_COLUMNS),),
    ).fetchall()
    if strict:
        conn.execute(
            "alter table ml.scores_history "
            + ", ".join(f"alter column {name} drop not null" for (name,) in strict)
        )
