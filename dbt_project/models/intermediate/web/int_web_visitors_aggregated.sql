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
-- the as-of date (first_event_date).
--
-- The counts are sums over the device's session days (int_web_session_days_aggregated,
-- exact however events arrive); every other column is a minimum or maximum over events,
-- which never change once kept. Incremental: a device with newly loaded events gets its
-- row as it was, merged with the new events (the earlier first event by time then
-- event_id, the later last one, the earlier sign-up) and its counts summed again from its
-- few session-day rows: the row of a full refresh, without re-reading every event of the
-- device (a day's events touched devices holding ten times as many). A lookback that
-- takes an event again changes nothing.
with

events as not materialized (
    select * from {{ ref('stg_web__events') }}
    where anonymous_id is not null
),

session_days as not materialized (
    select * from {{ ref('int_web_session_days_aggregated') }}
    where anonymous_id is not null
),

{#- a table of the release before has no first_event_id: rebuilt whole, once -#}
{% set merging = is_incremental() and 'first_event_id' in relation_columns(this) %}
{% if merging %}
device_events as (
    select *
    from events
    where _loaded_at > {{ incremental_watermark('max_loaded_at') }}
),

device_sessions as (
    select session_days.*
    from session_days
    where session_days.device_key in (select device_events.anonymous_id from device_events)
),

previous as (
    select visitors.*
    from {{ this }} as visitors
    where visitors.anonymous_id in (select device_events.anonymous_id from device_events)
),
{% else %}
device_events as (
    select * from events
),

device_sessions as (
    select * from session_days
),
{% endif %}

-- the first event of each device: among its new events, and its row as it was
firsts as (
    select
        anonymous_id,
        event_at as first_event_at,
        event_id as first_event_id,
        utm_source as first_utm_source,
        utm_medium as first_utm_medium,
        utm_campaign as first_utm_campaign
    from device_events
    {% if merging %}
    union all
    select
        anonymous_id,
        first_event_at,
        first_event_id,
        first_utm_source,
        first_utm_medium,
        first_utm_campaign
    from previous
    {% endif %}
),

first_touches as (
    select distinct on (anonymous_id) *
    from firsts
    order by anonymous_id, first_event_at, first_event_id
),

spans as (
    select
        anonymous_id,
        max(last_event_at) as last_event_at,
        min(signed_up_at) as signed_up_at,
        max(max_loaded_at) as max_loaded_at
    from (
        select
            anonymous_id,
            event_at as last_event_at,
            case when event_name = 'signed_up' then event_at end as signed_up_at,
            _loaded_at as max_loaded_at
        from device_events
        {% if merging %}
        union all
        select anonymous_id, last_event_at, signed_up_at, max_loaded_at
        from previous
        {% endif %}
    ) as seen
    group by anonymous_id
),

counts as (
    select
        anonymous_id,
        sum(count_events)::bigint as count_events,
        count(distinct session_key) filter (where has_session_id) as count_sessions
    from device_sessions
    group by anonymous_id
),

final as (
    select
        first_touches.anonymous_id,
        first_touches.first_event_at,
        {{ business_date('first_touches.first_event_at') }} as first_event_date,
        first_touches.first_event_id,
        spans.last_event_at,
        counts.count_events,
        counts.count_sessions,
        spans.signed_up_at,
        first_touches.first_utm_source,
        first_touches.first_utm_medium,
        first_touches.first_utm_campaign,
        {{ channel_from_utm('first_touches.first_utm_source', 'first_touches.first_utm_medium') }}
            as first_touch_channel,
        spans.max_loaded_at
    from first_touches
    inner join spans on spans.anonymous_id = first_touches.anonymous_id
    inner join counts on counts.anonymous_id = first_touches.anonymous_id
)

select * from final
