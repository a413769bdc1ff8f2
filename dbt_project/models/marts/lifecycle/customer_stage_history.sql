-- Lifecycle stage history as of the as-of date: the stage engine's projection cut at that
-- date. Intervals [valid_from, valid_to) tile each customer's days from the day they became
-- known, without gaps or overlaps; valid_to is null for the stage they are in on the as-of
-- date (what comes next is not known yet).
with

projected as (
    select * from {{ ref('int_stage_intervals_projected') }}
),

cut as (
    select
        customer_key,
        stage,
        valid_from,
        case when valid_to > {{ as_of_date() }} then null else valid_to end as valid_to
    from projected
    where valid_from <= {{ as_of_date() }}
),

final as (
    select
        cast(customer_key as text) as customer_key,
        cast(stage as text) as stage,
        cast(valid_from as date) as valid_from,
        cast(valid_to as date) as valid_to,
        cast(
            lag(stage) over (partition by customer_key order by valid_from) as text
        ) as previous_stage,
        cast(
            coalesce(valid_to, {{ as_of_date() }} + 1) - valid_from as integer
        ) as count_days_in_stage,
        cast(valid_to is null as boolean) as is_current
    from cut
)

select * from final
