-- The stage flow matrix per month and per ISO week: how many customers were in stage
-- `from_stage` on the day before the period and in `to_stage` on its last day (the as-of
-- date for the current period). `from_stage` = 'none' for customers who became known in
-- the period; from_stage = to_stage counts those who stayed (or left and came back).
-- Set-based: customers with no stage change in a period are counted from the daily stage
-- counts; only the customers who changed are looked at one by one.
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

-- every stage change (an interval start), placed in its month and its week
changes as (
    select
        period_types.period_type,
        {{ period_start('period_types.period_type', 'history.valid_from') }} as period_start,
        history.customer_key,
        history.valid_from,
        coalesce(history.previous_stage, 'none') as stage_before,
        history.stage
    from history
    cross join period_types
),

-- each customer's first and last change in each period: window functions over one sort
-- (an aggregate with its own ORDER BY sorts every group apart: millions of tiny sorts)
ordered_changes as (
    select
        period_type,
        period_start,
        customer_key,
        first_value(stage_before) over customer_period as from_stage,
        last_value(stage) over customer_period as to_stage,
        row_number() over customer_period as change_number
    from changes
    window customer_period as (
        partition by period_type, period_start, customer_key
        order by valid_from
        rows between unbounded preceding and unbounded following
    )
),

movers as (
    select
        period_type,
        period_start,
        customer_key,
        from_stage,
        to_stage
    from ordered_changes
    where change_number = 1
),

mover_flows as (
    select
        period_type,
        period_start,
        from_stage,
        to_stage,
        count(*) as count_customers
    from movers
    group by period_type, period_start, from_stage, to_stage
),

periods as (
    select distinct
        period_types.period_type,
        {{ period_start('period_types.period_type', 'counts.date_day') }} as period_start
    from counts
    cross join period_types
),

-- customers in each stage the day before each period, less those who moved in it
stayers as (
    select
        periods.period_type,
        periods.period_start,
        counts.stage as from_stage,
        counts.stage as to_stage,
        counts.count_customers - coalesce(moved_out.count_movers, 0) as count_customers
    from periods
    inner join counts on counts.date_day = periods.period_start - 1
    left join (
        select
            period_type,
            period_start,
            from_stage,
            count(*) as count_movers
        from movers
        group by period_type, period_start, from_stage
    ) as moved_out
        on
            moved_out.period_type = periods.period_type
            and moved_out.period_start = periods.period_start
            and moved_out.from_stage = counts.stage
),

flows as (
    select
        period_type,
        period_start,
        from_stage,
        to_stage,
        sum(count_customers) as count_customers
    from (
        select * from mover_flows
        union all
        select * from stayers where count_customers > 0
    ) as unioned
    group by period_type, period_start, from_stage, to_stage
),

final as (
    select
        cast(period_type as text) as period_type,
        cast(period_start as date) as period_start,
        cast(
            least(
                case
                    when period_type = 'month' then period_start + interval '1 month'
                    else period_start + interval '7 days'
                end - interval '1 day',
                {{ as_of_date() }}
            ) as date
        ) as period_end,
        cast(from_stage as text) as from_stage,
        cast(to_stage as text) as to_stage,
        cast(count_customers as integer) as count_customers,
        cast(
            sum(count_customers) over (partition by period_type, period_start, from_stage)
            as integer
        ) as count_from_stage_customers,
        cast(
            count_customers::numeric
            / sum(count_customers) over (partition by period_type, period_start, from_stage)
            as numeric(7, 4)
        ) as transition_rate
    from flows
)

select * from final
