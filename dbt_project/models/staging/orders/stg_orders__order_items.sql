with

source as (
    {{ source_or_empty('orders', 'order_items') }}
),

renamed as (
    select
        order_item_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        updated_at,
        _batch_id,
        _loaded_at,
        _source,
        _line
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by order_item_id, updated_at
            order by _loaded_at desc, _batch_id desc, _line desc
        ) as copy_number
    from renamed
),

final as (
    select
        order_item_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        updated_at,
        _batch_id,
        _loaded_at
    from deduplicated
    where copy_number = 1
)

select * from final
