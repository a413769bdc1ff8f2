-- Customer lifetime value by acquisition channel with the planning formula
--   LTV = average order value × orders per year × expected relationship years
-- and LTV/CAC where marketing spend is known. One row per acquisition channel, plus
-- 'all'. Definitions (window = the ltv_window_days days up to the as-of date):
--   * average order value: revenue / completed orders of the channel's buyers, all time;
--   * orders per year: completed orders in the window per buyer who ordered in it;
--   * expected relationship years: 1 / annual churn rate, where the churn rate is the
--     buyers who entered `churned` in the window over the buyers exposed to churn in it
--     (in a buying stage the day before the window, or first buying in it), annualized
--     to the days the window covers; capped at max_relationship_years, and the
--     expected_relationship_years var when no churn has been observed yet;
--   * CAC: marketing spend (in the reporting currency, at the rate of each spend day) up
--     to the as-of date / the channel's buyers.
with

customers as not materialized (
    select * from {{ ref('customers') }}
),

orders as (
    select * from {{ ref('int_orders_enriched') }}
),

history as (
    select * from {{ ref('customer_stage_history') }}
),

spend_in_currency as not materialized (
    select * from {{ ref('stg_marketing__spend') }}
),

spend_days as (
    select distinct
        currency,
        spend_date as rate_date
    from spend_in_currency
),

spend_day_rates as (
    {{ fx_day_rates('spend_days') }}
),

spend as (
    select
        spend_in_currency.spend_date,
        spend_in_currency.acquisition_channel,
        {{ to_reporting_currency('spend_in_currency.spend_amount', 'spend_day_rates.rate') }}
            as spend_amount
    from spend_in_currency
    left join spend_day_rates
        on
            spend_day_rates.currency = spend_in_currency.currency
            and spend_day_rates.rate_date = spend_in_currency.spend_date
),

window_bounds as (
    select
        {{ as_of_date() }} - {{ var('ltv_window_days') }} as window_start_exclusive,
        least(
            {{ var('ltv_window_days') }},
            {{ as_of_date() }} - min(first_order_date) + 1
        ) as covered_days
    from customers
    where first_order_date is not null
),

buyers as (
    select customer_key, acquisition_channel, first_order_date
    from customers
    where is_buyer
),

-- Each buyer's orders and stage history are summarized once, then summed per channel and
-- for 'all' (grouping sets): a buyer is in one channel, so the distinct counts are sums of
-- per-buyer flags. (Joining every order and interval to the buyers twice, once per
-- channel and once for 'all', then counting distinct customers per channel sorted
-- millions of rows: 27 s of a 1M customer day.)
buyer_order_sums as (
    select
        orders.customer_key,
        count(*) as count_orders,
        sum(orders.reporting_amount) as revenue,
        count(*) filter (
            where orders.order_date > window_bounds.window_start_exclusive
        ) as count_orders_in_window
    from orders
    cross join window_bounds
    where orders.is_completed
    group by orders.customer_key
),

buyer_history_flags as (
    select
        history.customer_key,
        coalesce(bool_or(
            history.stage = 'churned'
            and history.valid_from > window_bounds.window_start_exclusive
        ), false) as is_churned_in_window,
        coalesce(bool_or(
            history.stage not in ('prospect', 'churned')
            and history.valid_from <= window_bounds.window_start_exclusive
            and (
                history.valid_to is null
                or history.valid_to > window_bounds.window_start_exclusive
            )
        ), false) as is_exposed_in_history
    from history
    cross join window_bounds
    group by history.customer_key
),

buyer_orders as (
    select
        {{ channel_or_all('buyers.acquisition_channel') }} as acquisition_channel,
        sum(sums.count_orders) as count_orders,
        sum(sums.revenue) as revenue,
        sum(sums.count_orders_in_window) as count_orders_in_window,
        count(*) filter (where sums.count_orders_in_window > 0) as count_buyers_in_window
    from buyers
    inner join buyer_order_sums as sums on sums.customer_key = buyers.customer_key
    group by grouping sets ((buyers.acquisition_channel), ())
    having count(*) > 0
),

churn as (
    select
        {{ channel_or_all('buyers.acquisition_channel') }} as acquisition_channel,
        count(*) filter (where flags.is_churned_in_window) as count_churned_in_window,
        count(*) filter (
            where
                flags.is_exposed_in_history
                or buyers.first_order_date > window_bounds.window_start_exclusive
        ) as count_exposed_to_churn
    from buyers
    inner join buyer_history_flags as flags on flags.customer_key = buyers.customer_key
    cross join window_bounds
    group by grouping sets ((buyers.acquisition_channel), ())
    having count(*) > 0
),

channel_spend as (
    select
        acquisition_channel,
        sum(spend_amount) as spend
    from spend
    where spend_date <= {{ as_of_date() }}
    group by acquisition_channel
    union all
    select
        'all' as acquisition_channel,
        sum(spend_amount) as spend
    from spend
    where spend_date <= {{ as_of_date() }}
    having count(*) > 0
),

buyer_counts as (
    select
        {{ channel_or_all('acquisition_channel') }} as acquisition_channel,
        count(*) as count_buyers
    from buyers
    group by grouping sets ((acquisition_channel), ())
    having count(*) > 0
),

channels as (
    select acquisition_channel from buyer_counts
    union
    select acquisition_channel from channel_spend
),

measured as (
    select
        channels.acquisition_channel,
        coalesce(buyer_counts.count_buyers, 0) as count_buyers,
        coalesce(buyer_orders.count_orders, 0) as count_orders,
        coalesce(buyer_orders.revenue, 0) as revenue,
        buyer_orders.revenue / nullif(buyer_orders.count_orders, 0)
            as average_order_value,
        buyer_orders.count_orders_in_window::numeric
        / nullif(buyer_orders.count_buyers_in_window, 0) as orders_per_year,
        coalesce(churn.count_churned_in_window, 0) as count_churned_in_window,
        coalesce(churn.count_exposed_to_churn, 0) as count_exposed_to_churn,
        churn.count_churned_in_window::numeric
        / nullif(churn.count_exposed_to_churn, 0)
        * 365.25 / nullif(window_bounds.covered_days, 0) as annual_churn_rate,
        channel_spend.spend
    from channels
    cross join window_bounds
    left join buyer_counts on buyer_counts.acquisition_channel = channels.acquisition_channel
    left join buyer_orders on buyer_orders.acquisition_channel = channels.acquisition_channel
    left join churn on churn.acquisition_channel = channels.acquisition_channel
    left join channel_spend on channel_spend.acquisition_channel = channels.acquisition_channel
),

planned as (
    select
        *,
        case
            when annual_churn_rate > 0
                then least(1 / annual_churn_rate, {{ var('max_relationship_years') }})
            else {{ var('expected_relationship_years') }}
        end as expected_relationship_years,
        case
            when annual_churn_rate > 0 then 'observed_churn' else 'default'
        end as relationship_years_source,
        spend / nullif(count_buyers, 0) as cac
    from measured
),

final as (
    select
        cast(acquisition_channel as text) as acquisition_channel,
        cast(count_buyers as integer) as count_buyers,
        cast(count_orders as integer) as count_orders,
        cast(revenue as numeric(18, 2)) as revenue,
        cast(average_order_value as numeric(18, 2)) as average_order_value,
        cast(orders_per_year as numeric(10, 4)) as orders_per_year,
        cast(count_churned_in_window as integer) as count_churned_in_window,
        cast(count_exposed_to_churn as integer) as count_exposed_to_churn,
        cast(annual_churn_rate as numeric(10, 4)) as annual_churn_rate,
        cast(expected_relationship_years as numeric(10, 4)) as expected_relationship_years,
        cast(relationship_years_source as text) as relationship_years_source,
        cast(
            average_order_value * orders_per_year * expected_relationship_years
            as numeric(18, 2)
        ) as ltv,
        cast(spend as numeric(18, 2)) as spend,
        cast(cac as numeric(18, 2)) as cac,
        cast(
            average_order_value * orders_per_year * expected_relationship_years
            / nullif(cac, 0) as numeric(10, 4)
        ) as ltv_to_cac_ratio,
        cast({{ as_of_date() }} as date) as as_of_date
    from planned
)

select * from final
