with

source as (
    {{ source_or_empty('crm', 'contacts') }}
),

renamed as (
    select
        id as contact_id,
        {{ normalize_email('email') }} as email,
        nullif(btrim(first_name), '') as first_name,
        nullif(btrim(last_name), '') as last_name,
        nullif(btrim(phone), '') as phone,
        upper(nullif(btrim(country), '')) as country_code,
        created_at,
        updated_at,
        {{ clean_code('acquisition_channel') }} as acquisition_channel,
        marketing_opt_in as is_marketing_opt_in,
        {{ clean_code('lifecycle_stage') }} as crm_lifecycle_stage,
        nullif(btrim(referred_by), '') as referred_by_contact_id,
        _batch_id,
        _loaded_at,
        _source,
        _line
    from source
),

-- The same contact version can land in several batches (a rerun, an overlapping
-- export): keep the copy loaded last.
deduplicated as (
    select
        *,
        row_number() over (
            partition by contact_id, updated_at
            order by _loaded_at desc, _batch_id desc, _line desc
        ) as copy_number
    from renamed
),

final as (
    select
        contact_id,
        email,
        first_name,
        last_name,
        phone,
        country_code,
        created_at,
        updated_at,
        acquisition_channel,
        is_marketing_opt_in,
        crm_lifecycle_stage,
        referred_by_contact_id,
        _batch_id,
        _loaded_at
    from deduplicated
    where copy_number = 1
)

select * from final
