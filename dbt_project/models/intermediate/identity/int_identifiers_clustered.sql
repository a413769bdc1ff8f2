-- Identity resolution (DESIGN.md §5): the connected components of the graph whose nodes
-- are emails, shop customer ids (= web user ids) and CRM contact ids, and whose edges are
-- the links seen in source records. One component is one person.
--
-- customer_key = md5('<type>:<value>') of the component's anchor: the identifier seen
-- first (earliest first_observed_at; ties: email before customer_id before crm_contact_id,
-- then the smaller value). Keys are deterministic, and adding identifiers to a person
-- later never changes them; only a merge of two people does (the older key wins).
with

links as (
    select * from {{ ref('int_identifier_links_unioned') }}
),

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

final as (
    select
        md5(anchors.anchor_node) as customer_key,
        ranked.identifier_type,
        ranked.identifier_value,
        ranked.first_observed_at,
        ranked.anchor_rank = 1 as is_anchor
    from ranked
    inner join anchors on anchors.component_id = ranked.component_id
)

select * from final
