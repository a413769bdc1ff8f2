-- One row per customer (person) known by the as-of date: identifiers, profile, orders and
-- revenue, web activity, consent and the current lifecycle stage.
with

resolved as (
    select * from {{ ref('int_customers_resolved') }}
),

contacts as not materialized (
    select * from {{ ref('int_contacts_attributed') }}
),

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

orders as (
    select * from {{ ref('int_orders_enriched') }}
),

visitors as (
    select * from {{ ref('int_web_visitors_aggregated') }}
),

devices as (
    select * from {{ ref('int_anonymous_ids_stitched') }}
),

history as (
    select * from {{ ref('customer_stage_history') }}
),

-- the person's oldest CRM contact speaks for their profile
primary_contacts as (
    select distinct on (customer_key)
        *
    from contacts
    order by customer_key, created_at, contact_id
),

-- consent only when every CRM contact of the person is opted in as of the as-of date
consents as (
    select
        customer_key,
        bool_and(coalesce(is_marketing_opt_in, false)) as has_marketing_consent
    from contacts
    group by customer_key
),

referrals as (
    select
        referrers.customer_key,
        count(distinct referred.customer_key) as count_referred_customers
    from contacts as referred
    inner join identifiers as referrers
        on
            referrers.identifier_type = 'crm_contact_id'
            and referrers.identifier_value = referred.referred_by_contact_id
    where referrers.customer_key <> referred.customer_key
    group by referrers.customer_key
),

order_totals as (
    select
        customer_key,
        min(order_date) filter (where is_completed) as first_order_date,
        max(order_date) filter (where is_completed) as last_order_date,
        count(*) filter (where is_completed) as count_orders,
        count(*) filter (where status = 'refunded') as count_refunded_orders,
        coalesce(sum(reporting_amount) filter (where is_completed), 0) as total_revenue
    from orders
    group by customer_key
),

-- the person's devices, as seen by the as-of date
customer_visitors as (
    select
        devices.customer_key,
        visitors.*
    from visitors
    inner join devices on devices.anonymous_id = visitors.anonymous_id
    where visitors.first_event_date <= {{ as_of_date() }}
),

web_first_touches as (
    select distinct on (customer_key)
        customer_key,
        first_touch_channel
    from customer_visitors
    order by customer_key, first_event_at, anonymous_id
),

web_totals as (
    select
        customer_key,
        min(first_event_at) as first_web_visit_at,
        max(last_event_at) as last_web_visit_at,
        sum(count_sessions) as count_web_sessions
    from customer_visitors
    group by customer_key
),

current_stages as (
    select
        customer_key,
        stage,
        valid_from
    from history
    where valid_to is null
),

final as (
    select
        cast(resolved.customer_key as text) as customer_key,
        cast(resolved.primary_email as text) as primary_email,
        cast(resolved.primary_customer_id as text) as primary_customer_id,
        cast(resolved.primary_crm_contact_id as text) as primary_crm_contact_id,
        cast(primary_contacts.first_name as text) as first_name,
        cast(primary_contacts.last_name as text) as last_name,
        cast(primary_contacts.country_code as text) as country_code,
        cast(
            coalesce(
                primary_contacts.acquisition_channel,
                web_first_touches.first_touch_channel,
                'unknown'
            ) as text
        ) as acquisition_channel,
        cast(resolved.known_from_at as timestamptz) as known_from_at,
        cast(resolved.known_from_date as date) as known_from_date,
        cast(order_totals.first_order_date as date) as first_order_date,
        cast(order_totals.last_order_date as date) as last_order_date,
        cast(coalesce(order_totals.count_orders, 0) as integer) as count_orders,
        cast(coalesce(order_totals.count_refunded_orders, 0) as integer)
            as count_refunded_orders,
        cast(coalesce(order_totals.total_revenue, 0) as numeric(18, 2))
            as total_revenue,
        cast(
            order_totals.total_revenue / nullif(order_totals.count_orders, 0)
            as numeric(18, 2)
        ) as average_order_value,
        cast(web_totals.first_web_visit_at as timestamptz) as first_web_visit_at,
        cast(web_totals.last_web_visit_at as timestamptz) as last_web_visit_at,
        cast(coalesce(web_totals.count_web_sessions, 0) as integer) as count_web_sessions,
        cast(coalesce(consents.has_marketing_consent, false) as boolean)
            as has_marketing_consent,
        cast(primary_contacts.crm_lifecycle_stage as text) as crm_lifecycle_stage,
        cast(coalesce(referrals.count_referred_customers, 0) as integer)
            as count_referred_customers,
        cast(resolved.count_emails as integer) as count_emails,
        cast(resolved.count_customer_ids as integer) as count_customer_ids,
        cast(resolved.count_crm_contacts as integer) as count_crm_contacts,
        cast(coalesce(order_totals.count_orders, 0) > 0 as boolean) as is_buyer,
        cast(current_stages.stage as text) as current_stage,
        cast(current_stages.valid_from as date) as current_stage_since,
        cast({{ as_of_date() }} as date) as as_of_date
    from resolved
    left join primary_contacts on primary_contacts.customer_key = resolved.customer_key
    left join consents on consents.customer_key = resolved.customer_key
    left join referrals on referrals.customer_key = resolved.customer_key
    left join order_totals on order_totals.customer_key = resolved.customer_key
    left join web_first_touches on web_first_touches.customer_key = resolved.customer_key
    left join web_totals on web_totals.customer_key = resolved.customer_key
    left join current_stages on current_stages.customer_key = resolved.customer_key
)

select * from final
