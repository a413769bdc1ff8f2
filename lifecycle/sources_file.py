"""The sources file: where each source's data is and how it maps onto the raw contracts.

A company's own tables and files rarely look like the raw contracts of
:mod:`lifecycle.raw`. The sources file (``sources.yml``; ``LIFECYCLE_SOURCES_FILE``
names another) says, per source and entity, where the data lives (a PostgreSQL table or
query, a file glob, a REST endpoint), how its columns map onto contract fields (a column,
a SQL expression, a constant, a recoding of values), how to parse it (CSV dialect,
encoding, date formats, time zone of naive timestamps, decimal comma) and how it is
loaded (incremental by a cursor, or a full refresh each run). The business block sets
the time zone whose midnights are the day boundaries and the reporting currency.

The file follows the vocabulary of tools data engineers already use: dbt's ``sources``
(one block per source with its tables), RudderStack Profiles' ``inputs`` (a contract
field selects a column or an expression), Airbyte / Meltano tap-csv's CSV options
(``delimiter``, ``quote_char``, ``encoding``, ``null_values``), dlt's ``rest_api``
(``paginator``, ``data_selector``) and ``incremental``, Fivetran's pass-through columns.

It is validated with pydantic (``lifecycle sources schema`` prints the JSON Schema, for
editors) and against the contracts before anything is read, so a wrong file fails with
one message naming the file, the key and the value. Credentials never live in it: a
connection names an environment variable, or an Airflow Connection id resolved when the
DAGs run under Airflow.

Without a sources file, :func:`builtin_sources` describes today's layout (the sample
world's files, the shop database, the CRM API from the ``LIFECYCLE_*`` settings), so
everything behaves as it did: the sample world is just one configured set of sources.
"""

from __future__ import annotations

import codecs
import datetime as dt
import glob as globmod
import hashlib
import json
import re
import zoneinfo
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lifecycle.config_yaml import describe_error, load_config
from lifecycle.raw import ENTITIES, RawEntity
from lifecycle.settings import Settings, get_settings

#: The extract sources and the raw entities each one feeds.
SOURCE_ENTITIES: dict[str, tuple[str, ...]] = {
    "crm": ("contacts",),
    "web": ("events",),
    "orders": ("orders", "order_items"),
    "marketing": ("spend",),
    "fx": ("rates",),
}

#: Values a recoded field may take after mapping (what the marts and gates accept).
CANONICAL_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    (e.table, f.name): f.one_of for e in ENTITIES.values() for f in e.fields if f.one_of
}

#: Planning rates (units of the reporting currency per unit) used when neither the
#: rates file nor ``business.fixed_rates`` gives one; they are relative to USD, so they
#: apply only while the reporting currency is USD.
USD_PLANNING_RATES: dict[str, float] = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}

#: strptime directives pyarrow's C strptime understands (and what they mean here). Not
#: %Z: it matches any word (PST, CET, UTC) and ignores it, so the time would silently be
#: read in the field's zone instead of the one it names.
_STRPTIME_DIRECTIVES = set("aAbBcdHIjmMpSUwWyYz%") | {"f", "e", "h", "n", "t", "T", "D", "R"}
#: Formats that are not strptime patterns.
SPECIAL_FORMATS = ("iso", "epoch_s", "epoch_ms", "epoch_days", "excel_serial")
#: The file a sources file is looked for under when LIFECYCLE_SOURCES_FILE is not set.
DEFAULT_FILE_NAME = "sources.yml"
#: How much of a bad value an error message echoes.
ECHO_LIMIT = 200


class SourcesFileError(ValueError):
    """The sources file cannot be used; the message names the file, key and value."""


def _echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "...(truncated)"


class _Strict(BaseModel):
    """A block of the file: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_zone(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from exc
    return name


def _check_currency(code: str | None) -> str | None:
    if code is None:
        return None
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"{code!r} is not an ISO 4217 currency code (three capital letters)")
    return code


def check_format(fmt: str) -> str:
    """Return `fmt` if it is a date/time format the mapping step can apply, else raise."""
    if fmt in SPECIAL_FORMATS:
        return fmt
    if "%" not in fmt:
        raise ValueError(
            f"{fmt!r} is not a date format: use strptime directives (e.g. '%m/%d/%Y %H:%M') "
            f"or one of {', '.join(SPECIAL_FORMATS)}"
        )
    for m in re.finditer(r"%(.)", fmt.replace("%%", "")):
        if m.group(1) == "Z":
            raise ValueError(
                f"{fmt!r}: %Z (a zone name such as PST or CET) cannot be read: a name "
                "does not say which zone it is (CST is Chicago or Shanghai). Leave the name "
                "out and give the zone its times are in with timezone: (e.g. "
                "America/Los_Angeles for PST/PDT); %z reads numeric offsets (-0800)"
            )
        if m.group(1) not in _STRPTIME_DIRECTIVES:
            raise ValueError(f"{fmt!r}: %{m.group(1)} is not a strptime directive")
    try:
        dt.datetime.now().strftime(fmt)
    except ValueError as exc:
        raise ValueError(f"{fmt!r} is not a valid date format: {exc}") from exc
    return fmt


def _yaml_word(value: Any) -> str:
    """Return how `value` is written in YAML (true, not True) for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else _echo(value)


def _whole(value: Any) -> Any:
    # pydantic reads true as 1: `skip_rows: true` would skip one line unasked.
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a whole number, got {_yaml_word(value)}")
    return value


def _number(value: Any) -> Any:
    # pydantic reads true as 1.0: `scale: true` is not a number.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {_yaml_word(value)}")
    return value


#: A count: an integer, never a boolean (true is not 1 here).
WholeNumber = Annotated[int, BeforeValidator(_whole)]
#: A number: an integer or a decimal, never a boolean.
Number = Annotated[float, BeforeValidator(_number)]

Zone = Annotated[
    str,
    AfterValidator(_check_zone),
    Field(description="IANA time zone name, e.g. UTC or Europe/Berlin"),
]
Currency = Annotated[
    str, AfterValidator(_check_currency), Field(description="ISO 4217 code, e.g. USD")
]
TimeRule = Literal["earliest", "latest", "reject"]


#: The kinds of sources read from files (a path, a glob or an fsspec URL).
FILE_KINDS = ("csv", "excel", "jsonl", "parquet")

#: The `delimiter` word for fields separated by runs of spaces or tabs.
WHITESPACE = "whitespace"
#: Codecs that look up but cannot decode a file (undefined refuses everything; idna and
#: punycode encode host names and refuse the reader's error handler).
_NOT_FILE_ENCODINGS = {"undefined", "idna", "punycode"}
#: What a clash of a CSV dialect character with an earlier one (the key) suggests.
_CLASH = {
    "delimiter": " (null for none)",
    "quote_char": " (a quote doubled inside a quoted field needs no escape_char)",
}
#: Encodings an error message suggests.
_ENCODING_EXAMPLES = "e.g. utf-8, latin-1, cp1252"


class CsvFormat(_Strict):
    """The dialect of delimited text files (Airbyte's CsvFormat / tap-csv words)."""

    delimiter: str = Field(
        ",",
        description="one character ('\\t' for tab-separated), or 'whitespace': fields "
        "separated by runs of spaces or tabs, as in aligned text exports (no quoting)",
    )
    quote_char: str | None = Field(
        '"', description="one character, or null for none", validate_default=True
    )
    escape_char: str | None = Field(None, description="one character, or null for none")
    encoding: str = Field("utf-8", description="a text encoding: utf-8, latin-1, cp1252, ...")
    header: bool = Field(True, description="the first line (after skip_rows) names the columns")
    column_names: list[str] | None = Field(None, description="the columns when header is false")
    skip_rows: WholeNumber = Field(0, ge=0, description="lines before the header (report titles)")
    null_values: list[str] = Field(default_factory=lambda: [""], description="read as empty")
    decimal_separator: Literal[".", ","] = "."
    thousands_separator: str | None = Field(None, description="e.g. ',' in 1,234.50")
    true_values: list[str] | None = None
    false_values: list[str] | None = None
    compression: Literal["infer", "none", "gzip", "bz2", "zstd"] = "infer"
    sheet: str | int | list[str | int] | None = Field(
        None,
        description="excel: the sheet, by name or position from 0, a list of them, or all "
        "(every sheet, of the same columns); default the first",
    )

    @field_validator("delimiter", "quote_char", "escape_char")
    @classmethod
    def _one_char(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.field_name == "delimiter" and v == WHITESPACE:
            return v
        if v is not None and len(v.encode("utf-8")) != 1:
            raise ValueError(f"{v!r} must be exactly one (single-byte) character")
        if v in ("\r", "\n"):
            raise ValueError(f"{v!r} ends lines: it cannot be the {info.field_name}")
        # The three must differ (the CSV readers cannot tell them apart otherwise); each
        # is compared with those before it, validated first (the default '"' included).
        for other in ("delimiter", "quote_char"):
            if other == info.field_name:
                break
            if v is not None and v == info.data.get(other):
                raise ValueError(f"{v!r} is also the {other}: they must differ{_CLASH[other]}")
        return v

    @field_validator("sheet", mode="before")
    @classmethod
    def _sheet(cls, v: Any) -> Any:
        for one in v if isinstance(v, list) else [v]:
            if isinstance(one, (bool, float)) or (isinstance(v, list) and one is None):
                raise ValueError(
                    f"expected a sheet name or position (0, 1, ...), all, or a list of them, "
                    f"got {_yaml_word(one)}"
                )
        if isinstance(v, list) and not v:
            raise ValueError("expected a sheet name or position (0, 1, ...), got an empty list")
        return v

    @field_validator("encoding")
    @classmethod
    def _codec(cls, v: str) -> str:
        try:
            codec = codecs.lookup(v)
        except LookupError as exc:
            raise ValueError(f"{v!r} is not a known text encoding ({_ENCODING_EXAMPLES})") from exc
        # hex, base64, zlib, rot13 ... are codecs but not text encodings: bytes to bytes.
        text = getattr(codec, "_is_text_encoding", True) is not False
        if not text or codec.name in _NOT_FILE_ENCODINGS:
            raise ValueError(f"{v!r} is not a text encoding ({_ENCODING_EXAMPLES})")
        return v

    @model_validator(mode="after")
    def _names(self) -> CsvFormat:
        if not self.header and not self.column_names:
            raise ValueError("header: false needs column_names: [...]")
        if self.thousands_separator and self.thousands_separator == self.decimal_separator:
            raise ValueError("thousands_separator and decimal_separator must differ")
        return self


#: The keys that say where a field's value comes from (a mapping gives exactly one).
_SOURCE_KEYS = ("column", "sql", "constant", "concat", "multiply", "coalesce")


class FieldMap(_Strict):
    """How one contract field gets its value: exactly one of column, sql, constant,
    concat, multiply or coalesce, then optional parsing (format, timezone) and recoding."""

    column: str | None = Field(None, description="source column (JSON: a dotted path)")
    sql: str | None = Field(None, description="SQL expression evaluated in the source DB")
    constant: str | int | float | bool | None = Field(None, description="every row gets it")
    concat: list[str] | None = Field(None, description="source columns joined by separator")
    separator: str = ""
    multiply: list[str] | None = Field(None, description="product of numeric columns")
    coalesce: list[str] | None = Field(
        None, description="source columns: the first one that is not empty, row by row"
    )
    format: str | None = Field(
        None, description="strptime format, iso, epoch_s, epoch_ms, epoch_days, excel_serial"
    )
    origin: dt.date | None = Field(
        None,
        description="format epoch_days: the day numbered 0 (default 1970-01-01); day N is "
        "origin + N days",
    )
    timezone: Zone | None = Field(None, description="zone of naive timestamps in this column")
    values: dict[str, str] | None = Field(None, description="recoding: source value -> value")
    default: str | None = Field(None, description="value for source values not in `values`")
    scale: Number | None = Field(None, description="multiply numbers, e.g. 0.01 for cents")

    @field_validator("values", mode="before")
    @classmethod
    def _text_words(cls, v: Any) -> Any:
        # A YAML file gives text keys (its loader keeps `yes` as written); a document
        # built elsewhere may not, and True would otherwise show as "values.True".
        if isinstance(v, Mapping):
            for key in v:
                if not isinstance(key, str):
                    word = _yaml_word(key) if key is None or isinstance(key, bool) else str(key)
                    raise ValueError(
                        f"the key {word} is not text: write it in quotes ('{word}': ...)"
                    )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> FieldMap:
        given = [k for k in _SOURCE_KEYS if self._has(k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(_SOURCE_KEYS)} (got {', '.join(given) or 'none'})"
            )
        if self.format is not None:
            check_format(self.format)
        if self.origin is not None and self.format != "epoch_days":
            raise ValueError("origin applies to format: epoch_days (a count of days)")
        if self.default is not None and self.values is None:
            raise ValueError("default applies to values: give values too")
        return self

    def _has(self, key: str) -> bool:
        return key in self.model_fields_set and (key == "constant" or getattr(self, key))

    @property
    def kind(self) -> str:
        """Which of column, sql, constant, concat, multiply, coalesce this mapping uses."""
        for k in _SOURCE_KEYS:
            if self._has(k):
                return k
        raise AssertionError(self)  # pragma: no cover - the validator rules it out

    @property
    def source_columns(self) -> tuple[str, ...]:
        """The source columns this mapping reads (none for sql and constant)."""
        if self.column:
            return (self.column,)
        return tuple(self.concat or self.multiply or self.coalesce or ())


class Refunds(_Strict):
    """How refunds arrive, beside orders whose status says so."""

    negative_amount: bool = Field(
        False, description="a row with a negative amount is a refund (status refunded)"
    )
    column: str | None = Field(None, description="a source column that marks refunds ...")
    starts_with: str | None = Field(None, description="... when its value starts with this")
    equals: list[str] | None = Field(None, description="... or equals one of these")
    refund_of: str | None = Field(
        None,
        description="source column naming the refunded order: the refund becomes a "
        "refunded version of that order instead of an order of its own",
    )
    refunded_amount: str | None = Field(
        None,
        description="source column holding how much of the order was refunded (Shopify's "
        "Refunded Amount): a partial refund leaves the order at what was kept, a whole "
        "one makes it refunded",
    )

    #: The keys that name a source column.
    COLUMN_KEYS: ClassVar[tuple[str, ...]] = ("column", "refund_of", "refunded_amount")

    @property
    def source_columns(self) -> set[str]:
        """The source columns the refund rules read."""
        return {c for c in (getattr(self, k) for k in self.COLUMN_KEYS) if c}

    @model_validator(mode="after")
    def _marker(self) -> Refunds:
        if (self.starts_with or self.equals) and not self.column:
            raise ValueError("starts_with / equals need column")
        if self.column and not (self.starts_with or self.equals):
            raise ValueError("column needs starts_with or equals")
        return self


class EntityMap(_Strict):
    """One raw entity of a source: where its rows are and how they map."""

    skip: bool = Field(False, description="the source has no such entity: skip it")
    table: str | None = Field(None, description="postgres: schema.table or view")
    query: str | None = Field(None, description="postgres: a SQL query instead of a table")
    path: str | None = Field(None, description="files: file, glob or fsspec URL")
    format: CsvFormat | None = None
    cursor: str | None = Field(None, description="contract field placing rows in load windows")
    sync: Literal["incremental", "full_refresh"] = Field(
        "incremental", description="full_refresh: every run reads everything"
    )
    grain: Literal["order", "line"] = Field(
        "order", description="orders: line = one row per order line, summed per order_id"
    )
    columns: dict[str, FieldMap] = Field(
        default_factory=dict, description="contract field: source column, or a mapping"
    )
    refunds: Refunds | None = None
    extra_columns: list[str] | Literal["all"] = Field(
        "all", description="unmapped source columns kept in _extra"
    )
    timezone: Zone | None = None
    currency: Currency | None = None
    max_reject_share: Number | None = Field(
        None,
        ge=0,
        le=1,
        description="share of a batch's rows that may be quarantined before the batch is "
        "refused (default: LIFECYCLE_MAX_REJECT_SHARE)",
    )

    def reject_limit(self, settings: Settings) -> float:
        """Return the share of rows a load of this entity may quarantine."""
        if self.max_reject_share is not None:
            return self.max_reject_share
        return settings.max_reject_share

    @field_validator("columns", mode="before")
    @classmethod
    def _bare_columns(cls, v: Any) -> Any:
        # `field: "Source Column"` is short for `field: {column: "Source Column"}`.
        if isinstance(v, Mapping):
            return {k: {"column": c} if isinstance(c, str) else c for k, c in v.items()}
        return v

    @model_validator(mode="after")
    def _where(self) -> EntityMap:
        if self.table and self.query:
            raise ValueError("give table or query, not both")
        return self

    def field_map(self, name: str) -> FieldMap | None:
        """Return the mapping of contract field `name`, or None when it is not mapped."""
        return self.columns.get(name)


class Paginator(_Strict):
    """dlt's cursor paginator: the next-page cursor in the body, sent back as a param."""

    type: Literal["cursor"] = "cursor"
    cursor_path: str = "paging.next.after"
    cursor_param: str = "after"


class Incremental(_Strict):
    """dlt's incremental params: the load window's bounds as query parameters."""

    start_param: str = "updatedAfter"
    end_param: str = "updatedBefore"


class Endpoint(_Strict):
    """A REST endpoint in dlt's rest_api words."""

    path: str = "/crm/v3/objects/contacts"
    params: dict[str, str | int] = Field(default_factory=lambda: {"limit": 100})
    data_selector: str = "results"
    paginator: Paginator = Field(default_factory=Paginator)
    incremental: Incremental = Field(default_factory=Incremental)
    max_pages: WholeNumber = Field(
        100_000, ge=1, description="stop (with an error) after this many"
    )


class Source(_Strict):
    """One source system."""

    kind: Literal["postgres", "csv", "excel", "jsonl", "parquet", "rest"]
    connection: str | None = Field(None, description="name in connections (postgres, rest)")
    path: str | None = Field(None, description="files: file, glob or fsspec URL")
    partitioned: bool = Field(
        False, description="jsonl: path is a root of dt=YYYY-MM-DD/ partitions (web events)"
    )
    base_url: str | None = Field(None, description="rest: base URL (no secrets in it)")
    endpoint: Endpoint | None = None
    format: CsvFormat | None = None
    timezone: Zone | None = None
    currency: Currency | None = None
    ambiguous_time: TimeRule | None = None
    nonexistent_time: TimeRule | None = None
    entities: dict[str, EntityMap] = Field(default_factory=dict)


class Connection(_Strict):
    """Where a secret-bearing URL or token comes from; never the secret itself."""

    env: str | None = Field(None, description="environment variable holding the URL")
    token_env: str | None = Field(None, description="environment variable holding a token")
    airflow_conn_id: str | None = Field(None, description="Airflow Connection id")

    @model_validator(mode="after")
    def _some(self) -> Connection:
        if not (self.env or self.token_env or self.airflow_conn_id):
            raise ValueError("give env, token_env or airflow_conn_id")
        return self


class Business(_Strict):
    """The company's own calendar and money."""

    timezone: Zone = Field("UTC", description="midnights here are the days of the pipeline")
    currency: Currency = Field("USD", description="reporting currency of every money column")
    rates: str | None = Field(
        None,
        description="CSV of daily rates: date,currency,rate (reporting units per unit); "
        "short for sources.fx (kind csv, full refresh), landed in raw.fx__rates",
    )
    fixed_rates: dict[str, Number] | None = Field(
        None, description="planning rates per currency, used where the rates file has none"
    )

    @field_validator("fixed_rates")
    @classmethod
    def _rates(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for code, rate in (v or {}).items():
            _check_currency(code)
            if not rate > 0:
                raise ValueError(f"the rate of {code} must be positive, not {rate!r}")
        return v

    @property
    def planning_rates(self) -> dict[str, float]:
        """Rates to the reporting currency known without the rates file: the sample
        world's USD_PLANNING_RATES with a USD reporting currency (a sources file's currency
        converted at one of them alone is a warning of the transform), then fixed_rates."""
        rates = dict(USD_PLANNING_RATES) if self.currency == "USD" else {}
        rates.update(self.stated_rates)
        return rates

    @property
    def stated_rates(self) -> dict[str, float]:
        """Rates to the reporting currency the sources file states (fixed_rates)."""
        return {**(self.fixed_rates or {}), self.currency: 1.0}


class Defaults(_Strict):
    """What applies to every source unless it says otherwise."""

    timezone: Zone | None = Field(None, description="of naive timestamps (default: business)")
    currency: Currency | None = Field(
        None, description="of amounts without one (default: business)"
    )
    ambiguous_time: TimeRule = "earliest"
    nonexistent_time: TimeRule = "reject"
    format: CsvFormat = Field(default_factory=CsvFormat)


class SourcesFile(_Strict):
    """The whole file."""

    version: Literal[1]
    business: Business = Field(default_factory=Business)
    defaults: Defaults = Field(default_factory=Defaults)
    connections: dict[str, Connection] = Field(default_factory=dict)
    sources: dict[Literal["crm", "web", "orders", "marketing", "fx"], Source] = Field(
        default_factory=dict
    )
    #: where it was read from ("built-in" for the default mapping); not a key of the file
    origin: str = Field("sources.yml", exclude=True)

    @cached_property
    def sha256(self) -> str:
        """A fingerprint of the mapping, recorded with each load (a changed mapping shows)."""
        doc = self.model_dump(mode="json", exclude={"origin"})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def source(self, name: str) -> Source | None:
        """Return the configuration of source `name`, or None when it is not configured."""
        return self.sources.get(name)  # type: ignore[call-overload]

    def entity(self, raw: RawEntity) -> tuple[Source, EntityMap] | None:
        """Return (source, entity mapping) of a raw entity, or None when it is absent.

        A source with one location (a file path, a REST base URL) delivers its main
        entity (the first of :data:`SOURCE_ENTITIES`: orders, not order lines) even when
        it does not list it, field by field under same-named columns. ``skip: true``, an
        unconfigured source, or another entity the source does not list means absent.
        """
        src = self.source(raw.source)
        if src is None:
            return None
        emap = src.entities.get(raw.entity)
        if emap is None:
            main = SOURCE_ENTITIES[raw.source][0] == raw.entity
            if not main or not (src.path or src.kind == "rest"):
                return None
            emap = EntityMap()
        return None if emap.skip else (src, emap)

    def absent_why(self, raw: RawEntity) -> str:
        """Return why :meth:`entity` finds `raw` absent: skipped, or not configured."""
        src = self.source(raw.source)
        emap = src.entities.get(raw.entity) if src is not None else None
        if emap is not None and emap.skip:
            return f"set to skip: true in {self.origin}"
        return f"not configured in {self.origin}"

    def timezone_of(self, src: Source, emap: EntityMap, fmap: FieldMap | None = None) -> str:
        """Return the zone naive timestamps of this field are read in."""
        return (
            (fmap.timezone if fmap else None)
            or emap.timezone
            or src.timezone
            or self.defaults.timezone
            or self.business.timezone
        )

    def currency_of(self, src: Source, emap: EntityMap) -> str:
        """Return the currency of amounts that carry none."""
        return emap.currency or src.currency or self.defaults.currency or self.business.currency

    def format_of(self, src: Source, emap: EntityMap) -> CsvFormat:
        """Return the CSV dialect of this entity's files."""
        return emap.format or src.format or self.defaults.format

    def path_of(self, src: Source, emap: EntityMap) -> str | None:
        """Return the file, glob or URL of this entity's files.

        A relative path is the sources file's folder's, as in dbt's and Meltano's files:
        under a scheduler the working directory is anyone's guess. One that names
        nothing there but does from the working directory (how it was read before) is
        still read from there.
        """
        path = emap.path or src.path
        if not path or "://" in path or Path(path).is_absolute() or self.origin == "built-in":
            return path
        beside = Path(self.origin).parent / path
        if beside.parent == Path(".") or any(globmod.glob(str(beside))):
            return str(beside)
        return path if any(globmod.glob(path)) else str(beside)

    # ------------------------------------------------------------- contract checks

    @model_validator(mode="before")
    @classmethod
    def _rates_source(cls, doc: Any) -> Any:
        # business.rates is short for an fx source: the CSV, reloaded in full each run
        # (a rates file is small and its past rows may be restated).
        if not isinstance(doc, Mapping):
            return doc
        business = doc.get("business")
        rates = business.get("rates") if isinstance(business, Mapping) else None
        sources = doc.get("sources")
        if not rates or (sources is not None and not isinstance(sources, Mapping)):
            return doc
        if sources and "fx" in sources:
            raise ValueError("business.rates and sources.fx both say where the rates are: give one")
        fx = {"kind": "csv", "path": rates, "entities": {"rates": {"sync": "full_refresh"}}}
        return {**doc, "sources": {**(sources or {}), "fx": fx}}

    @model_validator(mode="after")
    def _against_contracts(self) -> SourcesFile:
        errors: list[str] = []
        for name, src in self.sources.items():
            where = f"sources.{name}"
            _check_kind(name, src, where, errors)
            if src.connection and src.connection not in self.connections:
                known = ", ".join(self.connections) or "none"
                errors.append(
                    f"{where}.connection: {src.connection!r} is not in connections "
                    f"(defined: {known})"
                )
            for ename, emap in src.entities.items():
                ewhere = f"{where}.entities.{ename}"
                if ename not in SOURCE_ENTITIES[name]:
                    errors.append(
                        f"{ewhere}: {name} has no entity {ename!r} "
                        f"(it has: {', '.join(SOURCE_ENTITIES[name])})"
                    )
                    continue
                raw = ENTITIES.get(f"{name}__{ename}")
                if raw is None:
                    errors.append(f"{ewhere}: no raw contract {name}__{ename} in lifecycle.raw")
                elif not emap.skip:
                    _check_entity(raw, src, emap, ewhere, errors)
        if errors:
            raise ValueError("; ".join(errors))
        return self


def _check_kind(name: str, src: Source, where: str, errors: list[str]) -> None:
    allowed = {
        "crm": ("rest", "csv", "excel", "jsonl", "parquet"),
        "web": ("jsonl", "csv", "parquet"),
        "orders": ("postgres", "csv", "excel", "jsonl", "parquet"),
        "marketing": ("csv", "excel", "postgres", "jsonl", "parquet"),
        "fx": ("csv", "excel", "postgres", "jsonl", "parquet"),
    }[name]
    if src.kind not in allowed:
        errors.append(f"{where}.kind: {name} cannot be {src.kind!r} (one of: {', '.join(allowed)})")
    if src.kind == "postgres" and not src.connection:
        errors.append(f"{where}: kind postgres needs connection")
    if src.kind in FILE_KINDS and not (
        src.path or all(e.path or e.skip for e in src.entities.values()) and src.entities
    ):
        errors.append(f"{where}: kind {src.kind} needs path (a file, glob or fsspec URL)")
    if src.kind == "rest" and not (src.base_url or src.connection):
        errors.append(f"{where}: kind rest needs base_url or connection")
    sheets = [src.format] + [e.format for e in src.entities.values()]
    if src.kind != "excel" and any(f is not None and f.sheet is not None for f in sheets):
        errors.append(f"{where}: format.sheet is for kind excel (this source is {src.kind})")
    if src.partitioned and src.kind != "jsonl":
        errors.append(f"{where}.partitioned: only kind jsonl has day partitions")


def _check_entity(
    raw: RawEntity, src: Source, emap: EntityMap, where: str, errors: list[str]
) -> None:
    for fname, fmap in emap.columns.items():
        fwhere = f"{where}.columns.{fname}"
        if fname not in raw.names:
            errors.append(
                f"{fwhere}: {raw.qualified} has no field {fname!r} (fields: {', '.join(raw.names)})"
            )
            continue
        ftype = raw.field(fname).type
        if fmap.format is not None and ftype not in ("timestamp", "date"):
            errors.append(f"{fwhere}.format: {fname} is a {ftype}, not a timestamp or date")
        if fmap.scale is not None and ftype not in ("numeric", "integer"):
            errors.append(f"{fwhere}.scale: {fname} is a {ftype}, not a number")
        if fmap.multiply is not None and ftype not in ("numeric", "integer"):
            errors.append(f"{fwhere}.multiply: {fname} is a {ftype}, not a number")
        if fmap.sql is not None and src.kind != "postgres":
            errors.append(f"{fwhere}.sql: only a postgres source evaluates SQL expressions")
        canonical = CANONICAL_VALUES.get((raw.table, fname))
        if canonical and fmap.values:
            wrong = sorted({v for v in fmap.values.values() if v not in canonical})
            if wrong:
                errors.append(
                    f"{fwhere}.values: {', '.join(map(repr, wrong))} not one of "
                    f"{', '.join(canonical)}"
                )
        if canonical and fmap.default and fmap.default not in canonical:
            errors.append(
                f"{fwhere}.default: {fmap.default!r} is not one of {', '.join(canonical)}"
            )
        if canonical and fmap.kind == "constant" and str(fmap.constant) not in canonical:
            errors.append(
                f"{fwhere}.constant: {fmap.constant!r} is not one of {', '.join(canonical)}"
            )
        if fname == "currency" and fmap.kind == "constant":
            try:
                _check_currency(str(fmap.constant))
            except ValueError as exc:
                errors.append(f"{fwhere}.constant: {exc}")
    if emap.cursor is not None:
        if emap.cursor not in raw.names:
            errors.append(f"{where}.cursor: {raw.qualified} has no field {emap.cursor!r}")
        elif raw.field(emap.cursor).type not in ("timestamp", "date"):
            errors.append(f"{where}.cursor: {emap.cursor} is not a timestamp or date field")
    if emap.grain == "line" and raw.table != "orders__orders":
        errors.append(f"{where}.grain: only orders can be read from order lines")
    if emap.refunds is not None and raw.table != "orders__orders":
        errors.append(f"{where}.refunds: only orders have refunds")
    if (emap.table or emap.query) and src.kind != "postgres":
        errors.append(f"{where}: table and query are for a postgres source")
    if src.kind == "postgres" and not (emap.table or emap.query):
        errors.append(f"{where}: a postgres entity needs table or query")


# ------------------------------------------------------------------------ reading


def _pydantic_message(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(
            str(p) for p in err["loc"] if not str(p).startswith("function-") and p != "[key]"
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        elif err["type"] == "literal_error" and "input" in err:
            msg = f"{_echo(err['input'])} is not allowed: {msg}"
        lines.append(f"{origin}: {loc + ': ' if loc else ''}{msg}")
    return "; ".join(lines)


def parse_sources(doc: Any, origin: str = "sources.yml") -> SourcesFile:
    """Return the validated sources file of the YAML document `doc`."""
    if not isinstance(doc, Mapping):
        raise SourcesFileError(f"{origin}: expected a mapping with version: 1, got {_echo(doc)}")
    if "version" not in doc:
        raise SourcesFileError(f"{origin}: version: 1 is missing")
    try:
        return SourcesFile.model_validate({**doc, "origin": origin})
    except ValidationError as exc:
        raise SourcesFileError(_pydantic_message(exc, origin)) from None


def load_sources_file(path: Path) -> SourcesFile:
    """Return the validated sources file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourcesFileError(f"{path}: no such sources file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourcesFileError(f"{path}: cannot be read: {exc}") from None
    try:
        doc = load_config(text, text_keys=True)
    except yaml.YAMLError as exc:
        raise SourcesFileError(f"{path}: not valid YAML: {describe_error(exc, text)}") from None
    return parse_sources(doc, str(path))


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema of the sources file (for editors and the docs)."""
    schema = SourcesFile.model_json_schema()
    schema["properties"].pop("origin", None)
    schema["$id"] = "https://lifecycle.dev/schemas/sources-v1.json"
    schema["title"] = "Lifecycle sources file (version 1)"
    return schema


def builtin_sources(settings: Settings) -> SourcesFile:
    """Return the mapping of today's layout: the LIFECYCLE_* settings, contract names as
    column names, UTC, USD (the sample world's sources, or a user's files laid out so)."""
    sources: dict[str, Any] = {}
    connections: dict[str, Any] = {}
    if settings.crm_api_url:
        sources["crm"] = {"kind": "rest", "base_url": settings.crm_api_url, "connection": "crm_api"}
        connections["crm_api"] = {"token_env": "LIFECYCLE_CRM_TOKEN", "airflow_conn_id": "crm_api"}
    else:
        sources["crm"] = {"kind": "csv", "path": str(settings.crm_csv)}
    sources["web"] = {"kind": "jsonl", "path": settings.web_events, "partitioned": True}
    if settings.orders_source == "db":
        connections["shop_db"] = {"env": "LIFECYCLE_SHOP_DB_URL", "airflow_conn_id": "shop_db"}
        sources["orders"] = {
            "kind": "postgres",
            "connection": "shop_db",
            "entities": {
                "orders": {"table": "shop.orders"},
                "order_items": {"table": "shop.order_items"},
            },
        }
    else:
        directory = settings.orders_csv_dir
        sources["orders"] = {
            "kind": "csv",
            "entities": {
                "orders": {"path": str(directory / "orders.csv")},
                "order_items": {"path": str(directory / "order_items.csv")},
            },
        }
    sources["marketing"] = {"kind": "csv", "path": str(settings.spend_csv)}
    doc = {"version": 1, "connections": connections, "sources": sources}
    return SourcesFile.model_validate({**doc, "origin": "built-in"})


def sources_file_path(settings: Settings) -> Path | None:
    """Return the sources file the settings point at (None: use the built-in mapping)."""
    if settings.sources_file is not None:
        return settings.sources_file
    local = Path.cwd() / DEFAULT_FILE_NAME
    return local if local.is_file() else None


def load_sources(settings: Settings) -> SourcesFile:
    """Return the sources file of `settings`, or the built-in mapping when there is none."""
    path = sources_file_path(settings)
    return builtin_sources(settings) if path is None else load_sources_file(path)


def business_zone(settings: Settings | None = None) -> zoneinfo.ZoneInfo:
    """Return the business time zone of the sources file (UTC without one): its midnights
    are the days of the pipeline. Raises SourcesFileError for a wrong sources file."""
    return zoneinfo.ZoneInfo(load_sources(settings or get_settings()).business.timezone)


# -------------------------------------------------------------------- connections


def resolve_connection(
    sources: SourcesFile, name: str, settings: Settings
) -> tuple[str | None, str | None]:
    """Return (URL, token) of connection `name`, never from the sources file itself.

    Under Airflow, the Connection ``airflow_conn_id`` (``AIRFLOW_CONN_<ID>`` or a secrets
    backend) wins; elsewhere the environment variables ``env`` (a URL) and ``token_env``
    are read. Raises SourcesFileError naming what is missing.
    """
    conn = sources.connections.get(name)
    if conn is None:
        raise SourcesFileError(f"{sources.origin}: connection {name!r} is not defined")
    url = token = None
    if conn.airflow_conn_id:
        url, token = _airflow_connection(conn.airflow_conn_id, settings)
    if url is None and conn.env:
        url = settings.variable(conn.env)
    if token is None and conn.token_env:
        token = settings.variable(conn.token_env)
    return url, token


def _airflow_connection(conn_id: str, settings: Settings) -> tuple[str | None, str | None]:
    """Return (URI, password) of an Airflow Connection, or (None, None) when none is defined."""
    from lifecycle.orchestration.connections import find_connection

    # Outside an Airflow task only AIRFLOW_CONN_<ID> counts: no secrets backend to ask.
    in_task = bool(settings.variable("AIRFLOW_CTX_DAG_ID"))
    try:
        found = find_connection(conn_id, settings, backends=in_task)
    except Exception:  # noqa: BLE001 - unreadable: the variables are the fallback
        return None, None
    if found is None:
        return None, None
    password = found.password or None
    if found.conn_type in ("postgres", "postgresql"):
        return found.get_uri().replace("postgres://", "postgresql://", 1), password
    host = found.host or ""
    if host and "://" not in host:
        host = f"{found.schema or 'https'}://{host}" + (f":{found.port}" if found.port else "")
    return host or None, password
