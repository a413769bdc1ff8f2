with

source as (
    {{ source_or_empty('marketing', 'spend') }}
),

renamed as (
    select
        "date" as spend_date,
        {{ clean_code('channel') }} as acquisition_channel,
        spend as spend_amount,
        {{ currency_code('currency') }} as currency,
        _batch_id,
        _loaded_at,
        _source,
        _line
    from source
),

-- A day's spend can be restated by a later export: the copy loaded last wins.
deduplicated as (
    select
        *,
        row_number() over (
            partition by spend_date, acquisition_channel
            order by _loaded_at desc, _batch_id desc, _line desc
        ) as copy_number
    from renamed
),

final as (
    select
        spend_date,
        acquisition_channel,
        spend_amount,
        currency,
        _batch_id,
        _loaded_at
    from deduplicated
    where copy_number = 1
)

select * from final
