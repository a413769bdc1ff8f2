-- Daily exchange rates to the reporting currency. Each batch of the fx source is a full
-- copy of the rates file: a restated rate is the copy loaded last. A table with an index
-- on (currency, rate_date): the conversion looks up the rate of each day of each currency.
{{ config(materialized='table', indexes=[{'columns': ['currency', 'rate_date']}]) }}

with

source as (
    {{ source_or_empty('fx', 'rates') }}
),

renamed as (
    select
        "date" as rate_date,
        upper(btrim(currency)) as currency,
        rate,
        _batch_id,
        _loaded_at,
        _line
    from source
    where rate > 0
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by currency, rate_date
            order by _loaded_at desc, _batch_id desc, _line desc
        ) as copy_number
    from renamed
),

final as (
    select
        rate_date,
        currency,
        rate,
        _batch_id,
        _loaded_at
    from deduplicated
    where copy_number = 1
)

select * from final
