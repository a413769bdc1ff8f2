{{
    config(
        unique_key=['device_key', 'session_key'],
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['device_key']},
            {'columns': ['event_date']},
            {'columns': ['max_loaded_at']},
        ],
    )
}}

-- Web sessions cut by event day and by the day the events became visible (received): one
-- row per device, session, event date and visible date, with the session's user_id and
-- its product views and carts. The point-in-time features (ml/features.py) read it instead
-- of re-sorting every event for each scoring run: a session's events seen at D are exactly
-- the rows with event_date <= D and visible_date <= D. Incremental: the sessions with newly
-- loaded events are recomputed from all their events (delete+insert by device_key and
-- session_key), so late and duplicate deliveries give the same rows as a full refresh; a
-- session's events are found by staging's (anonymous_id, session_id) index, so a day reads
-- about its own events, not the whole history of every device seen that day (which it
-- did before: at 200k people a day's 13k events meant 144k events on 144k heap pages).
-- Events without an anonymous_id form a device per session ('session:<session_key>'); an
-- event without a session_id is a session of its own (session_key = event_id).
with

events as not materialized (
    select * from {{ ref('stg_web__events') }}
),

{#- a table of the release before has no has_session_id: rebuilt whole, once -#}
{% if is_incremental() and 'has_session_id' in relation_columns(this) %}
new_events as (
    select *
    from events
    where
        _loaded_at > {{ incremental_watermark('max_loaded_at') }}
),

new_sessions as (
    select distinct anonymous_id, session_id
    from new_events
    where session_id is not null
),

-- every event of a session with new events (two joins, each an index condition: `is not
-- distinct from` would read every event); an event without a session_id is its own
device_events as (
    select events.*
    from events
    inner join new_sessions
        on
            events.anonymous_id = new_sessions.anonymous_id
            and events.session_id = new_sessions.session_id
    union all
    select events.*
    from events
    inner join new_sessions
        on
            events.anonymous_id is null
            and new_sessions.anonymous_id is null
            and events.session_id = new_sessions.session_id
    union all
    select *
    from new_events
    where session_id is null
),
{% else %}
device_events as (
    select * from events
),
{% endif %}

keyed as (
    select
        *,
        coalesce(session_id, event_id) as session_key,
        greatest(event_date, {{ business_date('received_at') }}) as visible_date
    from device_events
),

final as (
    select
        coalesce(anonymous_id, 'session:' || session_key) as device_key,
        anonymous_id,
        session_key,
        event_date,
        visible_date,
        min(user_id) as user_id,
        -- false for an event without a session_id (session_key is its event_id)
        bool_or(session_id is not null) as has_session_id,
        count(*) as count_events,
        count(*) filter (where event_name = 'product_viewed') as count_product_views,
        count(*) filter (where event_name = 'added_to_cart') as count_carts,
        max(_loaded_at) as max_loaded_at
    from keyed
    group by anonymous_id, session_key, event_date, visible_date
)

select * from final
