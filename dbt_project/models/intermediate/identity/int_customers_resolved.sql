-- One row per person (customer_key) known by the as-of date: when we first knew them
-- (a CRM contact, an identified web visit or an order) and their primary identifiers
-- (the first seen of each type).
with

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

ranked as (
    select
        *,
        row_number() over (
            partition by customer_key, identifier_type
            order by first_observed_at, identifier_value
        ) as type_rank
    from identifiers
),

final as (
    select
        customer_key,
        min(first_observed_at) as known_from_at,
        {{ business_date('min(first_observed_at)') }} as known_from_date,
        max(identifier_value) filter (where is_anchor) as anchor_identifier_value,
        max(identifier_type) filter (where is_anchor) as anchor_identifier_type,
        max(identifier_value) filter (
            where identifier_type = 'email' and type_rank = 1
        ) as primary_email,
        max(identifier_value) filter (
            where identifier_type = 'customer_id' and type_rank = 1
        ) as primary_customer_id,
        max(identifier_value) filter (
            where identifier_type = 'crm_contact_id' and type_rank = 1
        ) as primary_crm_contact_id,
        count(*) filter (where identifier_type = 'email') as count_emails,
        count(*) filter (where identifier_type = 'customer_id') as count_customer_ids,
        count(*) filter (where identifier_type = 'crm_contact_id') as count_crm_contacts
    from ranked
    group by customer_key
)

select * from final
