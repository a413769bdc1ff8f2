{{
    config(
        materialized='incremental',
        unique_key=['identifier_type', 'identifier_value'],
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['identifier_type', 'identifier_value'], 'unique': true},
            {'columns': ['customer_key']},
        ],
        post_hook=[
            "delete from {{ this }} where customer_key is null",
            "delete from {{ ref('int_identifier_links_unioned') }} where is_gone",
        ],
    )
}}

-- Identity resolution (DESIGN.md §5): the connected components of the graph whose nodes
-- are emails, shop customer ids (= web user ids) and CRM contact ids, and whose edges are
-- the links seen in source records. One component is one person.
--
-- customer_key = md5('<type>:<value>') of the component's anchor: the identifier seen
-- first (earliest first_observed_at; ties: email before customer_id before crm_contact_id,
-- then the smaller value). Keys are deterministic, and adding identifiers to a person
-- later never changes them; only a merge of two people does (the older key wins).
--
-- Incremental: only the people a pending link touches are resolved again, from all their
-- links. Pending: written by a build of int_identifier_links_unioned (its generation)
-- later than the one this table was last resolved through (links_generation, the
-- watermark). A person none of whose links changed keeps their component and anchor, so
-- their rows are what a full refresh gives; the components of the touched identifiers
-- (as they were, and whatever new links join them to) hold every identifier whose
-- component can have changed. Identifiers left without any link get a row with a null
-- key, which the post-hook deletes; the next post-hook drops the links' tombstones.
with

all_links as not materialized (
    select * from {{ ref('int_identifier_links_unioned') }}
),

{% if is_incremental() %}
{#- a table of an older release (no watermark): every link is pending, once -#}
pending as (
    select * from all_links
    {%- if 'links_generation' in relation_columns(this) %}
    where all_links.generation > (
        select coalesce(max(previous.links_generation), 0) from {{ this }} as previous
    )
    {%- endif %}
),

touched as (
    select identifier_type_a as identifier_type, identifier_a as identifier_value
    from pending
    union
    select identifier_type_b as identifier_type, identifier_b as identifier_value
    from pending
),

-- The lookups below go through the tables' indexes, a few thousand probes a day: each
-- is a lateral subquery kept apart from the join by `offset 0`, since PostgreSQL cannot
-- estimate these CTEs and otherwise sorts or hashes every link and identifier.

-- the people the touched identifiers belonged to at the last build, whole
touched_people as (
    select distinct resolved.customer_key
    from touched
    cross join lateral (
        select previous.customer_key
        from {{ this }} as previous
        where
            previous.identifier_type = touched.identifier_type
            and previous.identifier_value = touched.identifier_value
        offset 0
    ) as resolved
),

scope as (
    select identifier_type, identifier_value from touched
    union
    select resolved.identifier_type, resolved.identifier_value
    from touched_people
    cross join lateral (
        select previous.identifier_type, previous.identifier_value
        from {{ this }} as previous
        where previous.customer_key = touched_people.customer_key
        offset 0
    ) as resolved
),

-- every live link of the scope (both ends of a live link are in it or out of it)
links as (
    select scoped.*
    from scope
    cross join lateral (
        select all_links.*
        from all_links
        where
            all_links.identifier_type_a = scope.identifier_type
            and all_links.identifier_a = scope.identifier_value
            and all_links.is_gone is not true
        offset 0
    ) as scoped
),
{% else %}
links as (
    select * from all_links where is_gone is not true
),
{% endif %}

endpoints as (
    select
        identifier_type_a as identifier_type,
        identifier_a as identifier_value,
        first_observed_at
    from links
    union all
    select
        identifier_type_b as identifier_type,
        identifier_b as identifier_value,
        first_observed_at
    from links
),

nodes as (
    select
        identifier_type,
        identifier_value,
        identifier_type || ':' || identifier_value as node,
        min(first_observed_at) as first_observed_at
    from endpoints
    group by identifier_type, identifier_value
),

edges as (
    select
        identifier_type_a || ':' || identifier_a as node_from,
        identifier_type_b || ':' || identifier_b as node_to
    from links
    where identifier_type_a || ':' || identifier_a <> identifier_type_b || ':' || identifier_b
    union
    select
        identifier_type_b || ':' || identifier_b as node_from,
        identifier_type_a || ':' || identifier_a as node_to
    from links
    where identifier_type_a || ':' || identifier_a <> identifier_type_b || ':' || identifier_b
),

-- Every node reaches every node of its component (recursive walk; `union` stops it at
-- the first repeat). Components are small (one person's ids), so this stays linear.
-- The recursion sits in a subquery so dbt can prepend unit-test fixtures as CTEs.
reachable as (
    select walked.start_node, walked.node
    from (
        with recursive walk (start_node, node) as (
            select nodes.node as start_node, nodes.node as node
            from nodes
            union
            select walk.start_node, edges.node_to as node
            from walk
            inner join edges on edges.node_from = walk.node
        )

        select walk.start_node, walk.node from walk
    ) as walked
),

components as (
    select
        start_node as node,
        min(node) as component_id
    from reachable
    group by start_node
),

ranked as (
    select
        nodes.identifier_type,
        nodes.identifier_value,
        nodes.node,
        nodes.first_observed_at,
        components.component_id,
        row_number() over (
            partition by components.component_id
            order by
                nodes.first_observed_at,
                case nodes.identifier_type
                    when 'email' then 1 when 'customer_id' then 2 else 3
                end,
                nodes.identifier_value
        ) as anchor_rank
    from nodes
    inner join components on components.node = nodes.node
),

anchors as (
    select
        component_id,
        node as anchor_node
    from ranked
    where anchor_rank = 1
),

resolved as (
    select
        md5(anchors.anchor_node) as customer_key,
        ranked.identifier_type,
        ranked.identifier_value,
        ranked.first_observed_at,
        ranked.anchor_rank = 1 as is_anchor
    from ranked
    inner join anchors on anchors.component_id = ranked.component_id
{% if is_incremental() %}
    -- identifiers of the scope left without a live link: deleted by the post-hook
    union all
    select
        null as customer_key,
        scope.identifier_type,
        scope.identifier_value,
        null as first_observed_at,
        null as is_anchor
    from scope
    where not exists (
        select 1 from nodes
        where
            nodes.identifier_type = scope.identifier_type
            and nodes.identifier_value = scope.identifier_value
    )
{% endif %}
),

-- every link of a generation up to the newest one is resolved by this build; an
-- incremental run finds the newest among the pending links (all above the old
-- watermark) without reading the links again, and writes no row when there are none
watermark as (
    select max(generation) as links_generation
    from {{ 'pending' if is_incremental() else 'all_links' }}
),

final as (
    select
        resolved.*,
        watermark.links_generation
    from resolved
    cross join watermark
)

select * from final
