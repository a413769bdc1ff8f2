{#
    Custom schema names are used as they are (`staging`, `intermediate`, `marts`,
    DESIGN.md §9) instead of dbt's default `<target schema>_<custom schema>`.

    Write-audit-publish: everything configured for `marts` (models and seeds) goes to
    the schema named by the var `marts_schema` (default `marts`). `lifecycle transform`
    builds into `marts__build`, the quality gate validates it there, and
    `lifecycle.quality.publish_marts` moves it into `marts` in one transaction, so BI
    tools never see a build that failed its tests or the gate. The schema is resolved
    when dbt parses the project: a parsed manifest belongs to one `marts_schema`.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif custom_schema_name | trim == 'marts' -%}
        {{ var('marts_schema', 'marts') | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
