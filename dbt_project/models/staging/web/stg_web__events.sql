{{
    config(
        incremental_strategy='append',
        on_schema_change='append_new_columns',
        indexes=[
            {'columns': ['event_id'], 'unique': true},
            {'columns': ['_loaded_at']},
            {'columns': ['anonymous_id', 'session_id']},
            {'columns': ['_built_at']},
        ],
        post_hook=[
            "{{ drop_superseded_index(['anonymous_id']) }}",
            "{{ drop_superseded_index(['_built_at'], method='brin') }}",
        ],
    )
}}

-- `_built_at` (the rows a build appended, read by its data tests) is a btree index: a
-- day's narrow rows fill the free space of earlier pages, so a block-range index matched
-- most of the table (the release before had one: the post-hook drops it).

with

source as (
    {{ source_or_empty('web', 'events') }}
),

renamed as (
    select
        event_id,
        nullif(btrim(anonymous_id), '') as anonymous_id,
        -- the web user_id is the shop's customer_id
        nullif(btrim(user_id), '') as user_id,
        {{ normalize_email('email') }} as email,
        {{ clean_code('event') }} as event_name,
        "timestamp" as event_at,
        received_at,
        nullif(btrim(session_id), '') as session_id,
        page_url,
        {{ clean_code('utm_source') }} as utm_source,
        {{ clean_code('utm_medium') }} as utm_medium,
        {{ clean_code('utm_campaign') }} as utm_campaign,
        nullif(btrim(order_id), '') as order_id,
        nullif(btrim(product_id), '') as product_id,
        _batch_id,
        _loaded_at,
        _line
    from source
    {% if is_incremental() %}
    -- raw batches landed since the last run (var incremental_lookback_hours: a margin for
    -- loads that commit while a transform runs; 0 when loads and transforms alternate)
    where _loaded_at > {{ incremental_watermark('_loaded_at') }}
    {% endif %}
),

-- Trackers deliver at least once and late files re-deliver events: one row per event_id,
-- the first copy loaded (on an incremental run: unless an earlier run already kept one).
deduplicated as (
    select
        *,
        row_number() over (
            partition by event_id
            order by _loaded_at, _batch_id, _line
        ) as copy_number
    from renamed
),

final as (
    select
        event_id,
        anonymous_id,
        user_id,
        email,
        event_name,
        event_at,
        {{ business_date('event_at') }} as event_date,
        received_at,
        session_id,
        page_url,
        utm_source,
        utm_medium,
        utm_campaign,
        order_id,
        product_id,
        _batch_id,
        _loaded_at,
        {{ this_build_at() }} as _built_at
    from deduplicated
    where
        copy_number = 1
        {% if is_incremental() %}
        and not exists (
            select 1 from {{ this }} as kept where kept.event_id = deduplicated.event_id
        )
        {% endif %}
)

select * from final
