{#
    Per `partition_by`, the intervals [`from_column`, `to_column`) tile time without gaps
    or overlaps: each interval starts where the previous one ended, only the last one is
    open (null end), and no interval is empty. Rows returned are the offending intervals.
#}
{% test intervals_are_contiguous(model, partition_by, from_column, to_column) %}

with

intervals as (
    select
        {{ partition_by }} as partition_value,
        {{ from_column }} as valid_from,
        {{ to_column }} as valid_to,
        lead({{ from_column }}) over (
            partition by {{ partition_by }} order by {{ from_column }}
        ) as next_valid_from
    from {{ model }}
),

final as (
    select *
    from intervals
    where
        (valid_to is not null and valid_to <= valid_from)
        or (next_valid_from is null and valid_to is not null)
        or (next_valid_from is not null and valid_to is distinct from next_valid_from)
)

select * from final

{% endtest %}
