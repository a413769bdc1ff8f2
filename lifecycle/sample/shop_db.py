"""The shop's operational orders database of the sample world.

DESIGN.md §4 names an operational PostgreSQL database with ``orders`` and
``order_items`` (each with ``updated_at``) as one way orders arrive. For demos and tests
this module plays that system: it creates the schema ``shop`` and fills it from the
sample world's ``orders/*.csv``.

An operational database is typed, so a value that cannot be typed (``"12,5x"`` as an
amount, an unparseable date, a row with the wrong number of fields) cannot exist there:
such rows stay in the CSV export only, and they are counted in the returned summary.
Values that *are* typed but wrong (negative amounts, future dates) are kept, as they
would be in a real shop database. A repeated primary key keeps its first row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg

from lifecycle.raw import ORDER_ITEMS, ORDERS

SHOP_SCHEMA = "shop"

DDL = f"""
create schema if not exists {SHOP_SCHEMA};
create table if not exists {SHOP_SCHEMA}.orders (
    order_id text primary key,
    customer_id text not null,
    email text,
    ordered_at timestamptz not null,
    updated_at timestamptz not null,
    status text not null,
    currency text not null,
    amount numeric(12, 2) not null,
    quantity integer
);
create index if not exists orders_updated_at_idx on {SHOP_SCHEMA}.orders (updated_at);
create table if not exists {SHOP_SCHEMA}.order_items (
    order_item_id text primary key,
    order_id text not null,
    product_id text not null,
    quantity integer not null,
    unit_price numeric(12, 2) not null,
    updated_at timestamptz not null
);
create index if not exists order_items_updated_at_idx on {SHOP_SCHEMA}.order_items (updated_at);
"""

#: Column name -> type, per table, in the CSV's column order: the raw contracts' fields
#: (the shop delivers what the contracts describe; one definition of the columns).
TABLES: dict[str, dict[str, str]] = {
    e.entity: {f.name: f.type for f in e.fields} for e in (ORDERS, ORDER_ITEMS)
}
#: The shop database is stricter than the raw contracts: only these may be empty.
NULLABLE = {"email", "quantity"}


@dataclass(frozen=True)
class ShopLoad:
    """Rows written to the shop database and rows the CSV had that a typed DB cannot hold."""

    table: str
    rows_written: int
    rows_untypable: int
    rows_duplicate_key: int


def _typed(chunk: pd.DataFrame, columns: dict[str, str]) -> tuple[pd.DataFrame, int]:
    """Return the rows of `chunk` whose every value can be typed, and how many could not."""
    out = pd.DataFrame(index=chunk.index)
    ok = pd.Series(True, index=chunk.index)
    for name, kind in columns.items():
        raw = chunk[name]
        missing = raw.isna() | (raw.str.strip() == "")
        if kind == "timestamp":
            value = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        elif kind in ("number", "integer"):
            value = pd.to_numeric(raw, errors="coerce")
            if kind == "integer":
                ok &= value.isna() | (value == value.round())
        else:
            value = raw
        ok &= ~(value.isna() & ~missing)
        if name not in NULLABLE:
            ok &= ~missing
        out[name] = value
    out = out[ok]
    for name, kind in columns.items():
        if kind == "integer":
            out[name] = out[name].round().astype("Int64")
    return out, int((~ok).sum())


def _copy_frame(cur: psycopg.Cursor, table: str, frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S%z")
    cols = ", ".join(frame.columns)
    with cur.copy(f"copy pg_temp.{table}_in ({cols}) from stdin with (format csv)") as copy:
        copy.write(buf.getvalue())


def load_shop_db(world: Path, url: str, chunksize: int = 250_000) -> list[ShopLoad]:
    """Replace the shop schema's tables at `url` with the orders of the world at `world`."""
    results: list[ShopLoad] = []
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(DDL)
        for table, columns in TABLES.items():
            csv_path = world / "orders" / f"{table}.csv"
            if not csv_path.exists():
                raise FileNotFoundError(f"{csv_path} is missing: generate a world first")
            cur.execute(f"create temp table {table}_in (like {SHOP_SCHEMA}.{table}) on commit drop")
            # The staging copy has no key (so duplicate keys can be counted) and a load
            # sequence (so the first of duplicate rows is the one kept).
            cur.execute(f"alter table pg_temp.{table}_in add column _seq bigserial")
            untypable = 0
            reader = pd.read_csv(
                csv_path,
                dtype="string",
                keep_default_na=False,
                na_values=[""],
                chunksize=chunksize,
                on_bad_lines="skip",
                encoding_errors="replace",
                engine="c",
            )
            with csv_path.open("rb") as fh:
                total_lines = sum(1 for _ in fh) - 1
            seen = 0
            for chunk in reader:
                seen += len(chunk)
                typed, bad = _typed(chunk, columns)
                untypable += bad
                _copy_frame(cur, table, typed)
            # Rows the CSV reader itself rejected (wrong field count) are untypable too;
            # quoted multi-line fields would make this an over-count, and the sample world
            # writes none.
            untypable += max(total_lines - seen, 0)
            key, cols = next(iter(columns)), ", ".join(columns)
            cur.execute(f"truncate {SHOP_SCHEMA}.{table}")
            cur.execute(
                f"insert into {SHOP_SCHEMA}.{table} ({cols}) select distinct on ({key}) {cols} "
                f"from pg_temp.{table}_in order by {key}, _seq"
            )
            written = cur.rowcount
            cur.execute(f"select count(*) from pg_temp.{table}_in")
            staged = cur.fetchone()[0]
            results.append(ShopLoad(table, written, untypable, staged - written))
        conn.commit()
    return results
