"""Orders: the shop's operational PostgreSQL database, or CSV exports.

The database is read incrementally by ``updated_at`` (orders change after creation:
refunds), streamed out with ``COPY (query) TO STDOUT`` and parsed like a CSV file.
The CSV variant needs only ``customer_id, order_id, ordered_at, amount``; without an
``updated_at`` column, rows are placed in load intervals by ``ordered_at``.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import psycopg

from lifecycle.extract.readers import read_csv_chunks
from lifecycle.parse import Chunk, Window
from lifecycle.raw import ORDERS, RawEntity
from lifecycle.sample.shop_db import SHOP_SCHEMA

COPY_CHUNK_BYTES = 8 << 20


def db_chunks(url: str, entity: RawEntity, window: Window) -> Iterator[Chunk]:
    """Yield the rows of the shop table of `entity` updated in `window` as text chunks."""
    columns = ", ".join(f'"{c}"' for c in entity.names)
    where = "updated_at <= {end}"
    params: dict[str, dt.datetime] = {"end": window.end}
    if window.start is not None:
        where += " and updated_at > {start}"
        params["start"] = window.start
    query = psycopg.sql.SQL(
        f"copy (select {columns} from {SHOP_SCHEMA}.{entity.entity} where {where} "
        f"order by updated_at, {entity.key[0]}) to stdout with (format csv, header)"
    ).format(**{k: psycopg.sql.Literal(v) for k, v in params.items()})
    locator = f"{SHOP_SCHEMA}.{entity.entity} {window.describe()}"
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("set time zone 'UTC'")
        with cur.copy(query) as copy:
            yield from read_csv_chunks(_CopyStream(copy), locator)


class _CopyStream(io.RawIOBase):
    """A file-like view of a COPY TO STDOUT stream."""

    def __init__(self, copy) -> None:
        self._blocks = iter(copy)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def _fill(self, n: int | None) -> None:
        while n is None or n < 0 or len(self._buf) < n:
            block = next(self._blocks, None)
            if block is None:
                return
            self._buf += bytes(block)

    def read(self, n: int = -1) -> bytes:
        self._fill(None if n is None or n < 0 else n)
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self._buf:
            before = len(self._buf)
            self._fill(before + 65536)
            if len(self._buf) == before:
                break
        cut = self._buf.find(b"\n") + 1 or len(self._buf)
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out


def csv_path(directory: Path, entity: RawEntity) -> Path:
    """Return the CSV export of `entity` in `directory`."""
    return directory / f"{entity.entity}.csv"


def csv_cursor(path: Path, entity: RawEntity) -> str:
    """Return the field that places the CSV's rows in load intervals."""
    with path.open("rb") as fh:
        header = fh.readline().decode("utf-8-sig", errors="replace")
    names = {c.strip().strip('"') for c in header.strip().split(",")}
    if entity is ORDERS and "updated_at" not in names:
        return "ordered_at"
    return entity.cursor
