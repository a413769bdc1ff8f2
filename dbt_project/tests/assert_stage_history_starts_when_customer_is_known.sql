-- Every customer's stage history starts on the day they became known and ends with
-- exactly one current stage, the one marts.customers reports.
with

history as (
    select * from {{ ref('customer_stage_history') }}
),

customers as (
    select * from {{ ref('customers') }}
),

summarized as (
    select
        customer_key,
        min(valid_from) as first_valid_from,
        count(*) filter (where is_current) as count_current,
        max(stage) filter (where is_current) as current_stage
    from history
    group by customer_key
),

final as (
    select
        customers.customer_key,
        customers.known_from_date,
        summarized.first_valid_from,
        summarized.count_current,
        customers.current_stage,
        summarized.current_stage as history_current_stage
    from customers
    left join summarized on summarized.customer_key = customers.customer_key
    where
        summarized.customer_key is null
        or summarized.first_valid_from <> customers.known_from_date
        or summarized.count_current <> 1
        or summarized.current_stage is distinct from customers.current_stage
)

select * from final
