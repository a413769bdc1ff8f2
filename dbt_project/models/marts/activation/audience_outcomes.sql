-- What treatment and control members of each audience did after each export day: the
-- input of the lift measurement (lifecycle/activation/lift.py). Members on an export day
-- come from activation.audience_membership (every member, control included, as in the
-- export folder's customer_ids.csv); outcomes are completed orders placed in the window
-- (cohort_date, cohort_date + lift_window_days], cut at the as-of date. Cohorts are export
-- days before the as-of date, so a backfill of a past date sees exactly what its original
-- run saw. The activation tables are absent until the first export: then no rows.
{%- set log_relation = none -%}
{%- set membership_relation = none -%}
{%- if execute -%}
    {%- set log_relation = adapter.get_relation(
        database=target.database, schema='activation', identifier='export_log'
    ) -%}
    {%- set membership_relation = adapter.get_relation(
        database=target.database, schema='activation', identifier='audience_membership'
    ) -%}
{%- endif %}
with

{% if log_relation is not none and membership_relation is not none -%}
export_log as (
    select * from {{ log_relation }}
),

membership as (
    select * from {{ membership_relation }}
),
{%- else -%}
export_log as (
    select
        cast(null as text) as audience,
        cast(null as date) as as_of_date,
        cast(null as text) as status,
        cast(null as integer) as lift_window_days,
        cast(null as bigint) as export_id
    where false
),

membership as (
    select
        cast(null as text) as audience,
        cast(null as text) as customer_key,
        cast(null as date) as entered_date,
        cast(null as date) as exited_date,
        cast(null as boolean) as is_control
    where false
),
{%- endif %}

orders as (
    select * from {{ ref('int_orders_enriched') }}
),

history as (
    select * from {{ ref('customer_stage_history') }}
),

-- one cohort per audience and successful export day (the newest log row of a rerun wins)
cohorts as (
    select distinct on (audience, as_of_date)
        audience,
        as_of_date as cohort_date,
        coalesce(lift_window_days, 30) as lift_window_days
    from export_log
    where status = 'ok' and as_of_date < {{ as_of_date() }}
    order by audience, as_of_date, export_id desc
),

members as (
    select
        cohorts.audience,
        cohorts.cohort_date,
        cohorts.lift_window_days,
        membership.customer_key,
        case when membership.is_control then 'control' else 'treatment' end
            as experiment_group,
        least(cohorts.cohort_date + cohorts.lift_window_days, {{ as_of_date() }})
            as window_end_date
    from cohorts
    inner join membership
        on
            membership.audience = cohorts.audience
            and membership.entered_date <= cohorts.cohort_date
            and (membership.exited_date is null or membership.exited_date > cohorts.cohort_date)
),

member_orders as (
    select
        members.audience,
        members.cohort_date,
        members.customer_key,
        count(*) as count_orders,
        sum(orders.reporting_amount) as revenue
    from members
    inner join orders
        on
            orders.customer_key = members.customer_key
            and orders.is_completed
            and orders.order_date > members.cohort_date
            and orders.order_date <= members.window_end_date
    group by 1, 2, 3
),

member_stages as (
    select
        members.audience,
        members.cohort_date,
        members.customer_key,
        bool_or(
            history.valid_from <= members.cohort_date and history.stage = 'churned'
            and (history.valid_to is null or history.valid_to > members.cohort_date)
        ) as was_churned,
        bool_or(
            history.stage = 'reactivated'
            and history.valid_from > members.cohort_date
            and history.valid_from <= members.window_end_date
        ) as is_reactivated
    from members
    inner join history
        on
            history.customer_key = members.customer_key
            and history.valid_from <= members.window_end_date
            and (history.valid_to is null or history.valid_to > members.cohort_date)
    group by 1, 2, 3
),

groups as (
    select 'treatment' as experiment_group
    union all
    select 'control' as experiment_group
),

cohort_groups as (
    select
        cohorts.audience,
        cohorts.cohort_date,
        cohorts.lift_window_days,
        groups.experiment_group
    from cohorts
    cross join groups
),

per_group as (
    select
        members.audience,
        members.cohort_date,
        members.experiment_group,
        count(*) as count_members,
        count(member_orders.customer_key) as count_converted,
        coalesce(sum(member_orders.count_orders), 0) as count_orders,
        coalesce(sum(member_orders.revenue), 0) as revenue,
        coalesce(sum(member_orders.revenue * member_orders.revenue), 0) as revenue_squared_sum,
        count(*) filter (where member_stages.was_churned) as count_churned_at_cohort,
        count(*) filter (where member_stages.was_churned and member_stages.is_reactivated)
            as count_reactivated
    from members
    left join member_orders
        on
            member_orders.audience = members.audience
            and member_orders.cohort_date = members.cohort_date
            and member_orders.customer_key = members.customer_key
    left join member_stages
        on
            member_stages.audience = members.audience
            and member_stages.cohort_date = members.cohort_date
            and member_stages.customer_key = members.customer_key
    group by 1, 2, 3
),

final as (
    select
        cast(cohort_groups.audience as text) as audience,
        cast(cohort_groups.cohort_date as date) as cohort_date,
        cast(cohort_groups.experiment_group as text) as experiment_group,
        cast(cohort_groups.lift_window_days as integer) as lift_window_days,
        cast(
            least(cohort_groups.lift_window_days, {{ as_of_date() }} - cohort_groups.cohort_date)
            as integer
        ) as days_observed,
        cast(
            cohort_groups.cohort_date + cohort_groups.lift_window_days <= {{ as_of_date() }}
            as boolean
        ) as is_window_complete,
        cast(coalesce(per_group.count_members, 0) as integer) as count_members,
        cast(coalesce(per_group.count_converted, 0) as integer) as count_converted,
        cast(coalesce(per_group.count_orders, 0) as integer) as count_orders,
        cast(coalesce(per_group.revenue, 0) as numeric(18, 2)) as revenue,
        cast(coalesce(per_group.revenue_squared_sum, 0) as numeric(24, 4))
            as revenue_squared_sum,
        cast(coalesce(per_group.count_churned_at_cohort, 0) as integer)
            as count_churned_at_cohort,
        cast(coalesce(per_group.count_reactivated, 0) as integer) as count_reactivated,
        cast({{ as_of_date() }} as date) as as_of_date
    from cohort_groups
    left join per_group
        on
            per_group.audience = cohort_groups.audience
            and per_group.cohort_date = cohort_groups.cohort_date
            and per_group.experiment_group = cohort_groups.experiment_group
)

select * from final
