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
-- without an anonymous_id (server-side) form a device of their own. The point-in-time
-- features (ml/features.py) read it for who was on a device by a date.
--
-- Incremental: every column is a minimum or a maximum over the identity's events, and a
-- kept event never changes (stg_web__events is append-only), so a device with newly loaded
-- events gets its rows as they were, merged with the new events' aggregates (the least and
-- the greatest of each); the same rows as a full refresh, and idempotent where the
-- lookback margin takes events already counted. It reads the device's few rows here, not
-- every event of the device (a day's events touched devices holding ten times as many).
-- Erasure deletes an identity's row with every event it came from (the same identifiers).
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

-- devices built before known_date existed (null there): recomputed once from all their
-- events, on the first incremental run after the upgrade, so no --full-refresh is needed
-- (their new events are counted twice here: harmless to a minimum or a maximum)
unknown_dates as (
    select device_key, anonymous_id from {{ this }} where known_date is null
),

device_events as (
    select * from new_events
    union all
    select events.*
    from events
    where
        events.anonymous_id in (
            select unknown_dates.anonymous_id from unknown_dates
            where unknown_dates.anonymous_id is not null
        )
    union all
    select events.*
    from events
    where
        events.anonymous_id is null
        and 'event:' || events.event_id in (
            select unknown_dates.device_key from unknown_dates
            where unknown_dates.anonymous_id is null
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

aggregated as (
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
),

{% if is_incremental() %}
-- the rows already built of the devices about to be replaced, except those recomputed
-- from all their events above
kept as (
    select existing.*
    from {{ this }} as existing
    where
        existing.device_key in (select aggregated.device_key from aggregated)
        and existing.known_date is not null
),

final as (
    select
        device_key,
        anonymous_id,
        user_id,
        email,
        min(first_observed_at) as first_observed_at,
        max(last_observed_at) as last_observed_at,
        min(known_date) as known_date,
        max(max_loaded_at) as max_loaded_at
    from (
        select device_key, anonymous_id, user_id, email, first_observed_at,
            last_observed_at, known_date, max_loaded_at
        from aggregated
        union all
        select device_key, anonymous_id, user_id, email, first_observed_at,
            last_observed_at, known_date, max_loaded_at
        from kept
    ) as merged
    group by device_key, anonymous_id, user_id, email
)
{% else %}
final as (
    select * from aggregated
)
{% endif %}

select * from final
