-- Every pair of identifiers seen together in a source record (or an identifier seen on its
-- own), with the first time the pair was seen. Only what happened by the as-of date counts.
with

contacts as (
    select * from {{ ref('stg_crm__contacts') }}
),

orders as (
    select * from {{ ref('stg_orders__orders') }}
),

web_identities as (
    select * from {{ ref('int_web_identities_observed') }}
),

-- A contact version holds from its update on; the first version holds from the
-- contact's creation (a CRM export only shows a contact's latest state).
contact_versions as (
    select
        contact_id,
        email,
        case
            when row_number() over (partition by contact_id order by updated_at) = 1
                then least(coalesce(created_at, updated_at), updated_at)
            else updated_at
        end as observed_at
    from contacts
),

contact_links as (
    select
        'crm_contact_id' as identifier_type_a,
        contact_id as identifier_a,
        case when email is null then 'crm_contact_id' else 'email' end as identifier_type_b,
        coalesce(email, contact_id) as identifier_b,
        observed_at
    from contact_versions
),

-- The shop customer id and the email it ordered with.
order_links as (
    select
        'customer_id' as identifier_type_a,
        customer_id as identifier_a,
        case when email is null then 'customer_id' else 'email' end as identifier_type_b,
        coalesce(email, customer_id) as identifier_b,
        ordered_at as observed_at
    from orders
),

-- A web user_id is the shop customer id; identify/sign-up events also carry the email.
-- Events with an email but no user_id identify the email alone.
event_links as (
    select
        case when user_id is null then 'email' else 'customer_id' end as identifier_type_a,
        coalesce(user_id, email) as identifier_a,
        case when email is null then 'customer_id' else 'email' end as identifier_type_b,
        coalesce(email, user_id) as identifier_b,
        first_observed_at as observed_at
    from web_identities
),

unioned as (
    select * from contact_links
    union all
    select * from order_links
    union all
    select * from event_links
),

final as (
    select
        identifier_type_a,
        identifier_a,
        identifier_type_b,
        identifier_b,
        min(observed_at) as first_observed_at
    from unioned
    where {{ business_date('observed_at') }} <= {{ as_of_date() }}
    group by identifier_type_a, identifier_a, identifier_type_b, identifier_b
)

select * from final
