{#
    The logical date of the run as a SQL date. Every "as of" in the models is relative to
    it; nothing reads the wall clock (no now(), no current_date).
#}
{% macro as_of_date() -%}
    {%- set value = var('as_of_date', none) -%}
    {%- if value is none or value == '' -%}
        {%- if execute -%}
            {{ exceptions.raise_compiler_error(
                "var 'as_of_date' is not set: run `lifecycle transform --date YYYY-MM-DD`, "
                ~ "or pass --vars '{as_of_date: YYYY-MM-DD}' to dbt"
            ) }}
        {%- endif -%}
        {%- set value = '1970-01-01' -%}
    {%- endif -%}
    cast('{{ value }}' as date)
{%- endmacro %}


{# The UTC calendar date of a timestamptz, whatever the session time zone. #}
{% macro utc_date(column) -%}
    cast(({{ column }} at time zone 'UTC') as date)
{%- endmacro %}


{# An email as matched across sources (DESIGN.md §5): trimmed, lower-case, empty = null. #}
{% macro normalize_email(column) -%}
    nullif(lower(btrim({{ column }}, E' \t\r\n')), '')
{%- endmacro %}


{# Light text cleaning for codes and labels: trimmed, lower-case, empty = null. #}
{% macro clean_code(column) -%}
    nullif(lower(btrim({{ column }})), '')
{%- endmacro %}


{# An amount in `currency_column` converted to USD at the fixed rates of var fx_rates. #}
{% macro to_reporting_currency(amount_column, currency_column) -%}
    {%- set rates = var('fx_rates') -%}
    round(
        {{ amount_column }} * case upper(coalesce({{ currency_column }}, 'USD'))
        {%- for currency, rate in rates.items() %}
            when '{{ currency | upper }}' then {{ rate }}
        {%- endfor %}
            else 1.0
        end,
        2
    )
{%- endmacro %}


{#
    The acquisition channel a web visit came from, from its UTM parameters, in the
    channel names the CRM and marketing spend use. No UTM at all = organic/direct.
#}
{% macro channel_from_utm(source_column, medium_column) -%}
    case
        when {{ medium_column }} in ('cpc', 'ppc', 'paid_search', 'sem') then 'paid_search'
        when {{ medium_column }} in ('paid_social', 'social', 'social_paid', 'cpm') then 'social'
        when {{ medium_column }} in ('email', 'newsletter') then 'email'
        when {{ medium_column }} in ('referral', 'affiliate') then 'referral'
        when {{ medium_column }} is null and {{ source_column }} is null then 'organic'
        else 'other'
    end
{%- endmacro %}


{# The stage names of DESIGN.md §6, in funnel order (also seeds/lifecycle_stages.csv). #}
{% macro lifecycle_stages() -%}
    {{- return(['prospect', 'new', 'active', 'loyal', 'at_risk', 'churned', 'reactivated']) -}}
{%- endmacro %}


{#
    A fingerprint of everything, besides a customer's own data, that the stage engine's
    output depends on: the thresholds and the version of the rules. Changing any of them
    makes every customer's history be recomputed on the next incremental run.
#}
{% macro stage_rules_fingerprint() -%}
    {%- set parts = [
        'rules-v1',
        var('new_days'), var('active_days'), var('churn_days'), var('loyal_orders'),
        var('loyal_window_days'), var('at_risk_gap_multiplier'), var('reactivated_days'),
    ] -%}
    '{{ parts | join("|") }}'
{%- endmacro %}


{# The first day of the `period` ('month', 'week' = ISO week from Monday) holding a date. #}
{% macro period_start(period, date_column) -%}
    cast(date_trunc({{ period }}, cast({{ date_column }} as timestamp)) as date)
{%- endmacro %}
