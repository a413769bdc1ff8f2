"""PostgreSQL sources: a table or a query of an operational database (the orders DB).

The SELECT is built from the entity's mapping in the sources file: a ``column`` mapping
reads that column (under its own name, for the mapping step), a ``sql`` mapping is
evaluated by PostgreSQL as ``(<expression>) AS "<field>"``, and every other column of
the table comes along (unmapped ones land in ``_extra``). The load window is pushed
into a WHERE on the column the cursor field maps to (orders: ``updated_at``, falling
back to ``ordered_at`` when the table has no ``updated_at``), unless that column needs
a ``format`` to be read as a time; ``sync: full_refresh`` reads everything each run.
Identifiers are quoted and the window bounds are literals (psycopg.sql); a ``sql``
expression or a ``query`` is SQL the file's author wrote, run as written, like a dbt
model. Rows stream out with ``COPY (query) TO STDOUT`` and are parsed like a CSV file.

Before the first row is read, the columns of the table or query are compared with the
mapping, so a mapped column that does not exist, a required field with no column, or
an expression PostgreSQL rejects fails with a message naming the key and the value.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from psycopg import sql

from lifecycle import warehouse as wh
from lifecycle.extract.readers import read_csv_chunks
from lifecycle.parse import Chunk, Window
from lifecycle.raw import RawEntity
from lifecycle.settings import Settings
from lifecycle.sources_file import (
    EntityMap,
    Source,
    SourcesFile,
    SourcesFileError,
    resolve_connection,
)

COPY_CHUNK_BYTES = 8 << 20


def connection_url(src: Source, sources: SourcesFile, settings: Settings) -> str:
    """Return the URL of the source's connection, or raise naming what to set."""
    assert src.connection, "the sources file validation requires it"
    url, _ = resolve_connection(sources, src.connection, settings)
    if url is None and src.connection == "shop_db" and sources.origin == "built-in":
        from lifecycle.warehouse import shop_db_url

        url = shop_db_url(settings)  # the embedded server's shop database
    if url is None:
        conn = sources.connections[src.connection]
        ways = [f"the environment variable {conn.env}"] if conn.env else []
        if conn.airflow_conn_id:
            ways.append(f"the Airflow Connection {conn.airflow_conn_id!r}")
        key = "env" if conn.env else "airflow_conn_id"
        raise SourcesFileError(
            f"{sources.origin}: connections.{src.connection}.{key}: no URL for connection "
            f"{src.connection!r}: set {' or '.join(ways) or 'env'}"
        )
    return url


def db_batch(
    entity: RawEntity,
    src: Source,
    emap: EntityMap,
    window: Window,
    sources: SourcesFile,
    settings: Settings,
    *,
    limit: int | None = None,
):  # -> lifecycle.extract.Batch
    """Return the batch of the entity's rows in `window` (at most `limit` rows)."""
    from lifecycle.extract import Batch

    url = connection_url(src, sources, settings)
    where = f"sources.{entity.source}.entities.{entity.entity}"
    relation, locator = _relation(emap)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            columns = _columns(conn, relation, emap, where, sources.origin)
            _check_columns(conn, entity, emap, relation, columns, where, sources, locator)
    except psycopg.OperationalError as exc:
        from lifecycle.load import LoadError
        from lifecycle.warehouse import redact

        raise LoadError(
            f"{sources.origin}: connections.{src.connection}: cannot connect to {redact(url)}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        ) from None
    except psycopg.ProgrammingError as exc:
        # libpq could not even parse it (quoting it, password and all)
        from lifecycle.load import LoadError
        from lifecycle.redact import redact as masked

        raise LoadError(
            f"{sources.origin}: connections.{src.connection}: not a PostgreSQL connection URL "
            f"(postgresql://user:***@host:5432/db): {masked(str(exc).strip().splitlines()[0])}"
        ) from None
    query, zone = select_query(entity, emap, sources, src, columns, window, limit=limit)
    # the rows' _source names the table or query, the same every day (the window is the
    # run's, in ops.load_runs): a bad row read again is known by it (load._settle_unplaced)
    return Batch(chunks=db_chunks(url, query, locator, zone))


def _relation(emap: EntityMap) -> tuple[sql.Composable, str]:
    """Return (what to select from, how to name it in _source) of the entity."""
    if emap.query:
        # on lines of its own: a query ending in a `-- comment` would comment the `)` out
        query = sql.SQL(emap.query.strip().rstrip(";"))
        return sql.SQL("(\n{}\n) as q").format(query), "query"
    assert emap.table, "the sources file validation requires table or query"
    return sql.Identifier(*emap.table.split(".")), emap.table


def _columns(
    conn: psycopg.Connection, relation: sql.Composable, emap: EntityMap, where: str, origin: str
) -> list[str]:
    """Return the column names of the table or query (reading no rows)."""
    key, value = ("query", emap.query) if emap.query else ("table", emap.table)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql.SQL("select * from {} limit 0").format(relation))
            return [d.name for d in cur.description or ()]
    except psycopg.errors.UndefinedTable:
        raise SourcesFileError(f"{origin}: {where}.{key}: {value!r} does not exist") from None
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        raise SourcesFileError(
            f"{origin}: {where}.{key}: {_echo(value)} fails in PostgreSQL: {_first_line(exc)}"
        ) from None


def _check_columns(
    conn: psycopg.Connection,
    entity: RawEntity,
    emap: EntityMap,
    relation: sql.Composable,
    columns: list[str],
    where: str,
    sources: SourcesFile,
    locator: str,
) -> None:
    """Fail naming the key when the mapping reads a column the relation lacks, or an
    expression PostgreSQL rejects."""
    from lifecycle.extract.check import check_header

    check_header(entity, emap, sources, columns, locator)
    for name, fmap in emap.columns.items():
        if fmap.sql is None:
            continue
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    sql.SQL("select ({}) from {} limit 0").format(sql.SQL(fmap.sql), relation)
                )
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            raise SourcesFileError(
                f"{sources.origin}: {where}.columns.{name}.sql: {_echo(fmap.sql)} fails in "
                f"PostgreSQL: {_first_line(exc)}"
            ) from None


def cursor_column(
    entity: RawEntity, emap: EntityMap, columns: list[str]
) -> tuple[str, sql.Composable | None]:
    """Return (cursor field, the SQL that reads it) for the window's WHERE.

    The SQL is None when the window cannot be pushed down: the field is not there, or
    its column needs a ``format`` (text PostgreSQL cannot compare as a time).
    """

    def source_of(name: str) -> sql.Composable | None:
        fmap = emap.field_map(name)
        if fmap is None:
            return sql.Identifier(name) if name in columns else None
        if fmap.format is not None:
            return None
        if fmap.column:
            return sql.Identifier(fmap.column)
        if fmap.sql:
            return sql.SQL("({})").format(sql.SQL(fmap.sql))
        return None

    name = emap.cursor or entity.cursor
    expr = source_of(name)
    available = emap.field_map(name) is not None or name in columns
    if not available and emap.cursor is None and entity.cursor_fallback:
        name = entity.cursor_fallback
        expr = source_of(name)
    elif expr is not None and emap.cursor is None and entity.cursor_fallback:
        # an order never updated has no updated_at: it is placed by its ordered_at, as the
        # checker places it (the WHERE on updated_at alone never read such a row), and so
        # is one updated up to a day before it was placed (Checker._placing)
        fallback = source_of(entity.cursor_fallback)
        if fallback is not None:
            expr = sql.SQL(
                "(case when {f} > {c} and {f} <= {c} + interval '1 day' then {f} "
                "else coalesce({c}, {f}) end)"
            ).format(f=fallback, c=expr)
    return name, expr


def _wanted_columns(entity: RawEntity, emap: EntityMap, columns: list[str]) -> set[str]:
    """Return the columns to read: mapped, contract-named, and the ``extra_columns``."""
    if emap.extra_columns == "all":
        return set(columns)
    wanted = {c for f in emap.columns.values() for c in f.source_columns}
    wanted |= {c for c in columns if c in entity.names and c not in emap.columns}
    if emap.refunds is not None:
        wanted |= emap.refunds.source_columns
    return wanted | set(emap.extra_columns)


def select_query(
    entity: RawEntity,
    emap: EntityMap,
    sources: SourcesFile,
    src: Source,
    columns: list[str],
    window: Window,
    *,
    limit: int | None = None,
) -> tuple[sql.Composed, str]:
    """Return (the COPY statement of the entity's rows in `window`, the session zone).

    The session time zone is the one naive timestamps of the cursor column are in, so
    the window compares with them as the mapping step reads them; columns with a zone
    print with their offset.
    """
    relation, _ = _relation(emap)
    computed = {n: f for n, f in emap.columns.items() if f.sql is not None}
    wanted = _wanted_columns(entity, emap, columns)
    items = [sql.Identifier(c) for c in columns if c in wanted and c not in computed]
    items += [
        sql.SQL("({}) as {}").format(sql.SQL(f.sql), sql.Identifier(n))
        for n, f in computed.items()
        if f.sql is not None
    ]
    name, cursor = cursor_column(entity, emap, columns)
    conditions = []
    if cursor is not None:
        # [start, end), as the checker places rows (a date column compares as its midnight)
        conditions.append(sql.SQL("{} < {}").format(cursor, sql.Literal(window.end)))
        if window.start is not None:
            conditions.append(sql.SQL("{} >= {}").format(cursor, sql.Literal(window.start)))
    query = sql.SQL("select {} from {}").format(sql.SQL(", ").join(items), relation)
    if conditions:
        # A row no window holds (its cursor empty, or +-infinity) is read by every batch,
        # as a file's would be: the checker quarantines it, once (it vanished unseen).
        unplaced = sql.SQL("{} is null or {} in ('infinity', '-infinity')").format(cursor, cursor)
        within = sql.SQL(" and ").join(conditions)
        query += sql.SQL(" where ({}) or ({})").format(within, unplaced)
    if cursor is not None:
        order = [cursor]
        key = emap.field_map(entity.key[0])
        if key is not None and key.sql:
            order.append(sql.Identifier(entity.key[0]))  # the output column of the expression
        elif key is not None and key.column:
            order.append(sql.Identifier(key.column))
        elif key is None and entity.key[0] in columns:
            order.append(sql.Identifier(entity.key[0]))
        query += sql.SQL(" order by {}").format(sql.SQL(", ").join(order))
    if limit is not None:
        query += sql.SQL(" limit {}").format(sql.Literal(int(limit)))
    copy = sql.SQL("copy ({}) to stdout with (format csv, header)").format(query)
    zone = sources.timezone_of(src, emap, emap.field_map(name))
    return copy, zone


def db_chunks(url: str, query: sql.Composable, locator: str, zone: str = "UTC") -> Iterator[Chunk]:
    """Yield the rows `query` (a COPY ... TO STDOUT statement) streams out as text chunks."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("set time zone {}").format(sql.Literal(zone)))
        with cur.copy(query) as copy:
            yield from read_csv_chunks(wh.CopyStream(copy), locator)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "...(truncated)"
