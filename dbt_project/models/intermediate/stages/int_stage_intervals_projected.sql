{{
    config(
        unique_key='customer_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['customer_key', 'valid_from'], 'unique': true},
        ],
        post_hook=[
            "delete from {{ this }} as projected where not exists (
                select 1 from {{ ref('int_customers_resolved') }} as customers
                where customers.customer_key = projected.customer_key
            )",
        ],
    )
}}

-- The stage engine (DESIGN.md §6). For every customer, the lifecycle stage of each day
-- from the day they became known, as intervals [valid_from, valid_to) (valid_to null =
-- for ever), computed from their completed-order spans alone, so it is reproducible from
-- the data for any date. It is a *projection*: it runs past the as-of date to where the
-- stage would go if nothing else happened (in the end `churned` or `prospect`);
-- marts.customer_stage_history cuts it at the as-of date.
--
-- Set-based algorithm, per customer:
--   1. change dates of the set S of completed orders: the day they became known and the
--      first/last day of every completed span; between two of them S is constant
--      (a segment);
--   2. statistics of S per segment: first and last order date, orders, distinct order
--      days, typical gap, the latest win-back order (one placed more than churn_days + 1
--      days after the previous one, i.e. after at least one day in `churned`);
--   3. candidate dates where the stage can change inside a segment: its start, first
--      order + new_days, last order + active_days, last order + churn_days + 1, last
--      order + floor(multiplier × typical gap) + 1, win-back + reactivated_days, and each
--      order + loyal_window_days (an order leaving the loyalty window);
--   4. the stage rules evaluated at every candidate date, in this precedence:
--      prospect > new > reactivated > churned > at_risk (recency) > at_risk (gap) >
--      loyal > active;
--   5. consecutive equal stages collapsed into intervals.
-- "Within the last N days" means fewer than N days ago: an order exactly 30 days old is
-- no longer `new`, exactly 90 days old makes `at_risk`, 181 days old makes `churned`.
--
-- Incremental runs recompute only the customers whose inputs changed (a fingerprint of
-- their known-from date, their spans and the rules' vars), delete+insert by customer, and
-- drop customers that no longer exist (merged by identity resolution): the result is the
-- same as a full refresh.

with

customers as (
    select * from {{ ref('int_customers_resolved') }}
),

spans as not materialized (
    select * from {{ ref('int_orders_spanned') }}
),

fingerprints as (
    select
        customers.customer_key,
        customers.known_from_date,
        md5(
            {{ stage_rules_fingerprint() }}
            || '|' || customers.known_from_date::text
            || '|' || coalesce(
                string_agg(
                    spans.order_id || ',' || spans.order_date::text
                    || ',' || spans.span_from_date::text
                    || ',' || coalesce(spans.span_to_date::text, ''),
                    ';' order by spans.order_id, spans.span_from_date
                ),
                ''
            )
        ) as input_fingerprint
    from customers
    left join spans on spans.customer_key = customers.customer_key
    group by customers.customer_key, customers.known_from_date
),

changed_customers as (
    select fingerprints.*
    from fingerprints
    {% if is_incremental() %}
    where not exists (
        select 1
        from {{ this }} as existing
        where
            existing.customer_key = fingerprints.customer_key
            and existing.input_fingerprint = fingerprints.input_fingerprint
    )
    {% endif %}
),

changed_spans as (
    select spans.*
    from spans
    inner join changed_customers on changed_customers.customer_key = spans.customer_key
),

-- 1. segments over which the set of completed orders is constant
change_dates as (
    select customer_key, known_from_date as change_date from changed_customers
    union
    select customer_key, span_from_date as change_date from changed_spans
    union
    select customer_key, span_to_date as change_date
    from changed_spans
    where span_to_date is not null
),

segments as (
    select
        customer_key,
        change_date as segment_start,
        lead(change_date) over (partition by customer_key order by change_date)
            as segment_end
    from change_dates
),

segment_orders as (
    select
        segments.customer_key,
        segments.segment_start,
        segments.segment_end,
        changed_spans.order_id,
        changed_spans.order_date
    from segments
    inner join changed_spans
        on
            changed_spans.customer_key = segments.customer_key
            and changed_spans.span_from_date <= segments.segment_start
            and (
                changed_spans.span_to_date is null
                or changed_spans.span_to_date > segments.segment_start
            )
),

-- 2. statistics of the orders completed throughout each segment
order_days as (
    select
        customer_key,
        segment_start,
        order_date,
        count(*) as count_orders,
        lag(order_date) over (
            partition by customer_key, segment_start order by order_date
        ) as previous_order_date
    from segment_orders
    group by customer_key, segment_start, order_date
),

segment_stats as (
    select
        segments.customer_key,
        segments.segment_start,
        segments.segment_end,
        min(order_days.order_date) as first_order_date,
        max(order_days.order_date) as last_order_date,
        coalesce(sum(order_days.count_orders), 0) as count_orders,
        count(order_days.order_date) as count_order_days,
        max(order_days.order_date) filter (
            where order_days.order_date - order_days.previous_order_date
                > {{ var('churn_days') }} + 1
        ) as winback_order_date
    from segments
    left join order_days
        on
            order_days.customer_key = segments.customer_key
            and order_days.segment_start = segments.segment_start
    group by segments.customer_key, segments.segment_start, segments.segment_end
),

segment_thresholds as (
    select
        *,
        case
            when count_order_days >= 2
                then {{ var('at_risk_gap_multiplier') }}
                    * (last_order_date - first_order_date)::numeric
                    / (count_order_days - 1)
        end as silence_limit_days
    from segment_stats
),

-- 3. dates inside each segment where the stage can change
threshold_dates as (
    select
        segment_thresholds.customer_key,
        segment_thresholds.segment_start,
        segment_thresholds.segment_end,
        thresholds.candidate_date
    from segment_thresholds
    cross join lateral (
        values
            (segment_thresholds.segment_start),
            (segment_thresholds.first_order_date + {{ var('new_days') }}),
            (segment_thresholds.last_order_date + {{ var('active_days') }}),
            (segment_thresholds.last_order_date + {{ var('churn_days') }} + 1),
            (
                segment_thresholds.last_order_date
                + floor(segment_thresholds.silence_limit_days)::integer + 1
            ),
            (segment_thresholds.winback_order_date + {{ var('reactivated_days') }})
    ) as thresholds (candidate_date)
),

loyalty_dates as (
    select
        customer_key,
        segment_start,
        segment_end,
        order_date + {{ var('loyal_window_days') }} as candidate_date
    from segment_orders
),

candidate_dates as (
    select distinct
        customer_key,
        segment_start,
        candidate_date as stage_date
    from (
        select * from threshold_dates
        union all
        select * from loyalty_dates
    ) as candidates
    where
        candidate_date >= segment_start
        and (segment_end is null or candidate_date < segment_end)
),

-- 4. the rules, evaluated at each candidate date
loyalty_counts as (
    select
        candidate_dates.customer_key,
        candidate_dates.stage_date,
        count(segment_orders.order_id) as count_orders_in_loyalty_window
    from candidate_dates
    left join segment_orders
        on
            segment_orders.customer_key = candidate_dates.customer_key
            and segment_orders.segment_start = candidate_dates.segment_start
            and segment_orders.order_date
                > candidate_dates.stage_date - {{ var('loyal_window_days') }}
    group by candidate_dates.customer_key, candidate_dates.stage_date
),

evaluated as (
    select
        candidate_dates.customer_key,
        candidate_dates.stage_date,
        case
            when stats.first_order_date is null
                then 'prospect'
            when candidate_dates.stage_date - stats.first_order_date < {{ var('new_days') }}
                then 'new'
            when
                candidate_dates.stage_date - stats.winback_order_date
                < {{ var('reactivated_days') }}
                then 'reactivated'
            when candidate_dates.stage_date - stats.last_order_date > {{ var('churn_days') }}
                then 'churned'
            when candidate_dates.stage_date - stats.last_order_date >= {{ var('active_days') }}
                then 'at_risk'
            when candidate_dates.stage_date - stats.last_order_date > stats.silence_limit_days
                then 'at_risk'
            when loyalty_counts.count_orders_in_loyalty_window >= {{ var('loyal_orders') }}
                then 'loyal'
            else 'active'
        end as stage
    from candidate_dates
    inner join segment_thresholds as stats
        on
            stats.customer_key = candidate_dates.customer_key
            and stats.segment_start = candidate_dates.segment_start
    inner join loyalty_counts
        on
            loyalty_counts.customer_key = candidate_dates.customer_key
            and loyalty_counts.stage_date = candidate_dates.stage_date
),

-- 5. runs of the same stage become one interval
stage_changes as (
    select
        *,
        lag(stage) over (partition by customer_key order by stage_date) as previous_stage
    from evaluated
),

intervals as (
    select
        customer_key,
        stage,
        stage_date as valid_from,
        lead(stage_date) over (partition by customer_key order by stage_date) as valid_to
    from stage_changes
    where previous_stage is distinct from stage
),

final as (
    select
        intervals.customer_key,
        intervals.stage,
        intervals.valid_from,
        intervals.valid_to,
        changed_customers.input_fingerprint
    from intervals
    inner join changed_customers on changed_customers.customer_key = intervals.customer_key
)

select * from final
