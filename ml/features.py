"""Point-in-time features and churn labels, computed in the warehouse for snapshot dates.

For a snapshot date D a feature uses only what was visible at the end of D:

* **orders** — each order placed by D in the state of its latest version *recorded* by D
  (the source's ``updated_at``, system time; placed by D as that version says), so a
  refund counts from the day it was recorded, and an order we only heard of later (e.g.
  a final-state export that first shows it refunded) does not exist yet at D;
* **web** — events that happened by D *and* were received by D (late deliveries count from
  the day they arrived), attributed to a customer by their ``user_id`` or by the device's
  first identification known by D; read from two incremental dbt models
  (``int_web_session_days_aggregated``, ``int_web_identities_observed``) so that a run
  does not re-aggregate every event (:func:`reference_features_sql` still does, for the
  tests and bench/bench_features.py that compare the two);
* **CRM** — channel, country and marketing opt-in of the latest contact version recorded
  by D (a contact first exported after D is unknown at D).

The label ("churned") is true when the customer places no completed order in
(D, D + horizon] (valid time from ``intermediate.int_orders_versioned``: what really
happened, however late we learned it); it is null while that window is not complete as
of the data's date.
A customer is eligible at D when they have at least one completed order by D.

Customer keys come from identity resolution as built by the last ``dbt build``; the
identifiers themselves are immutable, only a later merge of two people could move an
order between keys (rare; documented in docs/ml.md).

Everything is one set-based SQL query over all snapshot dates; :func:`build_training_set`
writes it to ``ml.training_set`` (the snapshots' partitions replaced in one transaction)
and :func:`stream_features` streams it for scoring with a server-side cursor.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from lifecycle.raw import CRM_CONTACTS, WEB_EVENTS

log = logging.getLogger(__name__)

#: Numeric feature columns the query produces, in order.
NUMERIC_FEATURES: tuple[str, ...] = (
    "days_since_last_order",
    "days_since_first_order",
    "count_orders",
    "count_orders_90d",
    "count_orders_365d",
    "revenue",
    "avg_order_value",
    "mean_gap_days",
    "last_gap_days",
    "gap_trend",
    "recency_over_gap",
    "count_refunds",
    "refund_share",
    "sessions_7d",
    "sessions_30d",
    "sessions_90d",
    "product_views_30d",
    "product_views_90d",
    "carts_30d",
    "carts_90d",
    "days_since_last_visit",
    "is_marketing_opt_in",
    # purchase timing and value, from orders alone (what BTYD models ignore)
    "gap_p25_days",
    "gap_median_days",
    "gap_p75_days",
    "gap_slope",
    "days_to_usual_next",
    "orders_same_window_last_year",
    "value_trend",
    "refunded_value_share",
    "days_since_last_refund",
)
#: Categorical feature columns.
CATEGORICAL_FEATURES: tuple[str, ...] = ("acquisition_channel", "country_code")
#: The raw table each feature not computed from orders alone is read from; the others are
#: the churn spec's ``orders_only`` list (``load_churn_spec`` checks that the two agree).
#: A feature whose table is absent (:func:`lifecycle.availability.absent_entities`) is
#: dropped from the models.
FEATURE_SOURCES: dict[str, str] = {
    **{
        name: WEB_EVENTS.table
        for name in (
            "sessions_7d",
            "sessions_30d",
            "sessions_90d",
            "product_views_30d",
            "product_views_90d",
            "carts_30d",
            "carts_90d",
            "days_since_last_visit",
        )
    },
    **{
        name: CRM_CONTACTS.table
        for name in ("is_marketing_opt_in", "acquisition_channel", "country_code")
    },
}
#: Columns BG/NBD and Gamma-Gamma need (days; repeat order days; mean value of repeats).
RFM_COLUMNS: tuple[str, ...] = ("frequency", "recency", "t", "monetary_value")
#: Repeat order days in the last `horizon` days up to D (the observed side of
#: ``btyd_purchases_residual``; not a model feature itself).
RECENT_FREQUENCY = "recent_frequency"
#: Features computed in Python from a BG/NBD + Gamma-Gamma fit on the snapshot's own RFM
#: summary (every eligible customer at D, data <= D): :func:`add_btyd_features`.
BTYD_FEATURES: tuple[str, ...] = (
    "btyd_p_alive",
    "btyd_expected_purchases",
    "btyd_expected_order_value",
    "btyd_purchases_residual",
    "btyd_p_no_purchase",
)
#: Every column of ml.training_set, in order.
COLUMNS: tuple[str, ...] = (
    "snapshot_date",
    "customer_key",
    *NUMERIC_FEATURES,
    *CATEGORICAL_FEATURES,
    *RFM_COLUMNS,
    RECENT_FREQUENCY,
    "horizon_days",
    "churned",
)

TRAINING_SET_DDL = """
create table if not exists ml.training_set (
    snapshot_date date not null,
    customer_key text not null,
    days_since_last_order integer not null,
    days_since_first_order integer not null,
    count_orders integer not null,
    count_orders_90d integer not null,
    count_orders_365d integer not null,
    revenue double precision not null,
    avg_order_value double precision not null,
    mean_gap_days double precision,
    last_gap_days double precision,
    gap_trend double precision,
    recency_over_gap double precision,
    count_refunds integer not null,
    refund_share double precision not null,
    sessions_7d integer not null,
    sessions_30d integer not null,
    sessions_90d integer not null,
    product_views_30d integer not null,
    product_views_90d integer not null,
    carts_30d integer not null,
    carts_90d integer not null,
    days_since_last_visit integer,
    is_marketing_opt_in double precision,
    acquisition_channel text,
    country_code text,
    frequency integer not null,
    recency integer not null,
    t integer not null,
    monetary_value double precision not null,
    horizon_days integer not null,
    churned boolean,
    primary key (snapshot_date, customer_key)
)
"""

#: Columns added to ml.training_set after its first release (a warehouse made before gets
#: them with ``add column if not exists``; the partitions are rewritten on every build).
TRAINING_SET_ADDED = {
    "gap_p25_days": "double precision",
    "gap_median_days": "double precision",
    "gap_p75_days": "double precision",
    "gap_slope": "double precision",
    "days_to_usual_next": "double precision",
    "orders_same_window_last_year": "integer",
    "value_trend": "double precision",
    "refunded_value_share": "double precision",
    "days_since_last_refund": "integer",
    RECENT_FREQUENCY: "integer",
}

#: Buckets of the training sample: a customer is in it when the first 20 bits of its
#: customer_key (an md5 hex digest: uniform) are below %(sample_buckets)s; all of them
#: (every customer) unless snapshots.max_customers asks for fewer.
SAMPLE_BUCKETS = 1 << 20


def _in_sample(key: str) -> str:
    """Return the SQL test that the customer_key `key` is in the training sample."""
    return (
        f"(%(sample_buckets)s::integer >= {SAMPLE_BUCKETS} "
        f"or ('x' || left({key}, 5))::bit(20)::integer < %(sample_buckets)s::integer)"
    )


# One query for any set of snapshot dates: %(snapshots)s (date[]), %(horizon)s (days),
# %(data_as_of)s (the date the data is complete to: labels after it are null).
FEATURES_SQL = """
with

snapshots as (
    select distinct unnest(%(snapshots)s::date[]) as snapshot_date
),

customer_ids as (
    select identifier_value as customer_id, customer_key
    from intermediate.int_identifiers_clustered
    where identifier_type = 'customer_id'
),

versions as (
    select customer_ids.customer_key, v.*
    from intermediate.int_orders_versioned as v
    inner join customer_ids on customer_ids.customer_id = v.customer_id
    where {sampled_customer_ids}
),

-- each order in the state of its latest version *recorded* by D (system time: the version's
-- updated_at), counted when that version places it by D, so an order that reached us only
-- later does not exist yet. Versions are recorded in version order and each observed
-- version's valid_to_at is its successor's updated_at: the latest recorded by D is the one
-- recorded by D whose successor was not (a filter, not a sort of every version per D)
orders_at as (
    select
        s.snapshot_date, v.customer_key, v.order_id, v.order_date, v.status,
        v.is_completed, v.reporting_amount
    from snapshots as s
    inner join versions as v
        on not v.is_inferred
        and v.order_date <= s.snapshot_date
        and {recorded_date} <= s.snapshot_date
        and (v.valid_to_at is null or {superseded_date} > s.snapshot_date)
),

order_days as (
    select snapshot_date, customer_key, order_date,
        count(*) as count_orders, sum(reporting_amount) as revenue
    from orders_at
    where is_completed
    group by snapshot_date, customer_key, order_date
),

order_days_gapped as (
    select *,
        order_date - lag(order_date) over w as gap_days,
        row_number() over w as day_number,
        count(*) over (partition by snapshot_date, customer_key) as count_days
    from order_days
    window w as (partition by snapshot_date, customer_key order by order_date)
),

order_features as (
    select
        snapshot_date,
        customer_key,
        snapshot_date - max(order_date) as days_since_last_order,
        snapshot_date - min(order_date) as days_since_first_order,
        sum(count_orders)::integer as count_orders,
        coalesce(sum(count_orders) filter (where order_date > snapshot_date - 90), 0)::integer
            as count_orders_90d,
        coalesce(sum(count_orders) filter (where order_date > snapshot_date - 365), 0)::integer
            as count_orders_365d,
        sum(revenue)::double precision as revenue,
        (sum(revenue) / sum(count_orders))::double precision as avg_order_value,
        case when count(*) > 1
            then (max(order_date) - min(order_date))::double precision / (count(*) - 1)
        end as mean_gap_days,
        max(gap_days) filter (where day_number = count_days)::double precision
            as last_gap_days,
        -- purchase timing: gap quantiles, their trend (days per further order day)
        percentile_cont(0.25) within group (order by gap_days) as gap_p25_days,
        percentile_cont(0.5) within group (order by gap_days) as gap_median_days,
        percentile_cont(0.75) within group (order by gap_days) as gap_p75_days,
        regr_slope(gap_days, day_number) as gap_slope,
        -- seasonality of the customer's own history: orders in the window a year before
        -- the label window (null when they were not a customer a year ago)
        case when min(order_date) <= snapshot_date - 365 then coalesce(sum(count_orders)
            filter (where order_date > snapshot_date - 365
                and order_date <= snapshot_date - 365 + %(horizon)s), 0)
        end::integer as orders_same_window_last_year,
        -- last order day's value over the mean order day's value
        case when count(*) > 1 then
            (max(revenue) filter (where day_number = count_days))
            / nullif(sum(revenue) / count(*), 0)
        end::double precision as value_trend,
        count(*) filter (
            where day_number > 1 and order_date > snapshot_date - %(horizon)s
        )::integer as recent_frequency,
        -- BG/NBD's summary in days: repeat order days, first to last, first to D
        (count(*) - 1)::integer as frequency,
        (max(order_date) - min(order_date))::integer as recency,
        (snapshot_date - min(order_date))::integer as t,
        coalesce(
            (sum(revenue) filter (where day_number > 1)) / nullif(count(*) - 1, 0), 0
        )::double precision as monetary_value
    from order_days_gapped
    group by snapshot_date, customer_key
),

refunds as (
    select snapshot_date, customer_key, count(*) as count_refunds,
        sum(reporting_amount) as refunded_value,
        snapshot_date - max(order_date) as days_since_last_refund
    from orders_at
    where status = 'refunded'
    group by snapshot_date, customer_key
),

-- labels: a completed order placed in (D, D + horizon] (one placed and refunded the same
-- day never counts, as in the stage history)
future_buyers as (
    select distinct s.snapshot_date, v.customer_key
    from snapshots as s
    inner join versions as v
        on v.is_completed
        and v.order_date > s.snapshot_date
        and v.order_date <= s.snapshot_date + %(horizon)s
        and (v.valid_to_date is null or v.valid_to_date > v.valid_from_date)
),

-- web: sessions cut by event day and receipt day, so "visible at D" is exact (built
-- incrementally by dbt: only sessions with new events are re-aggregated each day)
session_days as (
    select
        anonymous_id,
        session_key,
        event_date,
        visible_date,
        user_id,
        count_product_views as product_views,
        count_carts as carts
    from intermediate.int_web_session_days_aggregated
    where event_date <= %(max_snapshot)s
),

-- who identified on which device, and when we knew it (event happened and was received;
-- built incrementally by dbt)
device_identities as (
    select anonymous_id, user_id, email, first_observed_at, known_date
    from intermediate.int_web_identities_observed
    where anonymous_id is not null
),

-- a device belongs to the first identity known on it by D (user_id before email)
devices_at as (
    select distinct on (s.snapshot_date, i.anonymous_id)
        s.snapshot_date,
        i.anonymous_id,
        case when i.user_id is not null then 'customer_id' else 'email' end as identifier_type,
        coalesce(i.user_id, i.email) as identifier_value
    from snapshots as s
    inner join device_identities as i on i.known_date <= s.snapshot_date
    order by s.snapshot_date, i.anonymous_id, (i.user_id is null), i.first_observed_at,
        i.user_id, i.email
),

device_keys as (
    select d.snapshot_date, d.anonymous_id, ids.customer_key
    from devices_at as d
    inner join intermediate.int_identifiers_clustered as ids
        on ids.identifier_type = d.identifier_type
        and ids.identifier_value = d.identifier_value
),

-- devices with an identity of a (sampled) customer at some time
owned_devices as (
    select distinct i.anonymous_id
    from device_identities as i
    inner join intermediate.int_identifiers_clustered as ids
        on ids.identifier_type = case when i.user_id is not null then 'customer_id' else 'email' end
        and ids.identifier_value = coalesce(i.user_id, i.email)
    where {sampled_ids}
),

-- the sessions that can count for a (sampled) customer, before they meet the snapshots: a
-- user's session is that customer's; another is its device's owner at D (device_keys),
-- so a device no customer ever identified on has none (a third of the session-days at 1M)
owned_sessions as (
    select sd.*, user_keys.customer_key as user_key
    from session_days as sd
    left join customer_ids as user_keys on user_keys.customer_id = sd.user_id
    left join owned_devices as owned on owned.anonymous_id = sd.anonymous_id
    where case when user_keys.customer_key is not null then {sampled_user_keys}
        else owned.anonymous_id is not null end
),

visible_sessions as (
    select
        s.snapshot_date,
        coalesce(sd.user_key, device_keys.customer_key) as customer_key,
        sd.anonymous_id,
        sd.session_key,
        sd.event_date,
        sd.product_views,
        sd.carts
    from snapshots as s
    inner join owned_sessions as sd
        on sd.event_date <= s.snapshot_date and sd.visible_date <= s.snapshot_date
    left join device_keys
        on device_keys.snapshot_date = s.snapshot_date
        and device_keys.anonymous_id = sd.anonymous_id
),

web_features as (
    select
        snapshot_date,
        customer_key,
        count(distinct (anonymous_id, session_key))
            filter (where event_date > snapshot_date - 7) as sessions_7d,
        count(distinct (anonymous_id, session_key))
            filter (where event_date > snapshot_date - 30) as sessions_30d,
        count(distinct (anonymous_id, session_key))
            filter (where event_date > snapshot_date - 90) as sessions_90d,
        coalesce(sum(product_views) filter (where event_date > snapshot_date - 30), 0)
            as product_views_30d,
        coalesce(sum(product_views) filter (where event_date > snapshot_date - 90), 0)
            as product_views_90d,
        coalesce(sum(carts) filter (where event_date > snapshot_date - 30), 0) as carts_30d,
        coalesce(sum(carts) filter (where event_date > snapshot_date - 90), 0) as carts_90d,
        snapshot_date - max(event_date) as days_since_last_visit
    from visible_sessions
    where customer_key is not null and {sampled_visible_sessions}
    group by snapshot_date, customer_key
),

contacts as (
    select ids.customer_key, c.*
    from staging.stg_crm__contacts as c
    inner join intermediate.int_identifiers_clustered as ids
        on ids.identifier_type = 'crm_contact_id' and ids.identifier_value = c.contact_id
    where {sampled_ids}
),

-- the latest contact version recorded by D (a contact exported only later is unknown at D)
crm_at as (
    select distinct on (s.snapshot_date, c.customer_key)
        s.snapshot_date, c.customer_key, c.is_marketing_opt_in, c.acquisition_channel,
        c.country_code
    from snapshots as s
    inner join contacts as c on {updated_date} <= s.snapshot_date
    order by s.snapshot_date, c.customer_key, c.updated_at desc, c.contact_id
),

final as (
    select
        o.snapshot_date,
        o.customer_key,
        o.days_since_last_order,
        o.days_since_first_order,
        o.count_orders,
        o.count_orders_90d,
        o.count_orders_365d,
        o.revenue,
        o.avg_order_value,
        o.mean_gap_days,
        o.last_gap_days,
        o.last_gap_days / nullif(o.mean_gap_days, 0) as gap_trend,
        o.days_since_last_order / nullif(o.mean_gap_days, 0) as recency_over_gap,
        coalesce(r.count_refunds, 0)::integer as count_refunds,
        (coalesce(r.count_refunds, 0)::double precision
            / (o.count_orders + coalesce(r.count_refunds, 0))) as refund_share,
        o.gap_p25_days,
        o.gap_median_days,
        o.gap_p75_days,
        o.gap_slope,
        (o.gap_median_days - o.days_since_last_order)::double precision as days_to_usual_next,
        o.orders_same_window_last_year,
        o.value_trend,
        coalesce(
            (coalesce(r.refunded_value, 0) / nullif(o.revenue + coalesce(r.refunded_value, 0), 0)),
            0
        )::double precision as refunded_value_share,
        r.days_since_last_refund::integer as days_since_last_refund,
        coalesce(w.sessions_7d, 0)::integer as sessions_7d,
        coalesce(w.sessions_30d, 0)::integer as sessions_30d,
        coalesce(w.sessions_90d, 0)::integer as sessions_90d,
        coalesce(w.product_views_30d, 0)::integer as product_views_30d,
        coalesce(w.product_views_90d, 0)::integer as product_views_90d,
        coalesce(w.carts_30d, 0)::integer as carts_30d,
        coalesce(w.carts_90d, 0)::integer as carts_90d,
        w.days_since_last_visit::integer as days_since_last_visit,
        case when crm.is_marketing_opt_in then 1.0 when not crm.is_marketing_opt_in then 0.0 end
            ::double precision as is_marketing_opt_in,
        crm.acquisition_channel,
        crm.country_code,
        o.frequency,
        o.recency,
        o.t,
        o.monetary_value,
        o.recent_frequency,
        %(horizon)s::integer as horizon_days,
        case
            when o.snapshot_date + %(horizon)s > %(data_as_of)s::date then null
            else fb.customer_key is null
        end as churned
    from order_features as o
    left join refunds as r
        on r.snapshot_date = o.snapshot_date and r.customer_key = o.customer_key
    left join web_features as w
        on w.snapshot_date = o.snapshot_date and w.customer_key = o.customer_key
    left join crm_at as crm
        on crm.snapshot_date = o.snapshot_date and crm.customer_key = o.customer_key
    left join future_buyers as fb
        on fb.snapshot_date = o.snapshot_date and fb.customer_key = o.customer_key
)

select * from final
""".format(
    # calendar dates in the business zone, like the dates dbt derives (var business_timezone)
    updated_date="cast((c.updated_at at time zone %(business_timezone)s) as date)",
    recorded_date="cast((v.updated_at at time zone %(business_timezone)s) as date)",
    superseded_date="cast((v.valid_to_at at time zone %(business_timezone)s) as date)",
    # the training sample (snapshots.max_customers): filtered where each part is keyed by
    # the person, never before a session's owner is decided (a user's session must not
    # fall back to another person's device), so a sampled customer's features are exactly
    # those of the whole population's query
    sampled_customer_ids=_in_sample("customer_ids.customer_key"),
    sampled_visible_sessions=_in_sample("customer_key"),
    sampled_ids=_in_sample("ids.customer_key"),
    sampled_user_keys=_in_sample("user_keys.customer_key"),
)


# The web sessions and device identities as the query built them before it read
# int_web_session_days_aggregated and int_web_identities_observed (issue 14): every event
# re-aggregated for each run. Kept as the reference that
# tests/ml/test_features.py and bench/bench_features.py compare the dbt model against.
_SESSION_DAYS_FROM_EVENTS = """session_days as (
    select
        anonymous_id,
        coalesce(session_id, event_id) as session_key,
        event_date,
        greatest(event_date, cast((received_at at time zone %(business_timezone)s) as date))
            as visible_date,
        min(user_id) as user_id,
        count(*) filter (where event_name = 'product_viewed') as product_views,
        count(*) filter (where event_name = 'added_to_cart') as carts
    from staging.stg_web__events
    where event_date <= %(max_snapshot)s
    group by 1, 2, 3, 4
),
"""
_DEVICE_IDENTITIES_FROM_EVENTS = """device_identities as (
    select
        anonymous_id,
        user_id,
        email,
        min(event_at) as first_observed_at,
        min(greatest(event_date, cast((received_at at time zone %(business_timezone)s) as date)))
            as known_date
    from staging.stg_web__events
    where anonymous_id is not null and (user_id is not null or email is not null)
    group by anonymous_id, user_id, email
),
"""


# Every session before the snapshots, as the query had them before it left out those no
# (sampled) customer can own: the reference for that filter too.
_EVERY_SESSION = """owned_sessions as (
    select sd.*, user_keys.customer_key as user_key
    from session_days as sd
    left join customer_ids as user_keys on user_keys.customer_id = sd.user_id
),
"""


# Each order's latest version recorded by D as the query found it before it read the
# versions' own updated_at and valid_to_at (issue 14): every version numbered again from
# staging, joined back and sorted per snapshot. The reference for the filter that replaced
# it.
_ORDERS_AT_BY_SORT = """recorded_versions as (
    select
        order_id,
        updated_at,
        row_number() over (partition by order_id order by updated_at) as version_number
    from staging.stg_orders__orders
),

orders_at as (
    select distinct on (s.snapshot_date, v.order_id)
        s.snapshot_date, v.customer_key, v.order_id, v.order_date, v.status,
        v.is_completed, v.reporting_amount
    from snapshots as s
    inner join versions as v
        on v.order_date <= s.snapshot_date
        and not v.is_inferred
    inner join recorded_versions as r
        on r.order_id = v.order_id
        and r.version_number = v.version_number
        and cast((r.updated_at at time zone %(business_timezone)s) as date) <= s.snapshot_date
    order by s.snapshot_date, v.order_id, r.updated_at desc, v.version_number desc
),
"""


def reference_features_sql(*, from_events: bool = True, every_session: bool = True) -> str:
    """Return FEATURES_SQL with each order's latest recorded version found by sorting its
    versions; `every_session`, with every session met with the snapshots (none left out
    beforehand as ownerless); and, `from_events`, with its web sessions and device
    identities aggregated from every event, not read from the dbt models. (Neither flag:
    the query before the orders' filter, which bench/bench_features.py --state times.)"""
    sql = FEATURES_SQL
    ctes = [("orders_at", "valid_to_at", _ORDERS_AT_BY_SORT)]
    if every_session:
        ctes += [("owned_sessions", "owned_devices", _EVERY_SESSION)]
    if from_events:
        ctes += [
            ("session_days", "int_web_session_days_aggregated", _SESSION_DAYS_FROM_EVENTS),
            ("device_identities", "int_web_identities_observed", _DEVICE_IDENTITIES_FROM_EVENTS),
        ]
    for cte, model, reference in ctes:
        start = sql.index(f"{cte} as (")
        end = sql.index("\n),\n", start) + len("\n),\n")
        if model not in sql[start:end]:
            raise AssertionError(f"FEATURES_SQL no longer reads {cte} from {model}")
        sql = sql[:start] + reference + sql[end:]
    return sql


def business_timezone() -> str:
    """Return the business time zone of the sources file (UTC without one)."""
    from lifecycle.settings import get_settings
    from lifecycle.sources_file import load_sources

    return load_sources(get_settings()).business.timezone


def _params(
    snapshots: Sequence[dt.date],
    horizon_days: int,
    data_as_of: dt.date | None,
    sample_buckets: int = SAMPLE_BUCKETS,
) -> dict:
    if not snapshots:
        raise ValueError("no snapshot dates given")
    return {
        "snapshots": sorted(set(snapshots)),
        "max_snapshot": max(snapshots),
        "horizon": int(horizon_days),
        "data_as_of": data_as_of or max(snapshots),
        "business_timezone": business_timezone(),
        "sample_buckets": int(sample_buckets),
    }


def sample_buckets(conn: psycopg.Connection, max_customers: int | None) -> int:
    """Return the training sample's buckets for at most about `max_customers` customers
    (:data:`SAMPLE_BUCKETS`, everyone, when there are no more than that, or no limit)."""
    if not max_customers:
        return SAMPLE_BUCKETS
    total = conn.execute(
        "select count(distinct customer_key) from intermediate.int_identifiers_clustered "
        "where identifier_type = 'customer_id'"
    ).fetchone()[0]
    if total <= max_customers:
        return SAMPLE_BUCKETS
    buckets = max(1, SAMPLE_BUCKETS * max_customers // total)
    log.info(
        "ml.training_set: a sample of about %d of %d customers (%.1f%%, snapshots.max_customers "
        "%d), the same customers at every snapshot",
        total * buckets // SAMPLE_BUCKETS,
        total,
        100 * buckets / SAMPLE_BUCKETS,
        max_customers,
    )
    return buckets


def _require_warehouse(conn: psycopg.Connection) -> None:
    """Raise a clear error when the dbt layers the features read are missing."""
    needed = (
        "intermediate.int_orders_versioned",
        "intermediate.int_identifiers_clustered",
        "intermediate.int_web_session_days_aggregated",
        "intermediate.int_web_identities_observed",
        "staging.stg_crm__contacts",
    )
    missing = [
        name
        for name in needed
        if conn.execute("select to_regclass(%s)", (name,)).fetchone()[0] is None
    ]
    if missing:
        raise FeatureError(
            f"the warehouse lacks {', '.join(missing)}: run `lifecycle transform --date D` first"
        )
    # a warehouse built by an earlier release: its versions lack when each was recorded
    recorded = conn.execute(
        "select 1 from information_schema.columns where table_schema = 'intermediate' "
        "and table_name = 'int_orders_versioned' and column_name = 'updated_at'"
    ).fetchone()
    if recorded is None:
        raise FeatureError(
            "intermediate.int_orders_versioned was built by an earlier release (no "
            "updated_at column): run `lifecycle transform --date D` to rebuild it first"
        )


def _plan(conn: psycopg.Connection) -> None:
    """Tune the planner for the feature query in the current transaction.

    The per-customer aggregates are estimated at a handful of rows (the snapshot list is
    an unnested parameter), which leads PostgreSQL into nested-loop joins over ~10^5 rows:
    at 100k people one snapshot took 61 s with them and 24 s without (bench_ml).
    """
    conn.execute("set local enable_nestloop = off")


class FeatureError(RuntimeError):
    """Features cannot be computed (missing warehouse layers, bad snapshot dates)."""


def compute_features(
    conn: psycopg.Connection,
    snapshots: Sequence[dt.date],
    *,
    horizon_days: int = 90,
    data_as_of: dt.date | None = None,
) -> pd.DataFrame:
    """Return the point-in-time features (and labels) of every eligible customer per snapshot."""
    _require_warehouse(conn)
    _plan(conn)
    frame = _frame(conn, FEATURES_SQL, _params(snapshots, horizon_days, data_as_of))
    return typed(frame).sort_values(["snapshot_date", "customer_key"], ignore_index=True)


def _frame(conn: psycopg.Connection, query: str, params: object) -> pd.DataFrame:
    """Return the rows of `query` as a DataFrame, read column by column (bounded memory:
    :func:`lifecycle.warehouse.query_arrow`); dates stay ``datetime.date`` objects."""
    from lifecycle.warehouse import query_arrow

    return query_arrow(conn, query, params).to_pandas(
        date_as_object=True, split_blocks=True, self_destruct=True
    )


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with float numeric features (NaN for unknown) and string categories."""
    for col in NUMERIC_FEATURES:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in CATEGORICAL_FEATURES:
        frame[col] = frame[col].astype("object").where(frame[col].notna(), None)
    for col in (*RFM_COLUMNS, RECENT_FREQUENCY):
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    return frame


def stream_features(
    conn: psycopg.Connection, day: dt.date, *, chunk_size: int = 50_000, horizon_days: int = 90
) -> Iterator[pd.DataFrame]:
    """Yield the features as of `day` of every eligible customer, `chunk_size` rows at a time.

    A server-side cursor keeps memory bounded by the chunk, not by the customer count.
    `conn` must not be in autocommit mode (named cursors live in a transaction).
    """
    _require_warehouse(conn)
    _plan(conn)
    with conn.cursor(name="lifecycle_features") as cur:
        cur.itersize = chunk_size
        cur.execute(
            f"select * from ({FEATURES_SQL}) as f order by customer_key",
            _params([day], horizon_days, day),
        )
        names = None
        while True:
            rows = cur.fetchmany(chunk_size)
            if names is None:
                names = [d.name for d in cur.description]
            if not rows:
                break
            yield typed(pd.DataFrame(rows, columns=names))


def snapshot_dates(
    as_of: dt.date, *, horizon_days: int, count: int, step_days: int
) -> list[dt.date]:
    """Return `count` complete snapshot dates, latest first (as_of − horizon, then step back)."""
    if count < 3:
        raise ValueError("need at least 3 snapshots (training, calibration, holdout)")
    latest = as_of - dt.timedelta(days=horizon_days)
    return [latest - dt.timedelta(days=step_days * i) for i in range(count)]


def build_training_set(
    conn: psycopg.Connection,
    snapshots: Sequence[dt.date],
    *,
    horizon_days: int = 90,
    data_as_of: dt.date,
    max_customers: int | None = None,
) -> dict[dt.date, int]:
    """Write the snapshots' features and labels to ml.training_set; return rows per snapshot.

    Each snapshot's partition is replaced in one transaction, committed on return (a rerun
    gives the same table; a failure leaves the previous rows). Snapshots whose label window
    ends after `data_as_of` are refused: their labels are not known yet. `max_customers`
    (models/churn.yaml ``snapshots.max_customers``): with more customers than that, the
    snapshots hold a fixed sample of about that many (the same at every snapshot and on
    every rerun, chosen by customer_key), each row exactly as the whole population's.
    """
    incomplete = [d for d in snapshots if d + dt.timedelta(days=horizon_days) > data_as_of]
    if incomplete:
        raise FeatureError(
            f"snapshot(s) {', '.join(map(str, sorted(incomplete)))} have no complete "
            f"{horizon_days}-day label window as of {data_as_of}"
        )
    _require_warehouse(conn)
    cols = ", ".join(COLUMNS)
    with conn.transaction():
        _plan(conn)
        conn.execute("create schema if not exists ml")
        conn.execute(TRAINING_SET_DDL)
        for column, kind in TRAINING_SET_ADDED.items():
            conn.execute(f"alter table ml.training_set add column if not exists {column} {kind}")
        conn.execute(
            "delete from ml.training_set where snapshot_date = any(%s::date[])",
            (sorted(set(snapshots)),),
        )
        buckets = sample_buckets(conn, max_customers)
        conn.execute(
            f"insert into ml.training_set ({cols}) select {cols} from ({FEATURES_SQL}) as f",
            _params(snapshots, horizon_days, data_as_of, buckets),
        )
        counts = dict(
            conn.execute(
                "select snapshot_date, count(*) from ml.training_set "
                "where snapshot_date = any(%s::date[]) group by 1 order by 1",
                (sorted(set(snapshots)),),
            ).fetchall()
        )
    conn.commit()  # the caller's open transaction too: the partitions are published now
    log.info(
        "ml.training_set: %s",
        ", ".join(f"{d}: {n} customers" for d, n in sorted(counts.items())),
    )
    return {d: counts.get(d, 0) for d in sorted(set(snapshots))}


def read_training_set(conn: psycopg.Connection, snapshots: Sequence[dt.date]) -> pd.DataFrame:
    """Return the rows of ml.training_set for `snapshots`, typed like :func:`compute_features`."""
    frame = _frame(
        conn,
        f"select {', '.join(COLUMNS)} from ml.training_set "
        "where snapshot_date = any(%s::date[]) order by snapshot_date, customer_key",
        (sorted(set(snapshots)),),
    )
    return typed(frame)


def training_counts(
    conn: psycopg.Connection, snapshots: Sequence[dt.date], columns: Sequence[str]
) -> dict[str, int]:
    """Return the rows of ml.training_set at `snapshots` (key ``"*"``) and each of `columns`'
    non-null values there, counted in the database (:func:`dropped_features`' test without
    reading the rows)."""
    from psycopg import sql

    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"not columns of ml.training_set: {', '.join(unknown)}")
    query = sql.SQL(
        "select {counts} from ml.training_set where snapshot_date = any(%s::date[])"
    ).format(
        counts=sql.SQL(", ").join(
            [sql.SQL("count(*)")]
            + [sql.SQL("count({})").format(sql.Identifier(c)) for c in columns]
        )
    )
    values = conn.execute(query, (sorted(set(snapshots)),)).fetchone()
    return dict(zip(["*", *columns], (int(v) for v in values), strict=True))


def dropped_features(
    features: Sequence[str], absent: dict[str, str], rows: pd.DataFrame | None = None
) -> dict[str, str]:
    """Return feature -> why it is left out of a model: its source is absent (`absent`,
    from :func:`lifecycle.availability.absent_entities`), or it has no value in any of
    `rows` (the training rows): a column that is null throughout carries no signal, and
    filling it would fake one."""
    out: dict[str, str] = {}
    for name in features:
        source = FEATURE_SOURCES.get(name)
        if source in absent:
            out[name] = absent[source]
        elif rows is not None and name in rows.columns and rows[name].notna().sum() == 0:
            out[name] = f"no value in any of the {len(rows)} training rows"
    return out


@dataclass(frozen=True)
class BtydFit:
    """BG/NBD (and Gamma-Gamma, when it fits) parameters of one snapshot's RFM summary."""

    bgnbd: Any  # ml.clv.BetaGeoParams
    gamma_gamma: Any  # ml.clv.GammaGammaParams | None
    modified: bool


def fit_btyd(
    rfm: pd.DataFrame, clv_params: Mapping[str, Any] | None = None, *, label: object = ""
) -> BtydFit | None:
    """Return the BTYD fit of `rfm` (every customer eligible at one date), or None when the
    data cannot fit BG/NBD (logged: the BTYD features are then left empty, never an error).

    `clv_params` are models/clv.yaml's ``params`` (process, penalizers, min_repeat_buyers).
    """
    from ml.clv import CLVFitError, fit_bgnbd, fit_gamma_gamma

    params = dict(clv_params or {})
    modified = params.get("process", "bgnbd") == "mbgnbd"
    min_repeat = int(params.get("min_repeat_buyers", 10))
    f, rec, t = (rfm[c].to_numpy(dtype=float) for c in ("frequency", "recency", "t"))
    try:
        bg = fit_bgnbd(
            f,
            rec,
            t,
            penalizer=float(params.get("penalizer", 0.0)),
            min_repeat_buyers=min_repeat,
            modified=modified,
        )
    except CLVFitError as exc:
        log.warning("BTYD features at %s left empty: %s", label, exc)
        return None
    try:
        gg = fit_gamma_gamma(
            f,
            np.maximum(rfm["monetary_value"].to_numpy(dtype=float), 0.0),
            penalizer=float(params.get("gg_penalizer", 0.0)),
            min_repeat_buyers=min_repeat,
        )
    except CLVFitError as exc:
        log.warning("BTYD order value at %s left empty: %s", label, exc)
        gg = None
    return BtydFit(bg, gg, modified)


def btyd_features(frame: pd.DataFrame, fit: BtydFit | None, *, horizon_days: int) -> pd.DataFrame:
    """Return the :data:`BTYD_FEATURES` of the rows of `frame` under `fit` (same index;
    all null when `fit` is None)."""
    from ml.clv import (
        TIME_UNIT_DAYS,
        bgnbd_expected_purchases,
        bgnbd_p_alive,
        gg_expected_order_value,
    )

    out = pd.DataFrame(np.nan, index=frame.index, columns=list(BTYD_FEATURES), dtype="float64")
    if fit is None or frame.empty:
        return out
    f, rec, t = (frame[c].to_numpy(dtype=float) for c in ("frequency", "recency", "t"))
    bg, modified = fit.bgnbd, fit.modified
    out["btyd_p_alive"] = bgnbd_p_alive(bg, f, rec, t, modified=modified)
    out["btyd_expected_purchases"] = bgnbd_expected_purchases(
        bg, horizon_days, f, rec, t, modified=modified
    )
    expected_recent = _unconditional_purchases(bg, t) - _unconditional_purchases(
        bg, np.maximum(t - horizon_days, 0.0)
    )
    # P(no purchase in (T, T + h]): dead, or alive with no arrival; the rate given alive is
    # Gamma(r + x, alpha + T) a posteriori, so P(no arrival) = ((a+T)/(a+T+h))^(r+x)
    weeks, horizon = t / TIME_UNIT_DAYS, horizon_days / TIME_UNIT_DAYS
    p_alive = out["btyd_p_alive"].to_numpy()
    quiet = np.exp((bg.r + f) * (np.log(bg.alpha + weeks) - np.log(bg.alpha + weeks + horizon)))
    out["btyd_p_no_purchase"] = 1.0 - p_alive + p_alive * quiet
    recent = frame[RECENT_FREQUENCY].to_numpy(dtype=float)
    out["btyd_purchases_residual"] = np.where(
        np.isfinite(expected_recent), recent - expected_recent, np.nan
    )
    if fit.gamma_gamma is not None:
        out["btyd_expected_order_value"] = gg_expected_order_value(
            fit.gamma_gamma, f, np.maximum(frame["monetary_value"].to_numpy(dtype=float), 0.0)
        )
    return out


def add_btyd_features(
    frame: pd.DataFrame, *, horizon_days: int, clv_params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Return `frame` with :data:`BTYD_FEATURES` added, from a fit per snapshot date.

    For each snapshot D of `frame`, BG/NBD and Gamma-Gamma are fitted on the RFM summary of
    *every* row of D (all customers eligible at D, built from data <= D only), so the
    features are point-in-time like the SQL ones: adding later data changes nothing at D.
    `frame` must hold whole snapshots (every eligible customer), as ``compute_features``
    and ``read_training_set`` give them. Scoring applies the fit saved with the model at
    training (a model from before: one fit on the day's summary) chunk by chunk
    (``ml.score``), the same computation.

    * ``btyd_p_alive`` — P(alive) at D;
    * ``btyd_expected_purchases`` — conditional expected purchases in (D, D + horizon];
    * ``btyd_expected_order_value`` — Gamma-Gamma's expected order value;
    * ``btyd_p_no_purchase`` — BG/NBD's own probability of no purchase in (D, D + horizon],
      the churn label's event: 1 - P(alive) + P(alive) x P(no arrival | alive);
    * ``btyd_purchases_residual`` — repeat order days in the last `horizon_days` minus what
      BG/NBD expects of a customer of that age in that window (unconditional
      E[X(T)] - E[X(T - h)]): above 0 buys faster than the model's average, below 0 slower.

    A snapshot whose data cannot fit BG/NBD (too few repeat buyers, a degenerate optimum)
    gets null BTYD features (logged, see :func:`fit_btyd`): the trees handle missing
    values, and a feature null in every training row is dropped (:func:`dropped_features`).
    """
    # Copy-on-write (pandas 3): `frame` stays as it was and no column of it is copied, so
    # the training snapshots (GBs at 1M customers) are not held twice while the fits run.
    out = frame.copy(deep=False)
    for col in BTYD_FEATURES:
        out[col] = np.nan
    if out.empty:
        return out
    for day, rows in out.groupby("snapshot_date", sort=True).groups.items():
        part = out.loc[rows]
        values = btyd_features(
            part, fit_btyd(part, clv_params, label=day), horizon_days=horizon_days
        )
        out.loc[rows, list(BTYD_FEATURES)] = values.to_numpy()
    return out


def _unconditional_purchases(params: Any, t_days: np.ndarray) -> np.ndarray:
    """Return BG/NBD's E[X(t)], the expected repeat purchases of a new customer in (0, t]
    (Fader, Hardie & Lee 2005, eq. 9), t in days; NaN where the closed form is not finite."""
    from scipy import special

    from ml.clv import TIME_UNIT_DAYS

    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    t = np.asarray(t_days, dtype=float) / TIME_UNIT_DAYS
    if abs(a - 1.0) < 1e-4:  # 0/0 at a = 1: the form is smooth in a, step just off it
        a = 1.0 + 1e-4
    z = t / (alpha + t)
    with np.errstate(all="ignore"):
        value = (
            (a + b - 1)
            / (a - 1)
            * (1 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b, a + b - 1, z))
        )
    return np.where(np.isfinite(value) & (t > 0), value, np.where(t > 0, np.nan, 0.0))


def rfm_at(conn: psycopg.Connection, day: dt.date, *, horizon_days: int = 90) -> pd.DataFrame:
    """Return the RFM summary at `day` of every eligible customer (the feature query's own
    columns, so scoring's BTYD fit sees exactly what training's per-snapshot fit saw)."""
    _require_warehouse(conn)
    _plan(conn)
    cols = ("customer_key", *RFM_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(
            f"select {', '.join(cols)} from ({FEATURES_SQL}) as f",
            _params([day], horizon_days, day),
        )
        frame = pd.DataFrame(cur.fetchall(), columns=list(cols))
    for col in RFM_COLUMNS:
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    return frame
