{{
    config(
        materialized='incremental',
        unique_key=['identifier_type_a', 'identifier_a', 'identifier_type_b', 'identifier_b'],
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {
                'columns': ['identifier_type_a', 'identifier_a', 'identifier_type_b', 'identifier_b'],
                'unique': true,
            },
        ],
        pre_hook=[
            "create sequence if not exists {{ generation_sequence() }}",
        ],
    )
}}

-- Every pair of identifiers seen together in a source record (or an identifier seen on its
-- own), with the first time the pair was seen. Only what happened by the as-of date counts.
--
-- Incremental, so that identity resolution follows the change: every run recomputes the
-- links from the sources and compares them with the table; only the differences are
-- written, numbered with the build's generation (a sequence, so that a rebuilt table
-- still numbers above the builds before it): a new link, a link whose first_observed_at
-- moved, and a link gone (an erased or reloaded record, a backfill as of an earlier date)
-- as a tombstone (is_gone). int_identifiers_clustered re-resolves the components that
-- touch a link of a generation it has not resolved yet, then drops the tombstones (its
-- post-hook), so after a build the table holds the links of a full refresh. A build
-- whose resolution did not run leaves its generation for the next one. Nothing is ever
-- updated in place: a full refresh costs one write of each link.
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

linked as (
    select
        identifier_type_a,
        identifier_a,
        identifier_type_b,
        identifier_b,
        min(observed_at) as first_observed_at
    from unioned
    where {{ business_date('observed_at') }} <= {{ as_of_date() }}
    group by identifier_type_a, identifier_a, identifier_type_b, identifier_b
),

build as (
    -- once per build (a volatile function: the CTE is evaluated once, not inlined)
    select nextval('{{ generation_sequence() }}') as generation
),

{% if is_incremental() %}
{#- a table of an older release has no generation (nor tombstones): its rows are
    written again, numbered -#}
{%- set columns = relation_columns(this) %}
previous as (
    select
        identifier_type_a,
        identifier_a,
        identifier_type_b,
        identifier_b,
        first_observed_at,
        {{ 'is_gone' if 'is_gone' in columns else 'false as is_gone' }},
        {{ 'generation' if 'generation' in columns else 'null::bigint as generation' }}
    from {{ this }}
),

changed as (
    select
        coalesce(linked.identifier_type_a, previous.identifier_type_a) as identifier_type_a,
        coalesce(linked.identifier_a, previous.identifier_a) as identifier_a,
        coalesce(linked.identifier_type_b, previous.identifier_type_b) as identifier_type_b,
        coalesce(linked.identifier_b, previous.identifier_b) as identifier_b,
        coalesce(linked.first_observed_at, previous.first_observed_at) as first_observed_at,
        linked.identifier_a is null as is_gone
    from linked
    full join previous
        on previous.identifier_type_a = linked.identifier_type_a
        and previous.identifier_a = linked.identifier_a
        and previous.identifier_type_b = linked.identifier_type_b
        and previous.identifier_b = linked.identifier_b
    where
        -- gone since the last build
        (linked.identifier_a is null and previous.is_gone is not true)
        -- new
        or previous.identifier_a is null
        -- back after a tombstone, or first seen at another time
        or (
            linked.identifier_a is not null
            and (
                previous.is_gone is true
                or previous.first_observed_at is distinct from linked.first_observed_at
            )
        )
        -- written by an older release
        or previous.generation is null
),
{% else %}
changed as (
    select
        *,
        false as is_gone
    from linked
),
{% endif %}

final as (
    select
        changed.*,
        build.generation
    from changed
    cross join build
)

select * from final
