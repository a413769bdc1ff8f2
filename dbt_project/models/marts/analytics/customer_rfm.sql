-- RFM scores and segments of every buyer (a completed order by the as-of date).
-- Scores 1-5 are quintiles of recency (days since the last completed order; recent = 5),
-- frequency (completed orders) and monetary value (revenue, reporting currency): 1 + floor(5 × the
-- percent rank), so equal values always get equal scores. The segment comes from the
-- common RFM segment map on recency and FM = round((F + M) / 2) (seed rfm_segment_map).
with

orders as (
    select * from {{ ref('int_orders_enriched') }}
),

segment_map as (
    select * from {{ ref('rfm_segment_map') }}
),

buyers as (
    select
        customer_key,
        max(order_date) as last_order_date,
        count(*) as count_orders,
        sum(reporting_amount) as total_revenue
    from orders
    where is_completed
    group by customer_key
),

measured as (
    select
        *,
        {{ as_of_date() }} - last_order_date as recency_days
    from buyers
),

scored as (
    select
        *,
        least(5, 1 + floor(5 * percent_rank() over (order by recency_days desc)))::integer
            as recency_score,
        least(5, 1 + floor(5 * percent_rank() over (order by count_orders)))::integer
            as frequency_score,
        least(5, 1 + floor(5 * percent_rank() over (order by total_revenue)))::integer
            as monetary_score
    from measured
),

combined as (
    select
        *,
        round((frequency_score + monetary_score) / 2.0)::integer as frequency_monetary_score
    from scored
),

final as (
    select
        cast(combined.customer_key as text) as customer_key,
        cast(combined.last_order_date as date) as last_order_date,
        cast(combined.recency_days as integer) as recency_days,
        cast(combined.count_orders as integer) as count_orders,
        cast(combined.total_revenue as numeric(18, 2)) as total_revenue,
        cast(combined.recency_score as integer) as recency_score,
        cast(combined.frequency_score as integer) as frequency_score,
        cast(combined.monetary_score as integer) as monetary_score,
        cast(combined.frequency_monetary_score as integer) as frequency_monetary_score,
        cast(
            combined.recency_score::text
            || combined.frequency_score::text
            || combined.monetary_score::text as text
        ) as rfm_score,
        cast(segment_map.rfm_segment as text) as rfm_segment,
        cast(segment_map.rfm_segment_label as text) as rfm_segment_label,
        cast({{ as_of_date() }} as date) as as_of_date
    from combined
    inner join segment_map
        on
            segment_map.recency_score = combined.recency_score
            and segment_map.frequency_monetary_score = combined.frequency_monetary_score
)

select * from final
