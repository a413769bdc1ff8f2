"""Readers that turn CSV and JSON-lines bytes into text chunks for the loader.

Parsing is pyarrow's (C++, fast); what pyarrow cannot take becomes a
:class:`~lifecycle.load.Reject` with a readable reason instead of failing the file:
lines that are not valid UTF-8, rows with the wrong number of fields or broken
quoting, lines that are not JSON objects. Every value stays text here; typing and
checks are the loader's (``lifecycle.load``), so one set of rules serves every source.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from lifecycle.load import Chunk, Reject, frame_from_records

BLOCK_BYTES = 8 << 20


def _odd_quote_lines(data: bytes, n_lines: int) -> np.ndarray:
    """Return a mask of the lines of `data` with an odd number of double quotes."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(ends) < n_lines:
        ends = np.append(ends, len(arr))
    ends = ends[:n_lines]
    starts = np.concatenate(([0], ends[:-1] + 1))
    quotes = np.concatenate(([0], np.cumsum(arr == 34, dtype=np.int64)))
    return (quotes[ends] - quotes[starts]) % 2 == 1


def _clean_lines(
    data: bytes, first_line: int, locator: str, csv_quotes: bool = False
) -> tuple[bytes, list[int], list[Reject]]:
    """Return (the usable lines of `data`, their line numbers, rejects for the rest).

    A line is unusable when it is not valid UTF-8, or (`csv_quotes`) when it has an
    unbalanced double quote: records are one per line, and a stray quote must not
    swallow the lines after it. Fast path: the whole block is fine. Line numbers are
    those of non-empty lines, as pyarrow counts rows.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    try:
        data.decode("utf-8")
        utf8_ok = True
    except UnicodeDecodeError:
        utf8_ok = False
    odd = _odd_quote_lines(data, len(lines)) if csv_quotes and b'"' in data else None
    if utf8_ok and (odd is None or not odd.any()):
        numbers = [first_line + i for i, line in enumerate(lines) if line.strip(b"\r")]
        return data, numbers, []
    good: list[bytes] = []
    numbers: list[int] = []
    rejects: list[Reject] = []
    for i, line in enumerate(lines):
        reason = None
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = (
                f"broken encoding: byte 0x{line[exc.start]:02x} at position {exc.start} "
                "is not valid UTF-8"
            )
        if reason is None and odd is not None and odd[i]:
            reason = "malformed row: unbalanced double quote"
        if reason:
            payload = line.decode("utf-8", errors="backslashreplace")
            rejects.append(Reject(locator, first_line + i, reason, payload))
            continue
        good.append(line)
        if line.strip(b"\r"):
            numbers.append(first_line + i)
    return b"\n".join(good) + (b"\n" if good else b""), numbers, rejects


def _to_text_frame(table: pa.Table) -> pd.DataFrame:
    """Return an Arrow table as a frame of nullable strings (nested values as JSON)."""
    cols = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            cols[name] = column.to_pandas().astype("string")
        elif pa.types.is_null(column.type):
            cols[name] = pd.Series(pd.NA, index=range(table.num_rows), dtype="string")
        elif pa.types.is_nested(column.type):
            cols[name] = pd.Series(
                [
                    None if v is None else json.dumps(v, ensure_ascii=False)
                    for v in column.to_pylist()
                ],
                dtype="string",
            )
        elif pa.types.is_boolean(column.type):
            cols[name] = pd.Series(
                [None if v is None else ("true" if v else "false") for v in column.to_pylist()],
                dtype="string",
            )
        else:
            cols[name] = column.cast(pa.string()).to_pandas().astype("string")
    return pd.DataFrame(cols, index=range(table.num_rows))


def read_csv_chunks(
    stream: BinaryIO, locator: str, block_bytes: int = BLOCK_BYTES
) -> Iterator[Chunk]:
    """Yield the records of a CSV stream (header in the first line) as text chunks."""
    header = stream.readline()
    if not header.strip():
        return
    header_text = header.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    columns = next(csv.reader([header_text]))
    header = ",".join(f'"{c}"' for c in columns).encode() + b"\n"
    line = 2
    rest = b""
    while True:
        block = stream.read(block_bytes)
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
        yield _parse_csv_block(data, header, columns, line, locator)
        line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        if not block:
            break


def _parse_csv_block(
    data: bytes, header: bytes, columns: list[str], first_line: int, locator: str
) -> Chunk:
    good, numbers, rejects = _clean_lines(data, first_line, locator, csv_quotes=True)
    invalid: list[tuple[int, int, str, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text.count("\n") + 1, row.text, _why(row)))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(header + good),
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    # pyarrow numbers non-empty rows from 1 (the header); map them to file lines.
    rows = np.asarray(numbers, dtype=np.int64)
    dropped = np.zeros(len(rows), dtype=bool)
    for number, span, text, reason in invalid:
        start = number - 2  # index among data rows
        rejects.append(
            Reject(locator, int(rows[start]) if start < len(rows) else None, reason, text)
        )
        dropped[start : start + span] = True
    frame = _to_text_frame(table)
    frame["_source"] = locator
    frame["_line"] = rows[~dropped][: len(frame)]
    return Chunk(frame, rejects)


def _why(row) -> str:
    if row.actual_columns != row.expected_columns:
        return f"malformed row: expected {row.expected_columns} fields, got {row.actual_columns}"
    return "malformed row: broken quoting"


def read_jsonl(stream: BinaryIO, locator: str, fields: tuple[str, ...]) -> Chunk:
    """Return the records of a JSON-lines stream (one object per line) as one text chunk."""
    data = stream.read()
    good, numbers, rejects = _clean_lines(data, 1, locator)
    schema = pa.schema([(f, pa.string()) for f in fields])
    try:
        table = pajson.read_json(
            io.BytesIO(good),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="infer"
            ),
        )
        frame = _to_text_frame(table)
        frame["_source"] = locator
        frame["_line"] = np.asarray(numbers, dtype=np.int64)[: len(frame)]
        return Chunk(frame, rejects)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # a bad line or a value of another type: sort it out line by line
    records: list[dict] = []
    lines: list[int] = []
    for number, line in zip(
        numbers, (x for x in good.split(b"\n") if x.strip(b"\r")), strict=False
    ):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rejects.append(
                Reject(
                    locator,
                    number,
                    f"malformed JSON: {exc.msg} at column {exc.colno}",
                    line.decode("utf-8", errors="backslashreplace"),
                )
            )
            continue
        if not isinstance(value, dict):
            rejects.append(
                Reject(
                    locator,
                    number,
                    f"malformed JSON: a {type(value).__name__}, not an object",
                    line.decode("utf-8", errors="backslashreplace"),
                )
            )
            continue
        records.append(value)
        lines.append(number)
    frame = frame_from_records(records, locator)
    for f in fields:
        if f not in frame:
            frame[f] = pd.Series(pd.NA, index=frame.index, dtype="string")
    frame["_line"] = np.asarray(lines, dtype=np.int64)
    return Chunk(frame, rejects)


def read_csv_file(path: Path) -> Iterator[Chunk]:
    """Yield the rows of the CSV file at `path` as text chunks."""
    with path.open("rb") as fh:
        yield from read_csv_chunks(fh, str(path))
