"""Loading: validate source records against a raw contract and land them with COPY.

A *batch* is everything one source entity delivers for one logical date; its id is
``<source>__<entity>:<date>``, so a rerun of the date replaces the batch instead of
adding to it. One batch is one transaction: the previous version of the batch is
deleted, the new rows are streamed in with ``COPY FROM STDIN``, rows that fail their
contract go to ``raw.quarantine`` with the reason, and the watermark advances — all
or nothing. A process that dies mid-load leaves no trace but a run-log row that the
next run of the batch marks as abandoned.

Speed: records arrive as text in chunks; each chunk is typed and checked with
vectorized pandas, turned into CSV by pyarrow's C++ writer and streamed to PostgreSQL
while the next chunk is being prepared on a second thread, so the load runs at close
to the speed of a plain COPY (see ``bench/bench_load.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from lifecycle.raw import RawEntity, raw_ddl

log = logging.getLogger(__name__)

#: Largest absolute value a ``numeric(14, 2)`` column holds.
NUMERIC_LIMIT = 1e12
BIGINT_LIMIT = 2**63 - 1
TRUE_WORDS = frozenset({"true", "t", "1", "yes", "y"})
FALSE_WORDS = frozenset({"false", "f", "0", "no", "n"})
META = ("_source", "_line")


class LoadError(RuntimeError):
    """A load that must not go on; the message says what to fix."""


@dataclass(frozen=True)
class Reject:
    """A source record that could not even be split into fields."""

    source: str
    line: int | None
    reason: str
    payload: str


@dataclass
class Chunk:
    """Source records, every value still text, with where each came from.

    `frame` has one column per source field (named as the source names it) plus
    ``_source`` (file, cursor or query) and ``_line`` (line or record number).
    """

    frame: pd.DataFrame
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """A load interval over the entity's cursor: ``(start, end]``; start None = everything."""

    start: dt.datetime | None
    end: dt.datetime

    def describe(self) -> str:
        """Return the interval as text."""
        start = self.start.isoformat() if self.start else "-inf"
        return f"({start}, {self.end.isoformat()}]"


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
    extra_columns: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def describe(self) -> str:
        """Return a one-line summary for logs and the CLI."""
        extra = (
            f", new columns kept in _extra: {', '.join(self.extra_columns)}"
            if (self.extra_columns)
            else ""
        )
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


def day_window(logical_date: dt.date) -> Window:
    """Return the interval of one logical date: (D 00:00, D+1 00:00] UTC."""
    start = dt.datetime.combine(logical_date, dt.time(), tzinfo=dt.UTC)
    return Window(start, start + dt.timedelta(days=1))


def ensure_raw_tables(conn: psycopg.Connection) -> None:
    """Create the raw, quarantine and ops tables if they are missing."""
    with conn.transaction():
        # Two loaders starting at once must not race on CREATE TABLE.
        conn.execute("select pg_advisory_xact_lock(hashtext('lifecycle.raw_ddl'))")
        conn.execute(raw_ddl())


def plan_window(
    conn: psycopg.Connection, entity: RawEntity, logical_date: dt.date, full: bool = False
) -> Window:
    """Return the interval the batch of `logical_date` covers.

    A rerun covers what the committed batch covered, so it reproduces it. A first load
    (no watermark yet) or ``full`` covers everything up to the end of the day. Otherwise
    the batch covers its day, widened back to the watermark when days were skipped.
    """
    day = day_window(logical_date)
    if full:
        return Window(None, day.end)
    row = conn.execute(
        "select window_start, window_end from ops.load_batches where batch_id = %s",
        (batch_id(entity, logical_date),),
    ).fetchone()
    if row:
        return Window(row[0], row[1])
    mark = conn.execute(
        "select value from ops.watermarks where source = %s and entity = %s",
        (entity.source, entity.entity),
    ).fetchone()
    if mark is None:
        return Window(None, day.end)
    return Window(min(day.start, mark[0]), day.end)


# --------------------------------------------------------------------------- typing


def _text(values: pd.Series) -> pd.Series:
    """Return the column as nullable strings with empty strings as missing."""
    s = values.astype("string")
    return s.mask(s.str.len() == 0)


def _typed_column(f_type: str, raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Return (typed values, mask of values present but not parseable as `f_type`)."""
    present = raw.notna()
    if f_type == "text":
        bad = present & raw.str.contains("\x00", regex=False).fillna(False)
        return raw, bad
    stripped = raw.str.strip()
    if f_type == "timestamp":
        value = pd.to_datetime(stripped, utc=True, errors="coerce", format="ISO8601")
        value = value.astype("datetime64[us, UTC]")
    elif f_type == "date":
        value = pd.to_datetime(stripped, errors="coerce", format="%Y-%m-%d")
        value = value.astype("datetime64[s]")
    elif f_type in ("numeric", "integer"):
        value = pd.to_numeric(stripped, errors="coerce").astype("Float64")
        limit = NUMERIC_LIMIT if f_type == "numeric" else BIGINT_LIMIT
        finite = value.abs() < limit
        if f_type == "integer":
            finite &= value == value.round()
        value = value.where(finite.fillna(False))
        if f_type == "integer":
            value = value.astype("Int64")
    elif f_type == "boolean":
        lowered = stripped.str.lower()
        value = pd.Series(pd.NA, index=raw.index, dtype="boolean")
        value[lowered.isin(TRUE_WORDS).fillna(False)] = True
        value[lowered.isin(FALSE_WORDS).fillna(False)] = False
    else:  # pragma: no cover - the contract's Literal type rules this out
        raise ValueError(f_type)
    return value, present & value.isna()


def _bound(window: Window, f_type: str) -> pd.Timestamp:
    """Return the window's end as comparable to values of `f_type`.

    A date stands for its whole day, so the last date inside ``(.., D+1 00:00]`` is D.
    """
    if f_type == "date":
        return pd.Timestamp((window.end - dt.timedelta(microseconds=1)).date())
    return pd.Timestamp(window.end)


@dataclass
class _Validated:
    table: pa.Table
    quarantine: pd.DataFrame
    rows_read: int
    rows_duplicate: int
    rows_out_of_window: int


class _Validator:
    """Types and checks chunks of one batch; remembers keys across chunks."""

    def __init__(self, entity: RawEntity, window: Window, bid: str, cursor: str | None) -> None:
        self.entity = entity
        self.window = window
        self.batch_id = bid
        self.cursor = cursor
        self.seen: set[int] = set()
        self.seen_columns: set[str] = set()
        self.extra_columns: list[str] = []

    def check_columns(self, frame: pd.DataFrame, where: str) -> None:
        """Fail on a missing required column; note unknown ones (they go to _extra)."""
        columns = [c for c in frame.columns if c not in META]
        key = tuple(columns)
        if key in self.seen_columns:
            return
        self.seen_columns.add(key)
        missing = [c for c in self.entity.required if c not in columns]
        if missing:
            raise LoadError(
                f"{where}: required column(s) missing for {self.entity.qualified}: "
                f"{', '.join(missing)} (found: {', '.join(columns) or 'none'})"
            )
        for c in columns:
            if c not in self.entity.names and c not in self.extra_columns:
                self.extra_columns.append(c)
                log.warning(
                    "%s: new column %r is not in the contract of %s; kept in _extra",
                    where,
                    c,
                    self.entity.qualified,
                )

    def validate(self, chunk: Chunk) -> _Validated:
        """Return the loadable rows of `chunk` as an Arrow table, and its quarantine."""
        frame = chunk.frame
        where = str(frame["_source"].iloc[0]) if len(frame) else "source"
        self.check_columns(frame, where)
        n = len(frame)
        frame = frame.reset_index(drop=True)
        reasons: dict[int, list[str]] = {}

        def flag(mask: pd.Series, message) -> None:
            mask = mask.fillna(False).to_numpy(dtype=bool)
            if mask.any():
                for i in np.flatnonzero(mask):
                    reasons.setdefault(int(i), []).append(message(int(i)))

        texts: dict[str, pd.Series] = {}
        typed: dict[str, pd.Series] = {}
        for f in self.entity.fields:
            raw = (
                _text(frame[f.name])
                if f.name in frame
                else pd.Series(pd.NA, index=frame.index, dtype="string")
            )
            texts[f.name] = raw
            value, bad = _typed_column(f.type, raw)
            typed[f.name] = value
            flag(bad, lambda i, f=f, raw=raw: f"{f.name}: {raw.iloc[i]!r} is not a valid {f.type}")
            if not f.nullable:
                flag(raw.isna(), lambda i, f=f: f"{f.name} is empty")
            if f.non_negative:
                flag(value < 0, lambda i, f=f, raw=raw: f"{f.name} {raw.iloc[i]} is negative")
            if f.not_future:
                bound = _bound(self.window, f.type)
                flag(
                    value > bound,
                    lambda i, f=f, raw=raw, b=bound: (
                        f"{f.name} {raw.iloc[i]} is in the future "
                        f"(after the end of the load interval, {b.isoformat()})"
                    ),
                )

        outside_np = self._outside(typed)
        # A row of another interval is that interval's business, defects included.
        for i in [i for i in reasons if outside_np[i]]:
            del reasons[i]

        bad_rows = np.zeros(n, dtype=bool)
        if reasons:
            bad_rows[list(reasons)] = True
        keep = ~bad_rows & ~outside_np

        # Duplicates: a key already seen in this batch (earlier chunk or row).
        rows_duplicate = 0
        if keep.any():
            keys = pd.DataFrame({k: texts[k] for k in self.entity.key})[keep]
            hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy()
            dup = np.zeros(len(hashes), dtype=bool)
            first_in_chunk = ~pd.Series(hashes).duplicated(keep="first").to_numpy()
            seen = self.seen
            for j, h in enumerate(hashes.tolist()):
                if h in seen or not first_in_chunk[j]:
                    dup[j] = True
                else:
                    seen.add(h)
            idx = np.flatnonzero(keep)[dup]
            rows_duplicate = len(idx)
            if rows_duplicate:
                keep[idx] = False
                if self.entity.duplicates == "quarantine":
                    for i in idx:
                        key = ", ".join(f"{k}={texts[k].iloc[i]}" for k in self.entity.key)
                        reasons[int(i)] = [f"duplicate of an earlier row of this batch ({key})"]

        # Records that could not be split into fields cannot be placed in an interval
        # either: like rows with an unreadable cursor, the load from the beginning
        # reports them, incremental loads of the same file do not (once, not daily).
        rejects = chunk.rejects
        unplaced = 0
        if self.cursor is not None and self.window.start is not None:
            rejects, unplaced = [], len(rejects)
        table = self._arrow(frame, typed, keep)
        quarantine = self._quarantine(frame, reasons, rejects)
        return _Validated(
            table,
            quarantine,
            rows_read=n + len(chunk.rejects),
            rows_duplicate=rows_duplicate,
            rows_out_of_window=int(outside_np.sum()) + unplaced,
        )

    def _outside(self, typed: dict[str, pd.Series]) -> np.ndarray:
        """Return the mask of rows whose cursor places them outside the batch's window.

        Without a cursor every row belongs to the batch (files are assigned to batches
        by their arrival instead). A row whose cursor cannot be read cannot be placed:
        the load that starts at the beginning (window start None) reports it, and
        incremental loads leave it alone so it is not reported once per day.
        """
        n = len(next(iter(typed.values())))
        if self.cursor is None:
            return np.zeros(n, dtype=bool)
        f_type = self.entity.field(self.cursor).type
        cursor = typed[self.cursor]
        fallback = self.entity.cursor_fallback
        if fallback and self.cursor == self.entity.cursor:
            cursor = cursor.fillna(typed[fallback])
        outside = (cursor > _bound(self.window, f_type)).fillna(False)
        if self.window.start is not None:
            lower = _bound(Window(None, self.window.start), f_type)
            outside |= (cursor <= lower).fillna(False) | cursor.isna()
        return outside.to_numpy(dtype=bool)

    def _arrow(
        self, frame: pd.DataFrame, typed: dict[str, pd.Series], keep: np.ndarray
    ) -> pa.Table:
        cols: dict[str, pa.Array] = {}
        for f in self.entity.fields:
            values = typed[f.name][keep]
            if f.type == "date":
                cols[f.name] = pa.array(values.dt.date, type=pa.date32(), from_pandas=True)
            elif f.type == "timestamp":
                cols[f.name] = pa.array(
                    values.dt.tz_convert(None).to_numpy(),
                    type=pa.timestamp("us", tz="UTC"),
                    from_pandas=True,
                )
            else:
                cols[f.name] = pa.array(values, from_pandas=True)
        extras = [c for c in frame.columns if c not in META and c not in self.entity.names]
        if extras:
            sub = frame.loc[keep, extras]
            cols["_extra"] = pa.array(
                [
                    json.dumps(
                        {k: v for k, v in row.items() if v is not None and v is not pd.NA},
                        ensure_ascii=False,
                    )
                    for row in sub.astype(object).where(sub.notna(), None).to_dict("records")
                ],
                type=pa.string(),
            )
        else:
            cols["_extra"] = pa.nulls(int(keep.sum()), type=pa.string())
        cols["_source"] = pa.array(frame["_source"][keep].astype(str), type=pa.string())
        cols["_line"] = pa.array(frame["_line"][keep], type=pa.int64(), from_pandas=True)
        cols["_batch_id"] = pa.array([self.batch_id] * int(keep.sum()), type=pa.string())
        return pa.table(cols)

    def _quarantine(
        self, frame: pd.DataFrame, reasons: dict[int, list[str]], rejects: list[Reject]
    ) -> pd.DataFrame:
        rows = []
        for i in sorted(reasons):
            record = {
                c: (None if pd.isna(v) else str(v))
                for c, v in frame.iloc[i].items()
                if c not in META
            }
            rows.append(
                (
                    str(frame["_source"].iloc[i]),
                    None if pd.isna(frame["_line"].iloc[i]) else int(frame["_line"].iloc[i]),
                    "; ".join(reasons[i]),
                    json.dumps(record, ensure_ascii=False),
                )
            )
        rows += [(r.source, r.line, r.reason, r.payload) for r in rejects]
        return pd.DataFrame(rows, columns=["_source", "_line", "reason", "payload"])


# ---------------------------------------------------------------------------- load


def _csv_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue()


_DONE = object()


def _produce(chunks: Iterable[Chunk], validator: _Validator, out: queue.Queue, state: dict) -> None:
    """Validate chunks and put their CSV bytes on `out` (runs on a worker thread)."""
    try:
        for chunk in chunks:
            if state.get("stop"):
                return
            v = validator.validate(chunk)
            state["rows_read"] += v.rows_read
            state["rows_duplicate"] += v.rows_duplicate
            state["rows_out_of_window"] += v.rows_out_of_window
            if len(v.quarantine):
                state["quarantine"].append(v.quarantine)
            if v.table.num_rows:
                out.put((v.table.num_rows, _csv_bytes(v.table)))
    except BaseException as exc:  # handed to the consumer, which re-raises it
        state["error"] = exc
    finally:
        out.put(_DONE)


def _log_start(log_url: str, result: LoadResult) -> None:
    with psycopg.connect(log_url, autocommit=True) as conn:
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


def _log_end(log_url: str, result: LoadResult, error: str | None = None) -> None:
    with psycopg.connect(log_url, autocommit=True) as conn:
        conn.execute(
            "update ops.load_runs set status = %s, rows_read = %s, rows_loaded = %s, "
            "rows_quarantined = %s, rows_duplicate = %s, rows_out_of_window = %s, "
            "extra_columns = %s, error = %s, finished_at = now(), duration_s = %s "
            "where run_id = %s",
            (
                result.status,
                result.rows_read,
                result.rows_loaded,
                result.rows_quarantined,
                result.rows_duplicate,
                result.rows_out_of_window,
                result.extra_columns,
                error,
                result.duration_s,
                result.run_id,
            ),
        )


def _insert_quarantine(
    cur: psycopg.Cursor, entity: RawEntity, bid: str, frames: list[pd.DataFrame]
) -> int:
    if not frames:
        return 0
    q = pd.concat(frames, ignore_index=True)
    with cur.copy(
        "copy raw.quarantine (_batch_id, source, entity, _source, _line, reason, payload) "
        "from stdin"
    ) as copy:
        for source, line, reason, payload in q.itertuples(index=False, name=None):
            copy.write_row(
                (bid, entity.source, entity.entity, source, line, reason, _clean(payload))
            )
    return len(q)


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; the payload keeps the rest verbatim.
    return None if text is None else text.replace("\x00", "\\u0000")


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
) -> LoadResult:
    """Land `chunks` as the batch of `entity` for `logical_date`, replacing any earlier one.

    `files` are source locators this batch claims (so another batch skips them);
    `cursor` overrides the field that places rows in `window`; with `window_filter`
    off every row belongs to the batch (for sources that select by file arrival).
    Raises LoadError when the rejected share passes `max_reject_share`: the batch is
    then not published (its quarantine and run-log entry are, for diagnosis).
    """
    bid = batch_id(entity, logical_date)
    files = list(files)
    result = LoadResult(bid, entity.source, entity.entity, logical_date, window, files=files)
    validator = _Validator(
        entity, window, bid, (cursor or entity.cursor) if window_filter else None
    )
    started = time.perf_counter()
    state: dict = {
        "rows_read": 0,
        "rows_duplicate": 0,
        "rows_out_of_window": 0,
        "quarantine": [],
    }
    columns = ", ".join(
        [f'"{f.name}"' for f in entity.fields] + ["_extra", "_source", "_line", "_batch_id"]
    )
    error: BaseException | None = None
    with psycopg.connect(url) as conn:
        ensure_raw_tables(conn)
        try:
            with conn.transaction():
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (bid,))
                _log_start(url, result)
                with conn.cursor() as cur:
                    cur.execute(f"delete from {entity.qualified} where _batch_id = %s", (bid,))
                    cur.execute("delete from raw.quarantine where _batch_id = %s", (bid,))
                    cur.execute("delete from ops.load_files where batch_id = %s", (bid,))
                    if files:
                        cur.executemany(
                            "insert into ops.load_files (locator, batch_id, source, entity) "
                            "values (%s, %s, %s, %s)",
                            [(f, bid, entity.source, entity.entity) for f in files],
                        )
                    loaded = _stream(cur, entity, columns, chunks, validator, state)
                    result.rows_loaded = loaded
                    result.rows_read = state["rows_read"]
                    result.rows_duplicate = state["rows_duplicate"]
                    result.rows_out_of_window = state["rows_out_of_window"]
                    result.extra_columns = list(validator.extra_columns)
                    result.rows_quarantined = sum(len(q) for q in state["quarantine"])
                    considered = result.rows_read - result.rows_out_of_window
                    share = result.rows_quarantined / considered if considered else 0.0
                    if share > max_reject_share:
                        raise LoadError(
                            f"{entity.qualified} {logical_date}: {result.rows_quarantined} of "
                            f"{considered} rows rejected ({share:.1%}), more than the allowed "
                            f"{max_reject_share:.1%}; nothing was published. See "
                            f"raw.quarantine where _batch_id = '{bid}'"
                        )
                    _insert_quarantine(cur, entity, bid, state["quarantine"])
                    cur.execute(
                        "insert into ops.load_batches (batch_id, source, entity, logical_date, "
                        "window_start, window_end, rows_loaded, rows_quarantined) "
                        "values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict (batch_id) do update "
                        "set window_start = excluded.window_start, "
                        "window_end = excluded.window_end, rows_loaded = excluded.rows_loaded, "
                        "rows_quarantined = excluded.rows_quarantined, committed_at = now()",
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
                    cur.execute(
                        "insert into ops.watermarks (source, entity, value, batch_id) "
                        "values (%s, %s, %s, %s) on conflict (source, entity) do update "
                        "set value = greatest(ops.watermarks.value, excluded.value), "
                        "batch_id = case when excluded.value >= ops.watermarks.value "
                        "then excluded.batch_id else ops.watermarks.batch_id end, "
                        "updated_at = now()",
                        (entity.source, entity.entity, window.end, bid),
                    )
        except BaseException as exc:  # the transaction has rolled back
            error = exc
    result.duration_s = time.perf_counter() - started
    if error is not None:
        result.status = "failed"
        _after_failure(url, entity, bid, result, state, error)
        raise error
    result.status = "success"
    _log_end(url, result)
    log.info(result.describe())
    return result


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
    except psycopg.Error:  # the original error matters more
        log.exception("could not record the failed run %s", result.run_id)


def _stream(
    cur: psycopg.Cursor,
    entity: RawEntity,
    columns: str,
    chunks: Iterable[Chunk],
    validator: _Validator,
    state: dict,
) -> int:
    """COPY validated chunks into the raw table while the next chunk is prepared."""
    out: queue.Queue = queue.Queue(maxsize=3)
    worker = threading.Thread(
        target=_produce, args=(chunks, validator, out, state), name="load-validate", daemon=True
    )
    worker.start()
    loaded = 0
    try:
        with cur.copy(f"copy {entity.qualified} ({columns}) from stdin with (format csv)") as copy:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                rows, data = item
                copy.write(data)
                loaded += rows
    finally:
        state["stop"] = True
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)
        worker.join()
    if "error" in state:
        raise state["error"]
    return loaded


def frame_from_records(records: Iterable[dict], source: str, first_line: int = 1) -> pd.DataFrame:
    """Return a text frame of JSON-like records (values stringified; nested kept as JSON)."""
    rows = []
    for rec in records:
        rows.append(
            {
                k: (
                    None
                    if v is None
                    else v
                    if isinstance(v, str)
                    else json.dumps(v, ensure_ascii=False)
                    if isinstance(v, dict | list)
                    else ("true" if v is True else "false" if v is False else _num(v))
                )
                for k, v in rec.items()
            }
        )
    frame = pd.DataFrame(rows, dtype="string")
    frame["_source"] = source
    frame["_line"] = np.arange(first_line, first_line + len(frame), dtype=np.int64)
    return frame


def _num(v: object) -> str:
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def iter_chunks(frames: Iterator[pd.DataFrame]) -> Iterator[Chunk]:
    """Wrap plain text frames as chunks."""
    for f in frames:
        yield Chunk(f)


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
