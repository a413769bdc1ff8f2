"""A company's own orders table in PostgreSQL, mapped by a sources file.

``public.sales(id, client_ref, sale_time, total_eur)`` in a scratch database on the
local server; the sources file maps it onto raw.orders__orders (columns, a constant, an
order id computed by a SQL expression) and ``lifecycle extract`` is run as a user runs
it, in a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from tests.conftest import EXTERNAL_ADMIN_URL, external_available, run_cli, scratch_database

SALES = """
create table public.sales (
    id integer primary key,
    client_ref text not null,
    sale_time timestamptz not null,
    total_eur numeric(10, 2) not null,
    channel text
);
insert into public.sales values
    (1, 'C-100', '2024-03-04 10:00:00+00', 12.50, 'web'),
    (2, 'C-200', '2024-03-05 23:30:00+00', 7.00, 'store'),
    (3, 'C-100', '2024-03-06 01:00:00+00', 3.25, 'web');
"""

SOURCES_YML = """
version: 1
business:
  timezone: UTC
  currency: EUR
connections:
  sales_db:
    env: SALES_DB_URL
sources:
  orders:
    kind: postgres
    connection: sales_db
    entities:
      orders:
        {where}
        columns:
          order_id: {{sql: "'S-' || id"}}
          customer_id: client_ref
          ordered_at: sale_time
          amount: total_eur
          currency: {{constant: EUR}}
          status: {{constant: completed}}
"""


@pytest.fixture
def dbs():
    """(sales database URL, warehouse URL), two scratch databases on the local server."""
    if not external_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    with (
        scratch_database(EXTERNAL_ADMIN_URL, "sales") as sales,
        scratch_database(EXTERNAL_ADMIN_URL, "wh") as warehouse,
    ):
        with psycopg.connect(sales) as conn:
            conn.execute(SALES)
        yield sales, warehouse


def _lifecycle(tmp_path: Path, sales: str, warehouse: str, *args: str):
    return _lifecycle_env(tmp_path, sales, warehouse, {}, *args)


def _lifecycle_env(tmp_path: Path, sales: str, warehouse: str, extra: dict, *args: str):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")},
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": warehouse,
        "LIFECYCLE_SOURCES_FILE": str(tmp_path / "sources.yml"),
        "SALES_DB_URL": sales,
        **extra,
    }
    return run_cli(args, env, timeout=300)


def _raw(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select order_id, customer_id, ordered_at::text, amount::text, currency, status, "
            "_extra::text, _batch_id from raw.orders__orders order by _batch_id, order_id"
        ).fetchall()


def test_sales_table_full_then_incremental_day(tmp_path: Path, dbs) -> None:
    sales, warehouse = dbs
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(where="table: public.sales"))

    full = _lifecycle(tmp_path, sales, warehouse, "extract", "--source", "orders",
                      "--date", "2024-03-05", "--full")  # fmt: skip
    assert full.returncode == 0, full.stderr
    # Sale 3 (2024-03-06 01:00) is after the end of 2024-03-05: the WHERE leaves it out.
    # Unmapped columns (id feeds only the sql expression) are kept in _extra.
    assert _raw(warehouse) == [
        ("S-1", "C-100", "2024-03-04 10:00:00+00", "12.50", "EUR", "completed",
         '{"id": "1", "channel": "web"}', "orders__orders:2024-03-05"),
        ("S-2", "C-200", "2024-03-05 23:30:00+00", "7.00", "EUR", "completed",
         '{"id": "2", "channel": "store"}', "orders__orders:2024-03-05"),
    ]  # fmt: skip

    with psycopg.connect(sales) as conn:
        conn.execute(
            "insert into public.sales values (4, 'C-300', '2024-03-06 12:00+00', 20, null)"
        )
    day = _lifecycle(tmp_path, sales, warehouse, "extract", "--source", "orders",
                     "--date", "2024-03-06")  # fmt: skip
    assert day.returncode == 0, day.stderr
    rows = _raw(warehouse)
    assert [(r[0], r[-1]) for r in rows] == [
        ("S-1", "orders__orders:2024-03-05"),
        ("S-2", "orders__orders:2024-03-05"),
        ("S-3", "orders__orders:2024-03-06"),
        ("S-4", "orders__orders:2024-03-06"),
    ]
    with psycopg.connect(warehouse) as conn:
        assert conn.execute(
            "select rows_loaded, rows_quarantined from ops.load_batches "
            "where batch_id = 'orders__orders:2024-03-06'"
        ).fetchone() == (2, 0)


def test_sales_query_full_refresh_and_sources_check(tmp_path: Path, dbs) -> None:
    sales, warehouse = dbs
    query = 'query: "select id, client_ref, sale_time, total_eur from public.sales where id <> 2"'
    text = SOURCES_YML.format(where=query + "\n        sync: full_refresh")
    (tmp_path / "sources.yml").write_text(text)

    check = _lifecycle(tmp_path, sales, warehouse, "sources", "check", "--entity", "orders")
    assert check.returncode == 0, check.stderr
    lines = {line.split()[0]: line for line in check.stdout.splitlines() if line.startswith("  ")}
    assert "sql \"'S-' || id\"" in lines["order_id"] and "S-1 | S-3" in lines["order_id"]
    assert "column 'client_ref'" in lines["customer_id"]
    assert "constant 'EUR'" in lines["currency"]
    assert "2 rows sampled, 2 after mapping, 0 would be quarantined" in check.stdout
    # Nothing was loaded: the check did not even create the raw tables.
    with psycopg.connect(warehouse) as conn:
        assert conn.execute("select to_regclass('raw.orders__orders')").fetchone() == (None,)

    for day in ("2024-03-05", "2024-03-06"):
        run = _lifecycle(tmp_path, sales, warehouse, "extract", "--source", "orders", "--date", day)
        assert run.returncode == 0, run.stderr
    # full_refresh: each day's batch reads the whole query up to the end of that day.
    assert [(r[0], r[-1]) for r in _raw(warehouse)] == [
        ("S-1", "orders__orders:2024-03-05"),
        ("S-1", "orders__orders:2024-03-06"),
        ("S-3", "orders__orders:2024-03-06"),
    ]


DATED = """
create table public.sales (id integer primary key, client_ref text not null,
                           sale_date date not null, total_eur numeric(10, 2) not null);
insert into public.sales values (1, 'C-100', '2024-03-04', 12.50), (2, 'C-200', '2024-03-05', 7);
"""


def test_a_date_column_is_read_day_by_day_at_its_own_date(tmp_path: Path, dbs) -> None:
    """A `date` column (a sale's plain day) pushed down as [D 00:00, D+1 00:00) in the zone.

    The sale dated D is the batch of D: a daily run after the full load finds it on its
    day (under (start, end] it belonged to the day before, already run, and was missed).
    """
    sales, warehouse = dbs
    with psycopg.connect(sales) as conn:
        conn.execute("drop table public.sales")
        conn.execute(DATED)
    text = SOURCES_YML.format(where="table: public.sales").replace("sale_time", "sale_date")
    text = text.replace("timezone: UTC", "timezone: Asia/Tokyo")
    (tmp_path / "sources.yml").write_text(text)
    got = []
    days = [
        ("2024-03-05", None),
        ("2024-03-06", "(3, 'C-300', '2024-03-06', 20)"),
        ("2024-03-07", "(4, 'C-100', '2024-03-07', 30), (5, 'C-9', '2024-03-08', 1)"),
    ]
    for day, row in days:
        if row:
            with psycopg.connect(sales) as conn:
                conn.execute(f"insert into public.sales values {row}")
        full = ["--full"] if day == "2024-03-05" else []
        run = _lifecycle(tmp_path, sales, warehouse, "extract", "--source", "orders",
                         "--date", day, *full)  # fmt: skip
        assert run.returncode == 0, run.stderr
        got.append(run.stdout)
    assert [(r[0], r[2], r[-1]) for r in _raw(warehouse)] == [
        ("S-1", "2024-03-03 15:00:00+00", "orders__orders:2024-03-05"),  # Tokyo midnight
        ("S-2", "2024-03-04 15:00:00+00", "orders__orders:2024-03-05"),
        ("S-3", "2024-03-05 15:00:00+00", "orders__orders:2024-03-06"),
        ("S-4", "2024-03-06 15:00:00+00", "orders__orders:2024-03-07"),
    ]  # tomorrow's S-5 waits for its day


def test_a_text_column_holding_line_breaks_loads_whole(tmp_path: Path, dbs) -> None:
    """COPY quotes a value holding a line break (a note typed over lines): it is one
    record, loaded with its line breaks, not quarantined as an unbalanced quote."""
    sales, warehouse = dbs
    with psycopg.connect(sales) as conn:
        conn.execute(
            "update public.sales set channel = E'web\\nvia \"partner\", 2nd line\\r\\nend' "
            "where id = 1"
        )
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(where="table: public.sales"))
    out = _lifecycle(tmp_path, sales, warehouse, "extract", "--source", "orders",
                     "--date", "2024-03-06", "--full")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "3 read, 3 loaded, 0 quarantined" in out.stdout
    with psycopg.connect(warehouse) as conn:
        got = conn.execute(
            "select order_id, _extra->>'channel' from raw.orders__orders order by order_id"
        ).fetchall()
    assert got == [
        ("S-1", 'web\nvia "partner", 2nd line\r\nend'),
        ("S-2", "store"),
        ("S-3", "web"),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:s3cret-pw@h/db",
        "postgresql://u:s3cret-pw@[::1/db",
        "host=127.0.0.1 port=1 password=s3cret-pw user",
    ],
)
def test_a_connection_url_libpq_cannot_parse_names_the_connection_not_its_password(
    tmp_path: Path, dbs, url: str
) -> None:
    """libpq quotes a URL it cannot parse, password included: it was printed (and so
    logged by Airflow), blamed on "the warehouse"."""
    _, warehouse = dbs
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(where="table: public.sales"))
    for args in (("sources", "check", "--entity", "orders"), ("extract", "--source", "orders",
                 "--date", "2024-03-05")):  # fmt: skip
        done = _lifecycle(tmp_path, url, warehouse, *args)
        assert done.returncode == 1
        assert "s3cret" not in done.stdout + done.stderr
        [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
        assert "connections.sales_db: not a PostgreSQL connection URL" in line, line


def test_a_query_ending_in_a_comment_is_read(tmp_path: Path, dbs) -> None:
    """The query was wrapped as `(<query>) as q` on one line: a closing `-- comment`
    commented the parenthesis out ("syntax error at end of input")."""
    sales, warehouse = dbs
    query = 'query: "select id, client_ref, sale_time, total_eur from public.sales -- all of them"'
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(where=query))
    check = _lifecycle(tmp_path, sales, warehouse, "sources", "check", "--entity", "orders")
    assert check.returncode == 0, check.stderr
    assert "3 rows sampled, 3 after mapping, 0 would be quarantined" in check.stdout


UPDATED = """
create table public.sales (id integer primary key, client_ref text not null,
                           sale_time timestamptz, changed timestamptz, total_eur numeric(10, 2));
insert into public.sales values
    (1, 'C-100', '2024-03-04 10:00+00', '2024-03-04 12:00+00', 12.50),
    (2, 'C-200', '2024-03-04 11:00+00', null, 7.00),
    (3, 'C-300', null, null, 3.00),
    (4, 'C-400', 'infinity', null, 4.00),
    (5, 'C-500', '2024-03-05 09:00+00', null, 5.00);
"""


def test_rows_no_updated_at_places_are_read_as_a_files_would_be(tmp_path: Path, dbs) -> None:
    """The window was pushed down on `updated_at` alone: an order never updated (NULL) was
    never read, nor one with no date at all or 'infinity': they vanished, uncounted. An
    order is placed by its ordered_at when it has no updated_at; one no window holds is
    read by every batch and quarantined, once."""
    sales, warehouse = dbs
    with psycopg.connect(sales) as conn:
        conn.execute("drop table public.sales")
        conn.execute(UPDATED)
    text = SOURCES_YML.format(where="table: public.sales").replace(
        "ordered_at: sale_time", "ordered_at: sale_time\n          updated_at: changed"
    )
    (tmp_path / "sources.yml").write_text(text)
    env = {"LIFECYCLE_MAX_REJECT_SHARE": "0.9"}
    for day, full in (("2024-03-04", ["--full"]), ("2024-03-05", [])):
        run = _lifecycle_env(tmp_path, sales, warehouse, env, "extract", "--source", "orders",
                             "--date", day, *full)  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert [(r[0], r[-1]) for r in _raw(warehouse)] == [
        ("S-1", "orders__orders:2024-03-04"),
        ("S-2", "orders__orders:2024-03-04"),
        ("S-5", "orders__orders:2024-03-05"),
    ]
    with psycopg.connect(warehouse) as conn:
        got = conn.execute(
            "select _batch_id, reason from raw.quarantine order by reason"
        ).fetchall()
    assert got == [
        ("orders__orders:2024-03-04", "ordered_at is empty"),
        (
            "orders__orders:2024-03-04",
            "ordered_at: 'infinity' is not an ISO-8601 date or timestamp (e.g. 2024-03-05 "
            "14:02:11 -05:00)",
        ),
    ]
