"""Shared helpers of the hostile-input tests: small worlds, counts, checksums."""

from __future__ import annotations

import datetime as dt
import hashlib

import psycopg

from lifecycle.load import LoadResult
from tests.conftest import ORDERS_HEADER, world_settings, write_file  # noqa: F401 - re-exported

#: The hostile tests' names for the shared helpers.
settings, write = world_settings, write_file

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)


def order(oid: str, when: str, amount: str = "10.00") -> str:
    """Return one clean orders CSV line (ordered and updated at `when`)."""
    return f"{oid},C{oid},{oid.lower()}@x.com,{when},{when},completed,USD,{amount},1\n"


def day_orders(day: str, n: int, prefix: str) -> str:
    """Return `n` clean orders of `day` (YYYY-MM-DD), one per minute from 10:00."""
    return "".join(order(f"{prefix}{i}", f"{day}T10:{i:02d}:00Z") for i in range(n))


def rows(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def balanced(res: LoadResult) -> bool:
    """True when every row read is accounted for exactly once."""
    return res.rows_read == (
        res.rows_loaded + res.rows_quarantined + res.rows_duplicate + res.rows_out_of_window
    )


def checksum(url: str) -> str:
    """Return a digest of raw, marts and the watermarks (everything a bad case must not touch).

    The quarantine and the run log are left out: a rejected batch records itself there.
    """
    digest = hashlib.sha256()
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema in ('raw', 'marts', 'ops') and table_type = 'BASE TABLE' "
            "and table_name not in ('quarantine', 'load_runs') order by 1, 2"
        ).fetchall()
        for schema, table in tables:
            cols = [
                r[0]
                for r in conn.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = %s and table_name = %s "
                    "and column_name not in ('_loaded_at', 'committed_at') "
                    "order by ordinal_position",
                    (schema, table),
                )
            ]
            quoted = ", ".join(f'"{c}"::text' for c in cols)
            order_by = ", ".join(str(i + 1) for i in range(len(cols)))
            for row in conn.execute(
                f'select {quoted} from "{schema}"."{table}" order by {order_by}'
            ):
                digest.update(repr((schema, table, row)).encode())
    return digest.hexdigest()
