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

{#
    A pre-hook of an incremental model that looks rows of its own table up by index:
    creates an index on `columns` when the table exists and has no index starting with
    them. dbt creates a model's configured indexes only with the table, so a table built
    before they were configured (an older release's `table` model, now incremental) would
    otherwise be probed without one on every run.
#}
{% macro create_missing_index(columns, unique=false) -%}
    do $create_missing_index$
    begin
        if to_regclass('{{ this }}') is not null and not exists (
            select 1
            from pg_index as i
            where
                i.indrelid = to_regclass('{{ this }}')
                and (
                    select array_agg(a.attname::text order by k.position)
                    from unnest((i.indkey::int2[])[0:{{ columns | length - 1 }}])
                        with ordinality as k (attnum, position)
                    inner join pg_attribute as a
                        on a.attrelid = i.indrelid and a.attnum = k.attnum
                ) = array['{{ columns | join("', '") }}']
        ) then
            create {{ 'unique ' if unique }}index on {{ this }} ({{ columns | join(', ') }});
        end if;
    end
    $create_missing_index$
{%- endmacro %}
