"""Vectorized text rendering for the sample world: timestamps, money, ids, CSV and JSON lines.

Everything here turns numpy arrays into Arrow string arrays without a per-row Python loop:
fixed-width fields (timestamps, dates, UUIDs, zero-padded ids) are written digit by digit into a
``uint8`` matrix and reinterpreted as an Arrow fixed-size binary array; variable-width fields use
Arrow casts and ``binary_join_element_wise``. A rendered line array ends every line with ``\\n``,
so the file body is a zero-copy slice of the array's data buffer (:func:`body`).

Also here: the id scramblers (bijections on ``[0, 10**digits)``) and the per-person hash used for
the few attributes another chunk must be able to compute (see ``people.py``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SECONDS_PER_DAY = 86_400
_ZERO = ord("0")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------- hashing / ids


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Return the splitmix64 finalizer of ``x`` (uint64), a well-mixed 64-bit hash."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, salt: int, idx: np.ndarray) -> np.ndarray:
    """Return a uniform [0, 1) float per index that depends only on (seed, salt, index)."""
    key = splitmix64(np.array([seed * 1_000_003 + salt], dtype=np.uint64))[0]
    h = splitmix64(idx.astype(np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permute(x: np.ndarray, digits: int, key: int) -> np.ndarray:
    """Return a keyed bijection of ``x`` onto ``[0, 10**digits)`` (cycle-walking mixer)."""
    m = 10**digits
    bits = max(2, (m - 1).bit_length())
    mask = np.uint64((1 << bits) - 1)
    half = np.uint64(bits // 2 + 1)
    k1 = np.uint64((splitmix64(np.array([key], dtype=np.uint64))[0] | np.uint64(1)) & mask)
    k2 = np.uint64(int(splitmix64(np.array([key + 1], dtype=np.uint64))[0]) & ((1 << bits) - 1))
    odd = np.uint64(0x2545F4914F6CDD1D)

    def mix(v: np.ndarray) -> np.ndarray:
        v = (v * k1) & mask
        v ^= v >> half
        v = (v + k2) & mask
        v = (v * odd) & mask
        v ^= v >> half
        return v

    out = mix(x.astype(np.uint64))
    todo = np.flatnonzero(out >= np.uint64(m))
    while todo.size:
        out[todo] = mix(out[todo])
        todo = todo[out[todo] >= np.uint64(m)]
    return out.astype(np.int64)


# --------------------------------------------------------------------------- fixed width


def _fixed(buf: np.ndarray) -> pa.Array:
    """Return the rows of a ``(n, width)`` uint8 matrix as an Arrow string array."""
    n, width = buf.shape
    buf = np.ascontiguousarray(buf)
    arr = pa.Array.from_buffers(pa.binary(width), n, [None, pa.py_buffer(buf)])
    return arr.cast(pa.string())


def _put(buf: np.ndarray, col: int, value: np.ndarray, width: int) -> None:
    """Write ``value`` as ``width`` zero-padded decimal digits into ``buf[:, col:col+width]``."""
    v = value.astype(np.int64)
    for k in range(width):
        buf[:, col + width - 1 - k] = _ZERO + (v % 10)
        v = v // 10


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (year, month, day) arrays for days since 1970-01-01."""
    d64 = days.astype("datetime64[D]")
    months = d64.astype("datetime64[M]")
    year = months.astype(np.int64) // 12 + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (d64 - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day


def timestamps(epoch_s: np.ndarray) -> pa.Array:
    """Return ISO-8601 UTC strings ``YYYY-MM-DDTHH:MM:SSZ`` for epoch seconds."""
    t = np.asarray(epoch_s, dtype=np.int64)
    days, sec = np.divmod(t, SECONDS_PER_DAY)
    year, month, day = _civil(days)
    buf = np.empty((t.size, 20), dtype=np.uint8)
    buf[:] = np.frombuffer(b"0000-00-00T00:00:00Z", dtype=np.uint8)
    _put(buf, 0, year, 4)
    _put(buf, 5, month, 2)
    _put(buf, 8, day, 2)
    _put(buf, 11, sec // 3600, 2)
    _put(buf, 14, (sec // 60) % 60, 2)
    _put(buf, 17, sec % 60, 2)
    return _fixed(buf)


def dates(epoch_days: np.ndarray) -> pa.Array:
    """Return ``YYYY-MM-DD`` strings for days since 1970-01-01."""
    d = np.asarray(epoch_days, dtype=np.int64)
    year, month, day = _civil(d)
    buf = np.empty((d.size, 10), dtype=np.uint8)
    buf[:] = np.frombuffer(b"0000-00-00", dtype=np.uint8)
    _put(buf, 0, year, 4)
    _put(buf, 5, month, 2)
    _put(buf, 8, day, 2)
    return _fixed(buf)


def prefixed(prefix: str, values: np.ndarray, width: int) -> pa.Array:
    """Return ``prefix`` + zero-padded decimal ``values`` (e.g. ``C00012345``)."""
    v = np.asarray(values, dtype=np.int64)
    p = prefix.encode("ascii")
    buf = np.empty((v.size, len(p) + width), dtype=np.uint8)
    buf[:, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    _put(buf, len(p), v, width)
    return _fixed(buf)


def uuids(hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """Return canonical lower-case UUID strings for 128-bit values split in two uint64 halves."""
    n = hi.size
    raw = np.empty((n, 2), dtype=">u8")
    raw[:, 0] = hi
    raw[:, 1] = lo
    b = raw.view(np.uint8).reshape(n, 16)
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[b >> 4]
    hexed[:, 1::2] = _HEX[b & 15]
    buf = np.full((n, 36), ord("-"), dtype=np.uint8)
    buf[:, 0:8] = hexed[:, 0:8]
    buf[:, 9:13] = hexed[:, 8:12]
    buf[:, 14:18] = hexed[:, 12:16]
    buf[:, 19:23] = hexed[:, 16:20]
    buf[:, 24:36] = hexed[:, 20:32]
    return _fixed(buf)


def random_uuid_halves(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (hi, lo) uint64 halves of ``n`` random version-4 UUIDs."""
    hi = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    lo = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    hi = (hi & np.uint64(0xFFFFFFFFFFFF0FFF)) | np.uint64(0x4000)
    lo = (lo & np.uint64(0x3FFFFFFFFFFFFFFF)) | np.uint64(0x8000000000000000)
    return hi, lo


# --------------------------------------------------------------------------- variable width


def integers(values: np.ndarray) -> pa.Array:
    """Return decimal strings of integers."""
    return pa.array(np.asarray(values, dtype=np.int64)).cast(pa.string())


def fixed_point(scaled: np.ndarray, decimals: int) -> pa.Array:
    """Return decimal strings of ``scaled / 10**decimals`` with exactly ``decimals`` places."""
    v = np.asarray(scaled, dtype=np.int64)
    neg = v < 0
    whole, frac = np.divmod(np.abs(v), 10**decimals)
    buf = np.empty((v.size, decimals), dtype=np.uint8)
    _put(buf, 0, frac, decimals)
    body = concat(integers(whole), ".", _fixed(buf))
    if neg.any():
        body = pc.if_else(pa.array(neg), concat("-", body), body)
    return body


def take(table: pa.Array, index: np.ndarray) -> pa.Array:
    """Return ``table[index]`` (a lookup of small string tables by code)."""
    return table.take(pa.array(np.asarray(index, dtype=np.int64)))


def concat(*parts: pa.Array | str) -> pa.Array:
    """Return the element-wise concatenation of string arrays and scalar strings."""
    return pc.binary_join_element_wise(*parts, "")


def where(mask: np.ndarray, yes: pa.Array | str, no: pa.Array | str) -> pa.Array:
    """Return ``yes`` where ``mask`` else ``no`` (element-wise)."""
    return pc.if_else(pa.array(np.asarray(mask, dtype=bool)), yes, no)


def csv_lines(columns: list[pa.Array]) -> pa.Array:
    """Return one ``\\n``-terminated CSV line per row (fields are never quoted: see README)."""
    return concat(pc.binary_join_element_wise(*columns, ","), "\n")


def line_offsets(lines: pa.Array) -> np.ndarray:
    """Return the byte offsets of each line in :func:`body` (length ``len(lines) + 1``)."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offs = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    offs = offs[lines.offset : lines.offset + len(lines) + 1].astype(np.int64)
    return offs - offs[0]


def body(lines: pa.Array) -> memoryview:
    """Return the concatenated bytes of a line array without copying."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offs = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, stop = int(offs[lines.offset]), int(offs[lines.offset + len(lines)])
    data = lines.buffers()[2]
    if data is None:
        return memoryview(b"")
    return memoryview(data)[start:stop]


def string_table(values: list[str]) -> pa.Array:
    """Return a small lookup table of strings as an Arrow array."""
    return pa.array(values, type=pa.string())
