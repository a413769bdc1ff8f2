-- The stage of every customer on every day since they became known (a view over the
-- interval table: filter it by customer_key and/or date_day).
with

history as not materialized (
    select * from {{ ref('customer_stage_history') }}
),

-- The date spine comes from the history itself, not from intermediate.all_days: a view in
-- marts may only depend on relations published with it (write-audit-publish), or the next
-- build, replacing intermediate, would drop the published view before its gate.
bounds as (
    select min(valid_from) as first_date from history
),

days as (
    select cast(spine.day as date) as date_day
    from bounds
    cross join lateral generate_series(
        bounds.first_date, {{ as_of_date() }}, interval '1 day'
    ) as spine (day)
),

final as (
    select
        cast(days.date_day as date) as date_day,
        cast(history.customer_key as text) as customer_key,
        cast(history.stage as text) as stage,
        cast(history.valid_from as date) as stage_since
    from history
    inner join days
        on
            days.date_day >= history.valid_from
            and (history.valid_to is null or days.date_day < history.valid_to)
)

select * from final
