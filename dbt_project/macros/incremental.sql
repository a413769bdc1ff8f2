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
    A pre-hook of every model (dbt_project.yml): on an incremental model's existing table,
    creates each index of its `indexes` config that the table lacks (none on another
    materialization, or before the table exists). dbt creates the configured indexes only
    with the table, so a table built before they were configured (an older release's
    `table` model, now incremental and looked up by index) would otherwise go without.
    An index counts as present when one of the same type on the same leading columns
    exists. An index on a
    column the table does not have yet (a column added by this release, which the
    model's on_schema_change adds after the pre-hooks ran) waits for the next build.
#}
{% macro create_missing_indexes() -%}
    {%- set indexes = config.get('indexes') or [] -%}
    {%- if config.get('materialized') == 'incremental' and indexes -%}
    do $create_missing_indexes$
    begin
        if to_regclass('{{ this }}') is not null then
        {%- for index in indexes %}
            {%- set columns = index['columns'] %}
            if not exists (
                select 1
                from pg_index as i
                where
                    i.indrelid = to_regclass('{{ this }}')
                    and {{ index_key_is('i', columns, leading=true) }}
                    and {{ index_method_is('i', index.get('type') or 'btree') }}
            ) and (
                select count(*)
                from pg_attribute
                where
                    attrelid = to_regclass('{{ this }}')
                    and attname = any(array['{{ columns | join("', '") }}'])
                    and not attisdropped
            ) = {{ columns | length }} then
                create {{ 'unique ' if index.get('unique') }}index on {{ this }}
                    {%- if index.get('type') %} using {{ index['type'] }}{% endif %}
                    ({{ columns | join(', ') }});
            end if;
        {%- endfor %}
        end if;
    end
    $create_missing_indexes$
    {%- endif -%}
{%- endmacro %}

{#
    The names of `relation`'s columns, lower case (none when it does not exist, or at
    parse time): how a model recognizes its table as built by an older release.
    Overridden in unit tests, whose `this` is a fixture.
#}
{% macro relation_columns(relation) -%}
    {%- if execute -%}
        {{ return(adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list) }}
    {%- else -%}
        {{ return([]) }}
    {%- endif -%}
{%- endmacro %}

{#
    The sequence numbering the builds of int_identifier_links_unioned (its `generation`
    column), in the model's schema. Beside the table, not owned by it: a rebuilt table
    keeps numbering upwards, so all its links are new to identity resolution.
#}
{% macro generation_sequence() -%}
    {{ this.schema }}.int_identifier_links_unioned__generation
{%- endmacro %}

{#
    A post-hook: drops the non-unique indexes of the model's table whose key columns are
    exactly `columns` (and whose type is `method`, when given): an index an earlier release
    configured and a wider one, or one of another type, now replaces, which an upgraded
    warehouse would otherwise keep maintaining (a table built by this release never had it).
#}
{% macro drop_superseded_index(columns, method=none) -%}
    do $drop_superseded_index$
    declare
        superseded regclass;
    begin
        for superseded in
            select i.indexrelid::regclass
            from pg_index as i
            where
                i.indrelid = to_regclass('{{ this }}')
                and not i.indisunique
                and {{ index_key_is('i', columns) }}
                {%- if method %}
                and {{ index_method_is('i', method) }}
                {%- endif %}
        loop
            execute 'drop index ' || superseded;
        end loop;
    end
    $drop_superseded_index$
{%- endmacro %}

{#
    SQL true when the key columns of the pg_index row `index` are exactly `columns`, in
    order (`leading`: when its first columns are; an expression column never matches).
#}
{% macro index_key_is(index, columns, leading=false) -%}
    (
        select array_agg(a.attname::text order by k.position)
        from unnest(({{ index }}.indkey::int2[]){{ '[0:%d]' % (columns | length - 1) if leading }})
            with ordinality as k (attnum, position)
        inner join pg_attribute as a
            on a.attrelid = {{ index }}.indrelid and a.attnum = k.attnum
    ) = array['{{ columns | join("', '") }}']
{%- endmacro %}


{# SQL true when the pg_index row `index` is an index of type `method` (btree, brin, ...). #}
{% macro index_method_is(index, method) -%}
    (
        select am.amname
        from pg_class as c
        inner join pg_am as am on am.oid = c.relam
        where c.oid = {{ index }}.indexrelid
    ) = '{{ method }}'
{%- endmacro %}
