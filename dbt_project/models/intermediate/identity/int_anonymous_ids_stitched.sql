-- Anonymous web ids (devices) stitched to a person by their first identifying event by the
-- as-of date: the first event of the device that carries a user_id (sign-up, login) or,
-- failing that, an email. A shared device belongs to the first person who identified on
-- it: devices never merge two people.
with

identities as (
    select * from {{ ref('int_web_identities_observed') }}
),

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

identifying_events as (
    select
        anonymous_id,
        first_observed_at,
        case when user_id is not null then 'customer_id' else 'email' end as identifier_type,
        coalesce(user_id, email) as identifier_value,
        row_number() over (
            partition by anonymous_id
            order by (user_id is null), first_observed_at, user_id, email
        ) as identification_rank
    from identities
    where
        anonymous_id is not null
        and {{ business_date('first_observed_at') }} <= {{ as_of_date() }}
),

final as (
    select
        identifiers.customer_key,
        identifying_events.anonymous_id,
        identifying_events.first_observed_at as identified_at,
        identifying_events.identifier_type as identified_by_type,
        identifying_events.identifier_value as identified_by_value
    from identifying_events
    inner join identifiers
        on
            identifiers.identifier_type = identifying_events.identifier_type
            and identifiers.identifier_value = identifying_events.identifier_value
    where identifying_events.identification_rank = 1
)

select * from final
