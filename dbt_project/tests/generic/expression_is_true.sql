{#
    Every row satisfies the SQL boolean `expression` (rows where it is false or null fail).
    Optional `where` narrows the rows checked.
#}
{% test expression_is_true(model, expression, where=none) %}

with

checked as (
    select *
    from {{ model }}
    {% if where %}where {{ where }}{% endif %}
),

final as (
    select * from checked where not coalesce({{ expression }}, false)
)

select * from final

{% endtest %}
