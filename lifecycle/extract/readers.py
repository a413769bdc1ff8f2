"""Readers that turn CSV and JSON-lines bytes into text chunks for the loader.

Parsing is pyarrow's (C++, fast); what pyarrow cannot take becomes a
:class:`~lifecycle.parse.Reject` with a readable reason instead of failing the file:
lines that are not valid UTF-8, rows with the wrong number of fields or an unbalanced
quote, lines that are not JSON objects. Every value stays text here; typing and checks
are :mod:`lifecycle.parse`'s, so one set of rules serves every source.

A quoted CSV value may hold line breaks (a note, an address); such a record is numbered by
its first line. A quote that is not closed within MAX_RECORD_LINES, or whose lines do not
read as one record of the header's field count, is a stray one: it costs its own line, not
the rows after it. A quote inside an unquoted value (an inch mark, ``Eldon 12" Clock``) is
a character: such a line reads alone as a record, as pyarrow and Python's csv read it.

A CSV file's dialect is a :class:`~lifecycle.sources_file.CsvFormat` (delimiter, quote and
escape characters, encoding, header or given column names, lines to skip, null markers);
a file in another encoding than UTF-8 is transcoded to UTF-8 as it is read, so a byte the
encoding does not define still costs one row.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from lifecycle.load import LoadError
from lifecycle.parse import Chunk, Reject
from lifecycle.sources_file import WHITESPACE, CsvFormat

BLOCK_BYTES = 2 << 20
FIRST_BLOCK_BYTES = 256 << 10


def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Return the start and end offsets of the lines of `data` (a final newline ends none)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(arr) and (len(ends) == 0 or ends[-1] != len(arr) - 1):
        ends = np.append(ends, len(arr))
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.empty(0, np.int64)
    return starts, ends


#: The most lines and bytes one quoted value may span. Past them a quote that is not closed
#: is a stray one: its line is quarantined alone and reading goes on at the next line.
MAX_RECORD_LINES = 200
MAX_RECORD_BYTES = 256 << 10


@dataclass
class _Cleaned:
    """What :func:`_clean_lines` keeps of a block, and where it stopped."""

    body: bytes  #: the usable records, one after the other
    numbers: np.ndarray  #: the line each kept non-blank record starts on
    rejects: list[Reject]
    lines: int  #: lines of the block read (a record still open at its end is left)
    size: int  #: bytes of the block read
    multiline: bool = False  #: some record of `body` spans lines (a quoted line break)


def _clean_lines(
    data: bytes,
    first_line: int,
    locator: str,
    csv_quotes: bool = False,
    quote: int = 34,
    encoding: str = "UTF-8",
    *,
    delimiter: str = ",",
    fields: int | None = None,
    final: bool = True,
) -> _Cleaned:
    """Return the usable records of `data`, their line numbers, and rejects for the rest.

    A line is unusable when it is not valid UTF-8 (the bytes of a transcoded file that
    `encoding` does not define stay invalid), or holds a carriage return that does not end
    it. With `csv_quotes`, a line that leaves a `quote` open starts a record that runs to
    the line that closes it: a value written over several lines (a note, an address).
    That record is kept when it reads as one CSV record of `fields` fields within
    MAX_RECORD_LINES and MAX_RECORD_BYTES; otherwise the quote is a stray one, and only
    its line is quarantined (``unbalanced double quote``), so a stray quote costs one row
    instead of swallowing the rows after it. A record still open at the end of a block
    that is not `final` is left for the next block (`lines` and `size` stop before it).
    Line numbers are those of the non-blank records kept, in order, as the parsers count
    rows. Fast path (vectorized): the block is fine and one line is one record.
    """
    starts, ends = _line_spans(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    blank = (ends - starts) == 0
    if len(arr):
        cr_only = (ends - starts == 1) & (arr[np.minimum(starts, len(arr) - 1)] == 13)
        blank |= cr_only
    odd = np.zeros(len(starts), dtype=bool)
    if csv_quotes and bytes([quote]) in data:
        quotes = np.concatenate(([0], np.cumsum(arr == quote, dtype=np.int64)))
        odd = (quotes[ends] - quotes[starts]) % 2 == 1
    # A carriage return not ending its line: the parsers would take it for a line break
    # and split one record into two (with the line numbers of the rest off by one).
    bare_cr = np.zeros(len(starts), dtype=bool)
    if b"\r" in data:
        cr = arr == 13
        cr[:-1] &= arr[1:] != 10
        cr[-1:] = False
        if cr.any():
            crs = np.concatenate(([0], np.cumsum(cr, dtype=np.int64)))
            bare_cr = (crs[ends] - crs[starts]) > 0
    # ASCII is valid UTF-8 and far cheaper to check than decoding the block.
    utf8_ok = data.isascii()
    if not utf8_ok:
        try:
            data.decode("utf-8")
            utf8_ok = True
        except UnicodeDecodeError:
            pass
    numbers = first_line + np.arange(len(starts), dtype=np.int64)
    if utf8_ok and not odd.any() and not bare_cr.any():
        return _Cleaned(data, numbers[~blank], [], len(starts), len(data))
    good: list[bytes] = []
    kept: list[int] = []
    rejects: list[Reject] = []
    odd_lines = np.flatnonzero(odd)
    lines, size, multiline = len(starts), len(data), False
    which = "double quote" if quote == 34 else f"quote character {chr(quote)!r}"

    def reject(i: int, j: int, reason: str) -> None:
        payload = data[starts[i] : ends[j]].decode("utf-8", errors="backslashreplace")
        rejects.append(Reject(locator, int(numbers[i]), reason, payload))

    i = 0
    opened = -2  # the last line quarantined for a quote it left open
    while i < len(starts):
        reason = _line_fault(data[starts[i] : ends[i]], bool(bare_cr[i]), encoding)
        # A quote inside an unquoted value (Eldon 12" Clock) leaves no value open: such a
        # line reads alone as a record, as pyarrow, Python's csv and pandas read it. It is
        # one, unless the line before left a quote open (then it is that record's rest).
        alone = (
            bool(odd[i])
            and fields is not None
            and not reason
            and _fields(data[starts[i] : ends[i]], delimiter, chr(quote)) == fields
        )
        if odd[i] and not alone:
            at = int(np.searchsorted(odd_lines, i, side="right"))
            j = int(odd_lines[at]) if at < len(odd_lines) else None
            if j is None and not final and _may_span(i, len(starts), starts[i], len(data)):
                lines, size = i, int(starts[i])  # open at the end: the next block closes it
                break
            if j is not None and _may_span(i, j + 1, starts[i], ends[j]):
                record = data[starts[i] : ends[j]]
                lines_of = [data[starts[k] : ends[k]] for k in range(i, j + 1)]
                if (
                    fields is not None
                    and not _rows_on_their_own(lines_of, delimiter, chr(quote), fields)
                    and _fields(record, delimiter, chr(quote)) == fields
                ):
                    # One record over lines j - i + 1: kept whole, or quarantined whole
                    # with the first line's fault (a broken byte in a note).
                    faults = (
                        _line_fault(data[starts[k] : ends[k]], bool(bare_cr[k]), encoding)
                        for k in range(i, j + 1)
                    )
                    fault = next((f for f in faults if f), None)
                    if fault:
                        reject(i, j, fault)
                    else:
                        good.append(record)
                        kept.append(int(numbers[i]))
                        multiline = True
                    i = j + 1
                    continue
        if odd[i] and (not alone or i - 1 == opened):
            reason = reason or f"malformed row: unbalanced {which}"
            opened = i
        if reason:
            reject(i, i, reason)
        else:
            good.append(data[starts[i] : ends[i]])
            if not blank[i]:
                kept.append(int(numbers[i]))
        i += 1
    body = b"\n".join(good) + (b"\n" if good else b"")
    return _Cleaned(body, np.asarray(kept, dtype=np.int64), rejects, lines, size, multiline)


def _may_span(first: int, after_last: int, start: int, end: int) -> bool:
    """True when lines [first, after_last) over bytes [start, end) may be one record."""
    return after_last - first <= MAX_RECORD_LINES and end - start <= MAX_RECORD_BYTES


def _line_fault(line: bytes, bare_cr: bool, encoding: str) -> str | None:
    """Return why one line cannot be read (bad encoding, a CR inside it), or None."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"broken encoding: byte 0x{line[exc.start]:02x} at position {exc.start} "
            f"is not valid {encoding}"
        )
    if bare_cr:
        at = line.replace(b"\r\n", b"  ").find(b"\r")
        return f"malformed row: a carriage return (CR) inside the line, at position {at}"
    return None


def _rows_on_their_own(lines: list[bytes], delimiter: str, quote: str, fields: int) -> bool:
    """True when `lines`, read as one record over lines, look like rows of their own.

    Two stray quotes make a valid CSV record of every row between them. A value typed
    over lines rarely holds a line that is a whole row of `fields` fields, nor starts and
    ends on lines that each have the row's delimiters (quotes aside): those are rows.
    """
    d = delimiter.encode()
    if lines[0].count(d) + 1 == fields and lines[-1].count(d) + 1 == fields:
        return True
    return any(_fields(line, delimiter, quote) == fields for line in lines[1:-1])


def _fields(record: bytes, delimiter: str, quote: str) -> int | None:
    """Return the field count of `record` when it reads as exactly one CSV record.

    Python's csv module (strict: a closing quote must end its field) tells a value written
    over lines from a stray quote that would join rows; it runs on those candidates only.
    """
    text = record.decode("utf-8", errors="replace")
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quotechar=quote, strict=True
    )
    try:
        rows = list(reader)
    except csv.Error:
        return None
    return len(rows[0]) if len(rows) == 1 else None


_UTF8 = ("utf-8", "utf-8-sig")


class _Transcoded(io.RawIOBase):
    """A binary stream in `encoding`, read as UTF-8 bytes (decoded as it is read).

    Bytes the encoding does not define (five of cp1252's) come through as they were
    (``surrogateescape``), so the line holding one is rejected as broken, not the file.
    """

    def __init__(self, raw: BinaryIO, encoding: str) -> None:
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
        self._buf = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self, n: int) -> None:
        while not self._eof and len(self._buf) < n:
            block = self._raw.read(1 << 16)
            self._eof = not block
            text = self._decoder.decode(block, final=self._eof)
            self._buf += text.encode("utf-8", errors="surrogateescape")

    def read(self, n: int = -1) -> bytes:
        self._fill(1 << 62 if n is None or n < 0 else n)
        n = len(self._buf) if n is None or n < 0 else n
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self._buf and not self._eof:
            self._fill(len(self._buf) + (1 << 16))
        cut = self._buf.find(b"\n") + 1 or len(self._buf)
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out


def as_utf8(stream: BinaryIO, encoding: str) -> BinaryIO:
    """Return `stream` read as UTF-8 bytes (transcoded unless it is UTF-8 already)."""
    name = codecs.lookup(encoding).name
    return stream if name in _UTF8 else _Transcoded(stream, name)  # type: ignore[return-value]


class _Utf16Refused:
    """`stream` as it is, failing on its first bytes when they are a UTF-16 byte order mark.

    Read as UTF-8, a UTF-16 file (Excel's "Unicode Text") is a header of mojibake and NULs
    that maps no column; its BOM says what it is, so the error can say what to set.
    """

    def __init__(self, raw: BinaryIO, locator: str, encoding: str) -> None:
        self._raw, self._locator, self._encoding, self._first = raw, locator, encoding, True

    def _checked(self, data: bytes) -> bytes:
        if self._first and data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise LoadError(
                f"{self._locator}: line 1: the file starts with a UTF-16 byte order mark, "
                f"but format.encoding is {self._encoding}: set format.encoding: utf-16"
            )
        self._first = self._first and not data
        return data

    def read(self, n: int = -1) -> bytes:
        return self._checked(self._raw.read(n))

    def readline(self, limit: int = -1) -> bytes:
        return self._checked(self._raw.readline(limit))


def _header_bytes(columns: list[str], fmt: CsvFormat) -> bytes:
    """Return a header line of `columns` in the dialect of `fmt` (UTF-8)."""
    q = fmt.quote_char
    if q is None:
        return fmt.delimiter.join(columns).encode() + b"\n"
    return fmt.delimiter.join(f"{q}{c.replace(q, q + q)}{q}" for c in columns).encode() + b"\n"


_EDGE_BLANKS = re.compile(rb"^[ \t]+|[ \t]+(?=\r?$)", re.MULTILINE)
_INNER_BLANKS = re.compile(rb"[ \t]+")


def _aligned_to_tabs(data: bytes) -> bytes:
    """Return whitespace-aligned lines as tab-separated ones, line for line.

    pyarrow's CSV reader takes one delimiter byte, not a pattern such as pandas'
    ``delim_whitespace``: runs of spaces and tabs become one tab and blanks at either end
    of a line go, so the line count (and every line number) stays as in the file.
    """
    return _INNER_BLANKS.sub(b"\t", _EDGE_BLANKS.sub(b"", data))


def _tabbed(fmt: CsvFormat) -> CsvFormat:
    """Return the dialect the parser reads `fmt` with: tabs, unquoted, for whitespace."""
    if fmt.delimiter != WHITESPACE:
        return fmt
    return fmt.model_copy(update={"delimiter": "\t", "quote_char": None, "escape_char": None})


def read_csv_chunks(
    stream: BinaryIO,
    locator: str,
    block_bytes: int = BLOCK_BYTES,
    fmt: CsvFormat | None = None,
) -> Iterator[Chunk]:
    """Yield the records of a CSV stream as text chunks.

    `fmt` is the file's dialect (default: comma-separated UTF-8 with a header line).
    """
    fmt = fmt or CsvFormat()
    aligned = fmt.delimiter == WHITESPACE
    fmt = _tabbed(fmt)
    encoding = codecs.lookup(fmt.encoding).name
    if encoding not in _UTF8:
        stream = _Transcoded(stream, encoding)  # type: ignore[assignment]
    else:
        stream = _Utf16Refused(stream, locator, fmt.encoding)  # type: ignore[assignment]
    for skipped in range(fmt.skip_rows):
        if not _guarded(stream.readline, locator):
            yield _empty(
                locator,
                f"{locator}: the file ends after {skipped} of its {fmt.skip_rows} skip_rows "
                "lines, no rows read",
            )
            return
    line = 1 + fmt.skip_rows
    if fmt.header:
        header = _guarded(stream.readline, locator)
        if not header.strip():
            what = "empty file (0 bytes)" if not header else "no header line (blank first line)"
            yield _empty(locator, f"{locator}: {what}, no rows read")
            return
        if aligned:
            header = _aligned_to_tabs(header)
        header_text = header.decode("utf-8-sig", errors="replace").rstrip("\r\n")
        if not header_text.strip():  # a byte-order mark and nothing else
            yield _empty(
                locator, f"{locator}: no header line (a byte-order mark alone), no rows read"
            )
            return
        if "\r" in header_text:
            raise LoadError(f"{locator}: line {line}: the header holds a carriage return (CR)")
        dialect = {
            "delimiter": fmt.delimiter,
            "quotechar": fmt.quote_char or '"',
            "quoting": csv.QUOTE_MINIMAL if fmt.quote_char else csv.QUOTE_NONE,
            "escapechar": fmt.escape_char,
        }
        columns = [c.strip() for c in next(csv.reader([header_text], **dialect))]
        _check_header(columns, locator)
        line += 1
    else:
        assert fmt.column_names, "the sources file validation requires column_names"
        columns = list(fmt.column_names)
    header = _header_bytes(columns, fmt)
    rest = b""
    # A small first block gets COPY streaming sooner; the loader checks the next
    # block while PostgreSQL parses this one.
    size = min(block_bytes, FIRST_BLOCK_BYTES)
    yielded = False
    while True:
        block = _guarded(stream.read, locator, size)
        size = block_bytes
        data = rest + block
        if block:
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            data, rest = data[:cut], data[cut:]
        elif not data:
            break
        else:
            rest = b""
        if aligned:
            data = _aligned_to_tabs(data)
        chunk, cleaned = _parse_csv_block(
            data, header, columns, line, locator, fmt, final=not block
        )
        if cleaned.size < len(data):
            # A quoted value runs past this block: its record starts the next one.
            rest = data[cleaned.size :] + rest
        if cleaned.size or not block:
            yield chunk
            yielded = True
        line += cleaned.lines
        if not block:
            break
    if not yielded:
        # a header and no rows: its columns are still checked against the sources file
        yield Chunk(
            pa.table({c: pa.array([], pa.string()) for c in columns}),
            locator,
            np.empty(0, np.int64),
        )


def _empty(locator: str, warning: str) -> Chunk:
    return Chunk(pa.table({}), locator, np.empty(0, np.int64), warnings=[warning])


def _check_header(columns: list[str], locator: str) -> None:
    """Fail on a header the rows cannot be read by: an empty or repeated column name."""
    seen: dict[str, int] = {}
    for i, name in enumerate(columns, 1):
        if not name:
            raise LoadError(
                f"{locator}: line 1: column {i} of the header has no name (a delimiter at the "
                "end of the header, as a spreadsheet saves empty columns?): name every column "
                "in the sources file with format: {header: false, skip_rows: 1, "
                "column_names: [...]}"
            )
        if name in seen:
            raise LoadError(
                f"{locator}: line 1: column {name!r} appears twice in the header "
                f"(columns {seen[name]} and {i}); each column needs its own name"
            )
        seen[name] = i


def _parse_csv_block(
    data: bytes,
    header: bytes,
    columns: list[str],
    first_line: int,
    locator: str,
    fmt: CsvFormat,
    final: bool = True,
) -> tuple[Chunk, _Cleaned]:
    """Return the records of a block of whole lines as a chunk, and what was read of it.

    A record still open at the end of a block that is not `final` is not read: the
    returned `lines` and `size` stop before it, for the caller to read it with the next.
    """
    cleaned = _clean_lines(
        data,
        first_line,
        locator,
        # With an escape character a quote may stand alone: no balance to check.
        csv_quotes=fmt.quote_char is not None and fmt.escape_char is None,
        quote=ord(fmt.quote_char or '"'),
        encoding="UTF-8" if codecs.lookup(fmt.encoding).name in _UTF8 else fmt.encoding,
        delimiter=fmt.delimiter,
        fields=len(columns),
        final=final,
    )
    good, numbers, rejects = cleaned.body, cleaned.numbers, cleaned.rejects
    invalid: list[tuple[int, str, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text, _why(row)))
        return "skip"

    body = header + good
    table = pacsv.read_csv(
        io.BytesIO(body),
        # One block for the whole text: one Arrow chunk per column, which the checker
        # then uses without copying (it combines the chunks of a column otherwise).
        read_options=pacsv.ReadOptions(use_threads=False, block_size=len(body) + 1),
        parse_options=pacsv.ParseOptions(
            delimiter=fmt.delimiter,
            quote_char=fmt.quote_char or False,
            escape_char=fmt.escape_char or False,
            # Only a block with a record over lines (which _clean_lines checked) pays for it.
            newlines_in_values=cleaned.multiline,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            null_values=list(fmt.null_values),
            strings_can_be_null=True,
        ),
    )
    if invalid:
        # pyarrow numbers non-blank rows from 1 (the header): row n is numbers[n - 2].
        dropped = np.zeros(len(numbers), dtype=bool)
        for number, text, reason in invalid:
            at = number - 2
            line = int(numbers[at]) if 0 <= at < len(numbers) else None
            rejects.append(Reject(locator, line, reason, text))
            if 0 <= at < len(numbers):
                dropped[at] = True
        numbers = numbers[~dropped]
    return Chunk(table, locator, numbers[: table.num_rows], rejects), cleaned


def _why(row) -> str:
    return f"malformed row: expected {row.expected_columns} fields, got {row.actual_columns}"


def read_csv_file(path: Path) -> Iterator[Chunk]:
    """Yield the rows of the CSV file at `path` as text chunks."""
    with path.open("rb") as fh:
        yield from read_csv_chunks(fh, str(path))


#: A \u escape in the surrogate range: a pair of them is one character (an emoji), one
#: alone is no character and fails every UTF-8 write (the whole batch, before).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: object) -> bool:
    """True when a string of the parsed JSON `value` holds a lone surrogate."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_jsonl(stream: BinaryIO, locator: str, fields: tuple[str, ...]) -> Chunk:
    """Return the records of a JSON-lines stream (one object per line) as one text chunk."""
    data = read_all(stream, locator)
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        # Its BOM says what it is: read as UTF-8 line by line, every line would be broken.
        try:
            data = data.decode("utf-16").encode("utf-8", errors="surrogateescape")
        except UnicodeDecodeError as exc:
            raise LoadError(
                f"{locator}: cannot be read: it starts with a UTF-16 byte order mark but "
                f"is not UTF-16 (byte {exc.start}: {exc.reason})"
            ) from exc
    if not data.strip():
        what = "empty file (0 bytes)" if not data else "no records (only blank lines)"
        return _empty(locator, f"{locator}: {what}, no rows read")
    cleaned = _clean_lines(data, 1, locator)
    good, numbers, rejects = cleaned.body, cleaned.numbers, cleaned.rejects
    schema = pa.schema([(f, pa.string()) for f in fields])
    try:
        if _may_nest_deeper(good, MAX_JSON_DEPTH):
            # pyarrow's parser recurses without a bound (a line nested 100,000 deep ends
            # the process with SIGSEGV): such blocks go line by line, where depth is checked.
            raise pa.ArrowInvalid("deeply nested")
        table = pajson.read_json(
            io.BytesIO(good),
            # Files are small: a thread pool per file costs more than it saves.
            read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(good), 1 << 20)),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="infer"
            ),
        )
        if table.num_rows == len(numbers):
            return Chunk(_as_text(table), locator, numbers, rejects, structured=_structured(table))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # a bad line or a value of another type: sort it out line by line
    records: list[dict] = []
    kept: list[int] = []
    lines = [x for x in good.split(b"\n") if x.strip(b"\r")]
    for number, line in zip(numbers.tolist(), lines, strict=True):
        payload = line.decode("utf-8", errors="backslashreplace")
        try:
            value = _loads(line)
        except json.JSONDecodeError as exc:
            reason = f"malformed JSON: {exc.msg} at column {exc.colno}"
            rejects.append(Reject(locator, number, reason, _capped(payload)))
            continue
        except _DuplicateKey as exc:
            reason = f"malformed JSON: key {exc.args[0]!r} appears more than once in the object"
            rejects.append(Reject(locator, number, reason, payload))
            continue
        except (_TooDeep, RecursionError):
            reason = f"malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep"
            rejects.append(Reject(locator, number, reason, _capped(payload)))
            continue
        if not isinstance(value, dict):
            reason = f"malformed JSON: a {type(value).__name__}, not an object"
            rejects.append(Reject(locator, number, reason, payload))
            continue
        if _SURROGATE_ESCAPE.search(line) and _lone_surrogate(value):
            reason = (
                "malformed JSON: a \\u escape of half a character (a lone UTF-16 "
                "surrogate, \\ud800-\\udfff), which no text can hold"
            )
            rejects.append(Reject(locator, number, reason, payload))
            continue
        records.append(value)
        kept.append(number)
    chunk = Chunk.from_records(records, locator, np.asarray(kept, dtype=np.int64))
    chunk.rejects = rejects
    return chunk


#: Deepest nesting of arrays and objects a JSON record may have (events hold a few).
MAX_JSON_DEPTH = 64
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def _may_nest_deeper(data: bytes, limit: int) -> bool:
    """True when some line of `data` may nest arrays or objects deeper than `limit`.

    Counts brackets without parsing (one vectorized pass), so brackets inside strings
    count too: a false alarm only sends the block to the exact line-by-line path.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = np.cumsum(_OPEN[np.frombuffer(data, dtype=np.uint8)], dtype=np.int64)
    return bool(depth.max() > limit or depth.min() < -limit)


class _DuplicateKey(ValueError):
    pass


class _TooDeep(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _loads(line: bytes) -> object:
    """Parse one JSON line: a repeated key or nesting past MAX_JSON_DEPTH is an error."""
    if _may_nest_deeper(line, MAX_JSON_DEPTH):
        depth = deepest = 0
        in_str = esc = False
        for ch in line.decode("utf-8", errors="replace"):  # exact depth, strings skipped
            if in_str:
                esc, in_str = (not esc and ch == "\\"), in_str and (esc or ch != '"')
            elif ch == '"':
                in_str = True
            elif ch in "[{":
                depth += 1
                deepest = max(deepest, depth)
            elif ch in "]}":
                depth -= 1
        if deepest > MAX_JSON_DEPTH:
            raise _TooDeep(deepest)
    return json.loads(line, object_pairs_hook=_unique_keys)


def _capped(payload: str, limit: int = 10_000) -> str:
    """Return `payload` cut to `limit` characters (a quarantined 10 MB line helps nobody)."""
    return payload if len(payload) <= limit else payload[:limit] + f"... ({len(payload):,} chars)"


def read_all(stream: BinaryIO, locator: str) -> bytes:
    """Return the bytes of `stream`; a compressed file that is broken is a LoadError."""
    return _guarded(stream.read, locator)


def _guarded(read, locator: str, *args: int) -> bytes:
    import gzip
    import lzma
    import zlib

    try:
        return read(*args)
    except (gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise LoadError(f"{locator}: cannot be read: {_why_unreadable(exc)}") from exc
    except UnicodeError as exc:
        # A transcoding stream that cannot even start (UTF-16 without its BOM).
        raise LoadError(f"{locator}: cannot be read: {exc} (see format.encoding)") from exc


def _why_unreadable(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the compressed file is truncated (it ends before its end-of-stream marker)"
    text = str(exc) or type(exc).__name__
    if "Not a gzipped file" in text:
        return f"not a gzip file ({text}); the name ends in .gz"
    return text


def _structured(table: pa.Table) -> dict[str, np.ndarray] | None:
    """Return Chunk.structured of `table`: the rows of its nested and boolean columns."""
    out = {
        name: column.is_valid().to_numpy(zero_copy_only=False)
        for name, column in zip(table.column_names, table.columns, strict=True)
        if pa.types.is_nested(column.type) or pa.types.is_boolean(column.type)
    }
    return {k: v for k, v in out.items() if v.any()} or None


def _as_text(table: pa.Table) -> pa.Table:
    """Return `table` with every column as strings (nested values as JSON)."""
    cols = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type):
            cols[name] = column
        elif pa.types.is_null(column.type):
            cols[name] = pa.nulls(table.num_rows, pa.string())
        elif pa.types.is_nested(column.type) or pa.types.is_boolean(column.type):
            cols[name] = pa.array(
                [
                    None if v is None else json.dumps(v, ensure_ascii=False)
                    for v in column.to_pylist()
                ],
                type=pa.string(),
            )
        elif pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            # pandas writes nanoseconds; their nine-digit fraction is not a timestamp the
            # mapping reads (nor PostgreSQL keeps): microseconds, as every other unit is.
            micro = pa.timestamp("us", tz=column.type.tz)
            cols[name] = column.cast(micro, safe=False).cast(pa.string())
        else:
            cols[name] = column.cast(pa.string())
    return pa.table(cols)


#: Rows per chunk of a Parquet file (its row groups are re-batched to this size).
PARQUET_BATCH_ROWS = 100_000


def read_parquet_chunks(stream: BinaryIO, locator: str) -> Iterator[Chunk]:
    """Yield the rows of a Parquet stream as text chunks (every column as strings)."""
    import pyarrow.parquet as pq

    done = 0
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LoadError(f"{locator}: cannot be read as Parquet: {exc}") from exc
    # Parquet allows two columns of one name; a mapping could not tell them apart.
    _check_header(parquet.schema_arrow.names, locator)
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        table = pa.Table.from_batches([batch])
        lines = np.arange(done + 1, done + 1 + table.num_rows, dtype=np.int64)
        done += table.num_rows
        table, rejects, lines = _without_broken_bytes(table, locator, lines)
        yield Chunk(_as_text(table), locator, lines, rejects)


def _without_broken_bytes(
    table: pa.Table, locator: str, lines: np.ndarray
) -> tuple[pa.Table, list[Reject], np.ndarray]:
    """Return `table` with its binary columns as text, the rows whose bytes are not UTF-8
    taken out as rejects (a cast of the column failed the whole file: "Invalid UTF8
    payload", naming nothing)."""
    bad = np.zeros(table.num_rows, dtype=bool)
    reasons: dict[int, list[str]] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            continue
        try:
            table = table.set_column(table.column_names.index(name), name, column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        texts = []
        for i, value in enumerate(column.to_pylist()):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                texts.append(None)
                bad[i] = True
                reasons.setdefault(i, []).append(
                    f"{name}: not valid UTF-8 text (byte {exc.start}: {value[:40]!r})"
                )
        table = table.set_column(table.column_names.index(name), name, pa.array(texts, pa.string()))
    if not bad.any():
        return table, [], lines
    rejects = [
        Reject(locator, int(lines[i]), "; ".join(reasons[i]), _capped(json.dumps(row, default=str)))
        for i, row in zip(
            np.flatnonzero(bad).tolist(),
            table.filter(pa.array(bad)).to_pylist(),
            strict=True,
        )
    ]
    keep = pa.array(~bad)
    return table.filter(keep), rejects, lines[~bad]


#: Rows per chunk of an Excel sheet.
EXCEL_BATCH_ROWS = 50_000


def _cell_text(value: object, decimal: str = ".") -> str | None:
    """Return an Excel cell's value as the text a CSV export of it would hold.

    Date cells are ISO text (naive: read in the mapping's zone, no ``format`` needed);
    whole numbers lose the ``.0`` a float would print (a customer id 13085 stays 13085);
    other numbers are written with the sheet's `decimal` separator, as its text cells are
    (a German sheet mixes "10,50" typed as text with 10.5 typed as a number: read with
    ``thousands_separator: "."`` the number's "10.5" was 105).
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value).replace(".", decimal)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def read_excel_chunks(
    stream: BinaryIO,
    locator: str,
    fmt: CsvFormat | None = None,
    rows_per_chunk: int = EXCEL_BATCH_ROWS,
) -> Iterator[Chunk]:
    """Yield the rows of one sheet of an Excel workbook (.xlsx, .xlsm) as text chunks.

    openpyxl's read-only mode streams the sheet's XML, so memory stays bounded by the
    chunk, not the sheet. Row numbers are the sheet's own (what Excel shows). `fmt`
    gives the sheet, the rows above the header, the header or column names and the
    null markers.
    """
    from zipfile import BadZipFile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    fmt = fmt or CsvFormat()
    try:
        book = load_workbook(stream, read_only=True, data_only=True)
    except (BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as exc:
        raise LoadError(f"{locator}: cannot be read as an Excel workbook (.xlsx): {exc}") from exc
    try:
        yield from _sheet_chunks(book, locator, fmt, rows_per_chunk)
    finally:
        book.close()


#: ``format.sheet`` reading every sheet of a workbook (one of the same columns each).
ALL_SHEETS = "all"


def _sheets(book, locator: str, fmt: CsvFormat) -> tuple[list, list[str]]:
    """Return the sheets `fmt` names, and a warning when the default (the first sheet)
    leaves others unread: Online Retail II is two sheets, a year each."""
    names = book.sheetnames
    if fmt.sheet is None:
        warnings = []
        if len(names) > 1:
            others = ", ".join(repr(n) for n in names[1:])
            warnings.append(
                f"{locator}: read its first sheet {names[0]!r} only; it also has {others} "
                f"(format.sheet: {ALL_SHEETS} reads every sheet, or name the one to read)"
            )
        return [book.worksheets[0]], warnings
    wanted = fmt.sheet if isinstance(fmt.sheet, list) else [fmt.sheet]
    if wanted == [ALL_SHEETS] and ALL_SHEETS not in names:
        return list(book.worksheets), []
    sheets = []
    for one in wanted:
        if isinstance(one, int):
            if not 0 <= one < len(names):
                raise LoadError(
                    f"{locator}: sheet {one} does not exist: the workbook has "
                    f"{len(names)} sheet(s) ({', '.join(names)}; counted from 0)"
                )
            sheets.append(book.worksheets[one])
        elif one in names:
            sheets.append(book[one])
        else:
            raise LoadError(f"{locator}: no sheet named {one!r} (sheets: {', '.join(names)})")
    return sheets, []


def _sheet_chunks(book, locator: str, fmt: CsvFormat, rows_per_chunk: int) -> Iterator[Chunk]:
    sheets, warnings = _sheets(book, locator, fmt)
    first: tuple[str, list[str]] | None = None
    for sheet in sheets:
        # Rows are numbered per sheet, as Excel shows them: with several sheets, a row is
        # located by its sheet too (the source of its rows and quarantine).
        where = locator if len(sheets) == 1 else f"{locator}[{sheet.title}]"
        for chunk in _one_sheet_chunks(sheet, where, fmt, rows_per_chunk):
            if first is None and chunk.table.num_columns:
                first = (sheet.title, chunk.table.column_names)
            elif chunk.table.num_columns and chunk.table.column_names != first[1]:
                raise LoadError(
                    f"{locator}: sheet {sheet.title!r} has other columns than sheet "
                    f"{first[0]!r} ({', '.join(chunk.table.column_names)} against "
                    f"{', '.join(first[1])}): name the sheets to read with format.sheet"
                )
            chunk.warnings = warnings + chunk.warnings
            warnings = []
            yield chunk


def _one_sheet_chunks(sheet, locator: str, fmt: CsvFormat, rows_per_chunk: int) -> Iterator[Chunk]:
    rows = sheet.iter_rows(values_only=True)
    number = 0
    for _ in range(fmt.skip_rows):
        next(rows, None)
        number += 1
    if fmt.header:
        first = next(rows, None)
        number += 1
        header = [_cell_text(v) for v in first or ()]
        while header and not (header[-1] or "").strip():
            header.pop()  # formatted but empty columns at the right
        if not header:
            yield _empty(
                locator, f"{locator}: sheet {sheet.title!r} has no header row, no rows read"
            )
            return
        columns = [(c or "").strip() for c in header]
        _check_header(columns, locator)
    else:
        assert fmt.column_names, "the sources file validation requires column_names"
        columns = list(fmt.column_names)
    width = len(columns)
    nulls = set(fmt.null_values)
    values: list[list[str | None]] = [[] for _ in columns]
    lines: list[int] = []
    rejects: list[Reject] = []

    def chunk() -> Chunk:
        table = pa.table(
            {c: pa.array(v, pa.string()) for c, v in zip(columns, values, strict=True)}
        )
        out = Chunk(table, locator, np.array(lines, dtype=np.int64), list(rejects))
        for column in values:
            column.clear()
        lines.clear()
        rejects.clear()
        return out

    for row in rows:
        number += 1
        texts = [_cell_text(v, fmt.decimal_separator) for v in row]
        while texts and (texts[-1] is None or texts[-1] == ""):
            texts.pop()
        if not texts:
            continue  # a blank row, as a blank line of a CSV file
        if len(texts) > width:
            rejects.append(
                Reject(
                    locator,
                    number,
                    f"malformed row: expected {width} fields, got {len(texts)}",
                    "\t".join(t or "" for t in texts),
                )
            )
            continue
        texts += [None] * (width - len(texts))
        for column, text in zip(values, texts, strict=True):
            column.append(None if text is None or text in nulls else text)
        lines.append(number)
        if len(lines) >= rows_per_chunk:
            yield chunk()
    yield chunk()
