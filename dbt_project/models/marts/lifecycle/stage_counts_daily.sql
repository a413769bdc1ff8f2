-- How many customers are in each stage on each day, and how many entered and left it,
-- from the first day anyone was known to the as-of date (running sums of the interval
-- starts and ends: no day-by-customer expansion).
with

history as not materialized (
    select * from {{ ref('customer_stage_history') }}
),

days as (
    select * from {{ ref('all_days') }}
),

stages as (
    select * from {{ ref('lifecycle_stages') }}
),

entries as (
    select
        stage,
        valid_from as change_date,
        count(*) as count_entered
    from history
    group by stage, valid_from
),

exits as (
    select
        stage,
        valid_to as change_date,
        count(*) as count_exited
    from history
    where valid_to is not null
    group by stage, valid_to
),

grid as (
    select
        days.date_day,
        stages.stage,
        stages.stage_order
    from days
    cross join stages
),

daily as (
    select
        grid.date_day,
        grid.stage,
        grid.stage_order,
        coalesce(entries.count_entered, 0) as count_entered,
        coalesce(exits.count_exited, 0) as count_exited
    from grid
    left join entries on entries.stage = grid.stage and entries.change_date = grid.date_day
    left join exits on exits.stage = grid.stage and exits.change_date = grid.date_day
),

final as (
    select
        cast(date_day as date) as date_day,
        cast(stage as text) as stage,
        cast(stage_order as integer) as stage_order,
        cast(
            sum(count_entered - count_exited) over (
                partition by stage order by date_day rows unbounded preceding
            ) as integer
        ) as count_customers,
        cast(count_entered as integer) as count_entered,
        cast(count_exited as integer) as count_exited
    from daily
)

select * from final
