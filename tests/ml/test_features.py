"""Point-in-time features: no leakage, exact eligibility, idempotent training-set partitions.

The leakage guard lands a world only up to a cut date C (everything the sources had
delivered by then), builds the warehouse, computes features at snapshots up to C; then
lands the rest of the world — later orders, refunds of earlier orders, late and later web
events, CRM updates — rebuilds, and computes the same snapshots again. Every feature must
be unchanged; only the labels (which look after D by design) may change.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from lifecycle.extract import extract
from lifecycle.sample.world import WorldConfig, generate_world
from lifecycle.transform import transform
from ml import features as ft
from ml.specs import load_spec
from tests.ml.conftest import temp_home
from tests.transform.conftest import land, rows, scratch_database, settings_for, snapshot

START, CUT, END = dt.date(2023, 7, 1), dt.date(2024, 3, 31), dt.date(2024, 6, 30)
SNAPSHOTS = [dt.date(2023, 11, 30), dt.date(2024, 1, 31), CUT]
FEATURES = [
    *ft.NUMERIC_FEATURES,
    *ft.CATEGORICAL_FEATURES,
    *ft.RFM_COLUMNS,
    ft.RECENT_FREQUENCY,
    *ft.BTYD_FEATURES,
]


def _refund_some_orders_after(orders_csv: Path, cut: dt.date, n: int = 8) -> list[str]:
    """Rewrite `n` completed orders placed in the month before `cut` as refunded after it."""
    lines = orders_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    at = {name: i for i, name in enumerate(header)}
    chosen: list[str] = []
    refund_at = f"{REFUNDS_RECORDED}T12:00:00Z"
    for i, line in enumerate(lines[1:], start=1):
        fields = line.rstrip("\n").split(",")
        ordered = fields[at["ordered_at"]][:10]
        if (
            len(chosen) < n
            and fields[at["status"]] == "completed"
            and str(cut - dt.timedelta(days=30)) <= ordered < str(cut)
        ):
            fields[at["status"]] = "refunded"
            fields[at["updated_at"]] = refund_at
            lines[i] = ",".join(fields) + "\n"
            chosen.append(fields[at["order_id"]])
    orders_csv.write_text("".join(lines), encoding="utf-8")
    assert len(chosen) == n
    return chosen


def _late_events_for(world: Path, cut: dt.date, n: int = 5) -> None:
    """Write a web file that arrives two days after `cut` with events of buyers on `cut`."""
    lines = (world / "orders" / "orders.csv").read_text(encoding="utf-8").splitlines()[1:]
    buyers = sorted({line.split(",")[1] for line in lines if line.split(",")[3] < str(cut)})[:n]
    arrived = cut + dt.timedelta(days=2)
    events = [
        {
            "event_id": str(uuid.UUID(int=i + 1)),
            "anonymous_id": str(uuid.UUID(int=1000 + i)),
            "user_id": buyer,
            "email": None,
            "event": "product_viewed",
            "timestamp": f"{cut}T20:00:00Z",
            "received_at": f"{arrived}T08:00:00Z",
            "session_id": str(uuid.UUID(int=2000 + i)),
            "page_url": "https://shop.example.com/products/P10001",
            "utm_source": None,
            "utm_medium": None,
            "utm_campaign": None,
            "order_id": None,
            "product_id": "P10001",
        }
        for i, buyer in enumerate(buyers)
    ]
    path = world / "web" / "events" / f"dt={cut}" / f"part-9999-arrived-{arrived:%Y%m%d}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)


@pytest.fixture(scope="module")
def leakage(embedded_settings, tmp_path_factory):
    """(url, features before, features after the later data, counts of the later data)."""
    out = tmp_path_factory.mktemp("leakage_world")
    generate_world(WorldConfig(customers=600, start=START, end=END, seed=21), out)
    for home in temp_home("lifecycle-ml-leak-"):
        with scratch_database(embedded_settings) as url:
            settings = settings_for(home, url, out)
            land(settings, CUT, full=True)
            transform(CUT, settings, quiet=True)
            with psycopg.connect(url) as conn:
                before = ft.compute_features(conn, SNAPSHOTS, horizon_days=90, data_as_of=CUT)
                first = ft.build_training_set(conn, [SNAPSHOTS[0]], horizon_days=90, data_as_of=CUT)
                table_once = rows(url, "select * from ml.training_set order by 1, 2")
                again = ft.build_training_set(conn, [SNAPSHOTS[0]], horizon_days=90, data_as_of=CUT)
                table_twice = rows(url, "select * from ml.training_set order by 1, 2")
                with pytest.raises(ft.FeatureError, match="no complete 90-day label window"):
                    ft.build_training_set(conn, [SNAPSHOTS[1]], horizon_days=90, data_as_of=CUT)
            refunded = _refund_some_orders_after(out / "orders" / "orders.csv", CUT)
            _late_events_for(out, CUT)
            land(settings, END, sources=("crm", "orders", "marketing"))
            # every web file that arrived after CUT, late files of earlier days included
            extract("web", END, settings, full=True)
            transform(END, settings, quiet=True)
            later = {
                "orders_after_cut": rows(
                    url,
                    "select count(*) from raw.orders__orders where ordered_at >= %s",
                    (CUT + dt.timedelta(days=1),),
                )[0][0],
                "refunds_after_cut_of_earlier_orders": rows(
                    url,
                    "select count(*) from staging.stg_orders__orders where status = 'refunded' "
                    "and ordered_at < %s and updated_at >= %s and order_id = any(%s)",
                    (CUT, CUT + dt.timedelta(days=1), refunded),
                )[0][0],
                "events_after_cut": rows(
                    url,
                    "select count(*) from staging.stg_web__events where event_date > %s",
                    (CUT,),
                )[0][0],
                "late_events_of_earlier_days": rows(
                    url,
                    "select count(*) from staging.stg_web__events where event_date <= %s "
                    "and received_at >= %s",
                    (CUT, CUT + dt.timedelta(days=1)),
                )[0][0],
                "contacts_updated_after_cut": rows(
                    url,
                    "select count(*) from staging.stg_crm__contacts where updated_at >= %s",
                    (CUT + dt.timedelta(days=1),),
                )[0][0],
            }
            with psycopg.connect(url) as conn:
                after = ft.compute_features(conn, SNAPSHOTS, horizon_days=90, data_as_of=END)
                web = dict(zip(("from_model", "from_events"), _session_features(conn), strict=True))
            web["upgrade"] = _upgrade_known_dates(url, settings)
            yield url, before, after, later, (first, again, table_once, table_twice), web


#: The day the refunds of orders placed before CUT were recorded (_refund_some_orders_after).
REFUNDS_RECORDED = CUT + dt.timedelta(days=3)
#: Snapshots around the late web file (events of CUT received two days later), the day the
#: later refunds were recorded, and after.
SESSION_SNAPSHOTS = [
    *SNAPSHOTS,
    CUT + dt.timedelta(days=1),
    CUT + dt.timedelta(days=2),
    REFUNDS_RECORDED,
    END,
]


def _session_features(conn: psycopg.Connection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the features at SESSION_SNAPSHOTS from the dbt model and from every event."""
    reference = ft.reference_features_sql()
    assert "int_web_session_days_aggregated" not in reference
    assert "int_web_identities_observed" not in reference
    params = ft._params(SESSION_SNAPSHOTS, 90, END)
    with conn.transaction():
        ft._plan(conn)
        frames = []
        for sql in (ft.FEATURES_SQL, reference):
            with conn.cursor() as cur:
                cur.execute(f"select * from ({sql}) as f order by 1, 2", params)
                names = [d.name for d in cur.description]
                frames.append(pd.DataFrame(cur.fetchall(), columns=names))
    return frames[0], frames[1]


def _upgrade_known_dates(url: str, settings) -> tuple[int, bool]:
    """Blank known_date as a warehouse built before the column existed has it, build again
    with no new data; return (rows blanked, whether the table is again what it was)."""
    table = "intermediate.int_web_identities_observed"
    built = snapshot(url, table)
    with psycopg.connect(url) as conn:
        blanked = conn.execute(f"update {table} set known_date = null").rowcount
    transform(END, settings, quiet=True)
    return blanked, snapshot(url, table) == built


def test_session_days_model_gives_the_features_of_every_event_bit_for_bit(leakage) -> None:
    """The incremental web models (built at CUT, then on new and late events) give exactly
    the features the query gave when it re-aggregated every event."""
    url, *_, web = leakage
    from_model, from_events = web["from_model"], web["from_events"]
    assert len(from_model) > 1000
    assert from_model.columns.equals(from_events.columns)
    pd.testing.assert_frame_equal(from_model, from_events, check_exact=True)
    # the web features are not trivially empty on the day the late file arrived
    arrived = from_model[from_model["snapshot_date"] == CUT + dt.timedelta(days=2)]
    assert arrived["sessions_7d"].gt(0).sum() > 20
    # the model itself equals a full aggregation of the events (what a full refresh builds)
    counts = rows(
        url,
        "select count(*), sum(count_events), sum(count_product_views), sum(count_carts) "
        "from intermediate.int_web_session_days_aggregated",
    )[0]
    events = rows(
        url,
        "select count(distinct (anonymous_id, coalesce(session_id, event_id), event_date, "
        "greatest(event_date, (received_at at time zone 'UTC')::date))), count(*), "
        "count(*) filter (where event_name = 'product_viewed'), "
        "count(*) filter (where event_name = 'added_to_cart') from staging.stg_web__events",
    )[0]
    assert counts == events


def test_each_order_counts_in_its_latest_version_recorded_by_d(leakage) -> None:
    """Orders are taken in their latest version recorded by D by a filter on each version's
    recorded day and its successor's (valid_to_at); the reference numbers every version from
    staging again and sorts them per snapshot. Equal bit for bit (the test above compares
    the two queries whole), and the later refunds count from the day they were recorded."""
    url, *_, web = leakage
    got = web["from_model"].set_index(["snapshot_date", "customer_key"])
    refunded = {
        key
        for (key,) in rows(
            url,
            "select distinct k.customer_key from staging.stg_orders__orders as o "
            "join intermediate.int_identifiers_clustered as k on k.identifier_type = "
            "'customer_id' and k.identifier_value = o.customer_id "
            "where o.status = 'refunded' and o.updated_at::date = %s and o.ordered_at < %s",
            (REFUNDS_RECORDED, CUT),
        )
    }
    assert len(refunded) >= 5

    def refunds(day: dt.date) -> int:
        at = got.xs(day, level="snapshot_date")
        return int(at.loc[at.index.isin(refunded), "count_refunds"].sum())

    before, on = refunds(REFUNDS_RECORDED - dt.timedelta(days=1)), refunds(REFUNDS_RECORDED)
    assert on - before == 8  # the eight orders refunded that day, each counted once


def test_sessions_owned_through_a_device_alone_are_kept(leakage) -> None:
    """The query leaves out, before meeting the snapshots, the sessions no customer can
    own; a session whose only link to its customer is a device identified by user id (no
    email, no user id on the session) must still count."""
    url, *_ = leakage
    params = ft._params(SESSION_SNAPSHOTS, 90, END)
    with psycopg.connect(url) as conn, conn.transaction(force_rollback=True):
        emails = conn.execute(
            "update intermediate.int_web_identities_observed set email = null "
            "where user_id is not null"
        ).rowcount
        users = conn.execute(
            "update intermediate.int_web_session_days_aggregated set user_id = null "
            "where user_id is not null"
        ).rowcount
        ft._plan(conn)
        got, want = (
            ft.typed(_fetched(conn, f"select * from ({sql}) as f order by 1, 2", params))
            for sql in (ft.FEATURES_SQL, ft.reference_features_sql(from_events=False))
        )
    assert emails > 100 and users > 1000
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got["sessions_90d"].gt(0).sum() > 100  # the devices' sessions were counted


def test_identities_built_before_known_date_get_it_on_the_next_build(leakage) -> None:
    *_, web = leakage
    blanked, restored = web["upgrade"]
    assert blanked > 100
    assert restored


def test_later_data_was_really_added(leakage) -> None:
    _, _, _, later, _, _ = leakage
    assert all(n > 0 for n in later.values()), later


def test_features_at_d_do_not_change_when_later_data_arrives(leakage) -> None:
    _, before, after, _, _, _ = leakage
    # the BTYD features come from a BG/NBD + Gamma-Gamma fit per snapshot on data <= D
    # (models/clv.yaml's params, as training fits them): rebuilt with the later data too
    params = load_spec("clv")["params"]
    before = ft.add_btyd_features(before, horizon_days=90, clv_params=params)
    after = ft.add_btyd_features(after, horizon_days=90, clv_params=params)
    assert len(before) > 300
    assert before[["snapshot_date", "customer_key"]].equals(
        after[["snapshot_date", "customer_key"]]
    )
    for col in FEATURES:
        b, a = before[col], after[col]
        if col in ft.CATEGORICAL_FEATURES:
            assert b.fillna("<null>").equals(a.fillna("<null>")), col
        else:
            np.testing.assert_array_equal(b.to_numpy(), a.to_numpy(), err_msg=col)
    # the web, CRM and refund features are not trivially empty
    at_cut = before[before["snapshot_date"] == CUT]
    assert at_cut["sessions_90d"].gt(0).sum() > 50
    assert at_cut["is_marketing_opt_in"].notna().sum() > 100
    assert before["count_refunds"].gt(0).sum() > 5
    # the timing and BTYD features are not trivially empty either
    assert at_cut["gap_median_days"].notna().sum() > 50
    assert at_cut["orders_same_window_last_year"].notna().sum() == 0  # world starts 2023-07
    assert before["refunded_value_share"].gt(0).sum() > 5
    for col in ft.BTYD_FEATURES:
        assert at_cut[col].notna().all(), col


def test_labels_appear_only_when_their_window_is_complete(leakage) -> None:
    _, before, after, _, _, _ = leakage
    complete = before["snapshot_date"].map(lambda d: d + dt.timedelta(days=90) <= CUT)
    assert before.loc[complete, "churned"].notna().all()
    assert before.loc[~complete, "churned"].isna().all()
    # with the later data, every snapshot's window (≤ CUT + 90 = END - 1) is complete
    assert after["churned"].notna().all()
    assert 0.3 < after["churned"].astype(float).mean() < 0.95
    # the earliest snapshot's labels were already known at CUT and stay the same
    first = before["snapshot_date"] == SNAPSHOTS[0]
    assert before.loc[first, "churned"].tolist() == after.loc[first, "churned"].tolist()


def test_eligibility_matches_an_independent_count(leakage) -> None:
    url, _, after, _, _, _ = leakage
    # customers whose latest order version recorded by D is completed for some order by D
    for day in SNAPSHOTS:
        [(expected,)] = rows(
            url,
            """
            with recorded as (
                select distinct on (o.order_id) o.order_id, o.customer_id, o.status
                from staging.stg_orders__orders as o
                where (o.ordered_at at time zone 'UTC')::date <= %(d)s
                  and (o.updated_at at time zone 'UTC')::date <= %(d)s
                order by o.order_id, o.updated_at desc
            )
            select count(distinct k.customer_key)
            from recorded
            join intermediate.int_identifiers_clustered as k
              on k.identifier_type = 'customer_id' and k.identifier_value = recorded.customer_id
            where recorded.status = 'completed'
            """,
            {"d": day},
        )
        assert (after["snapshot_date"] == day).sum() == expected


def test_training_set_partition_is_replaced_not_duplicated(leakage) -> None:
    _, before, _, _, (first, again, table_once, table_twice), _ = leakage
    n = int((before["snapshot_date"] == SNAPSHOTS[0]).sum())
    assert first == again == {SNAPSHOTS[0]: n}
    assert table_once == table_twice
    assert len(table_once) == n


def test_snapshot_dates_step_back_from_the_last_complete_one() -> None:
    assert ft.snapshot_dates(END, horizon_days=90, count=3, step_days=30) == [
        dt.date(2024, 4, 1),
        dt.date(2024, 3, 2),
        dt.date(2024, 2, 1),
    ]
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        ft.snapshot_dates(END, horizon_days=90, count=2, step_days=30)


def test_missing_warehouse_layers_give_a_clear_error(fresh_db) -> None:
    with (
        psycopg.connect(fresh_db) as conn,
        pytest.raises(ft.FeatureError, match="lifecycle transform"),
    ):
        ft.compute_features(conn, [CUT])


def test_versions_built_by_an_earlier_release_ask_for_a_transform(fresh_db) -> None:
    """A warehouse whose int_orders_versioned predates its updated_at column (built by an
    earlier release, not yet transformed by this one) gets one clear error, not SQL's."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("create schema intermediate")
        conn.execute("create schema staging")
        for name in (
            "intermediate.int_orders_versioned",
            "intermediate.int_identifiers_clustered",
            "intermediate.int_web_session_days_aggregated",
            "intermediate.int_web_identities_observed",
            "staging.stg_crm__contacts",
        ):
            conn.execute(f"create table {name} (order_id text, valid_to_at timestamptz)")
        with pytest.raises(ft.FeatureError, match=r"earlier release .*`lifecycle transform"):
            ft.compute_features(conn, [CUT])
        conn.execute("alter table intermediate.int_orders_versioned add updated_at timestamptz")
        with pytest.raises(psycopg.errors.UndefinedColumn):  # past the check: the query runs
            ft.compute_features(conn, [CUT])


def _fetched(conn: psycopg.Connection, query: str, params: object) -> pd.DataFrame:
    """The rows of `query` as psycopg's fetchall gives them (a Python object per value)."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


def test_frames_read_through_copy_equal_the_fetched_rows_value_for_value(leakage) -> None:
    """Training reads its snapshots column by column through COPY (bounded memory at 1M
    customers); the values must be those the row-by-row fetch gives, to the bit, so that a
    model trained on them scores the customers that scoring fetches in chunks the same."""
    url, *_ = leakage
    with psycopg.connect(url) as conn:
        # as of CUT: the later snapshots' labels are still unknown (NULL)
        params = ft._params(SNAPSHOTS, 90, CUT)
        with conn.transaction():
            ft._plan(conn)
            fetched = ft.typed(_fetched(conn, ft.FEATURES_SQL, params)).sort_values(
                ["snapshot_date", "customer_key"], ignore_index=True
            )
        copied = ft.compute_features(conn, SNAPSHOTS, horizon_days=90, data_as_of=CUT)
        stored = ft.read_training_set(conn, [SNAPSHOTS[0]])
        stored_fetched = ft.typed(
            _fetched(
                conn,
                f"select {', '.join(ft.COLUMNS)} from ml.training_set order by 1, 2",
                None,
            )
        )
    for got, want in ((copied, fetched), (stored, stored_fetched)):
        assert len(got) == len(want) > 100
        assert list(got.columns) == list(want.columns)
        for col in want.columns:
            if pd.api.types.is_float_dtype(want[col]):
                assert got[col].dtype == np.float64, col
                np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), col)
            else:  # keys, categories, dates (datetime.date), labels, horizon: same values
                assert got[col].tolist() == want[col].tolist(), col
    # NULLs of every kind were there to be read: labels, numbers, categories
    assert copied["churned"].isna().any() and copied["churned"].notna().any()
    assert copied["gap_median_days"].isna().any() and copied["acquisition_channel"].isna().any()


def test_a_training_sample_is_a_fixed_share_of_customers_each_row_as_the_whole(leakage) -> None:
    """snapshots.max_customers: with more customers than that, ml.training_set holds the
    customers whose customer_key's first 20 bits fall below the share (the same ones at
    every snapshot and on a rerun), each row exactly as the query of everyone gives it."""
    url, _, after, *_ = leakage
    with psycopg.connect(url) as conn:
        total = conn.execute(
            "select count(distinct customer_key) from intermediate.int_identifiers_clustered "
            "where identifier_type = 'customer_id'"
        ).fetchone()[0]
        cap = total // 3
        build = lambda n: ft.build_training_set(  # noqa: E731
            conn, SNAPSHOTS, horizon_days=90, data_as_of=END, max_customers=n
        )
        counts = build(cap)
        sampled = ft.read_training_set(conn, SNAPSHOTS)
        assert build(cap) == counts
        again = ft.read_training_set(conn, SNAPSHOTS)
        assert build(total) == build(None)  # no fewer customers than the cap: everyone
        everyone = ft.read_training_set(conn, SNAPSHOTS)
        # back to the table the module's other tests read (SNAPSHOTS[0] as of CUT)
        conn.execute("delete from ml.training_set")
        conn.commit()
        ft.build_training_set(conn, [SNAPSHOTS[0]], horizon_days=90, data_as_of=CUT)
    whole = after[list(ft.COLUMNS)].sort_values(
        ["snapshot_date", "customer_key"], ignore_index=True
    )
    pd.testing.assert_frame_equal(everyone, whole, check_exact=True)
    share = (1 << 20) * cap // total
    chosen = whole["customer_key"].map(lambda key: int(key[:5], 16) < share)
    expected = whole[chosen].reset_index(drop=True)
    pd.testing.assert_frame_equal(sampled, expected, check_exact=True)
    pd.testing.assert_frame_equal(again, sampled, check_exact=True)
    assert counts == expected.groupby("snapshot_date").size().to_dict()
    assert 0.2 < len(sampled) / len(whole) < 0.47  # about a third of the customers
    # the same customers at every snapshot: a later snapshot has every earlier customer
    by_date = sampled.groupby("snapshot_date")["customer_key"].apply(set).tolist()
    assert by_date[0] <= by_date[1] <= by_date[2]
