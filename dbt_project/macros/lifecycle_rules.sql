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


{#
    The business zone (var business_timezone, the sources file's business.timezone, set
    by `lifecycle transform`): its midnights are the day boundaries of every date the
    models derive, so a day, a stage and a cohort are the company's days, not UTC's.
#}
{% macro business_timezone() -%}
    {%- set zone = var('business_timezone', 'UTC') or 'UTC' -%}
    {%- if not modules.re.fullmatch('[A-Za-z0-9_+/-]+', zone) -%}
        {{ exceptions.raise_compiler_error("var business_timezone: " ~ zone ~ " is not a time zone name") }}
    {%- endif -%}
    {{- return(zone) -}}
{%- endmacro %}


{# The business-zone calendar date of a timestamptz, whatever the session time zone. #}
{% macro business_date(column) -%}
    cast(({{ column }} at time zone '{{ business_timezone() }}') as date)
{%- endmacro %}


{# The reporting currency (var reporting_currency, the sources file's business.currency). #}
{% macro reporting_currency() -%}
    {%- set code = (var('reporting_currency', 'USD') or 'USD') | upper -%}
    {%- if not modules.re.fullmatch('[A-Z]{3}', code) -%}
        {{ exceptions.raise_compiler_error("var reporting_currency: " ~ code ~ " is not an ISO 4217 code") }}
    {%- endif -%}
    {{- return(code) -}}
{%- endmacro %}


{# An ISO currency code as matched with the rates: trimmed, upper-case; empty = reporting. #}
{% macro currency_code(column) -%}
    upper(coalesce(nullif(btrim({{ column }}), ''), '{{ reporting_currency() }}'))
{%- endmacro %}


{# An email as matched across sources (DESIGN.md §5): trimmed, lower-case, empty = null. #}
{% macro normalize_email(column) -%}
    nullif(lower(btrim({{ column }}, E' \t\r\n')), '')
{%- endmacro %}


{# Light text cleaning for codes and labels: trimmed, lower-case, empty = null. #}
{% macro clean_code(column) -%}
    nullif(lower(btrim({{ column }})), '')
{%- endmacro %}


{#
    The rate (reporting units per unit) of each (currency, rate_date) row of the
    relation or CTE `days`, as `rate`: 1 for the reporting currency; else the latest
    rate of the rates table (stg_fx__rates) on or before the day; else the planning rate
    of var fx_rates (business.fixed_rates); else the earliest rate after the day. Null
    only for a currency with no rate at all (`lifecycle transform` refuses to build then,
    naming it). Looked up once per distinct day and currency, not per row.
#}
{% macro fx_day_rates(days) -%}
    {%- set rates = ref('stg_fx__rates') -%}
    {%- set planning = var('fx_rates', {}) or {} -%}
    select
        days.currency,
        days.rate_date,
        case
            when days.currency = '{{ reporting_currency() }}' then cast(1 as numeric)
            else coalesce(
                (
                    select on_or_before.rate
                    from {{ rates }} as on_or_before
                    where
                        on_or_before.currency = days.currency
                        and on_or_before.rate_date <= days.rate_date
                    order by on_or_before.rate_date desc
                    limit 1
                ),
                case days.currency
                {%- for currency, rate in planning.items() %}
                    when '{{ currency | upper }}' then cast({{ rate | float }} as numeric)
                {%- endfor %}
                    else null
                end,
                (
                    select earliest.rate
                    from {{ rates }} as earliest
                    where earliest.currency = days.currency
                    order by earliest.rate_date
                    limit 1
                )
            )
        end as rate
    from {{ days }} as days
{%- endmacro %}


{# An amount converted to the reporting currency at `rate_column`, to the cent. #}
{% macro to_reporting_currency(amount_column, rate_column) -%}
    round({{ amount_column }} * {{ rate_column }}, 2)
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
    output depends on: the thresholds, the business time zone and the version of the
    rules. Changing any of them makes every customer's history be recomputed on the next
    incremental run.
#}
{% macro stage_rules_fingerprint() -%}
    {%- set parts = [
        'rules-v1',
        var('new_days'), var('active_days'), var('churn_days'), var('loyal_orders'),
        var('loyal_window_days'), var('at_risk_gap_multiplier'), var('reactivated_days'),
        business_timezone(),
    ] -%}
    '{{ parts | join("|") }}'
{%- endmacro %}


{# The first day of the `period` ('month', 'week' = ISO week from Monday) holding a date. #}
{% macro period_start(period, date_column) -%}
    cast(date_trunc({{ period }}, cast({{ date_column }} as timestamp)) as date)
{%- endmacro %}


{#
    The acquisition channel of a row of `group by grouping sets ((channel), ())`: the
    channel, or 'all' on the grand total's row (a null channel stays a group of its own).
#}
{% macro channel_or_all(channel_column) -%}
    case
        when grouping({{ channel_column }}) = 1 then 'all' else {{ channel_column }}
    end
{%- endmacro %}
