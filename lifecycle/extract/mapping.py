"""The mapping step: source records, under their own names, to contract fields as text.

It sits between a connector and the loader's checker (:class:`lifecycle.parse.Checker`)
and does what the sources file (:mod:`lifecycle.sources_file`) says, vectorized with
pyarrow compute kernels:

* each contract field takes a source column (renamed), a constant, a concatenation or a
  product of columns, or the first non-empty of several columns; an unmapped field takes
  the source column of its own name;
* ``values`` recodes words (``paid`` -> ``completed``; case and surrounding spaces do not
  matter), ``default`` takes the rest;
* numbers lose their thousands separator and take ``.`` for a decimal comma; ``scale``
  multiplies (cents);
* dates and times are read in their ``format`` (strptime, ``iso``, ``epoch_s``,
  ``epoch_ms``, ``epoch_days`` (from an ``origin``), ``excel_serial``; without one,
  ISO-8601 forms and plain dates), naive ones
  in the source's time zone (DST overlaps and gaps per ``ambiguous_time`` /
  ``nonexistent_time``), and written as ISO-8601 UTC text with ``Z``;
* refunds (negative amounts, marked rows, ``refund_of``) become ``refunded`` orders;
* ``grain: line`` sums order lines into one order per order id;
* unmapped source columns go to ``_extra`` per ``extra_columns``.

Its output is a :class:`Chunk` of string columns with contract names, exactly what the
checker takes, so quarantine, batches, windows and watermarks work unchanged. A value
that cannot be mapped is not dropped: the chunk carries the reason per row and field
(:attr:`Chunk.errors`: field, value and the expected format) and the checker
quarantines the row with it, showing the source record as read. An entity that needs
nothing of this (the built-in layout) passes through untouched.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lifecycle.load import LoadError
from lifecycle.parse import (
    ISO_DATE,
    Chunk,
    _cast,
    _empty_to_null,
    local_to_utc,
    not_an_id,
    utc_text,
)
from lifecycle.raw import Field, RawEntity
from lifecycle.sources_file import WHITESPACE, EntityMap, FieldMap, Source, SourcesFile

#: Rows per chunk of orders built from lines (they are emitted at the end of the batch).
LINE_ORDERS_PER_CHUNK = 100_000
#: Digits kept of computed numbers (products, scaled and summed amounts): enough for
#: ``numeric(14, 2)``, and no float noise such as 15.299999999999999 in the loaded text.
COMPUTED_DIGITS = 9
#: 1970-01-01 as an Excel serial day number (the 1900 date system, as Excel counts).
EXCEL_EPOCH_DAY = 25569

_ISO = (
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<time>\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?))?"
    r"\s*(?P<zone>Z|z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$"
)
_TEXT = pa.string()
_UTC = pa.timestamp("us", tz="UTC")


#: What a refunded version of an order takes from the order itself, when the batch has it.
_ORIGINAL = ("ordered_at", "customer_id", "email")


class MappingError(LoadError):
    """The sources file does not fit the data (a mapped column is not there)."""


def _null_text(n: int) -> pa.Array:
    return pa.nulls(n, _TEXT)


def _reasons(mask: pa.Array | np.ndarray, name: str, text: pa.Array, what: str) -> pa.Array | None:
    """Return ``name: 'value' what`` where `mask` holds, null elsewhere (None: nowhere)."""
    mask = pa.array(mask) if isinstance(mask, np.ndarray) else pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return None  # the usual case: no message is built
    return pc.if_else(mask, _message(name, text, what), pa.scalar(None, _TEXT))


def _quoted(text: pa.Array) -> pa.Array:
    """Return each value as Python's repr would show it ('...'), vectorized."""
    escaped = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), "'", "\\'")
    return pc.binary_join_element_wise("'", escaped, "'", "")


def _message(name: str, text: pa.Array, what: str) -> pa.Array:
    """Return ``name: 'value' what`` per row."""
    return pc.binary_join_element_wise(f"{name}: ", _quoted(text), f" {what}", "")


def _merge(a: pa.Array | None, b: pa.Array | None) -> pa.Array | None:
    """Return the reasons of `a` and `b` joined per row (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    joined = pc.binary_join_element_wise(a, b, "; ")
    return pc.coalesce(joined, a, b)


def number_text(values: pa.Array) -> pa.Array:
    """Return floats as text without float noise (rounded to COMPUTED_DIGITS)."""
    rounded = pc.round(values, COMPUTED_DIGITS)
    text = pc.cast(rounded, _TEXT)
    # Arrow writes a whole float as 15 or 15.0 depending on the version; both load.
    return pc.replace_substring_regex(text, r"\.0$", "")


#: What marks a number as written money: a currency sign, or accounting parentheses.
_MONEY_MARKS = r"\p{Sc}|^\(.*\)$"


def _written_as_money(text: pa.Array) -> bool:
    """True when any value of `text` carries a currency sign or accounting parentheses."""
    return bool(pc.any(pc.match_substring_regex(text, _MONEY_MARKS)).as_py())


#: Patterns of the strptime directives (to read the day of the month back, see
#: _strptime); a directive not listed matches any run of non-space characters.
_DIRECTIVE_PATTERNS = {
    "d": r"(?P<day>\d{1,2})",
    "e": r"\s?(?P<day>\d{1,2})",
    "z": r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)",
    "Y": r"\d{4}",
    "p": r"[AaPp][Mm]",
    "%": "%",
    # Bounded widths, as strptime reads them: with no separator between directives
    # (%Y%m%d) an unbounded \d+ would swallow the day's first digit.
    **dict.fromkeys("mHIMSyUW", r"\d{1,2}"),
    "j": r"(?P<yday>\d{1,3})",
    "f": r"\d{1,9}",
}


def _format_regex(fmt: str) -> str | None:
    """Return a regex of `fmt` naming the day of the month or of the year, or None when it
    names neither."""
    if "%d" not in fmt and "%e" not in fmt and "%j" not in fmt:
        return None
    out = ["^"]
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            d = fmt[i + 1]
            out.append(_DIRECTIVE_PATTERNS.get(d, r"\S+?"))
            i += 2
        else:
            out.append(r"\s+" if c.isspace() else re.escape(c))
            i += 1
    out.append("$")
    regex = "".join(out)
    # A format naming the day twice cannot name both groups the same.
    once = all(regex.count(f"(?P<{g}>") <= 1 for g in ("day", "yday", "offset"))
    return regex if once else None


def _strptime(text: pa.Array, fmt: str) -> pa.Array:
    """Return `text` parsed with the strptime format `fmt` (null where it does not match).

    Arrow's strptime rolls a day past the end of its month over (31.02.2024 reads as
    2 March; day 366 of 2023 as 1 February 2025); a value whose parsed day is not the
    day it says is not a date, so it is null here (the checker then quarantines it with
    the format).
    """
    parsed = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
    regex = _format_regex(fmt)
    if regex is None or not parsed.null_count < len(parsed):
        return parsed
    parts = pc.extract_regex(text, regex)
    local = parsed
    offset = minutes = None
    if parsed.type.tz is not None:
        offset = pc.struct_field(parts, "offset") if "(?P<offset>" in regex else None
        minutes = _offset_minutes(offset) if offset is not None else None
        micros = pc.cast(parsed.cast(pa.timestamp("us")), pa.int64())
        if minutes is not None:
            micros = pc.add(micros, pc.multiply(pc.cast(minutes, pa.int64()), 60_000_000))
        local = micros.cast(pa.timestamp("us"))
    wrong = pa.repeat(False, len(parsed))
    for group, of in (("day", pc.day), ("yday", pc.day_of_year)):
        if f"(?P<{group}>" in regex:
            said = _cast(pc.struct_field(parts, group), pa.int64())
            wrong = pc.or_(wrong, pc.fill_null(pc.not_equal(of(local), said), False))
    if minutes is not None:  # an offset of a day or more is no offset
        wrong = pc.or_(wrong, pc.and_(pc.is_valid(offset), pc.is_null(minutes)))
    if not pc.any(wrong).as_py():
        return parsed
    return pc.if_else(wrong, pa.scalar(None, parsed.type), parsed)


def _offset_minutes(zone: pa.Array) -> pa.Array:
    """Return UTC offsets (``Z``, ``UTC``, ``+05:30``, ``-0500``, ``+01``) in minutes."""
    offset = pc.replace_substring(zone, ":", "")
    named = pc.fill_null(pc.is_in(offset, pa.array(["Z", "z", "UTC", "GMT"])), False)
    hours = _cast(pc.utf8_slice_codeunits(offset, 1, 3), pa.int64())
    minutes = pc.fill_null(_cast(pc.utf8_slice_codeunits(offset, 3, 5), pa.int64()), 0)
    sign = pc.if_else(pc.starts_with(offset, "-"), -1, 1)
    total = pc.multiply(sign, pc.add(pc.multiply(hours, 60), minutes))
    # +25:00 or +05:75 is no offset (a clock's own runs from -12:00 to +14:00): null,
    # so the value is quarantined with the format it does not match
    real = pc.and_(pc.less_equal(hours, 23), pc.less_equal(minutes, 59))
    total = pc.if_else(real, total, pa.scalar(None, pa.int64()))
    return pc.if_else(named, 0, total)


def _json_path(table: pa.Table, path: str) -> pa.Array | None:
    """Return the values at the dotted `path` (``properties.email``) inside a column of
    JSON objects (how the readers keep nested values), or None when no column starts it.

    Per value in Python: nested records come from APIs and JSON lines, not bulk files.
    """
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        root = ".".join(parts[:cut])
        if root in table.column_names:
            break
    else:
        return None
    out = []
    for text in table.column(root).to_pylist():
        value = None
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(text) if text else None
        for part in parts[cut:]:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, str):
            value = (
                json.dumps(value, ensure_ascii=False)
                if isinstance(value, dict | list)
                else (("true" if value else "false") if isinstance(value, bool) else str(value))
            )
        out.append(value)
    return pa.array(out, _TEXT)


@dataclass
class _Fields:
    """The contract fields of one chunk, as text, with the reasons of what did not map."""

    n: int
    text: dict[str, pa.Array] = field(default_factory=dict)
    errors: dict[str, pa.Array] = field(default_factory=dict)

    def fail(self, name: str, reasons: pa.Array | None) -> None:
        if reasons is not None and reasons.null_count < len(reasons):
            self.errors[name] = _merge(self.errors.get(name), reasons)


class Mapper:
    """Maps the chunks of one entity's batch onto its contract."""

    def __init__(
        self, entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile
    ) -> None:
        self.entity = entity
        self.src = src
        self.emap = emap
        self.sources = sources
        self.fmt = sources.format_of(src, emap)
        self.where = f"sources.{entity.source}.entities.{entity.entity}"
        # (order_id, its _ORIGINAL fields) of the orders seen, for the refunds naming them
        self._placed: list[tuple[pa.Array, dict[str, pa.Array]]] = []
        #: order ids of refunds naming an order this batch does not hold (an order of an
        #: earlier day): the load places them as that order's (load.place_refunds)
        self.unplaced_refunds: set[str] = set()

    # ------------------------------------------------------------------ properties

    @property
    def timezone(self) -> str:
        """The zone of naive timestamps of this entity (where a plain date's midnight is)."""
        return self.sources.timezone_of(self.src, self.emap)

    @property
    def is_identity(self) -> bool:
        """True when source columns already carry contract names and nothing is recoded:
        no mapping, ISO numbers, naive times in UTC, amounts in the staging's default
        currency, every extra column kept."""
        return (
            not self.emap.columns
            and self.emap.refunds is None
            and self.emap.grain == "order"
            and self.emap.extra_columns == "all"
            and self.fmt.decimal_separator == "."
            and not self.fmt.thousands_separator
            and not self.fmt.true_values
            and not self.fmt.false_values
            and self.timezone == "UTC"
            and (
                "currency" not in self.entity.names
                or self.sources.currency_of(self.src, self.emap) == "USD"
            )
        )

    # --------------------------------------------------------------------- mapping

    def map_chunks(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Yield `chunks` mapped onto the contract."""
        if self.is_identity:
            yield from chunks
            return
        if self.emap.grain == "line":
            yield from self._orders_of_lines(chunks)
            return
        for chunk in chunks:
            yield self.map(chunk)

    def map(self, chunk: Chunk) -> Chunk:
        """Return one chunk mapped onto the contract (order grain)."""
        if not chunk.table.num_columns:
            return chunk  # every line was rejected: nothing to map, the rejects stay
        fields = self._fields(chunk)
        if self.emap.refunds is not None:
            self._refunds(chunk, fields, refunded=self._refunded(chunk, fields))
        table = self._table(fields, chunk)
        return Chunk(
            table,
            chunk.source,
            chunk.lines,
            chunk.rejects,
            chunk.sources,
            errors=fields.errors or None,
            originals=chunk.table,
            warnings=chunk.warnings,
        )

    def _table(self, fields: _Fields, chunk: Chunk) -> pa.Table:
        cols = dict(fields.text)
        for name in self._extra_names(chunk):
            cols[name] = chunk.table.column(name)
        return pa.table(cols)

    def _extra_names(self, chunk: Chunk) -> list[str]:
        """Return the source columns that go to _extra (unmapped, per extra_columns)."""
        names = chunk.table.column_names
        used = {c for fm in self.emap.columns.values() for c in fm.source_columns}
        used |= {c.split(".")[0] for c in used if c not in names}  # JSON paths use their root
        if self.emap.refunds is not None:
            used |= self.emap.refunds.source_columns
        contract = set(self.entity.names)
        if self.emap.extra_columns == "all":
            # A source column named like a contract field is that field (or, when the
            # field is mapped from another column, not kept: its name is taken).
            return [c for c in names if c not in used and c not in contract]
        missing = [c for c in self.emap.extra_columns if c not in names]
        if missing and chunk.table.num_columns:
            self._missing(chunk, "extra_columns", missing[0])
        return [c for c in self.emap.extra_columns if c in names and c not in contract]

    def _missing(self, chunk: Chunk, key: str, column: str) -> None:
        found = ", ".join(chunk.table.column_names) or "none"
        raise MappingError(
            f"{self.sources.origin}: {self.where}.{key}: column {column!r} is not in "
            f"{chunk.source} (columns: {found})"
        )

    def _column(self, chunk: Chunk, name: str, key: str) -> pa.Array:
        if name not in chunk.table.column_names:
            nested = _json_path(chunk.table, name)
            if nested is None:
                self._missing(chunk, key, name)
            return nested
        column = chunk.table.column(name).combine_chunks()
        if not pa.types.is_string(column.type):
            column = pc.cast(column, _TEXT)
        return column

    def _fields(self, chunk: Chunk) -> _Fields:
        """Return the contract fields of `chunk` as text, with what did not map."""
        n = chunk.table.num_rows
        out = _Fields(n)
        for f in self.entity.fields:
            fmap = self.emap.field_map(f.name)
            key = f"columns.{f.name}"
            if fmap is None:
                if f.name in chunk.table.column_names:
                    fmap = FieldMap(column=f.name)
                elif f.name == "currency":
                    currency = self.sources.currency_of(self.src, self.emap)
                    out.text[f.name] = pa.repeat(pa.scalar(currency, _TEXT), n)
                    continue
                else:
                    if f.required and chunk.table.num_columns:
                        found = ", ".join(chunk.table.column_names) or "none"
                        raise MappingError(
                            f"{self.sources.origin}: {self.where}.columns: required field "
                            f"{f.name} is not mapped and {chunk.source} has no column "
                            f"{f.name!r} (columns: {found})"
                        )
                    continue
            text, errors = self._value(f, fmap, chunk, key)
            out.text[f.name] = text
            out.fail(f.name, errors)
            if f.identifier and chunk.structured:
                out.fail(f.name, self._json_ids(f.name, fmap, chunk))
        return out

    def _json_ids(self, name: str, fmap: FieldMap, chunk: Chunk) -> pa.Array | None:
        """Return reasons for the rows whose id comes from a JSON array, object or boolean."""
        assert chunk.structured is not None
        reasons = None
        for column in fmap.source_columns:
            mask = chunk.structured.get(column)
            if mask is not None:
                text = chunk.table.column(column)
                said: list[str | None] = [None] * len(mask)
                for i in np.flatnonzero(mask).tolist():  # the few rows that hold one
                    said[i] = not_an_id(name, text[i].as_py())
                reasons = _merge(reasons, pa.array(said, _TEXT))
        return reasons

    def _value(
        self, f: Field, fmap: FieldMap, chunk: Chunk, key: str
    ) -> tuple[pa.Array, pa.Array | None]:
        """Return (the text of field `f`, reasons per row where it did not map)."""
        n = chunk.table.num_rows
        errors = None
        kind = fmap.kind
        if kind == "constant":
            value = fmap.constant
            if isinstance(value, bool):
                value = "true" if value else "false"
            text = pa.repeat(pa.scalar(None if value is None else str(value), _TEXT), n)
        elif kind == "sql":
            # Evaluated by the database: the connector delivers it under the field's name.
            text = self._column(chunk, f.name, key + ".sql")
        elif kind == "column":
            assert fmap.column is not None
            text = self._column(chunk, fmap.column, key + ".column")
        elif kind == "concat":
            parts = [self._column(chunk, c, key + ".concat") for c in fmap.concat or ()]
            text = pc.binary_join_element_wise(
                *parts, fmap.separator, null_handling="replace", null_replacement=""
            )
        elif kind == "coalesce":
            # the first non-empty column: Stripe's Customer ID, else (a guest) the email
            parts = [
                _empty_to_null(self._column(chunk, c, key + ".coalesce"))
                for c in fmap.coalesce or ()
            ]
            text = pc.coalesce(*parts)
        else:  # multiply
            product = None
            for c in fmap.multiply or ():
                number, bad = self._number(f.name, self._column(chunk, c, key + ".multiply"))
                errors = _merge(errors, bad)
                product = number if product is None else pc.multiply(product, number)
            text = number_text(product)
        text = _empty_to_null(text)
        if fmap.values is not None:
            text, bad = self._recode(f.name, text, fmap, key)
            errors = _merge(errors, bad)
        if f.type == "timestamp" or (f.type == "date" and fmap.format is not None):
            text, bad = self._moment(f, text, fmap)
            errors = _merge(errors, bad)
        elif f.type in ("numeric", "integer") and kind != "multiply":
            text, bad = self._numeric_text(f, text, fmap)
            errors = _merge(errors, bad)
        elif f.type == "boolean" and (self.fmt.true_values or self.fmt.false_values):
            text = self._boolean(text)
        return text, errors

    # ---------------------------------------------------------------------- values

    def _recode(
        self, name: str, text: pa.Array, fmap: FieldMap, key: str
    ) -> tuple[pa.Array, pa.Array | None]:
        assert fmap.values is not None
        words = {k.strip().lower(): v for k, v in fmap.values.items()}
        # the contract's own words stand for themselves beside the export's
        words |= {w: w for w in self.entity.field(name).one_of if w not in words}
        keys = pa.array(list(words), _TEXT)
        targets = pa.array(list(words.values()), _TEXT)
        idx = pc.index_in(pc.utf8_lower(pc.utf8_trim_whitespace(text)), value_set=keys)
        recoded = pc.take(targets, idx)
        unknown = pc.and_(pc.is_valid(text), pc.is_null(idx))
        if fmap.default is not None:
            return pc.if_else(unknown, pa.scalar(fmap.default, _TEXT), recoded), None
        listed = ", ".join(fmap.values)
        what = f"is not one of {listed} ({self.where}.{key}.values; add it, or a default)"
        return recoded, _reasons(unknown, name, text, what)

    def _boolean(self, text: pa.Array) -> pa.Array:
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        out = text
        for words, word in ((self.fmt.true_values, "true"), (self.fmt.false_values, "false")):
            if words:
                hit = pc.fill_null(pc.is_in(lowered, pa.array([w.lower() for w in words])), False)
                out = pc.if_else(hit, pa.scalar(word, _TEXT), out)
        return out

    # --------------------------------------------------------------------- numbers

    def _normalized(self, text: pa.Array, money: bool | None = None) -> pa.Array:
        """Return numbers as text with ``.`` as decimal point and no thousands separator.

        Spreadsheet and point-of-sale exports write money as ``$1,234.56``, ``12,50 €``
        or, for a negative amount, ``(12.00)``: a currency sign before or after the
        number is dropped (it does not say which currency: ``$`` is also CAD or AUD, so
        the mapping's ``currency`` still does) and accounting parentheses are a minus.
        """
        text = pc.utf8_trim_whitespace(text)
        if _written_as_money(text) if money is None else money:
            text = pc.replace_substring_regex(text, r"^\((.*)\)$", "-\\1")
            text = pc.replace_substring_regex(text, r"^([-+]?)\s*\p{Sc}\s*", "\\1")
            text = pc.replace_substring_regex(text, r"\s*\p{Sc}\s*$", "")
            text = pc.replace_substring_regex(text, r"^-\s+", "-")
        sep = self.fmt.thousands_separator
        if sep:
            # A thousands separator stands between groups of three digits, before the
            # decimal one: "12.5" or "5.00" under thousands "." is no number (it was read
            # as 125 and 500), nor is "1.2.3". Such a value becomes unreadable here, and
            # its row is quarantined by the caller with the file's dialect named.
            dec = re.escape(self.fmt.decimal_separator)
            grouped = rf"^[-+]?\d{{1,3}}({re.escape(sep)}\d{{3}})+({dec}\d*)?$"
            misplaced = pc.and_(
                pc.fill_null(pc.match_substring(text, sep), False),
                pc.invert(pc.fill_null(pc.match_substring_regex(text, grouped), False)),
            )
            if pc.any(misplaced).as_py():
                text = pc.if_else(misplaced, pa.scalar("not a number", _TEXT), text)
            text = pc.replace_substring(text, sep, "")
        if self.fmt.decimal_separator == ",":
            text = pc.replace_substring(text, ",", ".")
        return text

    def _number(self, name: str, text: pa.Array) -> tuple[pa.Array, pa.Array | None]:
        """Return (the numbers of `text` as floats, reasons where one is not a number)."""
        text = _empty_to_null(text)
        number = _cast(self._normalized(text), pa.float64())
        bad = pc.and_(pc.is_valid(text), pc.is_null(number))
        if not pc.any(bad).as_py():
            return number, None
        return number, _reasons(bad, name, text, self._not_a_number())

    #: Numbers the default dialect does not read, and the setting that reads them.
    _OTHER_DIALECTS = (
        (r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$", "format.thousands_separator: ','"),
        (
            r"^[-+]?\d{1,3}(\.\d{3})*,\d{1,2}$",
            "format.decimal_separator: ',' (and thousands_separator: '.')",
        ),
    )

    def _dialect_reasons(self, name: str, text: pa.Array) -> pa.Array | None:
        """Return reasons for numbers written in another dialect than the file's (PayPal's
        "1,234.56", a German "1.234,56"), naming the setting that reads them."""
        reasons = None
        trimmed = pc.utf8_trim_whitespace(text)
        for pattern, setting in self._OTHER_DIALECTS:
            hit = pc.fill_null(pc.match_substring_regex(trimmed, pattern), False)
            what = f"is not a number in the file's dialect: set {setting}"
            reasons = _merge(reasons, _reasons(hit, name, text, what))
        return reasons

    def _not_a_number(self) -> str:
        sep = self.fmt.decimal_separator
        thousands = self.fmt.thousands_separator
        if sep == "." and not thousands:
            return "is not a number"
        return f"is not a number (decimal separator {sep!r}" + (
            f", thousands separator {thousands!r})" if thousands else ")"
        )

    def _numeric_text(
        self, f: Field, text: pa.Array, fmap: FieldMap
    ) -> tuple[pa.Array, pa.Array | None]:
        if fmap.scale is not None:
            number, bad = self._number(f.name, text)
            return number_text(pc.multiply(number, fmap.scale)), bad
        money = _written_as_money(text)
        if self.fmt.decimal_separator == "." and not self.fmt.thousands_separator and not money:
            # the checker reads (and rejects) the text as it is, unless the dialect is wrong
            return text, self._dialect_reasons(f.name, text)
        normalized = self._normalized(text, money)
        number = _cast(normalized, pa.float64())
        bad = pc.and_(pc.is_valid(text), pc.is_null(number))
        if not pc.any(bad).as_py():
            return normalized, None
        return normalized, _reasons(bad, f.name, text, self._not_a_number())

    # ---------------------------------------------------------------- dates, times

    def _moment(self, f: Field, text: pa.Array, fmap: FieldMap) -> tuple[pa.Array, pa.Array | None]:
        """Return (a timestamp field as UTC ISO text / a date field as ISO date, reasons)."""
        text = pc.utf8_trim_whitespace(text)
        fmt = fmap.format or "iso"
        zone = self.sources.timezone_of(self.src, self.emap, fmap)
        present = pc.is_valid(text)
        if fmt == "iso":
            instant, naive = self._iso(text)
            expected = "is not an ISO-8601 date or timestamp (e.g. 2024-03-05 14:02:11 -05:00)"
        elif fmt in ("epoch_s", "epoch_ms"):
            number = _cast(text, pa.float64())
            per_unit = 1_000_000 if fmt == "epoch_s" else 1_000
            micros = _cast(pc.round(pc.multiply(number, per_unit)), pa.int64())
            instant, naive = micros.cast(pa.timestamp("us")).cast(_UTC), None
            expected = f"is not a number of {'seconds' if fmt == 'epoch_s' else 'milliseconds'}"
            expected += " since 1970-01-01 UTC (format " + fmt + ")"
        elif fmt == "epoch_days":
            # a day count (Dunnhumby's DAY 1..711): plain dates, local midnights like an
            # ISO date without a time; whole numbers only, since a fraction of a day
            # would put a time on a field whose source has none
            origin = fmap.origin or dt.date(1970, 1, 1)
            number = _cast(text, pa.float64())
            whole = pc.if_else(pc.equal(pc.floor(number), number), number, None)
            days = pc.add(whole, float((origin - dt.date(1970, 1, 1)).days))
            micros = _cast(pc.multiply(days, 86_400_000_000), pa.int64())
            instant, naive = None, micros.cast(pa.timestamp("us"))
            expected = f"is not a whole number of days since {origin} (format epoch_days)"
        elif fmt == "excel_serial":
            days = pc.subtract(_cast(text, pa.float64()), EXCEL_EPOCH_DAY)
            micros = _cast(pc.round(pc.multiply(days, 86_400_000_000)), pa.int64())
            instant, naive = None, micros.cast(pa.timestamp("us"))
            expected = "is not an Excel serial date number (format excel_serial)"
        else:
            parsed = _strptime(text, fmt)
            if parsed.type.tz is not None:
                instant, naive = parsed.cast(_UTC), None
            else:
                instant, naive = None, parsed
            expected = f"does not match the format {fmt!r}"
        if f.type == "date":
            moment = naive if naive is not None else instant
            out = pc.strftime(moment.cast(pa.timestamp("us")), format="%Y-%m-%d")
            if instant is not None and naive is not None:
                out = pc.coalesce(pc.strftime(naive, format="%Y-%m-%d"), out)
            bad = pc.and_(present, pc.is_null(out))
            return out, _reasons(bad, f.name, text, expected)
        reasons = None
        if naive is not None:
            rules = self.sources.defaults
            local, gaps, overlaps = local_to_utc(
                naive, zone, rules.ambiguous_time, rules.nonexistent_time
            )
            if gaps.any():
                # A plain date means its day's first instant: where DST skips midnight
                # (Santiago, Havana, Beirut, ...) that is the end of the gap, not a
                # rejected row (every order of that day would be lost).
                midnight = pc.fill_null(
                    pc.equal(naive, pc.floor_temporal(naive, unit="day")), False
                ).to_numpy(zero_copy_only=False)
                start_of_day = gaps & midnight
                if start_of_day.any():
                    after, _, _ = local_to_utc(naive, zone, "earliest", "latest")
                    local = pc.if_else(pa.array(start_of_day), after, local)
                    gaps = gaps & ~start_of_day
            for mask, what in (
                (
                    gaps,
                    f"does not exist in {zone} (the clocks skip it at a DST change; "
                    "defaults.nonexistent_time: reject)",
                ),
                (
                    overlaps,
                    f"happens twice in {zone} (the clocks repeat it at a DST change; "
                    "defaults.ambiguous_time: reject)",
                ),
            ):
                if mask.any():
                    reasons = _merge(reasons, _reasons(mask, f.name, text, what))
            instant = local if instant is None else pc.coalesce(instant, local)
        out = utc_text(instant)
        bad = pc.and_(present, pc.is_null(out))
        if reasons is not None:
            bad = pc.and_(bad, pc.invert(pc.is_valid(reasons)))
        return out, _merge(reasons, _reasons(bad, f.name, text, expected))

    @staticmethod
    def _iso(text: pa.Array) -> tuple[pa.Array, pa.Array]:
        """Return (instants of values with an offset, naive times of those without)."""
        parts = pc.extract_regex(text, _ISO)
        date = pc.struct_field(parts, "date")
        time = pc.struct_field(parts, "time")
        zone = pc.struct_field(parts, "zone")
        time = pc.if_else(pc.fill_null(pc.equal(time, ""), True), "00:00:00", time)
        time = pc.replace_substring_regex(time, r"^(\d):", "0\\1:")
        time = pc.if_else(
            pc.equal(pc.utf8_length(time), 5), pc.binary_join_element_wise(time, ":00", ""), time
        )
        time = pc.replace_substring(time, ",", ".")
        naive = _cast(pc.binary_join_element_wise(date, time, "T"), pa.timestamp("us"))
        has_zone = pc.fill_null(pc.not_equal(zone, ""), False)
        if not pc.any(has_zone).as_py():
            return pa.nulls(len(text), _UTC), naive
        total = _offset_minutes(pc.if_else(has_zone, zone, pa.scalar(None, _TEXT)))
        micros = pc.subtract(
            pc.cast(naive, pa.int64()), pc.multiply(pc.cast(total, pa.int64()), 60_000_000)
        )
        instant = micros.cast(pa.timestamp("us")).cast(_UTC)
        return instant, pc.if_else(has_zone, pa.scalar(None, pa.timestamp("us")), naive)

    # --------------------------------------------------------------------- refunds

    def _refunded(self, chunk: Chunk, fields: _Fields) -> pa.Array | None:
        """Return the refunded amount of each row (``refunds.refunded_amount``) as floats,
        with what is not a number failed on ``amount``; None without that rule."""
        rules = self.emap.refunds
        if rules is None or not rules.refunded_amount:
            return None
        text = self._column(chunk, rules.refunded_amount, "refunds.refunded_amount")
        number, bad = self._number(f"refunded amount {rules.refunded_amount!r}", text)
        fields.fail("amount", bad)
        amount = self.emap.field_map("amount")
        if amount is not None and amount.scale is not None:
            number = pc.multiply(number, amount.scale)  # cents, as the amount is
        # an export may write what went back as a negative number
        return pc.abs(number)

    def _partly_refunded(self, fields: _Fields, refunded: pa.Array) -> np.ndarray:
        """Net the amounts of partly refunded orders in place; return where the refund
        is the whole amount (those orders are refunded)."""
        paid = _cast(fields.text["amount"], pa.float64())
        back = pc.fill_null(refunded, 0.0)
        some = pc.and_(pc.greater(back, 0.0), pc.is_valid(paid))
        # within half a cent of the amount is all of it (an export's rounding)
        whole = pc.and_(some, pc.greater_equal(back, pc.subtract(paid, 0.005)))
        part = pc.and_(some, pc.invert(whole))
        if pc.any(part).as_py():
            net = number_text(pc.subtract(paid, back))
            fields.text["amount"] = pc.if_else(part, net, fields.text["amount"])
        return pc.fill_null(whole, False).to_numpy(zero_copy_only=False)

    def _refunds(
        self,
        chunk: Chunk,
        fields: _Fields,
        marked: pa.Array | None = None,
        refunded: pa.Array | None = None,
    ) -> None:
        """Turn refund rows into refunded orders (amounts positive), in place; with a
        refunded amount per order, partly refunded orders count what was kept."""
        rules = self.emap.refunds
        assert rules is not None
        n = fields.n
        refund = np.zeros(n, dtype=bool)
        if marked is not None:
            refund |= marked.to_numpy(zero_copy_only=False)
        elif rules.column:
            refund |= self._marked(chunk).to_numpy(zero_copy_only=False)
        amount = fields.text.get("amount")
        if refunded is not None and amount is not None:
            refund |= self._partly_refunded(fields, refunded)
            amount = fields.text["amount"]
        negative = None
        if amount is not None:
            negative = pc.fill_null(pc.starts_with(pc.utf8_trim_whitespace(amount), "-"), False)
            if rules.negative_amount:
                refund |= negative.to_numpy(zero_copy_only=False)
        of = None
        if rules.refund_of and marked is None:
            of = _empty_to_null(self._column(chunk, rules.refund_of, "refunds.refund_of"))
            refund |= pc.is_valid(of).to_numpy(zero_copy_only=False)
        if "order_id" in fields.text and "ordered_at" in fields.text and rules.refund_of:
            kept = pa.array(~refund)
            self._placed.append(
                (
                    fields.text["order_id"].filter(kept),
                    {f: fields.text[f].filter(kept) for f in _ORIGINAL if f in fields.text},
                )
            )
        if not refund.any():
            return
        mask = pa.array(refund)
        fields.text["status"] = pc.if_else(
            mask, pa.scalar("refunded", _TEXT), fields.text.get("status", _null_text(n))
        )
        for name in ("amount", "quantity"):
            if name in fields.text:
                value = pc.utf8_trim_whitespace(fields.text[name])
                unsigned = pc.replace_substring_regex(value, r"^-", "")
                fields.text[name] = pc.if_else(mask, unsigned, fields.text[name])
        if of is not None and pc.any(pc.is_valid(of)).as_py():
            self._refund_versions(fields, of)

    def _marked(self, chunk: Chunk) -> pa.Array:
        rules = self.emap.refunds
        assert rules is not None and rules.column
        marker = pc.utf8_trim_whitespace(self._column(chunk, rules.column, "refunds.column"))
        hit = pa.repeat(False, chunk.table.num_rows)
        if rules.starts_with:
            hit = pc.or_(hit, pc.fill_null(pc.starts_with(marker, rules.starts_with), False))
        if rules.equals:
            hit = pc.or_(hit, pc.fill_null(pc.is_in(marker, pa.array(rules.equals)), False))
        return hit

    def _refund_versions(self, fields: _Fields, of: pa.Array) -> None:
        """A refund naming its order is a refunded version of that order: its order_id,
        updated at the refund's time, placed when the order was and the order's customer
        (if this batch has the order: a PayPal refund comes from the shop's own address)."""
        is_version = pc.is_valid(of)
        unplaced = is_version
        when = fields.text.get("ordered_at")
        if when is not None:
            updated = fields.text.get("updated_at", _null_text(fields.n))
            fields.text["updated_at"] = pc.if_else(is_version, pc.coalesce(updated, when), updated)
            if self._placed:
                ids = pa.concat_arrays([p[0] for p in self._placed])
                at = pc.index_in(of, value_set=ids)
                found = pc.and_(is_version, pc.is_valid(at))
                unplaced = pc.and_(is_version, pc.invert(found))
                for name in _ORIGINAL:
                    if name not in fields.text or name not in self._placed[0][1]:
                        continue
                    placed = pa.concat_arrays([p[1][name] for p in self._placed])
                    fields.text[name] = pc.if_else(found, pc.take(placed, at), fields.text[name])
        ids = fields.text.get("order_id", _null_text(fields.n))
        fields.text["order_id"] = pc.if_else(is_version, of, ids)
        self.unplaced_refunds.update(of.filter(unplaced).to_pylist())

    # ----------------------------------------------------------------- order lines

    def _orders_of_lines(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Yield one order per order id from order lines: amount and quantity summed.

        The lines of an order may lie in any chunk of the batch, in any order, so the
        orders are held until the end of the batch and emitted then. Memory: one row of
        text fields per order and chunk it appears in (the lines themselves are not
        kept), about 200 bytes per order of the batch. The order takes the fields of its
        first line (its line number too); its mapping errors are those of all its lines.
        """
        partials: list[pa.Table] = []
        rejects = []
        warnings: list[str] = []
        seq = 0
        source = None
        has_sources = False
        header: list[str] = []
        for chunk in chunks:
            rejects += chunk.rejects
            warnings += chunk.warnings
            source = source or chunk.source
            header = header or chunk.table.column_names
            if not chunk.table.num_rows:
                continue
            partials.append(self._line_partial(chunk, seq))
            has_sources |= chunk.sources is not None
            seq += chunk.table.num_rows
        if not partials:
            if rejects or source:
                yield Chunk(
                    pa.table({}), source or "", np.empty(0, np.int64), rejects, warnings=warnings
                )
            return
        orders = self._aggregate(pa.concat_tables(partials, promote_options="permissive"))
        unread = self._unread_lines(rejects, header)
        for start in range(0, max(orders.num_rows, 1), LINE_ORDERS_PER_CHUNK):
            part = orders.slice(start, LINE_ORDERS_PER_CHUNK)
            chunk = self._line_chunk(part, source or "", rejects if start == 0 else [], unread)
            chunk.warnings = warnings if start == 0 else []
            yield chunk

    _NUMBERS = ("amount", "quantity")

    def _unread_lines(self, rejects: list, header: list[str]) -> dict[str, str]:
        """Return, per order id, why a line of that order could not be read at all.

        A line the reader rejected (a byte the encoding does not define, a stray quote,
        a field too many) is quarantined on its own; its order must not load with the
        sum of its other lines. Its order id is read from the line as written, where
        the mapping takes it from columns (a column, or a concat of columns).
        """
        fmap = self.emap.field_map("order_id") or FieldMap(column="order_id")
        if fmap.kind not in ("column", "concat") or not header:
            return {}
        try:
            at = [header.index(c) for c in fmap.source_columns]
        except ValueError:
            return {}
        out: dict[str, str] = {}
        for r in rejects:
            if r.line is None:
                continue
            if self.fmt.delimiter == WHITESPACE:
                values = r.payload.split()
            else:
                reader = csv.reader(
                    [r.payload.rstrip("\r\n")],
                    delimiter=self.fmt.delimiter,
                    quotechar=self.fmt.quote_char or '"',
                    quoting=csv.QUOTE_MINIMAL if self.fmt.quote_char else csv.QUOTE_NONE,
                    escapechar=self.fmt.escape_char,
                )
                try:
                    values = next(reader, [])
                except csv.Error:
                    continue
            if max(at) >= len(values) or not all(values[i] for i in at):
                continue
            order_id = fmap.separator.join(values[i] for i in at)
            out.setdefault(order_id, f"line {r.line} of this order could not be read ({r.reason})")
        return out

    def _line_partial(self, chunk: Chunk, seq: int) -> pa.Table:
        """Return one row per order id of a chunk of lines (fields of its first line)."""
        n = chunk.table.num_rows
        fields = self._fields(chunk)
        cols: dict[str, pa.Array] = {}
        cols["__seq"] = pa.array(np.arange(seq, seq + n, dtype=np.int64))
        cols["__line"] = pa.array(chunk.lines, pa.int64())
        cols["__source"] = (
            chunk.sources.cast(_TEXT) if chunk.sources is not None else pa.repeat(chunk.source, n)
        )
        ids = fields.text.get("order_id", _null_text(n))
        # A line without an order id stays a row of its own (the checker rejects it).
        cols["__group"] = pc.coalesce(
            pc.binary_join_element_wise("=", ids, ""),
            pc.binary_join_element_wise("#", pc.cast(cols["__seq"], _TEXT), ""),
        )
        if "customer_id" in fields.text:
            # an order's lines must name one customer: the lowest and highest seen say so
            cols["__lo_customer_id"] = cols["__hi_customer_id"] = fields.text["customer_id"]
        for name, text in fields.text.items():
            cols[name] = text
            if name in self._NUMBERS:
                number = _cast(text, pa.float64())
                bad = pc.and_(pc.is_valid(text), pc.is_null(number))
                cols[f"__sum_{name}"] = number
                cols[f"__bad_{name}"] = bad
                if name not in fields.errors:
                    fields.fail(name, _reasons(bad, name, text, "is not a number"))
        refunded = self._refunded(chunk, fields)
        if refunded is not None:
            cols["__sum_refunded"] = refunded
        for name, reasons in fields.errors.items():
            located = pc.binary_join_element_wise(
                reasons,
                pc.binary_join_element_wise(" (line ", pc.cast(cols["__line"], _TEXT), ")", ""),
                "",
            )
            cols[f"__error_{name}"] = located
        for name in self._extra_names(chunk):
            cols[f"__extra_{name}"] = chunk.table.column(name).combine_chunks()
        marked = None
        rules = self.emap.refunds
        if rules is not None and rules.column:
            marked = self._marked(chunk)
        cols["__refund"] = marked if marked is not None else pa.repeat(False, n)
        table = pa.table(cols)
        return self._group(table)

    def _group(self, table: pa.Table) -> pa.Table:
        """Return `table` (lines or partial orders) with one row per __group."""
        aggs = [("__seq", "min"), ("__refund", "max")]
        aggs += [(c, "sum") for c in table.column_names if c.startswith("__sum_")]
        aggs += [(c, "max") for c in table.column_names if c.startswith("__bad_")]
        aggs += [(c, "min") for c in table.column_names if c.startswith(("__error_", "__lo_"))]
        aggs += [(c, "max") for c in table.column_names if c.startswith("__hi_")]
        grouped = table.group_by("__group", use_threads=False).aggregate(aggs)
        first = pc.index_in(grouped.column("__seq_min"), value_set=table.column("__seq"))
        folded = ("__sum_", "__bad_", "__error_", "__lo_", "__hi_")
        keep = [c for c in table.column_names if not c.startswith((*folded, "__refund"))]
        out = table.select(keep).take(first)
        for c in table.column_names:
            if c.startswith(folded) or c == "__refund":
                agg = (
                    "sum"
                    if c.startswith("__sum_")
                    else ("min" if c.startswith(("__error_", "__lo_")) else "max")
                )
                out = out.append_column(c, grouped.column(f"{c}_{agg}"))
        return out

    def _aggregate(self, partials: pa.Table) -> pa.Table:
        """Return the orders of the partial orders of every chunk, in first-line order."""
        orders = self._group(partials)
        return orders.take(pc.sort_indices(orders.column("__seq")))

    def _line_chunk(
        self, orders: pa.Table, source: str, rejects: list, unread: dict[str, str]
    ) -> Chunk:
        n = orders.num_rows
        fields = _Fields(n)
        names = set(orders.column_names)
        for f in self.entity.fields:
            if f.name not in names:
                continue
            text = orders.column(f.name).combine_chunks()
            if f.name in self._NUMBERS:
                total = orders.column(f"__sum_{f.name}").combine_chunks()
                bad = orders.column(f"__bad_{f.name}").combine_chunks()
                text = pc.if_else(bad, pa.scalar(None, _TEXT), number_text(total))
            fields.text[f.name] = text
            if f"__error_{f.name}" in names:
                fields.fail(f.name, orders.column(f"__error_{f.name}").combine_chunks())
        if "__lo_customer_id" in names:
            lo = orders.column("__lo_customer_id").combine_chunks()
            hi = orders.column("__hi_customer_id").combine_chunks()
            mixed = pc.fill_null(pc.not_equal(lo, hi), False)
            if pc.any(mixed).as_py():
                said = pc.binary_join_element_wise(
                    "customer_id: the lines of this order name more than one customer (",
                    lo,
                    ", ",
                    hi,
                    "): a line mapped to the wrong order, or order ids reused",
                    "",
                )
                fields.fail("customer_id", pc.if_else(mixed, said, pa.scalar(None, _TEXT)))
        if unread and "order_id" in fields.text:
            ids = pa.array(list(unread), _TEXT)
            at = pc.index_in(fields.text["order_id"], value_set=ids)
            why = pc.take(pa.array(list(unread.values()), _TEXT), at)
            fields.fail(
                "amount",
                pc.binary_join_element_wise("amount: ", why, ", so its sum is not known", ""),
            )
        if self.emap.refunds is not None:
            marked = orders.column("__refund").combine_chunks()
            refunded = (
                orders.column("__sum_refunded").combine_chunks()
                if "__sum_refunded" in names
                else None
            )
            self._refunds(
                Chunk(orders, source, np.empty(0)), fields, marked=marked, refunded=refunded
            )
        cols = dict(fields.text)
        for name in orders.column_names:
            if name.startswith("__extra_"):
                cols[name.removeprefix("__extra_")] = orders.column(name)
        sources = orders.column("__source").combine_chunks()
        single = pc.count_distinct(sources).as_py() <= 1
        return Chunk(
            pa.table(cols),
            source,
            orders.column("__line").to_numpy(),
            rejects,
            None if single else sources,
            errors=fields.errors or None,
        )


def describe_mapping(mapper: Mapper) -> dict[str, str]:
    """Return, per contract field, what feeds it (for logs and `lifecycle sources check`)."""
    out = {}
    for f in mapper.entity.fields:
        fmap = mapper.emap.field_map(f.name)
        if fmap is None:
            out[f.name] = f"column {f.name!r} (same name)"
            continue
        what = json.dumps(fmap.model_dump(exclude_defaults=True, exclude_none=True))
        out[f.name] = what
    return out


__all__ = ["ISO_DATE", "Mapper", "MappingError", "describe_mapping"]
