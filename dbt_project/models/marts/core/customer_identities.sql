-- The single customer view's map: every source identifier of every person and the
-- customer_key it resolves to.
with

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

devices as (
    select * from {{ ref('int_anonymous_ids_stitched') }}
),

unioned as (
    select
        customer_key,
        identifier_type,
        identifier_value,
        first_observed_at,
        is_anchor
    from identifiers
    union all
    select
        customer_key,
        'anonymous_id' as identifier_type,
        anonymous_id as identifier_value,
        identified_at as first_observed_at,
        false as is_anchor
    from devices
),

final as (
    select
        cast(customer_key as text) as customer_key,
        cast(identifier_type as text) as identifier_type,
        cast(identifier_value as text) as identifier_value,
        cast(first_observed_at as timestamptz) as first_observed_at,
        cast(is_anchor as boolean) as is_anchor
    from unioned
)

select * from final
