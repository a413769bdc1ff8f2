-- Each order's history as versions with validity intervals [valid_from_at, valid_to_at),
-- reconstructed from the versions' updated_at (valid time, not load time):
--   * the first version holds from ordered_at; each later one from its updated_at;
--   * an order first seen already refunded was completed from ordered_at until the
--     refund: it gets an inferred `completed` version for that span;
--   * only `completed` versions count as completed orders (refunded and cancelled never);
--   * amounts are converted to the reporting currency at the rate of the order's day.
with

orders as (
    select * from {{ ref('stg_orders__orders') }}
),

sequenced as (
    select
        *,
        row_number() over (partition by order_id order by updated_at) as version_number,
        lead(updated_at) over (partition by order_id order by updated_at) as next_updated_at
    from orders
),

observed_versions as (
    select
        order_id,
        customer_id,
        email,
        ordered_at,
        version_number,
        updated_at,
        status,
        currency,
        amount,
        false as is_inferred,
        case
            when version_number = 1 and status <> 'refunded' then ordered_at
            else greatest(updated_at, ordered_at)
        end as valid_from_at,
        next_updated_at as valid_to_at
    from sequenced
),

inferred_completions as (
    select
        order_id,
        customer_id,
        email,
        ordered_at,
        0 as version_number,
        -- recorded with the refund that revealed it
        updated_at,
        'completed' as status,
        currency,
        amount,
        true as is_inferred,
        ordered_at as valid_from_at,
        updated_at as valid_to_at
    from sequenced
    where
        version_number = 1
        and status = 'refunded'
        and updated_at > ordered_at
),

unioned as (
    select * from observed_versions
    union all
    select * from inferred_completions
),

dated as (
    select
        *,
        {{ business_date('ordered_at') }} as order_date
    from unioned
),

order_days as (
    select distinct
        currency,
        order_date as rate_date
    from dated
),

day_rates as (
    {{ fx_day_rates('order_days') }}
),

final as (
    select
        dated.order_id,
        dated.customer_id,
        dated.email,
        dated.ordered_at,
        dated.order_date,
        dated.version_number,
        dated.updated_at,
        dated.status,
        dated.status = 'completed' as is_completed,
        dated.is_inferred,
        dated.currency,
        dated.amount,
        day_rates.rate as fx_rate,
        {{ to_reporting_currency('dated.amount', 'day_rates.rate') }} as reporting_amount,
        dated.valid_from_at,
        dated.valid_to_at,
        {{ business_date('dated.valid_from_at') }} as valid_from_date,
        {{ business_date('dated.valid_to_at') }} as valid_to_date
    from dated
    left join day_rates
        on
            day_rates.currency = dated.currency
            and day_rates.rate_date = dated.order_date
)

select * from final
