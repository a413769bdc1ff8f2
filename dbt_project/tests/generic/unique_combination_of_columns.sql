{#
    The combination of `combination_of_columns` is unique in the model: a compound key.
    (Our own version of dbt_utils' test: dbt hub packages are not installable here.)
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

with

grouped as (
    select
        {{ combination_of_columns | join(', ') }},
        count(*) as count_rows
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
),

final as (
    select * from grouped where count_rows > 1
)

select * from final

{% endtest %}
