-- On every day, the customers counted in some stage add up to the customers known by that
-- day: each known customer has exactly one stage per day (DESIGN.md §6).
with

counts as (
    select * from {{ ref('stage_counts_daily') }}
),

customers as (
    select * from {{ ref('customers') }}
),

staged as (
    select
        date_day,
        sum(count_customers) as count_staged
    from counts
    group by date_day
),

newly_known as (
    select
        known_from_date,
        count(*) as count_new
    from customers
    group by known_from_date
),

known as (
    select
        staged.date_day,
        staged.count_staged,
        sum(coalesce(newly_known.count_new, 0)) over (
            order by staged.date_day rows unbounded preceding
        ) as count_known
    from staged
    left join newly_known on newly_known.known_from_date = staged.date_day
),

final as (
    select * from known where count_staged <> count_known
)

select * from final
