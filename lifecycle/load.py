"""Loading: land checked source records in raw with COPY, one transaction per batch.

A *batch* is everything one source entity delivers for one logical date; its id is
``<source>__<entity>:<date>``, so a rerun of the date replaces the batch instead of
adding to it. One batch is one transaction: the previous version of the batch is
deleted, the new rows are streamed in with ``COPY FROM STDIN``, rows that fail their
contract go to ``raw.quarantine`` with the reason, and the watermark advances — all
or nothing. A process that dies mid-load leaves no trace but a run-log row that the
next run of the batch marks as abandoned.

Speed: chunks are checked by :mod:`lifecycle.parse` (Arrow kernels) on a worker
thread while the previous chunk streams to PostgreSQL. A chunk whose typed values are
exact goes as binary COPY, encoded from the Arrow columns by pgpq, which spares
PostgreSQL the parsing of every timestamp and number; other chunks go as CSV text
written by pyarrow. The load runs at about the speed of a plain CSV COPY of the same
file (``bench/bench_load.py`` prints the figures side by side).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import io
import logging
import queue
import re
import sys
import threading
import time
import uuid
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pgpq
import pgpq.encoders
import pgpq.schema
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from lifecycle.parse import Checked, Checker, Chunk, Reject, Window, split_reasons
from lifecycle.privacy import drop_forgotten
from lifecycle.raw import ORDERS, RawEntity, raw_ddl
from lifecycle.redact import redact

__all__ = [
    "Chunk",
    "LoadError",
    "LoadResult",
    "Reject",
    "Window",
    "batch_id",
    "day_window",
    "ensure_raw_tables",
    "load_batch",
    "plan_window",
    "record_skip",
]

log = logging.getLogger(__name__)


#: How a quarantine reason starts for a whole file that could not be read.
FILE_NOT_READ = "file not read: "


class LoadError(RuntimeError):
    """A load that must not go on; the message says what to fix. ``result`` is the
    batch's :class:`LoadResult` when a batch was refused (its quarantine is kept)."""

    result: LoadResult | None = None


@dataclass
class LoadResult:
    """What one batch load did."""

    batch_id: str
    source: str
    entity: str
    logical_date: dt.date
    window: Window
    status: str = "running"
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    rows_out_of_window: int = 0
    rows_erased: int = 0  # rows of people forgotten by an erasure request, dropped on purpose
    extra_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def describe(self) -> str:
        """Return a one-line summary for logs and the CLI."""
        extra = (
            f", new columns kept in _extra: {', '.join(self.extra_columns)}"
            if self.extra_columns
            else ""
        )
        if self.rows_erased:
            extra += f", {self.rows_erased} row(s) of forgotten people dropped"
        if self.warnings:
            extra += f", {len(self.warnings)} warning(s): " + "; ".join(self.warnings[:3])
            extra += " ..." if len(self.warnings) > 3 else ""
        return (
            f"raw.{self.source}__{self.entity} {self.logical_date} {self.status}: "
            f"{self.rows_read} read, {self.rows_loaded} loaded, "
            f"{self.rows_quarantined} quarantined, {self.rows_duplicate} duplicate, "
            f"{self.rows_out_of_window} outside {self.window.describe()} "
            f"in {self.duration_s:.2f}s{extra}"
        )


def batch_id(entity: RawEntity, logical_date: dt.date) -> str:
    """Return the id of the batch of `entity` for `logical_date`."""
    return f"{entity.table}:{logical_date.isoformat()}"


def day_window(logical_date: dt.date, timezone: str = "UTC") -> Window:
    """Return the interval of one logical date: [D 00:00, D+1 00:00) in the business zone.

    The bounds are the zone's midnights, so a day across a daylight-saving change is 23
    or 25 hours long.
    """
    zone = zoneinfo.ZoneInfo(timezone)
    start = dt.datetime.combine(logical_date, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return Window(_local(start, zone), _local(end, zone))


def _local(moment: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """Return `moment` at its UTC offset in `zone`.

    A window bound keeps the zone's offset so that its calendar date is the zone's (a
    date cursor compares with it), as a fixed offset: datetimes sharing one ZoneInfo
    subtract and compare by wall clock, which is wrong across a daylight-saving change.
    """
    local = moment.astimezone(zone)
    return local.replace(tzinfo=dt.timezone(local.utcoffset() or dt.timedelta()))


def ensure_raw_tables(conn: psycopg.Connection) -> None:
    """Create the raw, quarantine and ops tables if they are missing."""
    with conn.transaction():
        # Two loaders starting at once must not race on CREATE TABLE.
        conn.execute("select pg_advisory_xact_lock(hashtext('lifecycle.raw_ddl'))")
        conn.execute(raw_ddl())


def plan_window(
    conn: psycopg.Connection,
    entity: RawEntity,
    logical_date: dt.date,
    full: bool = False,
    timezone: str = "UTC",
) -> Window:
    """Return the interval the batch of `logical_date` (a day in `timezone`) covers.

    A rerun covers what the committed batch covered, so it reproduces it. A first load
    (no watermark yet) or ``full`` covers everything up to the end of the day. Otherwise
    the batch covers its day, widened back to the watermark when days were skipped.
    """
    day = day_window(logical_date, timezone)
    zone = zoneinfo.ZoneInfo(timezone)
    if full:
        return Window(None, day.end)
    row = conn.execute(
        "select window_start, window_end from ops.load_batches where batch_id = %s",
        (batch_id(entity, logical_date),),
    ).fetchone()
    if row:
        # read back in the business zone, where a date cursor's bounds are its days
        start = None if row[0] is None else _local(row[0], zone)
        return Window(start, _local(row[1], zone))
    mark = conn.execute(
        "select value from ops.watermarks where source = %s and entity = %s",
        (entity.source, entity.entity),
    ).fetchone()
    if mark is None:
        return Window(None, day.end)
    return Window(min(day.start, _local(mark[0], zone)), day.end)


# ---------------------------------------------------------------------------- load

_DONE = object()


_SPECIAL = np.array([ord(c) for c in ',"\n\r'], dtype=np.uint8)


def _needs_quotes(table: pa.Table) -> bool:
    """True when some string value holds a comma, quote or line break (one scan per column)."""
    for column in table.columns:
        if not pa.types.is_string(column.type):
            continue
        for chunk in column.chunks:
            data = chunk.buffers()[2]
            if data is not None and np.isin(np.frombuffer(data, dtype=np.uint8), _SPECIAL).any():
                return True
    return False


def _csv_bytes(table: pa.Table) -> bytes:
    """Return `table` as CSV for COPY, quoting only when a value needs it.

    Unquoted fields parse measurably faster in COPY (about a third of its time for
    all-quoted rows). Empty strings never reach here (they load as NULL), so an
    unquoted empty field meaning NULL is exact.
    """
    quoting = "needed" if _needs_quotes(table) else "none"
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style=quoting))
    return buf.getvalue()


def _copy_sql(entity: RawEntity, names: tuple[str, ...], fmt: str) -> str:
    columns = ", ".join(f'"{n}"' for n in names)
    return f"copy {entity.qualified} ({columns}) from stdin with (format {fmt})"


class _Segments:
    """Turns checked chunks into COPY statements and their data (on the worker thread).

    A chunk whose values are all typed exactly (:attr:`Checked.values`) goes as binary
    COPY data, encoded by pgpq from the Arrow columns: PostgreSQL then skips parsing the
    text of every timestamp and number, the larger part of its work on a COPY
    (measured: about a third less server CPU than CSV for the orders file). ``_source``
    and ``_batch_id`` travel in the binary stream as constant columns (cheaper for the
    server than a default evaluated per row). Other chunks go as CSV, with ``_source``
    and ``_batch_id`` from transaction-local settings the column defaults read (see
    ``lifecycle.raw.META_COLUMNS``). Consecutive chunks of the same kind share one COPY.
    """

    def __init__(self, entity: RawEntity, bid: str) -> None:
        self.entity = entity
        self.bid = bid
        self.key: tuple | None = None
        self.encoder = None
        self.builders: dict[pa.Schema, dict] = {}

    def items(self, checked: Checked) -> list[tuple]:
        """Return the (key, sql, source setting, rows, data pieces) items of a checked chunk."""
        if checked.values is not None:
            table = checked.values
            n = table.num_rows
            if "_source" not in table.column_names:
                table = table.append_column("_source", pa.repeat(checked.source, n))
            table = table.append_column("_batch_id", pa.repeat(self.bid, n))
            key = ("binary", tuple(table.column_names))
            out = self._switch(key)
            data = []
            if self.encoder is None:
                self.encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(
                    table.schema, self._builders(table.schema)
                )
                data.append(self.encoder.write_header())
            data += [self.encoder.write_batch(b) for b in table.to_batches()]
            return [*out, (key, _copy_sql(self.entity, key[1], "binary"), None, n, data)]
        table = checked.table
        # A table that carries _source per row needs no per-chunk setting.
        source = None if "_source" in table.column_names else checked.source
        key = ("csv", tuple(table.column_names), source)
        out = self._switch(key)
        sql = _copy_sql(self.entity, key[1], "csv")
        return [*out, (key, sql, source, table.num_rows, [_csv_bytes(table)])]

    def close(self) -> list[tuple]:
        """Return the items that end the last COPY (the binary trailer)."""
        return self._switch(None)

    def _switch(self, key: tuple | None) -> list[tuple]:
        out = []
        if key != self.key:
            if self.encoder is not None:
                out.append((self.key, None, None, 0, [self.encoder.finish()]))
                self.encoder = None
            self.key = key
        return out

    def _builders(self, schema: pa.Schema) -> dict:
        if schema not in self.builders:
            builders = {f.name: pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(f) for f in schema}
            builders["_extra"] = pgpq.encoders.StringEncoderBuilder.new_with_output(
                schema.field("_extra"), pgpq.schema.Jsonb()
            )
            self.builders[schema] = builders
        return self.builders[schema]


def _produce(
    chunks: Iterable[Chunk], checker: Checker, segments: _Segments, out: queue.Queue, state: dict
) -> None:
    """Check chunks and put their COPY items on `out` (runs on a worker thread)."""
    try:
        for chunk in chunks:
            if state.get("stop"):
                return
            checked = checker.check(chunk)
            state["rows_read"] += checked.rows_read
            state["rows_duplicate"] += checked.rows_duplicate
            state["rows_out_of_window"] += checked.rows_out_of_window
            state["quarantine"].extend(checked.quarantine)
            state["unplaced"].extend(checked.unplaced)
            if checked.newest is not None:
                state["newest"] = max(filter(None, (state.get("newest"), checked.newest)))
            for warning in checked.warnings:
                log.warning(warning)
                state["warnings"].append(warning)
            if checked.table.num_rows:
                for item in segments.items(checked):
                    out.put(item)
        for item in segments.close():
            out.put(item)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        state["error"] = exc
    finally:
        out.put(_DONE)


def _stream(
    cur: psycopg.Cursor,
    entity: RawEntity,
    bid: str,
    chunks: Iterable[Chunk],
    checker: Checker,
    state: dict,
) -> int:
    """COPY checked chunks into the raw table while the next chunk is being checked."""
    out: queue.Queue = queue.Queue(maxsize=3)
    # psycopg feeds COPY in small pieces, taking the GIL back after each; with the
    # checker busy on the other thread, the default 5 ms switch interval makes every
    # piece wait and the load turns serial. A short interval while both run keeps the
    # COPY stream fed (measured: a COPY next to a CPU-bound thread went from 1.8x
    # slower to no slower). The interval is process-wide, so it is restored after.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0005))
    segments = _Segments(entity, bid)
    worker = threading.Thread(
        target=_produce,
        args=(chunks, checker, segments, out, state),
        name="load-check",
        daemon=True,
    )
    worker.start()
    loaded = 0
    current = None
    copy_cm = copy = None
    failed = False
    try:
        while True:
            item = out.get()
            if item is _DONE:
                break
            key, sql, source, rows, data = item
            if key != current:
                if copy_cm is not None:
                    copy_cm.__exit__(None, None, None)
                if source is not None:
                    cur.execute("select set_config('lifecycle.source', %s, true)", (source,))
                copy_cm = cur.copy(sql)
                copy = copy_cm.__enter__()
                current = key
            for piece in data:
                copy.write(piece)
            loaded += rows
    except BaseException as exc:
        failed = True
        # An interrupt (Ctrl-C, SIGTERM) or a failed write leaves the COPY open: end it
        # with CopyFail here, or the transaction's rollback waits on a server that waits
        # for more COPY data, for ever (the process hung, holding the batch's lock).
        if copy_cm is not None:
            with contextlib.suppress(Exception):
                copy_cm.__exit__(type(exc), exc, exc.__traceback__)
            copy_cm = None
        raise
    finally:
        state["stop"] = True
        # After a failure or an interrupt the reader gets a second to stop: one waiting
        # out an HTTP retry's backoff (a CRM API that is down) held Ctrl-C for 90 s. It is
        # a daemon thread, and stops at its next chunk.
        grace = time.monotonic() + 1.0
        while worker.is_alive() and (not failed or time.monotonic() < grace):
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)
        if not worker.is_alive():
            worker.join()
        sys.setswitchinterval(interval)
    if copy_cm is not None:
        # A failed check aborts the COPY (psycopg sends CopyFail) rather than ending a
        # stream cut short, so the checker's error is the one reported.
        exc = state.get("error")
        copy_cm.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
    if "error" in state:
        raise state["error"]
    return loaded


def load_batch(
    url: str,
    entity: RawEntity,
    logical_date: dt.date,
    window: Window,
    chunks: Iterable[Chunk],
    *,
    files: Iterable[str] = (),
    max_reject_share: float = 0.05,
    cursor: str | None = None,
    window_filter: bool = True,
    timezone: str = "UTC",
    outcomes: dict[str, str] | None = None,
    unplaced_refunds: set[str] | None = None,
) -> LoadResult:
    """Land `chunks` as the batch of `entity` for `logical_date`, replacing any earlier one.

    `files` are source locators this batch claims (so another batch skips them);
    `cursor` overrides the field that places rows in `window`; with `window_filter`
    off every row belongs to the batch (for sources that select by file arrival);
    a plain date in a timestamp field is midnight in `timezone`.
    `outcomes` says why a claimed file was not read (default: ``read``).
    `unplaced_refunds` (filled while `chunks` are mapped) names the orders refunded by a
    refund row whose order the batch did not hold: see :func:`place_refunds`.
    Raises LoadError when the rejected share passes `max_reject_share`: the batch is
    then not published (its quarantine and run-log entry are, for diagnosis).
    """
    bid = batch_id(entity, logical_date)
    files = list(files)
    result = LoadResult(bid, entity.source, entity.entity, logical_date, window, files=files)
    checker = Checker(
        entity, window, (cursor or entity.cursor) if window_filter else None, timezone
    )
    started = time.perf_counter()
    state: dict = {
        "rows_read": 0,
        "rows_duplicate": 0,
        "rows_out_of_window": 0,
        "quarantine": [],
        "unplaced": [],
        "warnings": [],
        "known": 0,
    }
    error: BaseException | None = None
    with psycopg.connect(url) as conn:
        ensure_raw_tables(conn)
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (bid,))
                # An erasure being applied (lifecycle.privacy, the same key exclusively)
                # finishes first, so this batch's drop_forgotten sees its ledger; one
                # applied meanwhile waits for this batch, whose rows it then sweeps.
                cur.execute(
                    "select pg_advisory_xact_lock_shared(hashtext('lifecycle.erasure_apply'))"
                )
                cur.execute("select set_config('lifecycle.batch_id', %s, true)", (bid,))
                _log_start(url, result)
                cur.execute(f"delete from {entity.qualified} where _batch_id = %s", (bid,))
                cur.execute("delete from raw.quarantine where _batch_id = %s", (bid,))
                cur.execute("delete from ops.load_files where batch_id = %s", (bid,))
                if files:
                    cur.executemany(
                        "insert into ops.load_files (locator, batch_id, source, entity, outcome) "
                        "values (%s, %s, %s, %s, %s)",
                        [
                            (f, bid, entity.source, entity.entity, (outcomes or {}).get(f, "read"))
                            for f in files
                        ],
                    )
                result.rows_loaded = _stream(cur, entity, bid, chunks, checker, state)
                _drop_refused_quarantine(cur, entity, bid, logical_date, window)
                if entity is ORDERS:
                    if unplaced_refunds:
                        state["warnings"] += place_refunds(cur, bid, unplaced_refunds)
                    state["warnings"] += _orders_moved(cur, bid, result.rows_loaded)
                _settle_unplaced(cur, entity, bid, state)
                # forgotten people (lifecycle.privacy) never land, not even on a full reload
                dropped, result.rows_erased, state["quarantine"] = drop_forgotten(
                    cur, entity.table, bid, state["quarantine"]
                )
                result.rows_loaded -= dropped
                unread = [
                    (q[2], q[0], bid)
                    for q in state["quarantine"]
                    if q[1] is None and q[2].startswith(FILE_NOT_READ)
                ]
                if unread:  # a claimed file that could not be read says so in load_files
                    cur.executemany(
                        "update ops.load_files set outcome = %s where locator = %s "
                        "and batch_id = %s",
                        unread,
                    )
                _tally(result, state, checker)
                # Rows already quarantined by an earlier batch are that batch's rejects;
                # a totals line is no record and says nothing of the mapping.
                lines = _no_records(state["quarantine"] + state["unplaced"], entity)
                considered = result.rows_read - result.rows_out_of_window - state["known"] - lines
                share = (result.rows_quarantined - lines) / considered if considered else 0.0
                if share > max_reject_share:
                    raise LoadError(
                        f"{entity.qualified} {logical_date}: {result.rows_quarantined - lines} of "
                        f"{considered} rows rejected ({share:.1%}), more than the allowed "
                        f"{max_reject_share:.1%} (max_reject_share); nothing was published"
                        + _most_rejected(state["quarantine"] + state["unplaced"], entity.names)
                        + f". See raw.quarantine where _batch_id = '{bid}'"
                    )
                _insert_quarantine(cur, entity, bid, state["quarantine"])
                mark = watermark_after(window, state.get("newest"))
                _commit_bookkeeping(cur, entity, bid, logical_date, window, result, mark)
        except BaseException as exc:  # the transaction has rolled back
            error = exc
        else:
            result.duration_s = time.perf_counter() - started
            result.status = "success"
            _log_end(conn, result)  # the batch is committed: its own connection will do
    if error is not None:
        result.duration_s = time.perf_counter() - started
        result.status = "failed"
        result.rows_loaded = 0  # rolled back: nothing of the batch was published
        _tally(result, state, checker)
        _after_failure(url, entity, bid, result, state, error)
        if isinstance(error, LoadError):
            error.result = result  # what the refused batch read and quarantined, for the CLI
        raise error
    log.info(result.describe())
    return result


def place_refunds(cur: psycopg.Cursor, bid: str, order_ids: set[str]) -> list[str]:
    """Give the refunded versions of batch `bid` that name orders of earlier batches the
    customer, email and placing time of the order they refund.

    A refund row naming its order (``refunds.refund_of``) is a refunded version of that
    order; when its batch holds the order, the mapping copies the order's customer onto
    it. A daily batch holds the day's refunds of orders loaded days before, and the
    refund row's own sender is the shop (PayPal): the version made the shop a customer
    with a refunded order, and moved the order to it. The order's earliest version in
    raw (of another batch, or an unrefunded one of this) speaks for it instead. Returns
    a warning for refunds whose order is nowhere: they stay refunded orders of their own.
    """
    ids = sorted(order_ids)
    args = {"bid": bid, "ids": ids}
    original = (
        "select distinct on (order_id) order_id, customer_id, email, ordered_at "
        "from raw.orders__orders where order_id = any(%(ids)s) "
        "and not (_batch_id = %(bid)s and status = 'refunded') "
        "order by order_id, ordered_at, _loaded_at, _line"
    )
    cur.execute(
        "update raw.orders__orders n set customer_id = o.customer_id, email = o.email, "
        f"ordered_at = o.ordered_at from ({original}) o "
        "where n._batch_id = %(bid)s and n.order_id = o.order_id and n.status = 'refunded' "
        "and n.order_id = any(%(ids)s)",
        args,
    )
    found = cur.execute(
        f"with original as ({original}) "
        "select count(distinct n.order_id), min(n.order_id) from raw.orders__orders n "
        "where n._batch_id = %(bid)s and n.order_id = any(%(ids)s) and n.status = 'refunded' "
        "and not exists (select 1 from original o where o.order_id = n.order_id)",
        args,
    ).fetchone()
    if not found or not found[0]:
        return []
    return [
        f"{found[0]} refund(s) name an order that is not loaded (e.g. {found[1]!r}): each "
        "stays a refunded order of the refund's own sender and time"
    ]


def _orders_moved(cur: psycopg.Cursor, bid: str, rows: int) -> list[str]:
    """Return a warning when orders of batch `bid` name another customer than an earlier
    version of theirs (here or in another batch): the latest version moves the order and
    its revenue, which is a correction at times and an order id reused by another shop
    or system at others; either way the user should hear of it."""
    # The rows were just copied in this transaction: the table has no statistics of
    # them, and on a big batch (a first or full load) the planner picked a nested loop
    # over the whole batch twice (400k orders: more than 13 minutes). Past a few
    # thousand rows a hash join is the plan; a day's batch keeps the index lookups.
    big = rows > 10_000
    if big:
        cur.execute("set local enable_nestloop = off")
    found = cur.execute(
        "with moved as ("
        "  select n.order_id, o.customer_id as was, n.customer_id as now "
        "  from raw.orders__orders n join raw.orders__orders o on o.order_id = n.order_id "
        "  and o.customer_id <> n.customer_id "
        "  and (o._batch_id <> n._batch_id or o.updated_at < n.updated_at) "
        "  where n._batch_id = %s"
        ") select count(distinct order_id), min(order_id) from moved",
        (bid,),
    ).fetchone()
    if big:
        cur.execute("set local enable_nestloop = on")
    if not found or not found[0]:
        return []
    example = cur.execute(
        "select o.customer_id, n.customer_id from raw.orders__orders n "
        "join raw.orders__orders o on o.order_id = n.order_id and o.customer_id <> n.customer_id "
        "where n._batch_id = %s and n.order_id = %s "
        "order by o.updated_at nulls first, n.updated_at desc nulls last limit 1",
        (bid, found[1]),
    ).fetchone()
    return [
        f"{found[0]} order(s) name another customer than an earlier version of theirs "
        f"(e.g. order {found[1]!r}: customer {example[0]!r}, now {example[1]!r}); the latest "
        "version counts: check that order ids are not reused across shops or systems"
    ]


def _drop_refused_quarantine(
    cur: psycopg.Cursor, entity: RawEntity, bid: str, logical_date: dt.date, window: Window
) -> None:
    """Drop the quarantine kept for diagnosis by refused batches this one reads again.

    A refused batch (over its reject share) publishes nothing and moves no watermark, so
    a later batch of the entity whose window starts where the refused one's did (or a
    full load) reads its rows again and quarantines those still bad itself. The refused
    batch's entries would otherwise stay, a row fixed since counted loaded and quarantined
    at once. A refused batch of a later date, or one this window starts after, keeps its
    entries until it is rerun.
    """
    cur.execute(
        "delete from raw.quarantine q using ("
        "  select distinct on (batch_id) batch_id, logical_date, window_start, status "
        "  from ops.load_runs where source = %(source)s and entity = %(entity)s "
        "  and batch_id <> %(bid)s order by batch_id, started_at desc"
        ") r where q._batch_id = r.batch_id and r.status = 'failed' "
        "and not exists (select 1 from ops.load_batches b where b.batch_id = r.batch_id) "
        "and r.logical_date <= %(day)s "
        "and (%(start)s::timestamptz is null or r.window_start >= %(start)s)",
        {
            "source": entity.source,
            "entity": entity.entity,
            "bid": bid,
            "day": logical_date,
            "start": window.start,
        },
    )
    if cur.rowcount:
        log.info(
            "%s: %d quarantined row(s) of refused batches read again by %s: theirs replaced",
            entity.qualified,
            cur.rowcount,
            bid,
        )


def _settle_unplaced(cur: psycopg.Cursor, entity: RawEntity, bid: str, state: dict) -> None:
    """Quarantine each bad source line once: not again in every later batch.

    A source file read whole each day (a CRM export, an orders CSV) holds its unreadable
    rows every day, and a full load read after daily ones (or a daily rerun after a full
    load) meets the bad lines those already quarantined. The first committed batch that
    met such a line quarantined it with its reason; another batch counts the same line
    (same file or table and text) as a duplicate of that one instead of quarantining it
    again, so neither the quarantine nor the reject share grows with one old bad line.
    Not by its line number: a database query's rows are numbered within each day's
    result (and a file may grow above a bad line).
    """
    unplaced = state["unplaced"]
    state["unplaced"] = []
    rows = state["quarantine"] + unplaced
    if not rows:
        state["quarantine"] = rows
        return
    found = cur.execute(
        "select distinct q._source, q.payload from raw.quarantine q "
        "join ops.load_batches b on b.batch_id = q._batch_id "
        "where q.source = %s and q.entity = %s and q._batch_id <> %s and q._source = any(%s)",
        (entity.source, entity.entity, bid, sorted({r[0] for r in rows})),
    ).fetchall()
    known = set(found)
    fresh = [r for r in rows if (r[0], _clean(r[3])) not in known]
    state["quarantine"] = fresh
    if len(fresh) < len(rows):
        state["rows_duplicate"] += len(rows) - len(fresh)
        state["known"] = len(rows) - len(fresh)
        log.info(
            "%s: %d bad line(s) already quarantined by another batch, counted as duplicates",
            entity.qualified,
            len(rows) - len(fresh),
        )


_VALUES = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|0x[0-9a-f]+|\d+")


def _most_rejected(rejected: list[tuple], names: Iterable[str]) -> str:
    """Return ``; most: <reason> (n rows alike)`` for the commonest kind of reason (its
    values masked), with what to do about it where :func:`reject_hint` knows."""
    kinds: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    for *_, reason, _payload in rejected:
        for part in split_reasons(reason, names):
            kind = _VALUES.sub("…", part)
            kinds[kind] += 1
            examples.setdefault(kind, part)
    if not kinds:
        return ""
    kind, n = kinds.most_common(1)[0]
    example = examples[kind]
    return f"; most: {example} ({n} row{'s' if n != 1 else ''} alike){reject_hint(example)}"


#: How many lines of a batch with neither who nor when (an export's totals or footer
#: lines: ``Summe;;;;;7589;3.092.969,41;``) are left out of its reject share.
NO_RECORD_LINES = 5


def _no_records(rejected: list[tuple], entity: RawEntity) -> int:
    """Return how many rejected rows are no record, up to :data:`NO_RECORD_LINES`: rows
    without any field that says who (``customer_id``, ...) and with the load cursor empty.

    A totals line is quarantined once and then counted as known while the file keeps it
    as it was; an export rewritten each day writes a new total on a new line, which a
    small day's batch (13 rows) then refused as a 7.7% reject share, calling it a guest
    checkout. Such lines stay quarantined with their reason; only the share leaves them
    out, and only a few: a mapping that empties every row's who and when still refuses.
    """
    who = [f for f in _WHO_FIELDS if f in entity.names]
    when = [f for f in (entity.cursor, entity.cursor_fallback) if f]
    if not who:
        return 0

    def empty(parts: list[str], field: str) -> bool:
        return any(p == f"{field} is empty" or p.startswith(f"{field}: '' ") for p in parts)

    found = 0
    for *_, reason, _payload in rejected:
        parts = split_reasons(reason, entity.names)
        if all(empty(parts, f) for f in who) and any(empty(parts, f) for f in when):
            found += 1
    return min(found, NO_RECORD_LINES)


#: Fields without which a row cannot be attributed to anyone (guest checkouts, say).
_WHO_FIELDS = ("customer_id", "anonymous_id", "user_id")


def reject_hint(reason: str) -> str:
    """Return what to do about the commonest reason rows were rejected ("" when nothing
    general helps): a file in another encoding than UTF-8, or rows with no customer."""
    # also an order line that could not be read: "... (broken encoding: ... UTF-8), so ..."
    if re.search(r"broken encoding: .* is not valid UTF-8\b", reason):
        return (
            "; the file is not UTF-8: set format.encoding in the sources file (cp1252 or "
            "latin-1 for most Western European exports)"
        )
    field = reason.removesuffix(" is empty").removesuffix(": empty")
    if field != reason and field in _WHO_FIELDS:
        return (
            f"; rows without {field} (guest checkouts, say) cannot be attributed to a "
            "customer: if the export has them, allow their share with max_reject_share on "
            "this entity in the sources file (they stay in raw.quarantine, counted)"
        )
    return ""


def _tally(result: LoadResult, state: dict, checker: Checker) -> None:
    result.rows_read = state["rows_read"]
    result.rows_duplicate = state["rows_duplicate"]
    result.rows_out_of_window = state["rows_out_of_window"]
    result.rows_quarantined = len(state["quarantine"]) + len(state["unplaced"])
    result.extra_columns = list(checker.extra_columns)
    result.warnings = list(state["warnings"])


def _commit_bookkeeping(
    cur: psycopg.Cursor,
    entity: RawEntity,
    bid: str,
    logical_date: dt.date,
    window: Window,
    result: LoadResult,
    mark: dt.datetime | None,
) -> None:
    cur.execute(
        "insert into ops.load_batches (batch_id, source, entity, logical_date, "
        "window_start, window_end, rows_loaded, rows_quarantined) "
        "values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict (batch_id) do update "
        "set window_start = excluded.window_start, window_end = excluded.window_end, "
        "rows_loaded = excluded.rows_loaded, rows_quarantined = excluded.rows_quarantined, "
        "committed_at = now()",
        (
            bid,
            entity.source,
            entity.entity,
            logical_date,
            window.start,
            window.end,
            result.rows_loaded,
            result.rows_quarantined,
        ),
    )
    if mark is None:
        return
    cur.execute(
        "insert into ops.watermarks (source, entity, value, batch_id) "
        "values (%s, %s, %s, %s) on conflict (source, entity) do update "
        "set value = greatest(ops.watermarks.value, excluded.value), "
        "batch_id = case when excluded.value >= ops.watermarks.value "
        "then excluded.batch_id else ops.watermarks.batch_id end, updated_at = now()",
        (entity.source, entity.entity, mark, bid),
    )


def watermark_after(window: Window, newest: dt.datetime | None) -> dt.datetime | None:
    """Return where the watermark of a batch over `window` goes (None: it stays).

    A window that has ended is done: the mark goes to its end. A window that reaches
    past the present (today's date, or a future date run with ``--allow-future``) is not:
    the mark goes no further than the newest row it loaded, so days that really come
    later are still caught up from there (the mark never moves back).
    """
    now = dt.datetime.now(dt.UTC)
    if window.end <= now:
        return window.end
    if newest is None:
        return None
    return min(window.end, newest)


def _insert_quarantine(cur: psycopg.Cursor, entity: RawEntity, bid: str, rows: list[tuple]) -> None:
    if not rows:
        return
    with cur.copy(
        "copy raw.quarantine (_batch_id, source, entity, _source, _line, reason, payload) "
        "from stdin"
    ) as copy:
        for source, line, reason, payload in rows:
            copy.write_row(
                (bid, entity.source, entity.entity, source, line, reason, _clean(payload))
            )


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; the payload keeps the rest verbatim.
    return None if text is None else text.replace("\x00", "\\u0000")


def _after_failure(
    url: str, entity: RawEntity, bid: str, result: LoadResult, state: dict, exc: BaseException
) -> None:
    """Record a failed run and, for a rejected batch, its quarantine (for diagnosis)."""
    try:
        if isinstance(exc, LoadError) and state["quarantine"]:
            # The quarantine shows the latest attempt; the published rows stay as they were.
            with psycopg.connect(url) as conn, conn.cursor() as cur:
                cur.execute("delete from raw.quarantine where _batch_id = %s", (bid,))
                _insert_quarantine(cur, entity, bid, state["quarantine"])
        _log_end(url, result, error=f"{type(exc).__name__}: {exc}")
    except psycopg.Error as lost:
        # The original error matters more, and is raised next; a traceback here would be
        # the second of two for one cause (the warehouse gone mid-load). The run stays
        # `running` in ops.load_runs until the next run of the batch marks it abandoned.
        log.warning(
            "could not record the failed run %s in ops.load_runs: %s",
            result.run_id,
            " ".join(str(lost).split()),
        )


# ------------------------------------------------------------------------- run log


@contextlib.contextmanager
def _log_connection(target: str | psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Yield a connection that commits run-log writes at once: a new one for a URL."""
    if isinstance(target, str):
        with psycopg.connect(target, autocommit=True) as conn:
            yield conn
    else:
        with target.transaction():
            yield target


def _log_start(target: str | psycopg.Connection, result: LoadResult) -> None:
    with _log_connection(target) as conn:
        conn.execute(
            "update ops.load_runs set status = 'failed', finished_at = now(), "
            "error = 'abandoned: the process ended before the run finished' "
            "where batch_id = %s and status = 'running'",
            (result.batch_id,),
        )
        conn.execute(
            "insert into ops.load_runs (run_id, batch_id, source, entity, logical_date, "
            "window_start, window_end, status, started_at) "
            "values (%s, %s, %s, %s, %s, %s, %s, 'running', now())",
            (
                result.run_id,
                result.batch_id,
                result.source,
                result.entity,
                result.logical_date,
                result.window.start,
                result.window.end,
            ),
        )


def _log_end(
    target: str | psycopg.Connection, result: LoadResult, error: str | None = None
) -> None:
    with _log_connection(target) as conn:
        conn.execute(
            "update ops.load_runs set status = %s, rows_read = %s, rows_loaded = %s, "
            "rows_quarantined = %s, rows_duplicate = %s, rows_out_of_window = %s, "
            "extra_columns = %s, warnings = %s, error = %s, finished_at = now(), "
            "duration_s = %s where run_id = %s",
            (
                result.status,
                result.rows_read,
                result.rows_loaded,
                result.rows_quarantined,
                result.rows_duplicate,
                result.rows_out_of_window,
                result.extra_columns,
                result.warnings,
                redact(error),
                result.duration_s,
                result.run_id,
            ),
        )


def record_skip(
    url: str, entity: RawEntity, logical_date: dt.date, window: Window, reason: str
) -> LoadResult:
    """Record in the run log that `entity` was not loaded for `logical_date`, and why."""
    result = LoadResult(
        batch_id(entity, logical_date), entity.source, entity.entity, logical_date, window
    )
    result.status = "skipped"
    with psycopg.connect(url) as conn:
        ensure_raw_tables(conn)
    _log_start(url, result)
    _log_end(url, result, error=f"skipped: {reason}")
    log.info("%s %s skipped: %s", entity.qualified, logical_date, reason)
    return result
