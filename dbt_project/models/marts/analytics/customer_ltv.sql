-- Historical value of every buyer as of the as-of date: what they have spent (net of
-- refunds), how often and how recently, and the last 12 months.
with

customers as (
    select * from {{ ref('customers') }}
),

orders as (
    select * from {{ ref('int_orders_enriched') }}
),

recent_orders as (
    select
        customer_key,
        count(*) as count_orders_last_365_days,
        sum(reporting_amount) as revenue_last_365_days
    from orders
    where is_completed and order_date > {{ as_of_date() }} - 365
    group by customer_key
),

final as (
    select
        cast(customers.customer_key as text) as customer_key,
        cast(customers.acquisition_channel as text) as acquisition_channel,
        cast({{ period_start("'month'", 'customers.first_order_date') }} as date)
            as cohort_month,
        cast(customers.first_order_date as date) as first_order_date,
        cast(customers.last_order_date as date) as last_order_date,
        cast({{ as_of_date() }} - customers.first_order_date as integer)
            as days_since_first_order,
        cast({{ as_of_date() }} - customers.last_order_date as integer)
            as days_since_last_order,
        cast(customers.count_orders as integer) as count_orders,
        cast(customers.total_revenue as numeric(18, 2)) as historical_ltv,
        cast(customers.average_order_value as numeric(18, 2)) as average_order_value,
        cast(coalesce(recent_orders.count_orders_last_365_days, 0) as integer)
            as count_orders_last_365_days,
        cast(coalesce(recent_orders.revenue_last_365_days, 0) as numeric(18, 2))
            as revenue_last_365_days,
        cast(customers.current_stage as text) as current_stage,
        cast({{ as_of_date() }} as date) as as_of_date
    from customers
    left join recent_orders on recent_orders.customer_key = customers.customer_key
    where customers.is_buyer
)

select * from final
