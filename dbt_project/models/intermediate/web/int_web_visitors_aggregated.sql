{{
    config(
        unique_key='anonymous_id',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['anonymous_id'], 'unique': true},
            {'columns': ['max_loaded_at']},
        ],
    )
}}

-- One row per web visitor (anonymous_id, i.e. device): first and last visit, events,
-- sessions, sign-up and the first-touch acquisition channel (UTM parameters of the first
-- event; none = organic). Over every event loaded: models downstream keep what was seen by
-- the as-of date (first_event_date). Incremental: devices with newly loaded events are
-- recomputed from all their events (delete+insert), so late and duplicate deliveries give
-- the same rows as a full refresh.
with

events as not materialized (
    select * from {{ ref('stg_web__events') }}
),

{% if is_incremental() %}
touched_devices as (
    select distinct anonymous_id
    from events
    where
        anonymous_id is not null
        and _loaded_at > {{ incremental_watermark('max_loaded_at') }}
),

device_events as (
    select events.*
    from events
    inner join touched_devices on touched_devices.anonymous_id = events.anonymous_id
),
{% else %}
device_events as (
    select * from events where anonymous_id is not null
),
{% endif %}

first_touches as (
    select distinct on (anonymous_id)
        anonymous_id,
        utm_source as first_utm_source,
        utm_medium as first_utm_medium,
        utm_campaign as first_utm_campaign
    from device_events
    order by anonymous_id, event_at, event_id
),

aggregated as (
    select
        anonymous_id,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at,
        count(*) as count_events,
        count(distinct session_id) as count_sessions,
        min(event_at) filter (where event_name = 'signed_up') as signed_up_at,
        max(_loaded_at) as max_loaded_at
    from device_events
    group by anonymous_id
),

final as (
    select
        aggregated.anonymous_id,
        aggregated.first_event_at,
        {{ business_date('aggregated.first_event_at') }} as first_event_date,
        aggregated.last_event_at,
        aggregated.count_events,
        aggregated.count_sessions,
        aggregated.signed_up_at,
        first_touches.first_utm_source,
        first_touches.first_utm_medium,
        first_touches.first_utm_campaign,
        {{ channel_from_utm('first_touches.first_utm_source', 'first_touches.first_utm_medium') }}
            as first_touch_channel,
        aggregated.max_loaded_at
    from aggregated
    inner join first_touches on first_touches.anonymous_id = aggregated.anonymous_id
)

select * from final
