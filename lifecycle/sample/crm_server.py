"""A local CRM REST API that serves the contacts of a sample world over loopback HTTP.

It plays the CRM of DESIGN.md §4 so the CRM connector and its tests talk to a real
HTTP server instead of a mock: HubSpot-style, bearer token, keyset-paginated contacts
ordered by ``(updatedAt, id)``, and optional fault injection (429 with ``Retry-After``,
500/502/503, added latency) to exercise the connector's retries.

Why the standard library's :class:`http.server.ThreadingHTTPServer`: it is a development
server on loopback only, for a handful of concurrent clients, so it needs no extra
dependency (no web framework, no ASGI server) and starts in milliseconds in a test.
It is not meant to face a network, and :func:`make_server` refuses any non-loopback
address.

Data: ``<world>/crm/contacts.csv`` is read once at start into a columnar store: Arrow
string columns sorted by ``(updated_at, id)``, the keys as a NumPy array of epoch
microseconds, and the ids in a second order for lookups; no Python object per row.
Every request is answered by binary search on the sorted keys. A clean export is read
by Arrow's CSV reader; one with malformed rows is re-read record by record so a bad
row costs only itself. Measured on 1M contacts (125 MB CSV): ~4 s to load a clean
export (~12 s a dirty one), ~320 MB resident afterwards, well under 1 ms per page.

Contract of the list endpoint ``GET /crm/v3/objects/contacts``:

- ``limit``: 1..100, default 100; anything else is a 400.
- ``after``: opaque cursor from ``paging.next.after`` (URL-safe base64 of the last
  ``(updatedAt, id)`` returned). Keyset pagination: a cursor stays valid and exact
  even if contacts are added, because it names a position in the order, not an offset.
- ``updatedAfter`` (exclusive) and ``updatedBefore`` (inclusive): ISO-8601 timestamps,
  naive ones read as UTC; an unparseable one is a 400. So consecutive windows
  ``(t0, t1]``, ``(t1, t2]`` cover every contact exactly once.
- Contacts whose ``updated_at`` cannot be parsed are still served as-is (the loader
  quarantines them): they sort before every valid timestamp, so a full walk (no
  ``updatedAfter``) returns them and an incremental walk (``updatedAfter`` set) does not.
- Results are ordered by ``(updatedAt, id)``, ids compared as strings; empty CSV fields
  are served as JSON ``null``; ``paging`` is omitted on the last page.

Rows that cannot be parsed at all (wrong number of fields, invalid UTF-8, no id) are
skipped, counted and logged; of rows sharing the same ``(updated_at, id)`` key only the
last in the file is kept, because keyset pagination cannot tell them apart.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import csv
import hmac
import ipaddress
import json
import logging
import math
import random
import socket
import socketserver
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from lifecycle.raw import CRM_CONTACTS

logger = logging.getLogger(__name__)

#: Columns of the CRM contacts export: the fields of the raw contract.
CONTACT_COLUMNS: tuple[str, ...] = CRM_CONTACTS.names
#: Columns served under ``properties`` (everything but the id).
PROPERTY_COLUMNS: tuple[str, ...] = tuple(c for c in CONTACT_COLUMNS if c != "id")

CONTACTS_PATH = "/crm/v3/objects/contacts"
HEALTH_PATH = "/health"
MAX_LIMIT = 100
DEFAULT_LIMIT = 100

#: Sort key of a contact whose ``updated_at`` cannot be parsed: before every real time.
INVALID_TS = int(np.iinfo(np.int64).min)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: A quoted field left open swallows at most this many physical lines before the
#: reader gives up on it and resynchronises on the next line.
_MAX_RECORD_LINES = 32
_CHUNK_ROWS = 65_536
_MAX_EXAMPLES = 5


class InvalidRequestError(ValueError):
    """A query parameter or cursor the API rejects with HTTP 400."""


# --------------------------------------------------------------------------- time


def parse_timestamp(value: str) -> datetime:
    """Return `value` (ISO-8601, naive read as UTC) as an aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequestError(
            f"invalid timestamp {value!r}: expected ISO-8601 such as 2024-03-01T14:05:09Z "
            "(URL-encode '+' in offsets as %2B)"
        ) from None
    return _as_utc(parsed)


def _as_utc(moment: datetime) -> datetime:
    """Return `moment` in UTC, reading a naive datetime as UTC (not local time)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _to_micros(moment: datetime) -> int:
    """Return microseconds since the Unix epoch of an aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def _sort_ts(value: str) -> int:
    """Return the sort key of an ``updated_at`` cell: epoch microseconds or INVALID_TS."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return INVALID_TS
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // _MICROSECOND


# --------------------------------------------------------------------------- cursor


def encode_cursor(ts_micros: int, contact_id: str) -> str:
    """Return the opaque cursor naming the position just after ``(ts, id)``."""
    raw = json.dumps([ts_micros, contact_id], ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Return the ``(ts_micros, id)`` key of a cursor made by :func:`encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts_micros, contact_id = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise InvalidRequestError(f"invalid cursor {cursor!r}: pass paging.next.after") from None
    if type(ts_micros) is not int or not isinstance(contact_id, str):
        raise InvalidRequestError(f"invalid cursor {cursor!r}: pass paging.next.after")
    return ts_micros, contact_id


# --------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What :func:`load_contacts` read, kept and skipped (with a few example lines)."""

    path: str
    records: int = 0
    loaded: int = 0
    wrong_columns: int = 0
    bad_encoding: int = 0
    missing_id: int = 0
    duplicate_key: int = 0
    unparseable_updated_at: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Return how many records were not loaded."""
        return self.wrong_columns + self.bad_encoding + self.missing_id + self.duplicate_key

    def note(self, line_no: int, reason: str) -> None:
        """Keep `reason` as an example for the log, up to a few."""
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"line {line_no}: {reason}")


def _parse_record(raw: bytes) -> list[str] | None:
    """Return the fields of one CSV record, or None when it is not valid UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return next(csv.reader((text,), strict=False), [])
    except csv.Error:
        # e.g. a field over csv.field_size_limit(): as unparseable as a wrong field count
        return ["<unparseable>"]


def _records(
    lines: Iterable[bytes], n_fields: int, first_line: int
) -> Iterator[tuple[int, list[str] | None]]:
    """Yield ``(line number, fields or None if not UTF-8)`` per CSV record of `lines`.

    Records may span lines inside quotes; a quote left open (or a multi-line record that
    does not parse to `n_fields` fields) costs only its first line: the reader gives up
    after a few lines and re-reads the following ones as records of their own.
    """
    source = iter(enumerate(lines, start=first_line))
    replay: deque[tuple[int, bytes]] = deque()
    pending: list[tuple[int, bytes]] = []
    quotes = 0
    while True:
        if replay:
            item: tuple[int, bytes] | None = replay.popleft()
        else:
            item = next(source, None)
        if item is None:
            if not pending:
                return
            yield pending[0][0], _parse_record(pending[0][1])
            replay.extendleft(reversed(pending[1:]))
            pending, quotes = [], 0
            continue
        line_no, line = item
        count = line.count(b'"')
        if not pending and count % 2 == 0:
            yield line_no, _parse_record(line)
            continue
        pending.append(item)
        quotes += count
        if quotes % 2 == 0:
            fields = _parse_record(b"".join(part for _, part in pending))
            if fields is not None and len(fields) == n_fields:
                yield pending[0][0], fields
                pending, quotes = [], 0
                continue
        elif len(pending) <= _MAX_RECORD_LINES:
            continue
        yield pending[0][0], _parse_record(pending[0][1])
        replay.extendleft(reversed(pending[1:]))
        pending, quotes = [], 0


def _read_header(csv_path: Path) -> list[str]:
    """Return the column names of the export, failing loudly if it is not one."""
    with csv_path.open("rb") as handle:
        line = handle.readline()
    if not line.strip():
        raise ValueError(f"{csv_path}: empty file, expected a header line")
    fields = _parse_record(line.removeprefix(b"\xef\xbb\xbf"))
    if fields is None:
        raise ValueError(f"{csv_path}: the header line is not valid UTF-8")
    header = [name.strip() for name in fields]
    missing = [c for c in CONTACT_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{csv_path}: not a CRM contacts export, missing columns {missing} "
            f"(expected {','.join(CONTACT_COLUMNS)})"
        )
    return header


def _read_clean_csv(csv_path: Path) -> pa.Table | None:
    """Return the export read by Arrow's CSV reader, or None unless every row is clean.

    Clean: every row has the header's field count, valid UTF-8, an id, and no line break
    inside a value (Arrow would silently let an unclosed quote swallow later rows).
    """
    try:
        table = pa_csv.read_csv(
            csv_path,
            read_options=pa_csv.ReadOptions(use_threads=False),  # as fast here, less memory
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(CONTACT_COLUMNS),
                column_types=dict.fromkeys(CONTACT_COLUMNS, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, KeyError):
        return None
    for name in CONTACT_COLUMNS:
        for line_break in ("\n", "\r"):
            if pc.any(pc.match_substring(table[name], line_break)).as_py():
                return None
    if pc.any(pc.match_substring_regex(table["id"], r"^\s*$")).as_py():
        return None
    order = pa.array(np.arange(table.num_rows, dtype=np.int64))
    return table.select(list(CONTACT_COLUMNS)).append_column("_order", order)


def _chunk_table(columns: dict[str, list[str]], order: list[int]) -> pa.Table:
    """Return one chunk of parsed rows as an Arrow table (strings and ``_order``)."""
    arrays = {name: pa.array(values, type=pa.string()) for name, values in columns.items()}
    arrays["_order"] = pa.array(order, type=pa.int64())
    return pa.table(arrays)


def _read_dirty_csv(csv_path: Path, header: list[str], report: LoadReport) -> pa.Table:
    """Return every parseable row of the export, read record by record, counting the rest."""
    positions = [header.index(name) for name in CONTACT_COLUMNS]
    id_at = header.index("id")
    width = len(header)
    columns: dict[str, list[str]] = {name: [] for name in CONTACT_COLUMNS}
    order: list[int] = []
    chunks: list[pa.Table] = []
    with csv_path.open("rb") as handle:
        handle.readline()  # the header, read by _read_header
        for line_no, fields in _records(handle, width, first_line=2):
            if fields == []:
                continue  # blank line
            report.records += 1
            if fields is None:
                report.bad_encoding += 1
                report.note(line_no, "not valid UTF-8")
            elif len(fields) != width:
                report.wrong_columns += 1
                report.note(line_no, f"{len(fields)} fields, expected {width}")
            elif not fields[id_at].strip():
                report.missing_id += 1
                report.note(line_no, "empty id")
            else:
                for name, at in zip(CONTACT_COLUMNS, positions, strict=True):
                    columns[name].append(fields[at])
                order.append(line_no)
                if len(order) >= _CHUNK_ROWS:
                    chunks.append(_chunk_table(columns, order))
                    columns = {name: [] for name in CONTACT_COLUMNS}
                    order = []
    chunks.append(_chunk_table(columns, order))
    return pa.concat_tables(chunks)


def _sort_keys(updated_at: pa.ChunkedArray) -> np.ndarray:
    """Return the ``updated_at`` sort keys (epoch microseconds or INVALID_TS) of a column."""
    return np.fromiter(
        (_sort_ts(value) for chunk in updated_at.chunks for value in chunk.to_pylist()),
        dtype=np.int64,
        count=len(updated_at),
    )


def _read_csv(csv_path: Path, report: LoadReport) -> pa.Table:
    """Return the parseable rows of the export plus ``_order`` (file order); count the rest."""
    header = _read_header(csv_path)
    table = _read_clean_csv(csv_path)
    if table is None:
        logger.info("%s has malformed rows: reading it record by record", csv_path)
        return _read_dirty_csv(csv_path, header, report)
    report.records = table.num_rows
    return table


def _read_sorted(csv_path: Path, report: LoadReport) -> tuple[pa.Table, np.ndarray]:
    """Return the contacts sorted by ``(updated_at, id)``, one row per key, and their keys."""
    table = _read_csv(csv_path, report)
    keys = _sort_keys(table["updated_at"])
    report.unparseable_updated_at = int((keys == INVALID_TS).sum())
    order = pa.table({"ts": keys, "id": table["id"], "order": table["_order"]})
    rows = pc.sort_indices(
        order, sort_keys=[("ts", "ascending"), ("id", "ascending"), ("order", "ascending")]
    )
    del order
    rows = rows.to_numpy()
    ts = keys[rows]
    del keys
    if len(rows) > 1:
        ids = table["id"].take(pa.array(rows))
        same_as_next = (ts[:-1] == ts[1:]) & pc.equal(ids[:-1], ids[1:]).to_numpy(
            zero_copy_only=False
        )
        del ids
        duplicates = int(same_as_next.sum())
        if duplicates:
            keep = np.append(~same_as_next, True)  # the last of each group: latest in file
            rows, ts = rows[keep], ts[keep]
            report.duplicate_key += duplicates
    ordered = table.select(list(CONTACT_COLUMNS)).take(pa.array(rows)).combine_chunks()
    del table
    pa.default_memory_pool().release_unused()  # hand the unsorted copy back to the OS
    return ordered, ts


def load_contacts(csv_path: Path) -> ContactStore:
    """Return the contacts of a CRM CSV export as a sorted, read-only store."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"CRM contacts export not found: {csv_path} (generate a sample world first)"
        )
    started = time.perf_counter()
    report = LoadReport(path=str(csv_path))
    store = ContactStore(*_read_sorted(csv_path, report), report=report)
    log = logger.warning if report.skipped else logger.info
    log(
        "loaded %d CRM contacts from %s in %.1fs; skipped %d of %d records "
        "(%d wrong field count, %d not UTF-8, %d without id, %d duplicate (updated_at, id)); "
        "%d served with an unparseable updated_at%s",
        report.loaded,
        csv_path,
        time.perf_counter() - started,
        report.skipped,
        report.records,
        report.wrong_columns,
        report.bad_encoding,
        report.missing_id,
        report.duplicate_key,
        report.unparseable_updated_at,
        f"; e.g. {'; '.join(report.examples)}" if report.examples else "",
    )
    return store


def contacts_csv(world_dir: Path) -> Path:
    """Return the path of the CRM contacts export inside a sample world."""
    return Path(world_dir) / "crm" / "contacts.csv"


# --------------------------------------------------------------------------- store


class _StringView:
    """A read-only sequence over an Arrow string array, for :mod:`bisect`."""

    __slots__ = ("_array",)

    def __init__(self, array: pa.StringArray) -> None:
        self._array = array

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, index: int) -> str:
        return self._array[index].as_py()


def _contact(row: dict[str, Any]) -> dict[str, Any]:
    """Return one stored row in the API's contact shape (empty cells as null)."""
    props = {name: (row[name] or None) for name in PROPERTY_COLUMNS}
    return {
        "id": row["id"],
        "properties": props,
        "createdAt": props["created_at"],
        "updatedAt": props["updated_at"],
        "archived": False,
    }


class ContactStore:
    """Contacts sorted by ``(updated_at, id)``, answering pages and lookups by bisection.

    Built by :func:`load_contacts`. The rows live in Arrow string columns, sorted; next
    to them the store keeps the sort keys (``updated_at`` in epoch microseconds) and the
    ids in a second order, by id, for lookups: a few bytes per row, no dict per row.
    """

    def __init__(
        self, table: pa.Table, ts: np.ndarray, *, report: LoadReport | None = None
    ) -> None:
        """Index `table`, already sorted by (`ts`, id) with unique keys."""
        if len(ts) != table.num_rows or bool(np.any(ts[1:] < ts[:-1])):
            raise ValueError("ContactStore needs rows sorted by updated_at: use load_contacts()")
        self.report = report or LoadReport(path="<memory>")
        self._table = table.select(list(CONTACT_COLUMNS)).combine_chunks()
        self._ts = ts
        ids = self._table["id"].chunk(0) if table.num_rows else pa.array([], pa.string())
        self._ids = _StringView(ids)
        by_id = pc.sort_indices(
            pa.table({"id": ids, "ts": ts}), sort_keys=[("id", "ascending"), ("ts", "ascending")]
        )
        self._by_id_rows: np.ndarray = by_id.to_numpy()
        self._by_id = _StringView(ids.take(by_id))
        self.report.loaded = table.num_rows

    def __len__(self) -> int:
        """Return the number of contacts served."""
        return len(self._ts)

    def _position_after(self, ts_micros: int, contact_id: str) -> int:
        """Return the index of the first contact whose key is above ``(ts, id)``."""
        lo = int(np.searchsorted(self._ts, ts_micros, side="left"))
        hi = int(np.searchsorted(self._ts, ts_micros, side="right"))
        return bisect.bisect_right(self._ids, contact_id, lo, hi)

    def page(
        self,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Return one page of contacts and the cursor of the next page (None on the last)."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        start = 0
        end = len(self._ts)
        if after:
            start = self._position_after(*decode_cursor(after))
        if updated_after is not None:
            bound = _to_micros(_as_utc(updated_after))
            start = max(start, int(np.searchsorted(self._ts, bound, side="right")))
        if updated_before is not None:
            bound = _to_micros(_as_utc(updated_before))
            end = int(np.searchsorted(self._ts, bound, side="right"))
        stop = min(start + limit, end)
        if stop <= start:
            return [], None
        rows = [_contact(row) for row in self._table.slice(start, stop - start).to_pylist()]
        next_cursor = encode_cursor(int(self._ts[stop - 1]), rows[-1]["id"]) if stop < end else None
        return rows, next_cursor

    def get(self, contact_id: str) -> dict[str, Any] | None:
        """Return the contact with `contact_id` (its latest version), or None."""
        at = bisect.bisect_right(self._by_id, contact_id) - 1
        if at < 0 or self._by_id[at] != contact_id:
            return None
        return _contact(self._table.slice(int(self._by_id_rows[at]), 1).to_pylist()[0])


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class RequestStats:
    """A snapshot of the server's request counters."""

    total: int
    by_status: dict[int, int]
    faults: int


class _Counters:
    """Thread-safe request counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_status: Counter[int] = Counter()
        self._faults = 0

    def count(self, status: int) -> None:
        """Count one response with `status`."""
        with self._lock:
            self._by_status[status] += 1

    def count_fault(self) -> None:
        """Count one injected fault."""
        with self._lock:
            self._faults += 1

    def snapshot(self) -> RequestStats:
        """Return the counters as they are now."""
        with self._lock:
            by_status = dict(sorted(self._by_status.items()))
            return RequestStats(sum(by_status.values()), by_status, self._faults)


class _Faults:
    """Seeded fault injector: decides which requests fail, and how."""

    _SERVER_ERRORS = (500, 502, 503)

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self) -> int | None:
        """Return the status of an injected failure (429, 500, 502, 503) or None."""
        if self.rate <= 0:
            return None
        with self._lock:
            if self._random.random() >= self.rate:
                return None
            if self._random.random() < 0.5:
                return 429
            return self._random.choice(self._SERVER_ERRORS)


@dataclass
class _App:
    """Everything a request handler needs, shared by all handler threads."""

    store: ContactStore
    token: bytes
    faults: _Faults
    retry_after: int
    fault_delay: float
    counters: _Counters = field(default_factory=_Counters)
    base_url: str = ""
    connections: set[socket.socket] = field(default_factory=set)
    connections_lock: threading.Lock = field(default_factory=threading.Lock)

    def redact(self, text: str) -> str:
        """Return `text` with the bearer token masked, should a client have put it there."""
        secret = self.token.decode("utf-8")
        return text.replace(secret, "[REDACTED]") if secret in text else text


_FAULT_MESSAGES = {
    429: ("RATE_LIMITS", "You have reached your secondly limit (injected fault)."),
    500: ("INTERNAL_ERROR", "Internal error (injected fault)."),
    502: ("BAD_GATEWAY", "Bad gateway (injected fault)."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable (injected fault)."),
}


class _Handler(BaseHTTPRequestHandler):
    """Answers the CRM API; every response is JSON with a Content-Length (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "LifecycleCRM/1"
    timeout = 30  # close idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _HTTPServer

    def version_string(self) -> str:
        """Return the Server header, without the Python version."""
        return self.server_version

    @property
    def app(self) -> _App:
        """Return the shared state of the server."""
        return self.server.app

    def setup(self) -> None:
        """Register the connection so stop() can close it."""
        super().setup()
        with self.app.connections_lock:
            self.app.connections.add(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            with self.app.connections_lock:
                self.app.connections.discard(self.connection)

    # -- logging: through `logging`, counted, token never written
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Count the response and log one line for it (token redacted)."""
        status = getattr(code, "value", code)
        if isinstance(status, int):
            self.app.counters.count(status)
        logger.info(
            "%s %s %s",
            self.address_string(),
            repr(self.app.redact(self.requestline)),
            status,
        )

    def log_error(self, format: str, *args: Any) -> None:
        """Log a protocol error (token redacted)."""
        logger.warning("%s %s", self.address_string(), self.app.redact(format % args))

    def log_message(self, format: str, *args: Any) -> None:
        """Log anything else the base class reports (token redacted)."""
        logger.info("%s %s", self.address_string(), self.app.redact(format % args))

    # -- responses
    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """Send `body` as UTF-8 JSON with `status` and extra `headers`."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_error(
        self, status: int, category: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """Send a HubSpot-style JSON error."""
        body = {"status": "error", "category": category, "message": message}
        self._send_json(status, body, headers)

    def _authorized(self) -> bool:
        """Return whether the request carries the right bearer token (401 sent if not)."""
        header = self.headers.get("Authorization")
        if header is None:
            self._send_error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication required: send 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": 'Bearer realm="crm"'},
            )
            return False
        scheme, _, credentials = header.strip().partition(" ")
        given = credentials.strip().encode("latin-1", errors="replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.app.token):
            self._send_error(
                401,
                "INVALID_AUTHENTICATION",
                "The bearer token is not valid.",
                {"WWW-Authenticate": 'Bearer realm="crm", error="invalid_token"'},
            )
            return False
        return True

    def _injected_fault(self) -> bool:
        """Add latency, then maybe answer with an injected failure (True if it did)."""
        if self.app.fault_delay > 0:
            time.sleep(self.app.fault_delay)
        status = self.app.faults.draw()
        if status is None:
            return False
        self.app.counters.count_fault()
        category, message = _FAULT_MESSAGES[status]
        headers = {"Retry-After": str(self.app.retry_after)} if status == 429 else None
        self._send_error(status, category, message, headers)
        return True

    def do_GET(self) -> None:
        """Route a GET request."""
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if path == HEALTH_PATH:
            self._send_json(200, {"status": "ok", "contacts": len(self.app.store)})
            return
        if path != CONTACTS_PATH and not path.startswith(CONTACTS_PATH + "/"):
            self._send_error(404, "OBJECT_NOT_FOUND", f"No route for {url.path}.")
            return
        if not self._authorized() or self._injected_fault():
            return
        try:
            if path == CONTACTS_PATH:
                self._list(url.query)
            else:
                self._get(unquote(path[len(CONTACTS_PATH) + 1 :]))
        except InvalidRequestError as exc:
            self._send_error(400, "VALIDATION_ERROR", str(exc))

    def _list(self, query: str) -> None:
        """Answer the list endpoint."""
        params = _single_params(query)
        limit = _parse_limit(params.get("limit"))
        after = params.get("after") or None
        updated_after = params.get("updatedAfter")
        updated_before = params.get("updatedBefore")
        rows, next_cursor = self.app.store.page(
            after=after,
            limit=limit,
            updated_after=parse_timestamp(updated_after) if updated_after else None,
            updated_before=parse_timestamp(updated_before) if updated_before else None,
        )
        body: dict[str, Any] = {"results": rows}
        if next_cursor is not None:
            link_params = {"limit": str(limit), "after": next_cursor}
            if updated_after:
                link_params["updatedAfter"] = updated_after
            if updated_before:
                link_params["updatedBefore"] = updated_before
            link = f"{self.app.base_url}{CONTACTS_PATH}?{urlencode(link_params)}"
            body["paging"] = {"next": {"after": next_cursor, "link": link}}
        self._send_json(200, body)

    def _get(self, contact_id: str) -> None:
        """Answer the single-contact endpoint."""
        contact = self.app.store.get(contact_id) if contact_id else None
        if contact is None:
            self._send_error(404, "OBJECT_NOT_FOUND", f"No contact with id {contact_id!r}.")
            return
        self._send_json(200, contact)

    def _not_allowed(self) -> None:
        """Answer any method but GET."""
        self._send_error(405, "METHOD_NOT_ALLOWED", "Read-only API: use GET.", {"Allow": "GET"})

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed


def _single_params(query: str) -> dict[str, str]:
    """Return the query parameters, rejecting any given more than once."""
    parsed = parse_qs(query, keep_blank_values=True)
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:
        raise InvalidRequestError(f"parameters given more than once: {', '.join(repeated)}")
    return {name: values[0] for name, values in parsed.items()}


def _parse_limit(value: str | None) -> int:
    """Return the page size from the ``limit`` parameter (default 100)."""
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise InvalidRequestError(f"limit must be an integer, got {value!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the app, IPv4 or IPv6, without a reverse-DNS lookup."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: _App, family: socket.AddressFamily):
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind, skipping HTTPServer's getfqdn() (slow where reverse DNS is not set up)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


def _loopback(host: str) -> tuple[str, socket.AddressFamily]:
    """Return the address to bind and its family, refusing anything but loopback."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return "127.0.0.1", socket.AF_INET
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"refusing to bind the CRM dev server to {host!r}: it only listens on a "
            "loopback address (127.0.0.0/8, ::1 or localhost)"
        )
    return str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET


class CrmServer:
    """The CRM API on a loopback port: start()/stop() or a ``with`` block, or serve_forever()."""

    def __init__(self, httpd: _HTTPServer) -> None:
        """Wrap a bound (not yet serving) HTTP server."""
        self._httpd = httpd
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        host, port = httpd.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{netloc}:{self.port}"
        httpd.app.base_url = self.url

    @property
    def store(self) -> ContactStore:
        """Return the contacts served."""
        return self._httpd.app.store

    @property
    def stats(self) -> RequestStats:
        """Return the request counters (total, by status, injected faults) as of now."""
        return self._httpd.app.counters.snapshot()

    def start(self) -> CrmServer:
        """Serve in a background thread and return self."""
        if self._thread is not None:
            raise RuntimeError("the CRM server is already started")
        self._thread = threading.Thread(
            target=self._serve, name=f"crm-server-{self.port}", daemon=True
        )
        self._thread.start()
        self._serving.wait()
        logger.info("CRM API serving %d contacts at %s", len(self.store), self.url)
        return self

    def _serve(self) -> None:
        """Run the request loop until stop()."""
        self._serving.set()
        self._httpd.serve_forever(poll_interval=0.1)

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C), then close the socket."""
        logger.info("CRM API serving %d contacts at %s", len(self.store), self.url)
        try:
            self._httpd.serve_forever()
        except KeyboardInterrupt:
            logger.info("CRM API at %s stopped", self.url)
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, close open connections and the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._close()

    def _close(self) -> None:
        """Close the listening socket and any keep-alive connection still open."""
        app = self._httpd.app
        with app.connections_lock:
            open_connections = list(app.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> CrmServer:
        """Start serving in the background."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving."""
        self.stop()


def make_server(
    store: ContactStore,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    fault_rate: float = 0.0,
    fault_seed: int = 0,
    retry_after: float = 1.0,
    fault_delay: float = 0.0,
) -> CrmServer:
    """Return a CRM API server bound to a loopback `host`:`port` (0 picks a free port).

    `fault_rate` of the authenticated list/get requests fail, half with 429 (and a
    ``Retry-After`` of `retry_after` seconds, rounded up to a whole second as HTTP
    requires) and half with 500/502/503, drawn from a RNG seeded with `fault_seed`;
    `fault_delay` seconds of latency are added to each of those requests.
    """
    if not token:
        raise ValueError("the CRM server needs a non-empty bearer token (LIFECYCLE_CRM_TOKEN)")
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
    if not (retry_after >= 0 and math.isfinite(retry_after)):
        raise ValueError(f"retry_after must be a finite number of seconds >= 0, got {retry_after}")
    if not (fault_delay >= 0 and math.isfinite(fault_delay)):
        raise ValueError(f"fault_delay must be a finite number of seconds >= 0, got {fault_delay}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    address, family = _loopback(host)
    app = _App(
        store=store,
        token=token.encode("utf-8"),
        faults=_Faults(fault_rate, fault_seed),
        retry_after=math.ceil(retry_after),
        fault_delay=fault_delay,
    )
    return CrmServer(_HTTPServer((address, port), app, family))
