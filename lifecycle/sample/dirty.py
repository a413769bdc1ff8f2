"""Defect injection: which rows get a defect, and how a rendered line is broken.

Defects are decided per row from the block's own "dirty" random stream, so the clean content of
a world never depends on ``dirty_rate``. Field-level defects (``bad_type``, ``future_date``,
``negative_amount``) are applied to a column before the line is rendered; row-level defects
(``malformed_row``, ``duplicate``, ``bad_encoding``, ``malformed_json``) are applied to the
rendered line by :func:`splice`, which also numbers the lines and records every defect.

Every defect stays on its own line: quotes are always balanced within a line, so a loader that
reads line by line can quarantine exactly the listed line and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lifecycle.sample.text import body, line_offsets

KINDS = (
    "malformed_row",
    "bad_type",
    "duplicate",
    "future_date",
    "negative_amount",
    "bad_encoding",
    "malformed_json",
)
(MALFORMED_ROW, BAD_TYPE, DUPLICATE, FUTURE_DATE, NEGATIVE_AMOUNT, BAD_ENCODING, MALFORMED_JSON) = (
    range(7)
)
CONTACT_KINDS = (MALFORMED_ROW, BAD_TYPE, DUPLICATE, FUTURE_DATE, BAD_ENCODING)
ORDER_KINDS = (MALFORMED_ROW, BAD_TYPE, DUPLICATE, FUTURE_DATE, NEGATIVE_AMOUNT)
ITEM_KINDS = (MALFORMED_ROW, BAD_TYPE, DUPLICATE, NEGATIVE_AMOUNT)
EVENT_KINDS = (MALFORMED_JSON, BAD_TYPE, FUTURE_DATE, BAD_ENCODING)
NONE = -1


@dataclass(frozen=True)
class Defect:
    """One injected defect: the row in dirty.csv."""

    file: str
    locator: str
    kind: str
    detail: str


def decide(
    rng: np.random.Generator | None, n: int, rate: float, kinds: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (defect kind code or -1, uniform argument) for ``n`` rows at ``rate``."""
    if rng is None or rate <= 0:
        return np.full(n, NONE, np.int8), np.zeros(n)
    hit = rng.random(n) < rate
    kind = np.asarray(kinds, dtype=np.int8)[rng.integers(0, len(kinds), n)]
    return np.where(hit, kind, NONE).astype(np.int8), rng.random(n)


def broken_bytes(value: str) -> bytes:
    """Return ``value`` encoded so that it is not valid UTF-8 (mojibake or a cut sequence)."""
    if value.isascii():
        return value.encode("ascii") + b"\xe9"
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
        first_multi = next(i for i, ch in enumerate(value) if not ch.isascii())
        cut = len(value[:first_multi].encode("utf-8")) + len(value[first_multi].encode("utf-8"))
        return raw[: cut - 1] + raw[cut:]


def _malformed_csv(text: str, arg: float, header: tuple[str, ...]) -> tuple[str, str]:
    """Return a line with a wrong column count (still balanced quotes) and a description."""
    fields = text.split(",")
    if arg < 1 / 3:
        return ",".join(fields[:-2]), f"truncated: {len(fields) - 2} of {len(header)} columns"
    if arg < 2 / 3:
        return text + ",unexpected", f"extra column: {len(fields) + 1} of {len(header)} columns"
    j = 1
    merged = fields[:j] + [f'"{fields[j]},{fields[j + 1]}"'] + fields[j + 2 :]
    return ",".join(merged), f"quoted comma merges {header[j]} and {header[j + 1]}"


def splice(
    lines: pa.Array,
    defect: np.ndarray,
    arg: np.ndarray,
    *,
    file: str,
    first_line: int,
    key_name: str,
    keys: dict[int, str],
    header: tuple[str, ...],
    field_details: dict[int, str],
) -> tuple[list[bytes | memoryview], list[Defect], int]:
    """Return (file pieces, defects, lines written) for rendered lines with defects applied.

    ``keys`` maps each row with a defect to its key (e.g. the order id); ``first_line`` is
    the line number of the first row in the file (1-based, header = line 1 for CSV).
    """
    data = body(lines)
    rows = np.flatnonzero(defect >= 0)
    if rows.size == 0:
        return [data], [], len(lines)
    offs = line_offsets(lines)
    pieces: list[bytes | memoryview] = []
    found: list[Defect] = []
    prev, extra = 0, 0
    for r in rows.tolist():
        pieces.append(data[offs[prev] : offs[r]])
        line_no = first_line + r + extra
        kind = int(defect[r])
        raw = bytes(data[offs[r] : offs[r + 1]])
        text = raw[:-1].decode("utf-8")
        key = keys.get(r, "")
        if kind == DUPLICATE:
            pieces += [raw, raw]
            extra += 1
            line_no += 1
            detail = f"exact copy of line {line_no - 1}"
        elif kind == MALFORMED_ROW:
            broken, detail = _malformed_csv(text, float(arg[r]), header)
            pieces.append(broken.encode("utf-8") + b"\n")
        elif kind == BAD_ENCODING and header:
            fields = text.split(",")
            col = 2 if arg[r] < 0.5 else 3
            value = fields[col]
            out = [f.encode("utf-8") for f in fields]
            out[col] = broken_bytes(value)
            pieces.append(b",".join(out) + b"\n")
            detail = f"invalid UTF-8 in {header[col]}"
        elif kind == BAD_ENCODING:
            marker = b'"page_url":"https://shop.example.com'
            pieces.append(raw.replace(marker, marker + b"/caf\xe9", 1))
            detail = "invalid UTF-8 byte 0xE9 in page_url"
        elif kind == MALFORMED_JSON:
            cut = int(np.clip(arg[r] * len(raw), 10, len(raw) - 5))
            pieces.append(raw[:cut] + b"\n")
            detail = f"line truncated after {cut} bytes"
        else:
            pieces.append(raw)
            detail = field_details.get(r, "")
        locator = f"line={line_no};{key_name}={key}" if key else f"line={line_no}"
        found.append(Defect(file, locator, KINDS[kind], detail))
        prev = r + 1
    pieces.append(data[offs[prev] : offs[len(lines)]])
    return pieces, found, len(lines) + extra
