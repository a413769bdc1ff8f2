with

source as (
    {{ source_or_empty('orders', 'orders') }}
),

renamed as (
    select
        order_id,
        customer_id,
        {{ normalize_email('email') }} as email,
        ordered_at,
        -- a minimal CSV export has no updated_at: the order is as it was placed
        coalesce(updated_at, ordered_at) as updated_at,
        -- and no status: an order that was placed is a completed order
        coalesce({{ clean_code('status') }}, 'completed') as status,
        {{ currency_code('currency') }} as currency,
        amount,
        quantity,
        _batch_id,
        _loaded_at,
        _source,
        _line
    from source
),

-- One row per order version: the same version re-delivered in another batch is kept once
-- (the copy loaded last).
deduplicated as (
    select
        *,
        row_number() over (
            partition by order_id, updated_at
            order by _loaded_at desc, _batch_id desc, _line desc
        ) as copy_number
    from renamed
),

final as (
    select
        order_id,
        customer_id,
        email,
        ordered_at,
        updated_at,
        status,
        currency,
        amount,
        quantity,
        _batch_id,
        _loaded_at
    from deduplicated
    where copy_number = 1
)

select * from final
