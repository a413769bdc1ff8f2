{{
    config(
        unique_key='device_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['device_key']},
            {'columns': ['max_loaded_at']},
        ],
    )
}}

-- Who identified on which device: one row per device and identity seen on it (user_id
-- and/or email of sign-up, login and other identified events) with when it was first and
-- last seen. The input of identity resolution's web links and of device stitching. Events
-- without an anonymous_id (server-side) form a device of their own. Incremental like
-- int_web_visitors_aggregated: devices with newly loaded events are recomputed. The
-- point-in-time features (ml/features.py) read it for who was on a device by a date.
with

events as not materialized (
    select * from {{ ref('stg_web__events') }}
),

{% if is_incremental() %}
new_events as (
    select *
    from events
    where
        _loaded_at > {{ incremental_watermark('max_loaded_at') }}
),

-- devices built before known_date existed (null there): recomputed once, on the first
-- incremental run after the upgrade, so no --full-refresh is needed
unknown_dates as (
    select device_key, anonymous_id from {{ this }} where known_date is null
),

-- every event of a device with new events; an event without a device is its own
device_events as (
    select events.*
    from events
    where events.anonymous_id in (
        select new_events.anonymous_id from new_events where new_events.anonymous_id is not null
        union
        select unknown_dates.anonymous_id from unknown_dates
        where unknown_dates.anonymous_id is not null
    )
    union all
    select * from new_events where anonymous_id is null
    union all
    select events.*
    from events
    where
        events.anonymous_id is null
        and 'event:' || events.event_id in (
            select unknown_dates.device_key from unknown_dates
            where unknown_dates.anonymous_id is null
        )
        and events.event_id not in (
            select new_events.event_id from new_events where new_events.anonymous_id is null
        )
),
{% else %}
device_events as (
    select * from events
),
{% endif %}

identified_events as (
    select *
    from device_events
    where user_id is not null or email is not null
),

final as (
    select
        coalesce(anonymous_id, 'event:' || event_id) as device_key,
        anonymous_id,
        user_id,
        email,
        min(event_at) as first_observed_at,
        max(event_at) as last_observed_at,
        -- the first day this identity was visible on the device: an event had happened and
        -- been received (the point-in-time features attribute devices as of that day)
        min(greatest(event_date, {{ business_date('received_at') }})) as known_date,
        max(_loaded_at) as max_loaded_at
    from identified_events
    group by coalesce(anonymous_id, 'event:' || event_id), anonymous_id, user_id, email
)

select * from final
