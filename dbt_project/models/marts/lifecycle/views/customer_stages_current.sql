-- The stage every customer is in on the as-of date, with the stage playbook's action.
with

history as (
    select * from {{ ref('customer_stage_history') }}
),

stages as (
    select * from {{ ref('lifecycle_stages') }}
),

final as (
    select
        cast(history.customer_key as text) as customer_key,
        cast(history.stage as text) as stage,
        cast(history.valid_from as date) as stage_since,
        cast(history.count_days_in_stage as integer) as count_days_in_stage,
        cast(history.previous_stage as text) as previous_stage,
        cast(stages.recommended_action as text) as recommended_action,
        cast({{ as_of_date() }} as date) as as_of_date
    from history
    inner join stages on stages.stage = history.stage
    where history.is_current
)

select * from final
