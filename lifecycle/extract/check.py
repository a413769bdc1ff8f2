"""Checking a mapping against the data: the header check of every extract, and
``lifecycle sources check``.

:func:`check_header` compares the columns a source delivers (a CSV header, a table's
columns) with the entity's mapping before any row is mapped: a mapped column that is
not there, or a required contract field that is neither mapped nor a same-named column,
fails with one message naming the file, the key and the value.

:func:`check_entity` reads a sample of an entity through the same connector, mapping
step (:class:`~lifecycle.extract.mapping.Mapper`) and checker
(:class:`~lifecycle.parse.Checker`) as an extract, without touching the warehouse, and
says per contract field what it is mapped from, a few parsed values and the share of
rows that would be quarantined and why. A mapping that cannot be right (every value of
a field fails, a required field is empty everywhere, more rows would be rejected than
an extract allows) is an error naming the field and the offending value.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from lifecycle.parse import Checker, Chunk, Window, split_reasons
from lifecycle.raw import RawEntity
from lifecycle.settings import Settings
from lifecycle.sources_file import (
    FILE_KINDS,
    EntityMap,
    FieldMap,
    Source,
    SourcesFile,
    SourcesFileError,
)

#: Columns a message lists at most (a wide export has hundreds).
LIST_LIMIT = 25
#: Parsed values shown per field.
SAMPLE_VALUES = 3


def entity_key(entity: RawEntity) -> str:
    """Return the key of an entity's block in the sources file."""
    return f"sources.{entity.source}.entities.{entity.entity}"


def _names(columns: Iterable[str]) -> str:
    columns = list(columns)
    shown = ", ".join(_shown(c) for c in columns[:LIST_LIMIT])
    more = f", ... ({len(columns) - LIST_LIMIT} more)" if len(columns) > LIST_LIMIT else ""
    return (shown + more) or "none"


#: How much of one column name an error message shows.
NAME_LIMIT = 60


def _shown(name: str) -> str:
    """Return a column name fit for a one-line message: printable, at most NAME_LIMIT."""
    if name.isprintable() and len(name) <= NAME_LIMIT:
        return name
    text = repr(name)[1:-1] if not name.isprintable() else name
    return text[:NAME_LIMIT] + "..." if len(text) > NAME_LIMIT else text


def _header_hint(names: list[str]) -> str:
    """Return why a header may hold none of the mapped columns ("" when nothing shows)."""
    joined = "".join(names)
    odd = sum((not ch.isprintable() and ch != "\t") or ch == "\ufffd" for ch in joined)
    if joined and odd > len(joined) / 10:
        return (
            "; the header is not text: is the file a CSV (see format.encoding and "
            "format.compression)?"
        )
    if len(names) == 1:
        for sep, word in ((";", '";"'), ("\t", '"\\t"'), ("|", '"|"')):
            if sep in names[0]:
                return f"; the header is one column: set format.delimiter: {word}?"
    return ""


def _nested_in(path: str, present: set[str]) -> bool:
    """True when `path` is a dotted path into a column of `present` (``cust.id`` in a JSON
    record's ``cust``: the mapping reads it there, see mapping._json_path)."""
    parts = path.split(".")
    return any(".".join(parts[:cut]) in present for cut in range(1, len(parts)))


def check_header(
    entity: RawEntity,
    emap: EntityMap,
    sources: SourcesFile,
    columns: Iterable[str],
    locator: str,
    *,
    strict: bool = True,
) -> None:
    """Raise SourcesFileError when the mapping of `entity` does not fit `columns`.

    `strict` (files with a header, tables): every mapped column must exist. Without it
    (JSON records, whose keys vary from record to record) only the columns of required
    fields must.
    """
    names = list(columns)
    present = set(names)
    where = f"{sources.origin}: {entity_key(entity)}"
    required = set(entity.required)
    for fname, fmap in emap.columns.items():
        if not strict and fname not in required:
            continue
        for col in fmap.source_columns:
            if col not in present and not _nested_in(col, present):
                hint = _near(col, names)
                raise SourcesFileError(
                    f"{where}.columns.{fname}.{fmap.kind}: column {col!r} is not in {locator} "
                    f"(columns: {_names(names)})"
                    + (f"; did you mean {hint!r}?" if hint else _header_hint(names))
                )
    if emap.refunds is not None:
        for key in emap.refunds.COLUMN_KEYS:
            col = getattr(emap.refunds, key)
            if col and col not in present:
                raise SourcesFileError(
                    f"{where}.refunds.{key}: column {col!r} is not in {locator} "
                    f"(columns: {_names(names)})"
                )
    missing = [f for f in entity.required if emap.field_map(f) is None and f not in present]
    if missing:
        fname = missing[0]
        also = f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""
        near = _near(fname, names)  # CUSTOMER_ID, Customer ID: mapped by hand, not guessed
        example = f"`{fname}: {near}`" if near else f"`{fname}: <column>`"
        raise SourcesFileError(
            f"{where}.columns.{fname}: required field {fname!r} is not mapped and "
            f"{locator} has no column {fname!r}: map it, e.g. {example}{also} "
            f"(columns: {_names(names)}){'' if near else _header_hint(names)}"
        )


def _near(name: str, names: list[str]) -> str | None:
    """Return the column that differs from `name` only in case or spacing, if one does."""
    squash = re.sub(r"[\s_-]+", "", name).lower()
    for n in names:
        if re.sub(r"[\s_-]+", "", n).lower() == squash:
            return n
    return None


def headers_checked(
    chunks: Iterable[Chunk], entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile
) -> Iterator[Chunk]:
    """Yield `chunks`, checking each new set of columns against the mapping first.

    The built-in mapping (no sources file) is left to the checker, whose message about
    missing columns is what it always was.
    """
    if sources.origin == "built-in":
        yield from chunks
        return
    seen: set[tuple[str, ...]] = set()
    strict = src.kind in ("csv", "excel", "parquet", "postgres")
    for chunk in chunks:
        names = tuple(chunk.table.column_names)
        if names not in seen and (chunk.table.num_rows or names):
            seen.add(names)
            check_header(entity, emap, sources, names, chunk.source, strict=strict)
        yield chunk


# --------------------------------------------------------------------- sources check


@dataclass
class FieldReport:
    """What the sample says about one contract field."""

    name: str
    mapping: str
    values: list[str] = field(default_factory=list)
    present: int = 0  # rows with a value in the source (mapped or not)
    unparsed: int = 0  # rows whose value could not be read (not mapped, not typed)
    quarantined: int = 0  # rows quarantined for this field
    reasons: Counter = field(default_factory=Counter)  # what is wrong -> rows
    examples: dict[str, str] = field(default_factory=dict)  # what is wrong -> a value


@dataclass
class EntityReport:
    """What the sample of one entity says."""

    entity: RawEntity
    source: str = ""  # kind and location
    skipped: str | None = None
    rows: int = 0  # records read from the source (malformed ones included)
    mapped: int = 0  # rows after the mapping step (line grain: orders)
    quarantined: int = 0
    fields: list[FieldReport] = field(default_factory=list)
    row_reasons: Counter = field(default_factory=Counter)  # reasons not about one field
    unread: int = 0  # records the reader could not split into fields (not in `mapped`)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def considered(self) -> int:
        """The rows an extract would count the share over: mapped rows and unread records
        (as the loader's rows read; a duplicate row is one of the mapped ones)."""
        return self.mapped + self.unread

    @property
    def share(self) -> float:
        """The share of sampled rows that would be quarantined."""
        return self.quarantined / self.considered if self.considered else 0.0


def describe_mapping(entity: RawEntity, emap: EntityMap, name: str) -> str:
    """Return how field `name` gets its value, in the file's words."""
    fmap = emap.field_map(name)
    if fmap is None:
        return f"column {name!r} (same name)"
    return _describe(fmap)


def _describe(fmap: FieldMap) -> str:
    kind = fmap.kind
    if kind == "column":
        text = f"column {fmap.column!r}"
    elif kind == "sql":
        text = f"sql {fmap.sql!r}"
    elif kind == "constant":
        text = f"constant {fmap.constant!r}"
    elif kind == "concat":
        text = f"concat {fmap.concat!r}" + (f" by {fmap.separator!r}" if fmap.separator else "")
    elif kind == "coalesce":
        text = f"first non-empty of {fmap.coalesce!r}"
    else:
        text = f"multiply {fmap.multiply!r}"
    extras = []
    if fmap.format:
        extras.append(f"format {fmap.format!r}")
    if fmap.timezone:
        extras.append(f"timezone {fmap.timezone}")
    if fmap.scale is not None:
        extras.append(f"scale {fmap.scale:g}")
    if fmap.values:
        extras.append(f"values {len(fmap.values)} recoded")
    if fmap.default is not None:
        extras.append(f"default {fmap.default!r}")
    return text + (f" ({', '.join(extras)})" if extras else "")


def describe_location(src: Source, emap: EntityMap, sources: SourcesFile) -> str:
    """Return the kind and location of an entity (no secrets: a connection's name only)."""
    if src.kind == "postgres":
        what = f"query {emap.query.strip()[:60]!r}" if emap.query else emap.table
        return f"postgres {what} via connection {src.connection!r}"
    if src.kind == "rest":
        return f"rest {src.base_url or 'connection ' + repr(src.connection)}"
    return f"{src.kind} {sources.path_of(src, emap)}" + (
        " (day partitions)" if src.partitioned else ""
    )


def check_sample_window(today: dt.date | None = None) -> Window:
    """Return the window a sample is checked in: everything up to the end of today (UTC),
    what ``lifecycle extract --date <today> --full`` would read."""
    from lifecycle.load import day_window

    return Window(None, day_window(today or dt.datetime.now(dt.UTC).date()).end)


def check_entity(
    entity: RawEntity,
    sources: SourcesFile,
    settings: Settings,
    *,
    rows: int = 1000,
    window: Window | None = None,
) -> EntityReport:
    """Return what a sample of `rows` source records of `entity` says about its mapping."""
    report = EntityReport(entity)
    found = sources.entity(entity)
    if found is None:
        report.skipped = sources.absent_why(entity)
        return report
    src, emap = found
    report.source = describe_location(src, emap, sources)
    window = window or check_sample_window()
    try:
        chunks = _sample_chunks(entity, src, emap, window, sources, settings, rows)
        if isinstance(chunks, str):
            listed = entity.entity in src.entities
            if listed:
                key = "path" if src.kind in FILE_KINDS else "table"
                report.errors.append(f"{sources.origin}: {entity_key(entity)}.{key}: {chunks}")
            else:
                report.skipped = chunks
            return report
        _check_sample(report, entity, src, emap, sources, settings, chunks, window)
    except SourcesFileError as exc:
        report.errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a connector's own error types, reported as one line
        from lifecycle.extract.crm import CrmApiError
        from lifecycle.load import LoadError

        if not isinstance(exc, LoadError | CrmApiError | OSError | ValueError):
            raise
        text = str(exc)
        # A connector's error that already names the sources file's key stands as it is.
        located = text.startswith(f"{sources.origin}: ")
        report.errors.append(text if located else f"{sources.origin}: {entity_key(entity)}: {text}")
    return report


def _sample_chunks(
    entity: RawEntity,
    src: Source,
    emap: EntityMap,
    window: Window,
    sources: SourcesFile,
    settings: Settings,
    rows: int,
) -> list[Chunk] | str:
    """Return the first `rows` records of the entity as chunks, or why there are none."""
    if src.kind == "postgres":
        from lifecycle.extract import orders

        batch = orders.db_batch(entity, src, emap, window, sources, settings, limit=rows)
    elif src.kind == "jsonl" and src.partitioned:
        from lifecycle.extract import Batch, web

        root = sources.path_of(src, emap)
        assert root
        files = web.list_files(root, None, window.last_date())
        if not files:
            return f"no event files under {root}"
        batch = Batch(chunks=web.file_chunks(files))
    else:
        from lifecycle.extract import _connector

        batch = _connector(entity, window.last_date(), window, src, emap, sources, settings, "")
    if batch.skip is not None:
        return batch.skip
    assert batch.chunks is not None
    return _take(batch.chunks, rows)


def _take(chunks: Iterator[Chunk], rows: int) -> list[Chunk]:
    """Return the chunks of the first `rows` rows (the last one cut), closing the rest."""
    taken: list[Chunk] = []
    count = 0
    try:
        for chunk in chunks:
            left = rows - count
            if chunk.table.num_rows > left:
                chunk = Chunk(
                    chunk.table.slice(0, left),
                    chunk.source,
                    chunk.lines[:left],
                    chunk.rejects,
                    None if chunk.sources is None else chunk.sources.slice(0, left),
                )
            taken.append(chunk)
            count += chunk.table.num_rows + len(chunk.rejects)
            if count >= rows:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return taken


#: The mapping step's reasons: ``field: 'value' does not match the format '%d/%m/%Y'``.
_MAPPING = re.compile(r"^(\w+): ('(?:[^'\\]|\\.)*') ((?:is|does) .*)$", re.S)
_INVALID = re.compile(r"^(\w+): (.*) is not a valid (\w+)$", re.S)
_EMPTY = re.compile(r"^(\w+) is empty$")
_NEGATIVE = re.compile(r"^(\w+) (.*) is negative$", re.S)
_FUTURE = re.compile(r"^(\w+) (.*) is in the future .*$", re.S)


def _split_reason(part: str, names: tuple[str, ...]) -> tuple[str | None, str, str | None]:
    """Return (field, what is wrong, the offending value) of one checker or mapping reason."""
    m = _MAPPING.match(part)
    if m and m.group(1) in names:
        return m.group(1), m.group(3), m.group(2)
    m = _INVALID.match(part)
    if m and m.group(1) in names:
        return m.group(1), f"not a valid {m.group(3)}", m.group(2)
    m = _EMPTY.match(part)
    if m and m.group(1) in names:
        return m.group(1), "empty", None
    m = _NEGATIVE.match(part)
    if m and m.group(1) in names:
        return m.group(1), "negative", m.group(2)
    m = _FUTURE.match(part)
    if m and m.group(1) in names:
        return m.group(1), "in the future", m.group(2)
    head = part.split(":", 1)[0]
    if head in names and ":" in part:
        return head, part.split(":", 1)[1].strip(), None
    return None, re.sub(r"\(.*\)$", "", part).strip(), None


def _check_sample(
    report: EntityReport,
    entity: RawEntity,
    src: Source,
    emap: EntityMap,
    sources: SourcesFile,
    settings: Settings,
    chunks: list[Chunk],
    window: Window,
) -> None:
    from lifecycle.extract.mapping import Mapper
    from lifecycle.load import reject_hint

    report.rows = sum(c.table.num_rows + len(c.rejects) for c in chunks)
    strict = src.kind in ("csv", "excel", "parquet", "postgres")
    fields = {
        f.name: FieldReport(f.name, describe_mapping(entity, emap, f.name)) for f in entity.fields
    }
    report.fields = list(fields.values())
    seen: set[tuple[str, ...]] = set()
    for chunk in chunks:
        # what the reader says of the file (a workbook's sheets left unread)
        report.notes += [w for w in chunk.warnings if w not in report.notes]
        names = tuple(chunk.table.column_names)
        if names not in seen and (chunk.table.num_rows or names):
            seen.add(names)
            check_header(entity, emap, sources, names, chunk.source, strict=strict)
            for fr in fields.values():
                if emap.field_map(fr.name) is None and fr.name not in names:
                    fr.mapping = "- (not mapped, no such column: empty)"
                    if fr.name == "currency":  # the mapping step fills it in
                        fr.mapping = f"- (the source's currency, {sources.currency_of(src, emap)})"
            if not strict:
                for fname, fmap in emap.columns.items():
                    missing = [
                        c
                        for c in fmap.source_columns
                        if c not in names and not _nested_in(c, set(names))
                    ]
                    if missing:
                        report.notes.append(
                            f"{fname}: column {missing[0]!r} is in no record of the sample"
                        )
    mapper = Mapper(entity, src, emap, sources)
    # No cursor: every sampled row counts, whatever day it belongs to.
    checker = Checker(entity, window, None, timezone=mapper.timezone)
    order_ids: collections.Counter[tuple] = collections.Counter()
    buyers: dict[str, set[str]] = collections.defaultdict(set)  # customer_id -> order ids
    for mapped in mapper.map_chunks(chunks):
        checked = checker.check(mapped)
        # what the load would warn of (amounts below a cent stored as 0.00, ...)
        report.notes += [w for w in checked.warnings if w not in report.notes]
        report.mapped += mapped.table.num_rows
        report.unread += len(mapped.rejects)
        if entity.entity == "orders" and {"order_id", "customer_id"} <= set(
            checked.table.column_names
        ):
            for who, oid in zip(
                checked.table.column("customer_id").to_pylist(),
                checked.table.column("order_id").to_pylist(),
                strict=True,
            ):
                buyers[who].add(oid)
        lines_as_orders = entity.entity == "orders" and emap.grain == "order"
        if lines_as_orders and "order_id" in mapped.table.column_names:
            # a version of an order (a refund naming it) repeats its id at another time
            ids = mapped.table.column("order_id").to_pylist()
            names = mapped.table.column_names
            when = mapped.table.column("updated_at").to_pylist() if "updated_at" in names else []
            order_ids.update((v, *when[i : i + 1]) for i, v in enumerate(ids) if v)
        _tally_values(fields, mapped, checked)
        for _source, _line, reason, _payload in checked.quarantine:
            report.quarantined += 1
            touched: set[str] = set()
            for part in split_reasons(reason, entity.names):
                fname, what, value = _split_reason(part, entity.names)
                if fname is None:
                    report.row_reasons[what] += 1
                    continue
                fr = fields[fname]
                if fname not in touched:
                    fr.quarantined += 1
                    touched.add(fname)
                fr.reasons[what] += 1
                if what not in ("empty", "negative", "in the future"):
                    fr.unparsed += 1
                if value is not None:
                    fr.examples.setdefault(what, value)
    report.notes += _utc_named(entity, src, emap, sources)
    broken = [w for w in report.row_reasons if w.startswith("broken encoding")]
    if hint := next((reject_hint(w) for w in broken if reject_hint(w)), ""):
        # Below the reject limit such lines are quarantined quietly: say what to do.
        n = sum(report.row_reasons[w] for w in broken)
        report.notes.append(f"{n} sampled line(s) are not valid UTF-8{hint}")
    repeats = sum(n - 1 for n in order_ids.values() if n > 1)
    if repeats:
        report.notes.append(
            f"order_id repeats on {repeats} of {report.mapped} sampled rows: if each row is an "
            "order line (a Shopify export has one row per item, the order's fields on its "
            "first), set grain: line to sum the lines into one order"
        )
    report.notes += _placeholder_customer(buyers, emap)
    report.notes += _one_order_each(buyers)
    amount = emap.field_map("amount") if entity.entity == "orders" else None
    if amount is not None and amount.kind == "constant" and _is_zero(amount.constant):
        report.notes.append(
            "amount is the constant 0: every order is worth nothing, so revenue, LTV, RFM's "
            "monetary score and the CLV model are 0 or left empty; map the column of the "
            "order's total where the export has one"
        )
    _judge(report, entity, emap, sources, settings)


def _placeholder_customer(buyers: dict[str, set[str]], emap: EntityMap) -> list[str]:
    """Return a note when one customer_id holds a share of the orders no real buyer has.

    Shops write a placeholder for guest checkouts (WooCommerce: 0; others: "guest", "-"):
    every guest then becomes one customer with thousands of orders, whose lifecycle stage,
    churn risk and CLV mean nothing. Nothing fails on it, so only the sample can tell.
    """
    orders = sum(len(ids) for ids in buyers.values())
    if len(buyers) < 3 or orders < 20:
        return []
    who, ids = max(buyers.items(), key=lambda kv: len(kv[1]))
    if len(ids) < max(5, 0.2 * orders):
        return []
    column = emap.field_map("customer_id")
    source = f"column {column.source_columns[0]!r}" if column and column.source_columns else "it"
    return [
        f"customer_id {who!r} is on {len(ids)} of {orders} sampled orders "
        f"({len(ids) / orders:.0%}): if it stands for guest checkouts, every guest becomes "
        f"one customer; map customer_id from {source} only where it is a real id, e.g. "
        "from the customer's email (customer_id: <email column>)"
    ]


def _is_zero(value: object) -> bool:
    try:
        return float(str(value).replace(",", ".")) == 0
    except ValueError:
        return False


def _one_order_each(buyers: dict[str, set[str]]) -> list[str]:
    """Return a note when no sampled customer_id has a second order.

    Some exports give each order a customer id of its own (Olist's orders file: the person
    is ``customer_unique_id`` in another file). Everything loads, and training then finds
    that nobody ever orders again; only the sample can tell it beforehand.
    """
    orders = sum(len(ids) for ids in buyers.values())
    if orders < 200 or any(len(ids) > 1 for ids in buyers.values()):
        return []
    return [
        f"none of the {len(buyers)} sampled customers has a second order: if customer_id is "
        "new with every order, it names the order, not the person; map customer_id from the "
        "column that names the person (an email, a customer number), or churn has nobody "
        "who stays to learn from"
    ]


#: A column name that says its times are UTC (Stripe's "Created (UTC)", "date_gmt").
_SAYS_UTC = re.compile(r"(?<![A-Za-z])(UTC|GMT)(?![A-Za-z])", re.I)


def _utc_named(entity: RawEntity, src: Source, emap: EntityMap, sources: SourcesFile) -> list[str]:
    """Return notes on timestamp fields read from a column named UTC in another zone.

    Its times without an offset would be read in the business zone, hours off, and every
    one of them parses: nothing else would tell.
    """
    notes = []
    for f in entity.fields:
        fmap = emap.field_map(f.name)
        if f.type != "timestamp" or fmap is None or fmap.format in ("epoch_s", "epoch_ms"):
            continue
        zone = sources.timezone_of(src, emap, fmap)
        said = [c for c in fmap.source_columns if _SAYS_UTC.search(c)]
        if said and zone != "UTC":
            notes.append(
                f"{f.name}: column {said[0]!r} says UTC, but its times without an offset are "
                f"read in {zone}: set {entity_key(entity)}.columns.{f.name}.timezone: UTC"
            )
    return notes


def _tally_values(fields: dict[str, FieldReport], mapped: Chunk, checked) -> None:
    typed = checked.values if checked.values is not None else checked.table
    errors = getattr(mapped, "errors", None) or {}
    for name, fr in fields.items():
        if name in mapped.table.column_names:
            column = mapped.table.column(name)
            if not pa.types.is_string(column.type):
                column = column.cast(pa.string())
            failed = errors[name].to_pylist() if name in errors else [None] * len(column)
            fr.present += sum(
                1
                for v, e in zip(column.to_pylist(), failed, strict=True)
                if v not in (None, "") or e is not None
            )
        if len(fr.values) >= SAMPLE_VALUES or name not in typed.column_names:
            continue
        for v in itertools.islice(typed.column(name).to_pylist(), 0, 200):
            text = _show(v)
            if v is not None and text not in fr.values:
                fr.values.append(text)
                if len(fr.values) >= SAMPLE_VALUES:
                    break


def _show(v: object) -> str:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


_DATE_PARTS = re.compile(
    r"^(\d{1,4})([/.-])(\d{1,2})\2(\d{2}|\d{4})"
    r"(?:[ T](\d{1,2}):(\d{2})(:\d{2})?(\s*[AaPp][Mm])?)?$"
)


def _format_hint(example: str | None) -> str:
    """Return a hint with a strptime format that reads `example` (a quoted sampled value),
    e.g. ``'%m/%d/%y'`` for ``'03/05/24'``, or a generic one when none is found."""
    import ast

    import pyarrow.compute as pc

    generic = "; give the column's format, e.g. format: '%d/%m/%Y %H:%M'"
    try:
        value = ast.literal_eval(example) if example else None
    except (ValueError, SyntaxError):
        value = None
    number = value.strip() if isinstance(value, str) else ""
    if re.fullmatch(r"\d{1,5}(\.\d+)?", number):
        # a day count (Dunnhumby's DAY 1..711), or a spreadsheet's serial date
        return (
            "; a spreadsheet's serial date (45356 is 2024-03-05) reads with format: excel_serial"
            if 20_000 <= float(number) < 80_000
            else "; a number of days from some first day reads with format: epoch_days "
            "and origin: <the day numbered 0>"
        )
    if re.fullmatch(r"\d{10}(\.\d+)?|\d{13}", number):
        unit = "epoch_ms" if len(number) == 13 else "epoch_s"
        return f"; seconds or milliseconds since 1970 read with format: {unit}"
    m = _DATE_PARTS.match(value.strip()) if isinstance(value, str) else None
    if m is None or len(m.group(1)) == 4:
        return generic
    first, sep, second, year, hour, _, seconds, ampm = m.groups()
    # US month first with '/', day first with '.' and '-', unless the first can only be a day
    day_first = sep != "/" or int(first) > 12
    date = (f"%d{sep}%m" if day_first else f"%m{sep}%d") + sep + ("%Y" if len(year) == 4 else "%y")
    clock = ""
    if hour is not None:
        clock = (" %I:%M" if ampm else " %H:%M") + (":%S" if seconds else "")
        if ampm:
            clock += " %p" if ampm[0].isspace() else "%p"
    fmt = date + clock
    text = value.strip().replace("T", " ")
    parsed = pc.strptime(pa.array([text]), format=fmt, unit="us", error_is_null=True)
    if parsed[0].as_py() is None:
        return generic
    other = ""
    if not day_first and int(second) <= 12:
        other = f"; {fmt.replace('%m/%d', '%d/%m')!r} if the day comes first"
    return f"; give the column's format: format: {fmt!r} fits {value!r}{other}"


def _judge(
    report: EntityReport,
    entity: RawEntity,
    emap: EntityMap,
    sources: SourcesFile,
    settings: Settings,
) -> None:
    """Turn what the sample shows into errors naming the field and the offending value."""
    from lifecycle.load import reject_hint

    key = f"{sources.origin}: {entity_key(entity)}"
    for fr in report.fields:
        f = entity.field(fr.name)
        if fr.present and fr.unparsed >= fr.present:
            what = next((w for w, _ in fr.reasons.most_common() if w in fr.examples), None)
            fmap = emap.field_map(fr.name)
            hint = ""
            if f.type in ("timestamp", "date") and (fmap is None or fmap.format is None):
                hint = _format_hint(fr.examples.get(what) if what else None)
            if what is None:
                said = fr.reasons.most_common(1)[0][0]
            else:
                said = f"{fr.examples[what]} {'is ' + what if what.startswith('not ') else what}"
            report.errors.append(
                f"{key}.columns.{fr.name}: every sampled value fails: {said} "
                f"(from {fr.mapping}){hint}"
            )
        elif not f.nullable and report.mapped and fr.reasons.get("empty", 0) >= report.mapped:
            report.errors.append(
                f"{key}.columns.{fr.name}: empty in every sampled row (from {fr.mapping})"
            )
    if report.errors or not (report.mapped or report.row_reasons):
        return
    if report.share > (limit := emap.reject_limit(settings)):
        worst = max(report.fields, key=lambda fr: fr.quarantined)
        if worst.quarantined:
            what, _ = worst.reasons.most_common(1)[0]
            value = worst.examples.get(what)
            top = f"{worst.name}: {what}" + (f", e.g. {value}" if value else "")
            where = f"{key}.columns.{worst.name}"
        else:
            top = report.row_reasons.most_common(1)[0][0]
            where = key
        report.errors.append(
            f"{where}: {report.share:.1%} of {report.considered} "
            f"sampled rows would be quarantined, more than an extract allows "
            f"({limit:.1%}, {entity_key(entity)}.max_reject_share or LIFECYCLE_MAX_REJECT_SHARE); "
            f"most: {top}" + reject_hint(top)
        )


def format_report(report: EntityReport) -> list[str]:
    """Return the lines `lifecycle sources check` prints for one entity."""
    name = report.entity.qualified
    if report.skipped:
        return [f"{name}: skipped ({report.skipped})"]
    head = f"{name} <- {report.source}"
    if not report.fields:
        return [head]
    lines = [
        head,
        f"  {report.rows} rows sampled, {report.mapped} after mapping, {report.quarantined} "
        f"would be quarantined ({report.share:.1%})",
    ]
    width = max(len(fr.name) for fr in report.fields)
    mwidth = min(max(len(fr.mapping) for fr in report.fields), 60)
    shown = {
        fr.name: _clip(" | ".join(_clip(v, 26) for v in fr.values) or "-", 84)
        for fr in report.fields
    }
    vwidth = max(len(v) for v in shown.values())
    lines.append(f"  {'field':<{width}}  {'from':<{mwidth}}  {'values':<{vwidth}}  quarantined")
    for fr in report.fields:
        values = shown[fr.name]
        share = fr.quarantined / report.mapped if report.mapped else 0.0
        bad = f"{share:6.1%}"
        if fr.reasons:
            bad += "  " + ", ".join(
                f"{what} x{n}"
                + (f" (e.g. {_clip(fr.examples[what], 30)})" if what in fr.examples else "")
                for what, n in fr.reasons.most_common(3)
            )
        lines.append(
            f"  {fr.name:<{width}}  {_clip(fr.mapping, 60):<{mwidth}}  {values:<{vwidth}}  {bad}"
        )
    for what, n in report.row_reasons.most_common(3):
        lines.append(f"  (whole rows)  {what} x{n}")
    lines += [f"  note: {n}" for n in report.notes]
    return lines


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
