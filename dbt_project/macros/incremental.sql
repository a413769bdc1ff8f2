{#
    The watermark of an incremental model: the newest `column` it holds, less the
    incremental_lookback_hours margin, as a timestamptz literal ('-infinity' when empty).

    Read with a query when the model is compiled (dbt compiles a node just before running
    it, in the same build), not as a subquery of the model's SQL: PostgreSQL estimates
    `_loaded_at > (select ...)` at a third of the table whatever the value, and planned a
    scan of every event and a hash of "a million" new devices for one day's 13k events;
    against a literal it reads the column's statistics and takes the index.
#}
{% macro incremental_watermark(column) -%}
    {%- if execute -%}
        {%- set query -%}
            select (
                coalesce(max({{ column }}), '-infinity'::timestamptz)
                - interval '{{ var("incremental_lookback_hours") }} hours'
            )::text
            from {{ this }}
        {%- endset -%}
        '{{ run_query(query).columns[0].values()[0] }}'::timestamptz
    {%- else -%}
        '-infinity'::timestamptz
    {%- endif -%}
{%- endmacro %}
