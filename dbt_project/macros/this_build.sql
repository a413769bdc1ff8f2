{#
    When the dbt invocation that writes a row started (dbt's run_started_at, UTC), as a
    timestamptz literal: an incremental table's `_built_at`, so its data tests can check
    the rows this build appended instead of every row ever appended (the test config
    `where: __this_build__`, below).
#}
{% macro this_build_at() -%}
    '{{ run_started_at.isoformat() }}'::timestamptz
{%- endmacro %}

{#
    dbt's own get_where_subquery (the relation a data test reads, filtered by the test's
    `where` config), with one placeholder replaced when the test runs, as dbt's docs show
    for custom where clauses: `__this_build__` becomes "_built_at = this build's start".
    Replaced at run time, not in the yml, because the parsed manifest is reused across
    invocations (lifecycle/transform.py) and a value rendered at parse time would name an
    earlier build. An append-only table's rows never change once written, so its tests
    need read only the rows each build appends; a full refresh writes every row, so it
    checks them all.
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- set where = where | replace('__this_build__', '_built_at = ' ~ this_build_at()) -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
