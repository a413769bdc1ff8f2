-- One row per calendar day from the first day anyone became known to the as-of date:
-- the date spine of the daily marts and views.
with

customers as (
    select * from {{ ref('int_customers_resolved') }}
),

bounds as (
    select
        coalesce(min(known_from_date), {{ as_of_date() }}) as first_date,
        {{ as_of_date() }} as last_date
    from customers
),

final as (
    select cast(days.day as date) as date_day
    from bounds
    cross join lateral generate_series(
        bounds.first_date, bounds.last_date, interval '1 day'
    ) as days (day)
)

select * from final
