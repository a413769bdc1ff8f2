-- The stage of every customer on every day since they became known (a view over the
-- interval table: filter it by customer_key and/or date_day).
with

history as (
    select * from {{ ref('customer_stage_history') }}
),

days as (
    select * from {{ ref('all_days') }}
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
