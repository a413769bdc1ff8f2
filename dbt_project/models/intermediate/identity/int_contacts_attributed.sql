-- One row per CRM contact known by the as-of date, in its state as of that date (the
-- latest version updated by then; a contact created earlier but first exported later
-- shows its first known version), attributed to its customer.
with

contacts as (
    select * from {{ ref('stg_crm__contacts') }}
),

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

versions as (
    select
        *,
        case
            when row_number() over (partition by contact_id order by updated_at) = 1
                then least(coalesce(created_at, updated_at), updated_at)
            else updated_at
        end as valid_from_at
    from contacts
),

visible_versions as (
    select
        *,
        -- the channel is set once at creation; a later version may have lost it
        max(acquisition_channel) over (partition by contact_id) as any_acquisition_channel
    from versions
    where {{ business_date('valid_from_at') }} <= {{ as_of_date() }}
),

as_of_versions as (
    select distinct on (contact_id)
        *
    from visible_versions
    order by contact_id, valid_from_at desc, updated_at desc
),

final as (
    select
        identifiers.customer_key,
        as_of_versions.contact_id,
        as_of_versions.email,
        as_of_versions.first_name,
        as_of_versions.last_name,
        as_of_versions.phone,
        as_of_versions.country_code,
        coalesce(as_of_versions.created_at, as_of_versions.valid_from_at) as created_at,
        as_of_versions.updated_at,
        coalesce(
            as_of_versions.acquisition_channel, as_of_versions.any_acquisition_channel
        ) as acquisition_channel,
        as_of_versions.is_marketing_opt_in,
        as_of_versions.crm_lifecycle_stage,
        as_of_versions.referred_by_contact_id
    from as_of_versions
    inner join identifiers
        on
            identifiers.identifier_type = 'crm_contact_id'
            and identifiers.identifier_value = as_of_versions.contact_id
)

select * from final
