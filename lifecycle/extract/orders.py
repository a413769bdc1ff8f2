"""PostgreSQL sources: a table or a query of an operational database (the orders DB).

The entity's rows are read incrementally by its cursor (orders: ``updated_at``, since
orders change after creation: refunds), streamed out with ``COPY (query) TO STDOUT`` and
parsed like a CSV file. Which table, which columns and the cursor come from the sources
file (the built-in mapping reads ``shop.orders`` and ``shop.order_items``).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import psycopg

from lifecycle.extract.readers import read_csv_chunks
from lifecycle.parse import Chunk, Window
from lifecycle.raw import RawEntity
from lifecycle.settings import Settings
from lifecycle.sources_file import EntityMap, Source, SourcesFile, resolve_connection

COPY_CHUNK_BYTES = 8 << 20


def db_batch(
    entity: RawEntity,
    src: Source,
    emap: EntityMap,
    window: Window,
    sources: SourcesFile,
    settings: Settings,
):  # -> lifecycle.extract.Batch
    """Return the batch of the rows of the entity's table changed in `window`."""
    from lifecycle.extract import Batch

    assert src.connection and emap.table, "the sources file validation requires them"
    url, _ = resolve_connection(sources, src.connection, settings)
    if url is None and src.connection == "shop_db" and sources.origin == "built-in":
        from lifecycle.warehouse import shop_db_url

        url = shop_db_url(settings)  # the embedded server's shop database
    if url is None:
        from lifecycle.load import LoadError

        conn = sources.connections[src.connection]
        raise LoadError(
            f"{sources.origin}: connection {src.connection!r} has no URL: set "
            f"{conn.env or 'its env variable'}"
            + (
                f" or the Airflow Connection {conn.airflow_conn_id!r}"
                if conn.airflow_conn_id
                else ""
            )
        )
    schema, _, table = emap.table.rpartition(".")
    return Batch(chunks=db_chunks(url, entity, window, schema or "public", table))


def db_chunks(
    url: str, entity: RawEntity, window: Window, schema: str, table: str
) -> Iterator[Chunk]:
    """Yield the rows of `schema.table` updated in `window` as text chunks."""
    columns = ", ".join(f'"{c}"' for c in entity.names)
    where = "updated_at <= {end}"
    params: dict[str, dt.datetime] = {"end": window.end}
    if window.start is not None:
        where += " and updated_at > {start}"
        params["start"] = window.start
    relation = psycopg.sql.Identifier(schema, table).as_string(None)
    query = psycopg.sql.SQL(
        f"copy (select {columns} from {relation} where {where} "
        f"order by updated_at, {entity.key[0]}) to stdout with (format csv, header)"
    ).format(**{k: psycopg.sql.Literal(v) for k, v in params.items()})
    locator = f"{schema}.{table} {window.describe()}"
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
