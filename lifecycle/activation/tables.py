"""DDL of the ``activation`` schema: scores, audience membership, export and push logs."""

from __future__ import annotations

from ml.tables import SCORE_COLUMNS as ML_SCORE_COLUMNS

#: Columns of activation.customer_scores (and its dated history), in table order.
SCORE_COLUMNS: tuple[str, ...] = (
    "customer_key",
    "email",
    "first_name",
    "last_name",
    "country_code",
    "has_marketing_consent",
    "stage",
    "stage_since",
    "days_in_stage",
    "previous_stage",
    "recommended_action",
    "is_scored",
    # the score columns of ml.scores_history (its contract), from churn_probability on
    *ML_SCORE_COLUMNS[ML_SCORE_COLUMNS.index("churn_probability") : -1],
    "score_date",
    "score_run_id",
    "as_of_date",
    "run_id",
)

_SCORE_BODY = """
    customer_key text not null,              -- marts.customers.customer_key
    email text,                              -- primary email (trimmed, lower-cased)
    first_name text,
    last_name text,
    country_code text,
    has_marketing_consent boolean not null,  -- false: never in a marketing export
    stage text not null,                     -- lifecycle stage on as_of_date (stage history)
    stage_since date not null,
    days_in_stage integer not null,          -- as_of_date - stage_since + 1
    previous_stage text,
    recommended_action text not null,        -- the stage playbook (marts.lifecycle_stages)
    is_scored boolean not null,              -- false: no score (e.g. prospects); scores null
    churn_probability double precision,
    risk_band text,
    top_reasons text,
    segment_id integer,
    segment_name text,
    p_alive double precision,
    expected_purchases_12m double precision,
    expected_order_value double precision,
    clv_12m double precision,
    churn_model_version text,
    segmentation_model_version text,
    clv_model_version text,
    score_date date,                         -- the ml.scores_history date used (<= as_of_date)
    score_run_id text,                       -- the scoring run
    as_of_date date not null,                -- the logical date of the activation run
    run_id text not null                     -- the activation run
"""

DDL: tuple[str, ...] = (
    "create schema if not exists activation",
    f"create table if not exists activation.customer_scores_history ({_SCORE_BODY},"
    " primary key (as_of_date, customer_key))",
    f"create table if not exists activation.customer_scores ({_SCORE_BODY},"
    " primary key (customer_key))",
    """
    create table if not exists activation.audience_membership (
        audience text not null,
        customer_key text not null,
        entered_date date not null,     -- first logical date the customer matched
        exited_date date,               -- first logical date they no longer matched; null: member
        is_control boolean not null,    -- held out for lift measurement: never sent
        primary key (audience, customer_key, entered_date),
        check (exited_date is null or exited_date > entered_date)
    )
    """,
    """
    create unique index if not exists audience_membership_one_open
        on activation.audience_membership (audience, customer_key) where exited_date is null
    """,
    """
    create table if not exists activation.export_members (
        audience text not null,
        as_of_date date not null,
        customer_key text not null,
        email text not null,
        list text not null check (list in ('send', 'control')),
        primary key (audience, as_of_date, customer_key)
    )
    """,
    """
    create table if not exists activation.export_log (
        export_id bigint generated always as identity primary key,
        audience text not null,
        as_of_date date not null,
        run_id text not null,
        status text not null check (status in ('ok', 'failed')),
        previous_export_date date,      -- the delta's base: last successful export before
        count_members integer,          -- audience members on the date (control included)
        count_control integer,          -- control-group members with consent (not sent)
        count_sent integer,             -- rows of the full send list
        count_adds integer,
        count_removes integer,
        count_no_consent integer,       -- members left out: no marketing consent
        count_no_email integer,         -- members left out: no email
        folder text,
        files jsonb,                    -- [{name, rows, bytes, sha256}]
        definition_sha256 text,
        error text,
        logged_at timestamptz not null default now()  -- bookkeeping only, never used in logic
    )
    """,
    # the audience's lift window when exported (marts.audience_outcomes reads it);
    # added to export logs created before lift measurement existed
    "alter table activation.export_log add column if not exists lift_window_days integer",
    """
    create index if not exists export_log_audience_date
        on activation.export_log (audience, as_of_date)
    """,
    """
    create table if not exists activation.audience_lift (
        as_of_date date not null,       -- the logical date the lift was measured on
        audience text not null,
        cohort_date date,               -- the export day; null: every complete cohort pooled
        metric text not null check (metric in ('conversion', 'revenue_per_member')),
        lift_window_days integer not null,
        is_window_complete boolean not null,  -- false: "too early", read with care
        count_treatment integer not null,
        count_control integer not null,
        treatment_value double precision,     -- rate or revenue per member
        control_value double precision,
        absolute_lift double precision,       -- treatment - control
        absolute_lift_low double precision,   -- 95% interval
        absolute_lift_high double precision,
        relative_lift double precision,       -- absolute / control
        relative_lift_low double precision,
        relative_lift_high double precision,
        incremental_revenue double precision, -- revenue_per_member lift x treatment members
        incremental_revenue_low double precision,
        incremental_revenue_high double precision,
        unique nulls not distinct (as_of_date, audience, cohort_date, metric)
    )
    """,
    """
    create table if not exists activation.push_log (
        idempotency_key text primary key,
        audience text not null,
        as_of_date date not null,
        batch_no integer not null,
        action text not null,           -- add, remove or upsert (full mode)
        count_rows integer not null,
        status text not null check (status in ('delivered', 'failed')),
        attempts integer not null,
        http_status integer,
        url text not null,
        run_id text not null,
        error text,
        logged_at timestamptz not null default now()  -- bookkeeping only, never used in logic
    )
    """,
)


#: Tables holding the contact fields (lifecycle.pii.ACTIVATION_PII) of every customer,
#: exported or not: row-level security shows the activation reader only the rows of people
#: an export sent to on that row's date (:data:`READER_ROWS`).
READER_ROW_TABLES: tuple[str, ...] = ("customer_scores", "customer_scores_history")
#: The rows `lifecycle_activation_reader` sees: consented and in that date's send list.
READER_ROWS = (
    "has_marketing_consent and exists (select 1 from activation.export_members m "
    "where m.customer_key = {table}.customer_key and m.as_of_date = {table}.as_of_date "
    "and m.list = 'send')"
)
#: Row policies: (name, role, command, USING, WITH CHECK).
_POLICIES = (
    ("activator_all_rows", "lifecycle_activator", "all", "true", "true"),
    ("reader_exported_rows", "lifecycle_activation_reader", "select", READER_ROWS, None),
)


def ensure_activation_tables(conn) -> None:
    """Create the activation schema and tables if missing (idempotent); return nothing."""
    for statement in DDL:
        conn.execute(statement)
    # dbt builds marts.audience_outcomes from these two (lifecycle.warehouse.LIFT_INPUTS);
    # the owner of the tables may grant it, the schema's usage comes from bootstrap
    if conn.execute("select to_regrole('lifecycle_transformer')").fetchone()[0]:
        for name in ("export_log", "audience_membership"):
            conn.execute(f"grant select on activation.{name} to lifecycle_transformer")
    ensure_row_policies(conn)


def ensure_row_policies(conn) -> None:
    """Restrict the rows of :data:`READER_ROW_TABLES` per role (idempotent).

    The activation reader (reverse-ETL tools) sees a customer's scores and contact fields
    only where an export sent to them; the activator sees every row; owners and
    superusers (the pipeline's own connection) are not subject to row security. Needs the
    table's owner: skipped for a table the current user does not own, and for roles not
    created yet (:func:`lifecycle.warehouse.bootstrap` calls this again).
    """
    roles = {
        r[0]
        for r in conn.execute(
            "select rolname from pg_roles where rolname = any(%s)",
            ([p[1] for p in _POLICIES],),
        )
    }
    for table in READER_ROW_TABLES:
        owned = conn.execute(
            "select pg_has_role(current_user, relowner, 'USAGE'), relrowsecurity "
            "from pg_class where oid = to_regclass(%s)",
            (f"activation.{table}",),
        ).fetchone()
        if not owned or not owned[0]:
            continue
        if not owned[1]:
            # only when off: ALTER TABLE waits for the table's lock, which autovacuum
            # holds after each run's rewrite of the scores (a second of every activation)
            conn.execute(f"alter table activation.{table} enable row level security")
        present = {
            r[0]
            for r in conn.execute(
                "select policyname from pg_policies where schemaname = 'activation' "
                "and tablename = %s",
                (table,),
            )
        }
        for name, role, command, using, check in _POLICIES:
            if name in present or role not in roles:
                continue
            statement = (
                f"create policy {name} on activation.{table} for {command} to {role} "
                f"using ({using.format(table=f'activation.{table}')})"
            )
            conn.execute(statement + (f" with check ({check})" if check else ""))
