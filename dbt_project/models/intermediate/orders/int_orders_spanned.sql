-- The days on which each order counted as a completed order, as of the as-of date:
-- one row per order and contiguous span [span_from_date, span_to_date) (end null = still
-- completed on the as-of date). Stage history is evaluated at the end of each day, so an
-- order counts from the day it was placed and stops counting on the day it was refunded;
-- one placed and refunded on the same day never counts. This is the input of the stage
-- engine.
with

versions as (
    select * from {{ ref('int_orders_versioned') }}
),

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

completed_days as (
    select
        order_id,
        customer_id,
        order_date,
        valid_from_date,
        -- what happens after the as-of date is not known as of it
        case when valid_to_date > {{ as_of_date() }} then null else valid_to_date end
            as valid_to_date
    from versions
    where
        is_completed
        and order_date <= {{ as_of_date() }}
        and valid_from_date <= {{ as_of_date() }}
        and (valid_to_date is null or valid_to_date > valid_from_date)
),

-- Back-to-back completed versions (e.g. an edited amount) form one span.
flagged as (
    select
        *,
        case
            when lag(valid_to_date) over (partition by order_id order by valid_from_date)
                = valid_from_date
                then 0
            else 1
        end as is_span_start
    from completed_days
),

numbered as (
    select
        *,
        sum(is_span_start) over (
            partition by order_id order by valid_from_date rows unbounded preceding
        ) as span_number
    from flagged
),

spans as (
    select
        order_id,
        customer_id,
        order_date,
        span_number,
        min(valid_from_date) as span_from_date,
        case when bool_or(valid_to_date is null) then null else max(valid_to_date) end
            as span_to_date
    from numbered
    group by order_id, customer_id, order_date, span_number
),

final as (
    select
        identifiers.customer_key,
        spans.order_id,
        spans.order_date,
        spans.span_from_date,
        spans.span_to_date
    from spans
    inner join identifiers
        on
            identifiers.identifier_type = 'customer_id'
            and identifiers.identifier_value = spans.customer_id
)

select * from final
