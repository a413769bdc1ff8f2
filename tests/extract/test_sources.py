"""Extraction from the real source systems: the CRM REST API and the shop database."""

from __future__ import annotations

import csv
import datetime as dt
import logging
from pathlib import Path

import psycopg
import pytest

from lifecycle.extract import extract
from lifecycle.extract.crm import CrmApiError
from lifecycle.sample.crm_server import load_contacts, make_server
from lifecycle.sample.shop_db import load_shop_db
from tests.conftest import make_settings

TOKEN = "tok-Zq8x3-very-secret"
CRM_COLUMNS = [
    "id", "email", "first_name", "last_name", "phone", "country", "created_at", "updated_at",
    "acquisition_channel", "marketing_opt_in", "lifecycle_stage", "referred_by",
]  # fmt: skip


def _contacts_csv(path: Path, n: int) -> list[dict]:
    """Write `n` contacts updated over 2024-01-01..2024-01-05 (ties included)."""
    rows = []
    for i in range(n):
        day = 1 + i % 5
        rows.append(
            {
                "id": str(1000 + i),
                "email": f"person{i}@example.com",
                "first_name": ["Ana", "美咲", "지훈", "Zoë"][i % 4],
                "last_name": ["Silva", "佐藤", "김", "Müller"][i % 4],
                "phone": "",
                "country": ["PT", "JP", "KR", "DE"][i % 4],
                "created_at": "2023-12-01T00:00:00Z",
                "updated_at": f"2024-01-0{day}T{i % 24:02d}:00:00Z",
                "acquisition_channel": "organic",
                "marketing_opt_in": "true" if i % 3 else "false",
                "lifecycle_stage": "lead",
                "referred_by": "" if i % 7 else "1000",
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, CRM_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _crm_settings(tmp_path: Path, db: str, server_url: str):
    return make_settings(
        tmp_path / "home",
        LIFECYCLE_WAREHOUSE_URL=db,
        LIFECYCLE_CRM_API_URL=server_url,
        LIFECYCLE_CRM_TOKEN=TOKEN,
        LIFECYCLE_HTTP_RETRIES="10",
        LIFECYCLE_HTTP_BACKOFF_S="0.01",
    )


def test_crm_api_full_and_incremental_loads_through_30_percent_faults(
    tmp_path: Path, fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rows = _contacts_csv(tmp_path / "crm/contacts.csv", 730)
    store = load_contacts(tmp_path / "crm/contacts.csv")
    with make_server(store, token=TOKEN, fault_rate=0.3, fault_seed=7, retry_after=0) as server:
        s = _crm_settings(tmp_path, fresh_db, server.url)
        full = extract("crm", dt.date(2024, 1, 2), s)[0]
        # Full load: every contact updated in (-inf, 2024-01-03T00:00Z) (the start is
        # inclusive, the end exclusive: consecutive days never overlap). The 6 contacts
        # updated at exactly 2024-01-03T00:00Z are the 3rd's.
        expected_full = sum(r["updated_at"] < "2024-01-03T00:00:00Z" for r in rows)
        assert full.rows_loaded == expected_full == 292
        third = extract("crm", dt.date(2024, 1, 3), s)[0]
        assert third.rows_loaded == sum(
            "2024-01-03T00:00:00Z" <= r["updated_at"] < "2024-01-04T00:00:00Z" for r in rows
        )
        again = extract("crm", dt.date(2024, 1, 3), s)[0]  # rerun
        assert again.rows_loaded == third.rows_loaded
        stats = server.stats
    # The server really did fail about 30% of the requests, and the load still completed.
    faults = sum(n for status, n in stats.by_status.items() if status in (429, 500, 502, 503))
    assert 0.15 < faults / stats.total < 0.45
    assert stats.by_status.get(429, 0) > 0

    loaded = _rows(fresh_db, "select id, count(*) from raw.crm__contacts group by id")
    assert all(n == 1 for _, n in loaded)  # no duplicates
    assert len(loaded) == expected_full + third.rows_loaded
    assert _rows(fresh_db, "select first_name from raw.crm__contacts where id = '1001'") == [
        ("美咲",)
    ]
    assert _rows(fresh_db, "select count(*) from raw.quarantine") == [(0,)]
    # The bearer token is never written anywhere: logs, run log, raw metadata.
    assert caplog.text and TOKEN not in caplog.text
    for table, column in (("ops.load_runs", "error"), ("raw.crm__contacts", "_source")):
        assert not _rows(fresh_db, f"select 1 from {table} where {column} like '%{TOKEN}%'")


def test_crm_api_that_keeps_failing_gives_a_clear_error(tmp_path: Path, fresh_db: str) -> None:
    _contacts_csv(tmp_path / "crm/contacts.csv", 20)
    store = load_contacts(tmp_path / "crm/contacts.csv")
    with make_server(store, token=TOKEN, fault_rate=1.0, retry_after=0) as server:
        s = _crm_settings(tmp_path, fresh_db, server.url)
        with pytest.raises(CrmApiError) as err:
            extract("crm", dt.date(2024, 1, 2), s)
    message = str(err.value)
    assert "CRM API kept failing after 10 retries at GET http://127.0.0.1:" in message
    assert TOKEN not in message
    assert _rows(fresh_db, "select status from ops.load_runs") == [("failed",)]
    assert _rows(fresh_db, "select count(*) from raw.crm__contacts") == [(0,)]


def test_crm_api_wrong_token_is_refused_clearly(tmp_path: Path, fresh_db: str) -> None:
    _contacts_csv(tmp_path / "crm/contacts.csv", 5)
    with make_server(load_contacts(tmp_path / "crm/contacts.csv"), token="other") as server:
        s = _crm_settings(tmp_path, fresh_db, server.url)
        with pytest.raises(CrmApiError, match="refused the token .401.*LIFECYCLE_CRM_TOKEN"):
            extract("crm", dt.date(2024, 1, 2), s)


def test_crm_csv_export_variant(tmp_path: Path, fresh_db: str) -> None:
    rows = _contacts_csv(tmp_path / "world/crm/contacts.csv", 50)
    s = make_settings(
        tmp_path / "home",
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_WORLD_DIR=str(tmp_path / "world"),
    )
    res = extract("crm", dt.date(2024, 1, 5), s)[0]
    assert res.rows_loaded == len(rows)
    assert _rows(
        fresh_db, "select count(*) filter (where marketing_opt_in) from raw.crm__contacts"
    )[0][0] == sum(r["marketing_opt_in"] == "true" for r in rows)


ORDERS_CSV = (
    "order_id,customer_id,email,ordered_at,updated_at,status,currency,amount,quantity\n"
    "O1,C1,a@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,10.50,1\n"
    "O2,C2,b@x.com,2024-01-01T11:00:00Z,2024-01-03T09:00:00Z,refunded,USD,20.00,2\n"
    "O3,C3,c@x.com,2024-01-02T08:00:00Z,2024-01-02T08:00:00Z,completed,USD,5.25,1\n"
    "O4,C4,d@x.com,2024-01-03T08:00:00Z,2024-01-03T08:00:00Z,completed,USD,-1.00,1\n"
    "O4,C4,d@x.com,2024-01-03T08:00:00Z,2024-01-03T08:00:00Z,completed,USD,-1.00,1\n"
    "O5,C5,e@x.com,2024-01-03T08:00:00Z,2024-01-03T08:00:00Z,completed,USD,12,5x,1\n"
)
ITEMS_CSV = (
    "order_item_id,order_id,product_id,quantity,unit_price,updated_at\n"
    "I1,O1,P1,1,10.50,2024-01-01T10:00:00Z\n"
    "I2,O2,P2,2,10.00,2024-01-01T11:00:00Z\n"
    "I3,O3,P1,1,5.25,2024-01-02T08:00:00Z\n"
)


def test_orders_from_the_shop_database_incremental_by_updated_at(
    tmp_path: Path, fresh_db: str, embedded_settings
) -> None:
    world = tmp_path / "world"
    (world / "orders").mkdir(parents=True)
    (world / "orders/orders.csv").write_text(ORDERS_CSV)
    (world / "orders/order_items.csv").write_text(ITEMS_CSV)
    # The shop database is a second database on the same server as the warehouse.
    shop = fresh_db
    loads = {r.table: r for r in load_shop_db(world, shop)}
    assert loads["orders"].rows_written == 4  # typed DB: the untypable row stays in the CSV
    assert (loads["orders"].rows_untypable, loads["orders"].rows_duplicate_key) == (1, 1)

    s = make_settings(
        tmp_path / "home",
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_SHOP_DB_URL=shop,
        LIFECYCLE_ORDERS_SOURCE="db",
        LIFECYCLE_MAX_REJECT_SHARE="0.5",
    )
    d1 = {r.entity: r for r in extract("orders", dt.date(2024, 1, 1), s)}
    assert d1["orders"].rows_loaded == 1 and d1["order_items"].rows_loaded == 2
    d2 = {r.entity: r for r in extract("orders", dt.date(2024, 1, 2), s)}
    assert d2["orders"].rows_loaded == 1
    d3 = {r.entity: r for r in extract("orders", dt.date(2024, 1, 3), s)}
    # The refund of O2 (updated on the 3rd) arrives with the 3rd; O4's negative amount
    # is quarantined.
    assert (d3["orders"].rows_loaded, d3["orders"].rows_quarantined) == (1, 1)
    assert _rows(
        fresh_db,
        "select order_id, status, _batch_id from raw.orders__orders order by _batch_id, order_id",
    ) == [
        ("O1", "completed", "orders__orders:2024-01-01"),
        ("O3", "completed", "orders__orders:2024-01-02"),
        ("O2", "refunded", "orders__orders:2024-01-03"),
    ]
    assert _rows(fresh_db, "select reason from raw.quarantine") == [("amount -1.00 is negative",)]
    before = _rows(fresh_db, "select order_id, _batch_id, _line from raw.orders__orders order by 1")
    extract("orders", dt.date(2024, 1, 3), s)
    assert (
        _rows(fresh_db, "select order_id, _batch_id, _line from raw.orders__orders order by 1")
        == before
    )
