-- Reactivation of churned customers per month and per ISO week: of the customers who were
-- churned at some point in the period (churned on the day before it, or churning during
-- it), how many were won back (entered `reactivated`) in it.
with

history as (
    select * from {{ ref('customer_stage_history') }}
),

counts as not materialized (
    select * from {{ ref('stage_counts_daily') }}
),

period_types as (
    select 'month' as period_type
    union all
    select 'week' as period_type
),

periods as (
    select distinct
        period_types.period_type,
        {{ period_start('period_types.period_type', 'counts.date_day') }} as period_start
    from counts
    cross join period_types
),

churned_before as (
    select
        periods.period_type,
        periods.period_start,
        counts.count_customers as count_churned_at_start
    from periods
    inner join counts
        on counts.date_day = periods.period_start - 1 and counts.stage = 'churned'
),

entries as (
    select
        period_types.period_type,
        {{ period_start('period_types.period_type', 'history.valid_from') }} as period_start,
        count(*) filter (where history.stage = 'churned') as count_newly_churned,
        count(*) filter (where history.stage = 'reactivated') as count_reactivated
    from history
    cross join period_types
    where history.stage in ('churned', 'reactivated')
    group by 1, 2
),

final as (
    select
        cast(periods.period_type as text) as period_type,
        cast(periods.period_start as date) as period_start,
        cast(coalesce(churned_before.count_churned_at_start, 0) as integer)
            as count_churned_at_start,
        cast(coalesce(entries.count_newly_churned, 0) as integer) as count_newly_churned,
        cast(coalesce(entries.count_reactivated, 0) as integer) as count_reactivated,
        cast(
            coalesce(entries.count_reactivated, 0)::numeric
            / nullif(
                coalesce(churned_before.count_churned_at_start, 0)
                + coalesce(entries.count_newly_churned, 0),
                0
            ) as numeric(7, 4)
        ) as reactivation_rate
    from periods
    left join churned_before
        on
            churned_before.period_type = periods.period_type
            and churned_before.period_start = periods.period_start
    left join entries
        on
            entries.period_type = periods.period_type
            and entries.period_start = periods.period_start
)

select * from final
