"""Parse and check source records against a raw contract, vectorized with Arrow.

Records arrive as text (:class:`Chunk`: an Arrow table of string columns, named as the
source names them). For each contract field the text is trimmed, checked and typed
with pyarrow compute kernels (C++, no Python per row); rows that fail go to the
quarantine with every reason spelled out, built in Python for those rows only.

What is loaded is the *checked text*, normalized where needed (``Z`` added to
timestamps without an offset, booleans as ``true``/``false``, ``1.0`` as ``1`` in
integer fields), not a re-serialization of typed values: PostgreSQL parses it on
COPY exactly as it would the source, and the loader does not pay to print it again.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lifecycle.raw import EARLIEST_DATE, Field, RawEntity

log = logging.getLogger(__name__)

#: Largest absolute value a ``numeric(14, 2)`` column holds.
NUMERIC_LIMIT = 1e12
BIGINT_LIMIT = float(2**63)
TRUE_WORDS = ["true", "t", "1", "yes", "y"]
FALSE_WORDS = ["false", "f", "0", "no", "n"]

ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$"
HAS_OFFSET = r"(Z|z|[+-]\d{2}(:?\d{2})?)$"
NUMBER = r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$"
INTEGER = r"^[-+]?\d+(\.0*)?$"


@dataclass(frozen=True)
class Reject:
    """A source record that could not even be split into fields."""

    source: str
    line: int | None
    reason: str
    payload: str


@dataclass
class Chunk:
    """Source records as text: one string column per source field.

    `source` names where they came from (file path, API query, database query) and
    `lines` gives each row's line or record number there. A chunk that gathers several
    small files names each row's file in `sources` (and `source` describes them all).
    """

    table: pa.Table
    source: str
    lines: np.ndarray
    rejects: list[Reject] = field(default_factory=list)
    sources: pa.Array | None = None
    #: What the mapping step could not map, per contract field: a reason per row (null
    #: where the value mapped). The checker quarantines those rows with these reasons.
    errors: dict[str, pa.Array] | None = None
    #: The source records as read (before mapping), shown as the quarantine's payload.
    originals: pa.Table | None = None
    # Things worth a line in the run log that are not rows (an empty file): the loader
    # counts them with the batch's result.
    warnings: list[str] = field(default_factory=list)
    #: Rows whose JSON value was an array, object or true/false, per source column (the
    #: JSON readers set it): its text is JSON, which no id may be.
    structured: dict[str, np.ndarray] | None = None

    def source_of(self, i: int) -> str:
        """Return where row `i` came from."""
        return self.source if self.sources is None else self.sources[i].as_py()

    @classmethod
    def concat(cls, chunks: list[Chunk], source: str) -> Chunk:
        """Return one chunk of the rows of `chunks` (any columns), keeping each row's source."""
        table = pa.concat_tables([c.table for c in chunks], promote_options="permissive")
        sources = pa.concat_arrays(
            [
                c.sources if c.sources is not None else pa.repeat(c.source, c.table.num_rows)
                for c in chunks
            ]
        ).cast(pa.string())
        lines = np.concatenate([c.lines for c in chunks]) if chunks else np.empty(0, np.int64)
        rejects = [r for c in chunks for r in c.rejects]
        warnings = [w for c in chunks for w in c.warnings]
        names = {k for c in chunks for k in c.structured or {}}
        structured = {
            k: np.concatenate(
                [(c.structured or {}).get(k, np.zeros(c.table.num_rows, bool)) for c in chunks]
            )
            for k in names
        }
        return cls(
            table, source, lines, rejects, sources, warnings=warnings, structured=structured or None
        )

    @classmethod
    def from_records(cls, records: list[dict], source: str, lines: np.ndarray) -> Chunk:
        """Return a chunk of JSON-like records (values stringified, nested ones as JSON)."""
        names: dict[str, None] = {}
        for rec in records:
            names.update(dict.fromkeys(rec))
        cols = {n: [_as_text(rec.get(n)) for rec in records] for n in names}
        table = pa.table({n: pa.array(v, type=pa.string()) for n, v in cols.items()})
        structured = {}
        for n in names:
            mask = np.fromiter(
                (isinstance(rec.get(n), dict | list | bool) for rec in records), bool, len(records)
            )
            if mask.any():
                structured[n] = mask
        lines = np.asarray(lines, dtype=np.int64)
        return cls(table, source, lines, structured=structured or None)


def not_an_id(name: str, text: str) -> str:
    """Return why the JSON text of a non-scalar value (Chunk.structured) is no id: the
    reason the checker and the mapping step both give."""
    kind = {"[": "a JSON array", "{": "a JSON object"}.get(text[:1], "a JSON boolean")
    return f"{name}: {text!r} is {kind}, not an id"


def _as_text(v: object) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


@dataclass(frozen=True)
class Window:
    """A load interval over the entity's cursor: ``[start, end)``; start None = everything.

    Half-open like Airflow's data intervals: a day's window holds its own midnight and
    not the next one, so a plain date (midnight of its day, when read as a timestamp)
    belongs to its own day. A date cursor compares by calendar day: the window holds the
    dates from its start's to ``last_date()``.
    """

    start: dt.datetime | None
    end: dt.datetime

    def describe(self) -> str:
        """Return the interval as text."""
        if self.start is None:
            return f"(-inf, {self.end.isoformat()})"
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"

    def last_date(self) -> dt.date:
        """Return the last date inside the window (a date stands for its whole day)."""
        return (self.end - dt.timedelta(microseconds=1)).date()


@dataclass
class Checked:
    """The outcome of checking one chunk."""

    table: pa.Table  # loadable rows: contract fields as text, then _extra, _line
    source: str
    quarantine: list[tuple[str, int | None, str, str]]  # (source, line, reason, payload)
    rows_read: int
    rows_duplicate: int
    rows_out_of_window: int
    # The quarantine entries of rows an incremental load could not place in its window
    # (their cursor unreadable, or the record not even split into fields): the same
    # file read again tomorrow holds them again, so the loader counts them once.
    unplaced: list[tuple[str, int | None, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The newest cursor among the loadable rows (a date as the end of its day), or None.
    newest: dt.datetime | None = None
    # The same rows with the contract fields typed (BINARY_TYPES), for a binary COPY; None
    # when some value would not reach PostgreSQL exactly as its text does (see _typed).
    values: pa.Table | None = None


#: The Arrow type of each contract type's values in a binary COPY: what PostgreSQL
#: receives for the column types of ``lifecycle.raw.PG_TYPES`` (numeric is (14, 2)).
BINARY_TYPES: dict[str, pa.DataType] = {
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "numeric": pa.decimal128(14, 2),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
}


def split_reasons(reason: str, names: Iterable[str]) -> list[str]:
    """Return the reasons of one quarantined row, which the checker joins with ``; ``.

    Each reason starts with the field it is about, so the text is cut only where a field
    name follows: a message or a value holding ``; `` itself (``...values; add it, or a
    default``) stays whole.
    """
    fields = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.split(rf"; (?=(?:{fields})\b)", reason) if fields else [reason]


# ------------------------------------------------------------------ time zones

#: Arrow's words for a local time that happens twice (``ambiguous``) or never
#: (``nonexistent``) at a DST change; ``reject`` is resolved as ``earliest`` and flagged.
_ARROW_RULE = {"earliest": "earliest", "latest": "latest", "reject": "earliest"}


def local_to_utc(
    naive: pa.Array, zone: str, ambiguous: str = "earliest", nonexistent: str = "latest"
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Return (`naive` wall-clock times of `zone` as UTC instants, masks of the rows
    rejected because their time does not exist there, and because it happens twice).

    `ambiguous` and `nonexistent` are ``earliest``, ``latest`` (pyarrow's
    ``assume_timezone`` meanings: for a gap, the last instant before it or the first
    after it) or ``reject``: such rows are flagged in the masks (and come out null).
    """
    utc = pa.timestamp("us", tz="UTC")
    none = np.zeros(len(naive), dtype=bool)
    if zone == "UTC":
        return naive.cast(pa.timestamp("us")).cast(utc), none, none
    naive = naive.cast(pa.timestamp("us"))
    out = pc.assume_timezone(
        naive, zone, ambiguous=_ARROW_RULE[ambiguous], nonexistent=_ARROW_RULE[nonexistent]
    ).cast(utc)
    gaps, overlaps = none, none
    if "reject" in (ambiguous, nonexistent):
        early = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest")
        late = pc.assume_timezone(naive, zone, ambiguous="latest", nonexistent="latest")
        differ = pc.fill_null(pc.not_equal(early, late), False)
        if pc.any(differ).as_py():
            # A time in a gap does not come back from its earliest instant; one in an
            # overlap does (twice).
            back = pc.local_timestamp(early).cast(pa.timestamp("us"))
            gap = pc.and_(differ, pc.fill_null(pc.not_equal(back, naive), False))
            overlap = pc.and_(differ, pc.invert(gap))
            if nonexistent == "reject":
                gaps = gap.to_numpy(zero_copy_only=False)
            if ambiguous == "reject":
                overlaps = overlap.to_numpy(zero_copy_only=False)
            rejected = gaps | overlaps
            if rejected.any():
                out = pc.if_else(pa.array(rejected), pa.scalar(None, utc), out)
    return out, gaps, overlaps


def utc_text(instants: pa.Array) -> pa.Array:
    """Return UTC instants as ISO-8601 text with ``Z`` (fractions only where there are)."""
    # Printed as naive times (the UTC wall clock): some 20x faster than strftime or a
    # cast of zoned timestamps, which consult the zone database per value.
    instants = instants.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
    micros = pc.cast(instants, pa.int64())
    whole = pc.fill_null(
        pc.equal(pc.subtract(micros, pc.multiply(pc.divide(micros, 1_000_000), 1_000_000)), 0), True
    )
    if pc.all(whole).as_py():
        text = pc.cast(instants.cast(pa.timestamp("s")), pa.string())
    else:
        text = pc.replace_substring_regex(pc.cast(instants, pa.string()), r"\.0{6}$", "")
    text = pc.replace_substring(text, " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")


def plain_dates_as_midnight(text: pa.Array, zone: str = "UTC") -> pa.Array:
    """Return `text` with plain dates (``2024-03-05``) as the UTC instant of their
    midnight in `zone`; other values (and dates that do not exist) are left as they are.

    A date in a timestamp field means the start of that day where the business is: the
    day boundaries of the pipeline are the business time zone's midnights.
    """
    is_date = pc.fill_null(pc.match_substring_regex(text, ISO_DATE), False)
    if not pc.any(is_date).as_py():
        return text
    if zone == "UTC":
        return pc.if_else(is_date, pc.binary_join_element_wise(text, "T00:00:00Z", ""), text)
    dates = _cast(pc.if_else(is_date, text, pa.scalar(None, pa.string())), pa.date32())
    # A midnight that DST skips (a few zones switch at 00:00) is the first instant after.
    midnight, _, _ = local_to_utc(dates.cast(pa.timestamp("us")), zone, "earliest", "latest")
    return pc.coalesce(utc_text(midnight), text)


# ------------------------------------------------------------------ typing kernels


def _offsets(arr: pa.Array) -> np.ndarray:
    """Return the ``len(arr) + 1`` value offsets of the string array `arr` (no copy)."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]


def _valid(arr: pa.Array) -> np.ndarray:
    """Return the mask of the non-null values of `arr` as numpy."""
    if not arr.null_count:
        return np.ones(len(arr), dtype=bool)
    return pc.is_valid(arr).to_numpy(zero_copy_only=False)


def _empty_to_null(arr: pa.Array) -> pa.Array:
    """Return the string array `arr` with empty strings as null."""
    if not len(arr) or arr.buffers()[1] is None:
        return arr
    empty = np.diff(_offsets(arr)) == 0
    if arr.null_count and empty.any():
        empty &= _valid(arr)  # a null's (empty) slot is not an empty string
    if not empty.any():  # the usual case: readers already give empty fields as null
        return arr
    return pc.if_else(pc.equal(pc.utf8_length(arr), 0), pa.scalar(None, pa.string()), arr)


#: ``YYYY-MM-DDTHH:MM:SSZ`` byte by byte: the lowest byte allowed at each place and how
#: far above it the byte may be (digits '0' + 0..9, separators exact). A byte below
#: the lowest wraps around to a large unsigned difference.
_UTC_LOW = np.frombuffer(b"0000-00-00T00:00:00Z", dtype=np.uint8)
_UTC_SPAN = np.where(_UTC_LOW == 48, 9, 0).astype(np.uint8)  # 48: "0"


def _all_utc_seconds(text: pa.Array) -> bool:
    """True when every value of `text` has the form ``YYYY-MM-DDTHH:MM:SSZ``.

    Such values pass the timestamp shape and offset checks of :func:`type_column` as
    they are, so a chunk made only of them (what most exporters write) skips those
    regular-expression scans; any other form takes the general path.
    """
    if not len(text) or text.buffers()[1] is None or text.null_count == len(text):
        return False
    offsets = _offsets(text)
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)
    if not text.null_count:
        if not (np.diff(offsets) == 20).all():
            return False
        # Every value 20 bytes long: they lie back to back, a (n, 20) view without a copy.
        values = data[offsets[0] : offsets[-1]].reshape(-1, 20)
    else:
        valid = _valid(text)
        if not (np.diff(offsets)[valid] == 20).all():
            return False
        values = np.lib.stride_tricks.sliding_window_view(data, 20)[offsets[:-1][valid]]
    # One pass: no byte may be below the lowest allowed at its place or above its range.
    return bool(((values - _UTC_LOW) <= _UTC_SPAN).all())


def _no_bytes(arr: pa.Array, byte: int) -> bool:
    """True when no value of the string array `arr` contains `byte` (one vectorized scan)."""
    data = arr.buffers()[2]
    return data is None or not (np.frombuffer(data, dtype=np.uint8) == byte).any()


def _cast_each(values: pa.Array, to: pa.DataType) -> pa.Array:
    """Cast value by value (slow path, for chunks with a value Arrow rejects)."""
    # Arrow arrays of one value each, never Python objects: a value Arrow holds but
    # Python cannot (an instant in year 0) must come out as it does from a bulk cast.
    out = [pa.nulls(0, to)]
    for v in values.to_pylist():
        try:
            out.append(pc.cast(pa.array([v], values.type), to))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # NaN, overflow, not a number
            out.append(pa.nulls(1, to))
    return pa.concat_arrays(out)


def _without_year_zero(load: pa.Array, value: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Return (load, value) with year-0000 values as null: Arrow reads them, PostgreSQL
    rejects them (and would fail the whole COPY), so they are invalid values."""
    zero = pc.fill_null(pc.starts_with(load, "0000"), False)
    if not pc.any(zero).as_py():
        return load, value
    return (
        pc.if_else(zero, pa.scalar(None, pa.string()), load),
        pc.if_else(zero, pa.scalar(None, value.type), value),
    )


def _cast(values: pa.Array, to: pa.DataType) -> pa.Array:
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _cast_each(values, to)


def _shaped(text: pa.Array, pattern: str) -> pa.Array:
    """Return `text` with the values that do not match `pattern` as null."""
    ok = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    return pc.if_else(ok, text, pa.scalar(None, pa.string()))


def type_column(
    f_type: str, raw: pa.Array, timezone: str = "UTC"
) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Return (text to load, typed values, mask of present-but-invalid) for one column.

    `raw` is the source text with empty strings as null. Text fields load as they
    came (cleaning is staging's job); typed fields are trimmed first. Fast paths cast
    the whole column at once and fall back to per-value checks only when that fails.
    A plain date in a timestamp field is midnight in `timezone`.
    """
    present = pc.is_valid(raw)
    if f_type == "text":
        if _no_bytes(raw, 0):
            return raw, raw, pa.repeat(False, len(raw))
        bad = pc.fill_null(pc.match_substring(raw, "\x00"), False)
        return raw, raw, bad
    text = raw if _no_bytes(raw, 32) and _no_bytes(raw, 9) else pc.utf8_trim_whitespace(raw)
    if f_type == "timestamp":
        if _all_utc_seconds(text):
            load = text
        else:
            text = plain_dates_as_midnight(text, timezone)
            # The shape check keeps to forms PostgreSQL reads exactly as Arrow does.
            load = _shaped(text, ISO_TIMESTAMP)
            has_tz = pc.fill_null(pc.match_substring_regex(load, HAS_OFFSET), False)
            if not pc.all(pc.or_(has_tz, pc.is_null(load))).as_py():
                load = pc.if_else(has_tz, load, pc.binary_join_element_wise(load, "Z", ""))
            if not _no_bytes(load, ord("z")):  # Arrow reads only a capital Z as UTC
                load = pc.replace_substring_regex(load, "z$", "Z")
        load, value = _without_year_zero(load, _cast(load, pa.timestamp("us", tz="UTC")))
    elif f_type == "date":
        load = _shaped(text, ISO_DATE)
        load, value = _without_year_zero(load, _cast(load, pa.date32()))
    elif f_type == "numeric":
        try:
            value, load = pc.cast(text, pa.float64()), text
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            load = _shaped(text, NUMBER)
            value = _cast(load, pa.float64())
        in_range = pc.fill_null(pc.less(pc.abs(value), NUMERIC_LIMIT), False)
        if not pc.all(pc.or_(in_range, pc.is_null(value))).as_py() or value.null_count:
            value = pc.if_else(in_range, value, pa.scalar(None, pa.float64()))
            load = pc.if_else(in_range, load, pa.scalar(None, pa.string()))
    elif f_type == "integer":
        try:
            value, load = pc.cast(text, pa.int64()), text
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            load = pc.replace_substring_regex(_shaped(text, INTEGER), r"\.0*$", "")
            value = _cast(load, pa.int64())
    elif f_type == "boolean":
        lowered = pc.utf8_lower(text)
        is_true = pc.fill_null(pc.is_in(lowered, pa.array(TRUE_WORDS)), False)
        is_false = pc.fill_null(pc.is_in(lowered, pa.array(FALSE_WORDS)), False)
        value = pc.if_else(is_true, True, pc.if_else(is_false, False, pa.scalar(None, pa.bool_())))
        load = pc.if_else(
            is_true, "true", pc.if_else(is_false, "false", pa.scalar(None, pa.string()))
        )
    else:  # pragma: no cover - the contract's Literal type rules this out
        raise ValueError(f_type)
    bad = pc.and_(present, pc.is_null(value))
    return load, value, bad


_LENGTH_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_WORD_BITS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """Return splitmix64's finalizer of `x` (a bijection that spreads every input bit)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def hash_strings(arr: pa.Array) -> np.ndarray:
    """Return a 64-bit hash of every value of a null-free string array, vectorized.

    Each value is read as little-endian 8-byte words straight from the array's data
    buffer (a strided view, no copy of the text); the hash starts from the value's
    length and folds in one word at a time through splitmix64's finalizer. Pass k only
    touches the values longer than 8k bytes, so the cost follows the total text size
    whatever the longest value. A value's hash depends on its bytes alone, never on
    the chunk it came in. Collisions are as unlikely as for any 64-bit hash on
    non-adversarial keys (~n**2 / 2**65).
    """
    arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    data_buf = arr.buffers()[2]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    width = int(lengths[0])
    if width and (lengths == width).all():
        # All values of one length (ids, timestamps): they lie back to back, so the words
        # are the columns of a zero-padded (n, 8k) copy, the same words as below.
        matrix = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
        matrix[:, :width] = data[offsets[0] : offsets[-1]].reshape(n, width)
        with np.errstate(over="ignore"):
            hashes = np.full(n, np.uint64(width) * _LENGTH_MUL, dtype=np.uint64)
            for word in matrix.view("<u8").T:
                hashes = _mix64(hashes ^ word)
        return hashes
    # Eight zero bytes after the text, so the last word of the last value can be read whole.
    padded = np.concatenate((data[: int(offsets[-1])], np.zeros(8, dtype=np.uint8)))
    words = np.lib.stride_tricks.sliding_window_view(padded, 8)
    with np.errstate(over="ignore"):
        hashes = lengths.astype(np.uint64) * _LENGTH_MUL
        live = np.flatnonzero(lengths > 0)
        k = 0
        while len(live):
            word = words[starts[live] + k].view("<u8").ravel()
            word &= _WORD_BITS[np.minimum(lengths[live] - k, 8)]
            hashes[live] = _mix64(hashes[live] ^ word)
            k += 8
            live = live[lengths[live] > k]
    return hashes


_EMPTY_HASH = hash_strings(pa.array([""]))[0]


def _scalar_for(f_type: str, moment: dt.datetime) -> pa.Scalar:
    """Return a window bound as a value of `f_type`: a date is the last day before it."""
    if f_type == "date":
        return pa.scalar((moment - dt.timedelta(microseconds=1)).date(), pa.date32())
    return pa.scalar(moment, pa.timestamp("us", tz="UTC"))


def _before_earliest(f_type: str, value: pa.Array) -> pa.Array:
    """Return the mask of values before :data:`lifecycle.raw.EARLIEST_DATE` (UTC)."""
    if f_type == "date":
        bound = pa.scalar(EARLIEST_DATE, pa.date32())
    else:
        earliest = dt.datetime.combine(EARLIEST_DATE, dt.time(), tzinfo=dt.UTC)
        bound = pa.scalar(earliest, pa.timestamp("us", tz="UTC"))
    return pc.fill_null(pc.less(value, bound), False)


#: How far an order's updated_at may precede its ordered_at (two clocks apart) and the
#: order still be placed by its ordered_at (Checker._placing).
SKEW = pa.scalar(dt.timedelta(days=1), pa.duration("us"))


def _tomorrow_end() -> dt.datetime:
    """Return the end of tomorrow (UTC): no source can hold a later instant today."""
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today + dt.timedelta(days=2), dt.time(), tzinfo=dt.UTC)


def _at_or_after_end(f_type: str, value: pa.Array, end: dt.datetime) -> pa.Array:
    """Return the mask of values past a window's end (a date: after its last day)."""
    bound = _scalar_for(f_type, end)
    past = pc.greater(value, bound) if f_type == "date" else pc.greater_equal(value, bound)
    return pc.fill_null(past, False)


class SeenHashes:
    """A set of 64-bit hashes as sorted numpy arrays of doubling sizes (an LSM layout).

    Membership is a binary search per level and inserts merge equal-sized levels, so a
    batch of n keys costs O(n log n) in numpy, never Python objects per key, whether it
    comes in a few big chunks or thousands of small files.
    """

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Return the mask of `values` already in the set."""
        found = np.zeros(len(values), dtype=bool)
        for level in self.levels:
            pos = np.searchsorted(level, values)
            hit = pos < len(level)
            found[hit] |= level[pos[hit]] == values[hit]
        return found

    def add(self, values: np.ndarray) -> None:
        """Add sorted, unique `values` that are not in the set yet."""
        if not len(values):
            return
        merged = values
        while self.levels and len(self.levels[-1]) <= len(merged):
            # Levels are disjoint, so their union is a sorted concatenation. (np.union1d
            # would dedupe through numpy's hash-based unique: ~40x slower than a sort.)
            merged = np.sort(np.concatenate((self.levels.pop(), merged)))
        self.levels.append(merged)


# ----------------------------------------------------------------------- checker


class Checker:
    """Checks the chunks of one batch against `entity`; remembers keys across chunks."""

    def __init__(
        self, entity: RawEntity, window: Window, cursor: str | None, timezone: str = "UTC"
    ) -> None:
        self.entity = entity
        self.window = window
        self.cursor = cursor
        self.timezone = timezone  # where a plain date's midnight is (timestamp fields)
        self.seen = SeenHashes()
        self.seen_headers: set[tuple[str, ...]] = set()
        self.extra_columns: list[str] = []

    def check_columns(self, names: list[str], where: str) -> None:
        """Fail on a missing required column; note unknown ones (they go to _extra)."""
        key = tuple(names)
        if key in self.seen_headers:
            return
        self.seen_headers.add(key)
        missing = [c for c in self.entity.required if c not in names]
        if missing:
            from lifecycle.load import LoadError

            raise LoadError(
                f"{where}: required column(s) missing for {self.entity.qualified}: "
                f"{', '.join(missing)} (found: {', '.join(names) or 'none'})"
            )
        new = [c for c in names if c not in self.entity.names and c not in self.extra_columns]
        if new:
            # One line for all of them: an export's twenty unmapped columns are not twenty
            # warnings (the run's summary lists them too).
            self.extra_columns += new
            log.warning(
                "%s: %s not in the contract of %s; kept in _extra",
                where,
                f"new column {new[0]!r} is"
                if len(new) == 1
                else f"{len(new)} new columns are ({', '.join(map(repr, new))})",
                self.entity.qualified,
            )

    def check(self, chunk: Chunk) -> Checked:
        """Return the loadable rows of `chunk` and its quarantine."""
        table = chunk.table
        n = table.num_rows
        if n or table.num_columns:  # a file whose every line was rejected has no header
            self.check_columns(table.column_names, chunk.source)
        texts: dict[str, pa.Array] = {}
        loads: dict[str, pa.Array] = {}
        values: dict[str, pa.Array] = {}
        failures: list[tuple[Field, str, pa.Array]] = []
        mapping = chunk.errors or {}
        for f in self.entity.fields:
            if f.name in table.column_names:
                raw = table.column(f.name).combine_chunks()
                if not pa.types.is_string(raw.type):
                    raw = pc.cast(raw, pa.string())
                text = _empty_to_null(raw)
                if f.identifier and n:
                    # an id of spaces (tabs, no-break spaces) names nobody: empty
                    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
                    if pc.any(blank).as_py():
                        text = pc.if_else(blank, pa.scalar(None, pa.string()), text)
            else:
                text = pa.nulls(n, pa.string())
            texts[f.name] = text
            load, value, bad = type_column(f.type, text, self.timezone)
            loads[f.name], values[f.name] = load, value
            own: list[tuple[Field, str, pa.Array]] = [(f, "invalid", bad)]
            limit = f.length_limit
            if limit and n:
                long = pc.fill_null(pc.greater(pc.utf8_length(text), limit), False)
                own.append((f, "long", long))
            json_value = (chunk.structured or {}).get(f.name)
            if f.identifier and json_value is not None:
                own.append((f, "structured", pa.array(json_value)))
            if not f.nullable:
                own.append((f, "empty", pc.is_null(text)))
            if f.non_negative:
                own.append((f, "negative", pc.fill_null(pc.less(value, 0), False)))
            if f.smallest:
                # half the smallest step rounds to 0 in the column
                tiny = pc.and_(pc.greater_equal(value, 0), pc.less(value, f.smallest / 2))
                own.append((f, "tiny", pc.fill_null(tiny, False)))
            if f.currency_code:
                # Any ISO 4217 code passes (transform converts each at its day's rate);
                # a word or a symbol is no code. Stored upper-case: brl is BRL.
                own.append((f, "currency", pc.invert(pc.fill_null(
                    pc.match_substring_regex(text, r"^[A-Za-z]{3}$"), True))))  # fmt: skip
                loads[f.name] = pc.utf8_upper(load)
            if f.one_of:
                # "Completed" is completed (as staging reads it); "Shipped" is no status
                word = pc.utf8_lower(pc.utf8_trim_whitespace(load))
                known = pc.is_in(word, value_set=pa.array(f.one_of, pa.string()))
                own.append((f, "one_of", pc.and_(pc.is_valid(text), pc.invert(known))))
                loads[f.name] = values[f.name] = word
            if f.identifier:
                # the float's ".0" would make 17850.0 and 17850 two customers
                loads[f.name] = values[f.name] = pc.replace_substring_regex(
                    load, r"^(-?\d+)\.0+$", r"\1"
                )
            if f.not_future:
                own.append((f, "future", _at_or_after_end(f.type, value, self.window.end)))
                own.append((f, "ancient", _before_earliest(f.type, value)))
            if f.name in mapping:
                # The mapping step's reason (value and expected format) replaces the
                # checker's own reasons for the field.
                unmapped = pc.is_valid(mapping[f.name])
                own = [(g, k, pc.and_(m, pc.invert(unmapped))) for g, k, m in own]
                own.append((f, "mapping", unmapped))
            failures += own

        # a column kept in _extra (jsonb) cannot hold a NUL either: that row alone, not
        # the batch, fails (PostgreSQL refused the COPY: "unsupported Unicode escape")
        for name in table.column_names:
            if name in self.entity.names or not n:
                continue
            column = table.column(name).combine_chunks()
            if pa.types.is_string(column.type) and not _no_bytes(column, 0):
                nul = pc.fill_null(pc.match_substring(column, "\x00"), False)
                texts[name] = column
                failures.append((Field(name), "nul", nul))
        before = self._updated_before(values)
        if before is not None:
            failures.append(
                (self.entity.field(self.entity.cursor_fallback), "after_update", before)
            )
        outside, placed = self._outside(values)
        beyond_by_field = self._beyond_today(values)
        if beyond_by_field:
            # Past today no later day's batch will hold it: a typo (9999-12-31), not a
            # row of another interval, and quarantined once however often it is read.
            beyond = np.logical_or.reduce([m for _, m in beyond_by_field])
            outside &= ~beyond
            placed &= ~beyond
            failures = [
                (g, k, pc.and_(m, pa.array(~beyond)) if k == "future" else m)
                for g, k, m in failures
            ]
            failures += [(g, "beyond", pa.array(m)) for g, m in beyond_by_field]
        bad_any = np.zeros(n, dtype=bool)
        for _, _, mask in failures:
            bad_any |= mask.to_numpy(zero_copy_only=False)
        # A row of another interval is that interval's business, defects included; a row
        # whose cursor could not be read is nobody else's: it is this batch's to report.
        bad_any &= ~outside
        incremental = self.cursor is not None and self.window.start is not None
        unknown_place = ~placed & ~bad_any
        if incremental and unknown_place.any():
            bad_any |= unknown_place  # a nullable cursor left empty: no interval holds it
        reasons: dict[int, list[str]] = {}
        if bad_any.any():
            for f, kind, mask in failures:
                hit = np.flatnonzero(mask.to_numpy(zero_copy_only=False) & bad_any)
                for i in hit.tolist():
                    reason = (
                        mapping[f.name][i].as_py()
                        if kind == "mapping"
                        else self._reason(f, kind, texts[f.name], i)
                    )
                    reasons.setdefault(i, []).append(reason)
            for i in np.flatnonzero(unknown_place & bad_any).tolist():
                reasons.setdefault(i, []).append(
                    f"{self.cursor} is empty: the row cannot be placed in a load interval"
                )

        keep = ~bad_any & ~outside
        rows_duplicate = 0
        if keep.any():
            dup = self._duplicates(texts, keep)
            rows_duplicate = len(dup)
            if rows_duplicate:
                keep[dup] = False
                if self.entity.duplicates == "quarantine":
                    # Counted once, as quarantined: read = loaded + quarantined +
                    # duplicate + outside holds for every batch.
                    rows_duplicate = 0
                    for i in dup.tolist():
                        key = ", ".join(f"{k}={texts[k][i].as_py()}" for k in self.entity.key)
                        reasons[i] = [f"duplicate of an earlier row of this batch ({key})"]

        quarantine, unplaced = [], []
        payloads = table if chunk.originals is None else chunk.originals
        for i in sorted(reasons):
            entry = (chunk.source_of(i), int(chunk.lines[i]), "; ".join(reasons[i]))
            entry += (self._payload(payloads, i),)
            (unplaced if incremental and not placed[i] else quarantine).append(entry)
        # Records that could not be split into fields have no readable cursor either.
        rejects = [(r.source, r.line, r.reason, r.payload) for r in chunk.rejects]
        (unplaced if incremental else quarantine).extend(rejects)
        loadable = self._loadable(table, loads, chunk, keep)
        return Checked(
            loadable,
            chunk.source,
            quarantine,
            rows_read=n + len(chunk.rejects),
            rows_duplicate=rows_duplicate,
            rows_out_of_window=int(outside.sum()),
            unplaced=unplaced,
            warnings=list(chunk.warnings) + self._rounded(texts, values, keep),
            newest=self._newest(values, keep),
            values=self._typed(loadable, values, keep),
        )

    def _rounded(
        self, texts: dict[str, pa.Array], values: dict[str, pa.Array], keep: np.ndarray
    ) -> list[str]:
        """Return a warning per money field whose loaded values PostgreSQL rounds to cents
        (``numeric(14, 2)``): 0.001 is stored as 0.00, which nobody should learn later."""
        out = []
        for f in self.entity.fields:
            if f.type != "numeric" or not keep.any():
                continue
            value = values[f.name]
            off = pc.abs(pc.subtract(value, pc.round(value, 2)))
            mask = pc.fill_null(pc.greater(off, 1e-9), False).to_numpy(zero_copy_only=False)
            mask &= keep
            if mask.any():
                i = int(np.flatnonzero(mask)[0])
                # as PostgreSQL rounds numeric: half away from zero (Python's round is
                # half to even)
                cents = decimal.Decimal(repr(value[i].as_py())).quantize(
                    decimal.Decimal("0.01"), decimal.ROUND_HALF_UP
                )
                out.append(
                    f"{f.name}: {int(mask.sum())} value(s) with more than two decimals are "
                    f"stored rounded to cents (e.g. {texts[f.name][i].as_py()!r} as {cents})"
                )
        return out

    def _reason(self, f: Field, kind: str, text: pa.Array, i: int) -> str:
        value = text[i].as_py()
        if kind == "invalid":
            return f"{f.name}: {value!r} is not a valid {f.type}"
        if kind == "empty":
            return f"{f.name} is empty"
        if kind == "tiny":
            return f"{f.name} {value} is no {f.name}: it must be at least {f.smallest:.10f}"
        if kind == "after_update":
            return (
                f"{f.name} {value} is more than a day after the order's updated_at: an order "
                "is updated after it is placed (a column mapped to the wrong field?)"
            )
        if kind == "nul":
            return (
                f"{f.name}: {value!r} holds a NUL character (\\x00), which PostgreSQL cannot store"
            )
        if kind == "long":
            what = "email address" if f.name == "email" else "id"
            return (
                f"{f.name}: {value[:40]!r}... is {len(value):,} characters long, more than "
                f"the {f.length_limit} an {what} may have (a shifted column?)"
            )
        if kind == "structured":
            return not_an_id(f.name, value)
        if kind == "negative":
            return f"{f.name} {value} is negative"
        if kind == "one_of":
            return (
                f"{f.name}: {value!r} is not one of {', '.join(f.one_of)} (map the export's "
                f"words onto them with {f.name}: {{column: ..., values: {{...}}}} in the "
                "sources file)"
            )
        if kind == "beyond":
            today = dt.datetime.now(dt.UTC).date()
            return f"{f.name} {value} is in the future (after today, {today})"
        if kind == "ancient":
            return f"{f.name} {value} is before {EARLIEST_DATE.year} (a year typed wrong?)"
        if kind == "currency":
            return f"{f.name}: {value!r} is not an ISO 4217 currency code (three letters, e.g. EUR)"
        end = self.window.last_date() if f.type == "date" else self.window.end.isoformat()
        return f"{f.name} {value} is in the future (after the end of the load interval, {end})"

    def _beyond_today(self, values: dict[str, pa.Array]) -> list[tuple[Field, np.ndarray]]:
        """Return, per cursor field, the mask of rows whose cursor is after tomorrow by this
        machine's clock (a day of margin for time zones and clock skew) and after the
        window; [] when none is.
        A row whose cursor is empty is placed by its fallback's value: that field's."""
        if self.cursor is None or not len(values[self.cursor]):
            return []
        # a window that ends later (`--allow-future`) holds its own rows
        end = max(_tomorrow_end(), self.window.end)
        fields = [self.entity.field(self.cursor)]
        if self.entity.cursor_fallback and self.cursor == self.entity.cursor:
            fields.append(self.entity.field(self.entity.cursor_fallback))
        out, unset = [], None
        for f in fields:
            mask = _at_or_after_end(f.type, values[f.name], end)
            if unset is not None:
                mask = pc.and_(mask, unset)
            unset = pc.is_null(values[f.name])
            if pc.any(mask).as_py():
                out.append((f, mask.to_numpy(zero_copy_only=False).copy()))
        return out

    def _outside(self, values: dict[str, pa.Array]) -> tuple[np.ndarray, np.ndarray]:
        """Return the masks of rows outside the batch's window, and of rows it can place.

        Without a cursor every row belongs to the batch (files are assigned to batches
        by their arrival instead). A row whose cursor cannot be read (empty, or not a
        valid value) cannot be known to be outside: it is never counted so, and the
        checks quarantine it with its reason in every kind of load.
        """
        n = len(next(iter(values.values())))
        if self.cursor is None:
            return np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
        f_type = self.entity.field(self.cursor).type
        cursor = self._placing(values, self.cursor)
        outside = _at_or_after_end(f_type, cursor, self.window.end)
        if self.window.start is not None:
            # before the window: a timestamp before its start, a date before its first day
            lower = _scalar_for(f_type, self.window.start)
            before = pc.less_equal(cursor, lower) if f_type == "date" else pc.less(cursor, lower)
            outside = pc.or_(outside, pc.fill_null(before, False))
        placed = _valid(cursor) if len(cursor) else np.ones(0, dtype=bool)
        return outside.to_numpy(zero_copy_only=False).copy(), placed

    def _placing(self, values: dict[str, pa.Array], name: str) -> pa.Array:
        """Return the values that place each row in a window: the cursor field's, and for
        the entity's own cursor with a fallback, the fallback's where the cursor is empty
        (an order never updated: its ordered_at) or a little earlier than it (an order
        "updated" up to SKEW before it was placed, two clocks apart: placed by its
        updated_at, a daily run found it dated tomorrow, "in the future", and quarantined
        it where a full load loaded it). Further apart, see :meth:`_updated_before`."""
        cursor = values[name]
        fallback = self.entity.cursor_fallback
        if fallback and name == self.entity.cursor:
            other = values[fallback]  # (max_element_wise has no kernel for zoned times)
            skewed = pc.and_(pc.greater(other, cursor), pc.less_equal(other, pc.add(cursor, SKEW)))
            later = pc.or_(pc.is_null(cursor), pc.fill_null(skewed, False))
            cursor = pc.if_else(later, other, cursor)
        return cursor

    def _updated_before(self, values: dict[str, pa.Array]) -> pa.Array | None:
        """Return the mask of rows whose fallback (ordered_at) is more than SKEW after the
        cursor (updated_at) and within the window: an order is updated after it is
        placed, so one of the two is wrong (a column mapped to the wrong field?). Such a
        row is placed by its updated_at and quarantined there, in every kind of load.
        (One whose ordered_at is past the window is already "in the future".)"""
        fallback = self.entity.cursor_fallback
        cursor = self.entity.cursor
        if not fallback or cursor not in values or fallback not in values:
            return None
        updated, ordered = values[cursor], values[fallback]
        if self.entity.field(fallback).type != "timestamp" or not len(updated):
            return None
        apart = pc.greater(ordered, pc.add(updated, SKEW))
        within = pc.invert(_at_or_after_end("timestamp", ordered, self.window.end))
        mask = pc.fill_null(pc.and_(apart, within), False)
        return mask if pc.any(mask).as_py() else None

    def _newest(self, values: dict[str, pa.Array], keep: np.ndarray) -> dt.datetime | None:
        """Return where the rows kept end: just past their newest cursor value.

        The first instant after it (windows are half-open), so a window starting there
        holds what came later and not the newest rows again; a date: the end of its day
        in the business zone.
        """
        name = self.cursor or self.entity.cursor
        if not keep.any() or name not in values:
            return None
        cursor = self._placing(values, name)
        top = pc.max(cursor.filter(pa.array(keep))).as_py()
        if top is None:
            return None
        if isinstance(top, dt.datetime):
            top = top if top.tzinfo else top.replace(tzinfo=dt.UTC)
            return top + dt.timedelta(microseconds=1)
        zone = zoneinfo.ZoneInfo(self.timezone)
        return dt.datetime.combine(top + dt.timedelta(days=1), dt.time(), tzinfo=zone)

    def _duplicates(self, texts: dict[str, pa.Array], keep: np.ndarray) -> np.ndarray:
        """Return the row indices (among `keep`) whose key was already seen in this batch."""
        idx = np.flatnonzero(keep)
        hashes = np.zeros(len(idx), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in self.entity.key:
                # Hash the whole column in place (no copy) and pick the kept rows; a null
                # key hashes as the empty string.
                column = texts[k]
                full = hash_strings(column)
                if column.null_count:
                    full[~_valid(column)] = _EMPTY_HASH
                hashes = hashes * np.uint64(0x9E3779B97F4A7C15) + full[idx]
        ordered = np.sort(hashes)
        if not (ordered[1:] == ordered[:-1]).any():
            # The usual case, no key twice within the chunk: only earlier chunks matter.
            earlier = self.seen.contains(ordered)
            dup = self.seen.contains(hashes) if earlier.any() else np.zeros(len(idx), bool)
            self.seen.add(ordered[~earlier])
            return idx[dup]
        # First occurrence within the chunk, then against the earlier chunks.
        unique, first = np.unique(hashes, return_index=True)
        dup = np.ones(len(idx), dtype=bool)
        dup[first] = False
        earlier = self.seen.contains(unique)
        if earlier.any():
            dup[first[earlier]] = True
        self.seen.add(unique[~earlier])
        return idx[dup]

    def _loadable(
        self, table: pa.Table, loads: dict[str, pa.Array], chunk: Chunk, keep: np.ndarray
    ) -> pa.Table:
        mask = pa.array(keep)
        every = bool(keep.all())
        cols = {
            f.name: loads[f.name] if every else loads[f.name].filter(mask)
            for f in self.entity.fields
        }
        extras = [c for c in table.column_names if c not in self.entity.names]
        if extras:
            sub = table.select(extras).filter(mask).to_pylist()
            cols["_extra"] = pa.array(
                [
                    json.dumps(
                        {k: v for k, v in r.items() if v not in (None, "")}, ensure_ascii=False
                    )
                    for r in sub
                ],
                type=pa.string(),
            )
        else:
            cols["_extra"] = pa.nulls(int(keep.sum()), pa.string())
        cols["_line"] = pa.array(chunk.lines[keep], type=pa.int64())
        if chunk.sources is not None:
            cols["_source"] = chunk.sources.filter(mask)
        return pa.table(cols)

    def _typed(
        self, loadable: pa.Table, values: dict[str, pa.Array], keep: np.ndarray
    ) -> pa.Table | None:
        """Return `loadable` with its contract fields typed, or None if one is not exact.

        The typed values are those the checks ran on, which PostgreSQL reads from the
        loaded text alike (the shape checks keep timestamps and dates to such forms; a
        value Arrow cannot read is quarantined). The exception is numeric: a value with
        more than two decimals is rounded by PostgreSQL (``numeric(14, 2)``), so such a
        chunk goes as text and PostgreSQL does the rounding, as it always has.
        """
        every = bool(keep.all())
        mask = None if every else pa.array(keep)
        cols: dict[str, pa.Array] = {}
        for name in loadable.column_names:
            column = loadable.column(name)
            f_type = self.entity.field(name).type if name in self.entity.names else "text"
            if f_type == "numeric":
                try:
                    column = pc.cast(column, BINARY_TYPES["numeric"])  # exact, or it raises
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return None
            elif f_type != "text":
                column = values[name] if every else values[name].filter(mask)
            cols[name] = column
        return pa.table(cols)

    @staticmethod
    def _payload(table: pa.Table, i: int) -> str:
        return json.dumps(table.slice(i, 1).to_pylist()[0], ensure_ascii=False)
