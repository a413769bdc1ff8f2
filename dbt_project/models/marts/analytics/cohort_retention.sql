-- Acquisition cohorts (month of the first completed order) by months since acquisition,
-- for all customers (acquisition_channel = 'all') and per acquisition channel: cohort
-- size, customers active (a completed order in that month), retention, revenue, revenue
-- retention and the cumulative revenue per customer (the LTV curve). Orders as known on
-- the as-of date: refunded and cancelled orders do not count.
with

customers as (
    select * from {{ ref('customers') }}
),

orders as (
    select * from {{ ref('int_orders_enriched') }}
),

buyers as (
    select
        customer_key,
        acquisition_channel,
        {{ period_start("'month'", 'first_order_date') }} as cohort_month
    from customers
    where first_order_date is not null
),

cohort_members as (
    select customer_key, cohort_month, acquisition_channel from buyers
    union all
    select customer_key, cohort_month, 'all' as acquisition_channel from buyers
),

monthly_orders as (
    select
        customer_key,
        {{ period_start("'month'", 'order_date') }} as activity_month,
        sum(reporting_amount) as revenue
    from orders
    where is_completed
    group by customer_key, {{ period_start("'month'", 'order_date') }}
),

cohort_sizes as (
    select
        cohort_month,
        acquisition_channel,
        count(*) as count_cohort_customers
    from cohort_members
    group by cohort_month, acquisition_channel
),

-- every month from the cohort's first to the as-of date's, active or not
grid as (
    select
        cohort_sizes.cohort_month,
        cohort_sizes.acquisition_channel,
        cohort_sizes.count_cohort_customers,
        cast(months.month_start as date) as activity_month
    from cohort_sizes
    cross join lateral generate_series(
        cast(cohort_sizes.cohort_month as timestamp),
        cast({{ period_start("'month'", as_of_date()) }} as timestamp),
        interval '1 month'
    ) as months (month_start)
),

activity as (
    select
        cohort_members.cohort_month,
        cohort_members.acquisition_channel,
        monthly_orders.activity_month,
        count(*) as count_active_customers,
        sum(monthly_orders.revenue) as revenue
    from cohort_members
    inner join monthly_orders on monthly_orders.customer_key = cohort_members.customer_key
    group by
        cohort_members.cohort_month,
        cohort_members.acquisition_channel,
        monthly_orders.activity_month
),

filled as (
    select
        grid.cohort_month,
        grid.acquisition_channel,
        grid.activity_month,
        (extract(year from age(grid.activity_month, grid.cohort_month)) * 12
            + extract(month from age(grid.activity_month, grid.cohort_month)))::integer
            as months_since_acquisition,
        grid.count_cohort_customers,
        coalesce(activity.count_active_customers, 0) as count_active_customers,
        coalesce(activity.revenue, 0) as revenue
    from grid
    left join activity
        on
            activity.cohort_month = grid.cohort_month
            and activity.acquisition_channel = grid.acquisition_channel
            and activity.activity_month = grid.activity_month
),

final as (
    select
        cast(cohort_month as date) as cohort_month,
        cast(acquisition_channel as text) as acquisition_channel,
        cast(months_since_acquisition as integer) as months_since_acquisition,
        cast(activity_month as date) as activity_month,
        cast(count_cohort_customers as integer) as count_cohort_customers,
        cast(count_active_customers as integer) as count_active_customers,
        cast(
            count_active_customers::numeric / count_cohort_customers as numeric(7, 4)
        ) as retention_rate,
        cast(revenue as numeric(18, 2)) as revenue,
        cast(
            revenue / nullif(
                first_value(revenue) over cohort_months, 0
            ) as numeric(10, 4)
        ) as revenue_retention_rate,
        cast(
            sum(revenue) over cohort_months_to_date as numeric(18, 2)
        ) as cumulative_revenue,
        cast(
            sum(revenue) over cohort_months_to_date / count_cohort_customers
            as numeric(18, 2)
        ) as cumulative_revenue_per_customer
    from filled
    window
        cohort_months as (
            partition by cohort_month, acquisition_channel order by months_since_acquisition
        ),
        cohort_months_to_date as (
            partition by cohort_month, acquisition_channel
            order by months_since_acquisition
            rows unbounded preceding
        )
)

select * from final
