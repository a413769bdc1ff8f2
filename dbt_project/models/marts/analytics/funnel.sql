-- The AARRR funnel by acquisition cohort (month a person was first seen: first web visit
-- or first known) and acquisition channel (plus 'all'). A person is a customer_key, or a
-- web visitor (device) never identified. Steps, each a subset of the one before:
--   visitors         everyone reached: web visitors and known contacts/buyers (acquisition)
--   leads            identified: CRM contact, web sign-up/login, or a buyer (activation)
--   first purchase   a completed order by the as-of date (revenue)
--   repeat purchase  two or more completed orders (retention)
--   referrers        referred at least one other person in the CRM (referral; among leads)
with

customers as (
    select * from {{ ref('customers') }}
),

visitors as (
    select * from {{ ref('int_web_visitors_aggregated') }}
),

devices as (
    select * from {{ ref('int_anonymous_ids_stitched') }}
),

seen_visitors as (
    select
        visitors.*,
        devices.customer_key
    from visitors
    left join devices on devices.anonymous_id = visitors.anonymous_id
    where visitors.first_event_date <= {{ as_of_date() }}
),

customer_visits as (
    select
        customer_key,
        min(first_event_date) as first_event_date
    from seen_visitors
    where customer_key is not null
    group by customer_key
),

people as (
    select
        customers.customer_key as person_id,
        least(customers.known_from_date, customer_visits.first_event_date) as first_seen_date,
        customers.acquisition_channel,
        customer_visits.customer_key is not null as is_web_visitor,
        true as is_lead,
        customers.count_orders >= 1 as is_buyer,
        customers.count_orders >= 2 as is_repeat_buyer,
        customers.count_referred_customers >= 1 as is_referrer
    from customers
    left join customer_visits on customer_visits.customer_key = customers.customer_key
    union all
    select
        'anonymous:' || anonymous_id as person_id,
        first_event_date as first_seen_date,
        first_touch_channel as acquisition_channel,
        true as is_web_visitor,
        false as is_lead,
        false as is_buyer,
        false as is_repeat_buyer,
        false as is_referrer
    from seen_visitors
    where customer_key is null
),

by_channel as (
    select
        {{ period_start("'month'", 'first_seen_date') }} as cohort_month,
        acquisition_channel,
        is_web_visitor,
        is_lead,
        is_buyer,
        is_repeat_buyer,
        is_referrer
    from people
    union all
    select
        {{ period_start("'month'", 'first_seen_date') }} as cohort_month,
        'all' as acquisition_channel,
        is_web_visitor,
        is_lead,
        is_buyer,
        is_repeat_buyer,
        is_referrer
    from people
),

counted as (
    select
        cohort_month,
        acquisition_channel,
        count(*) as count_visitors,
        count(*) filter (where is_web_visitor) as count_web_visitors,
        count(*) filter (where is_lead) as count_leads,
        count(*) filter (where is_buyer) as count_first_purchases,
        count(*) filter (where is_repeat_buyer) as count_repeat_purchases,
        count(*) filter (where is_referrer) as count_referrers
    from by_channel
    group by cohort_month, acquisition_channel
),

final as (
    select
        cast(cohort_month as date) as cohort_month,
        cast(acquisition_channel as text) as acquisition_channel,
        cast(count_visitors as integer) as count_visitors,
        cast(count_web_visitors as integer) as count_web_visitors,
        cast(count_leads as integer) as count_leads,
        cast(count_first_purchases as integer) as count_first_purchases,
        cast(count_repeat_purchases as integer) as count_repeat_purchases,
        cast(count_referrers as integer) as count_referrers,
        cast(count_leads::numeric / nullif(count_visitors, 0) as numeric(7, 4)) as lead_rate,
        cast(
            count_first_purchases::numeric / nullif(count_leads, 0) as numeric(7, 4)
        ) as first_purchase_rate,
        cast(
            count_repeat_purchases::numeric / nullif(count_first_purchases, 0)
            as numeric(7, 4)
        ) as repeat_purchase_rate,
        cast(
            count_referrers::numeric / nullif(count_leads, 0) as numeric(7, 4)
        ) as referral_rate,
        cast({{ as_of_date() }} as date) as as_of_date
    from counted
)

select * from final
