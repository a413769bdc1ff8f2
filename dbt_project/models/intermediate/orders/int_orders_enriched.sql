-- One row per order placed by the as-of date, attributed to its customer, with its state
-- as of the as-of date (the version valid at the end of that day) and its rank among the
-- customer's completed orders.
with

versions as not materialized (
    select * from {{ ref('int_orders_versioned') }}
),

identifiers as (
    select * from {{ ref('int_identifiers_clustered') }}
),

as_of_versions as (
    select *
    from versions
    where
        order_date <= {{ as_of_date() }}
        and valid_from_date <= {{ as_of_date() }}
        and (valid_to_date is null or valid_to_date > {{ as_of_date() }})
),

-- versions are back to back, so at most one holds at the end of the as-of date; an order
-- whose every version is empty that day (placed and refunded then) takes its latest
latest_versions as (
    select distinct on (order_id)
        *
    from versions
    where order_date <= {{ as_of_date() }} and valid_from_date <= {{ as_of_date() }}
    order by order_id, valid_from_at desc, version_number desc
),

current_versions as (
    select * from as_of_versions
    union all
    select latest_versions.*
    from latest_versions
    where not exists (
        select 1 from as_of_versions where as_of_versions.order_id = latest_versions.order_id
    )
),

attributed as (
    select
        identifiers.customer_key,
        current_versions.*
    from current_versions
    inner join identifiers
        on
            identifiers.identifier_type = 'customer_id'
            and identifiers.identifier_value = current_versions.customer_id
),

final as (
    select
        customer_key,
        order_id,
        customer_id,
        email,
        ordered_at,
        order_date,
        status,
        is_completed,
        currency,
        amount,
        reporting_amount,
        case
            when is_completed
                then row_number() over (
                    partition by customer_key, is_completed
                    order by ordered_at, order_id
                )
        end as completed_order_number
    from attributed
)

select * from final
