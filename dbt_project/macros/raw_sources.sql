{#
    The raw-layer contracts (lifecycle/raw.py) as dbt sees them: the columns and types of
    every raw table. tests/transform checks that this list matches lifecycle.raw.ENTITIES.
#}
{% macro raw_columns(table_name) -%}
    {%- set tables = {
        'crm__contacts': [
            ['id', 'text'], ['email', 'text'], ['first_name', 'text'], ['last_name', 'text'],
            ['phone', 'text'], ['country', 'text'], ['created_at', 'timestamptz'],
            ['updated_at', 'timestamptz'], ['acquisition_channel', 'text'],
            ['marketing_opt_in', 'boolean'], ['lifecycle_stage', 'text'], ['referred_by', 'text'],
        ],
        'web__events': [
            ['event_id', 'text'], ['anonymous_id', 'text'], ['user_id', 'text'], ['email', 'text'],
            ['event', 'text'], ['timestamp', 'timestamptz'], ['received_at', 'timestamptz'],
            ['session_id', 'text'], ['page_url', 'text'], ['utm_source', 'text'],
            ['utm_medium', 'text'], ['utm_campaign', 'text'], ['order_id', 'text'],
            ['product_id', 'text'],
        ],
        'orders__orders': [
            ['order_id', 'text'], ['customer_id', 'text'], ['email', 'text'],
            ['ordered_at', 'timestamptz'], ['updated_at', 'timestamptz'], ['status', 'text'],
            ['currency', 'text'], ['amount', 'numeric(14, 2)'], ['quantity', 'bigint'],
        ],
        'orders__order_items': [
            ['order_item_id', 'text'], ['order_id', 'text'], ['product_id', 'text'],
            ['quantity', 'bigint'], ['unit_price', 'numeric(14, 2)'], ['updated_at', 'timestamptz'],
        ],
        'marketing__spend': [
            ['date', 'date'], ['channel', 'text'], ['spend', 'numeric(14, 2)'], ['currency', 'text'],
        ],
        'fx__rates': [
            ['date', 'date'], ['currency', 'text'], ['rate', 'numeric(20, 10)'],
        ],
    } -%}
    {%- set meta = [
        ['_batch_id', 'text'], ['_loaded_at', 'timestamptz'], ['_source', 'text'], ['_line', 'bigint'],
    ] -%}
    {%- if table_name not in tables -%}
        {{ exceptions.raise_compiler_error("raw_columns: unknown raw table " ~ table_name) }}
    {%- endif -%}
    {{- return(tables[table_name] + meta) -}}
{%- endmacro %}


{#
    Select the contract columns of a raw table, or — when the table does not exist
    (a source that was never configured, e.g. an orders-only deployment) — an empty
    select with the same columns and types, so every model downstream still builds.
    Staging models call this instead of a bare `select * from source(...)`; it still
    calls source(), so lineage and freshness stay intact.
#}
{% macro source_or_empty(source_name, table_name) -%}
    {%- set relation = source(source_name, table_name) -%}
    {%- set columns = raw_columns(source_name ~ '__' ~ table_name) -%}
    {%- set exists = true -%}
    {%- if execute -%}
        {%- set found = adapter.get_relation(
            database=relation.database, schema=relation.schema, identifier=relation.identifier
        ) -%}
        {%- set exists = found is not none -%}
    {%- endif -%}
    {%- if exists -%}
    select
        {%- for name, type in columns %}
        {{ adapter.quote(name) }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ relation }}
    {%- else -%}
    select
        {%- for name, type in columns %}
        cast(null as {{ type }}) as {{ adapter.quote(name) }}{{ ',' if not loop.last }}
        {%- endfor %}
    where false
    {%- endif -%}
{%- endmacro %}
