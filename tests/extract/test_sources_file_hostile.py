"""Hostile sources files: each must fail when the file is loaded, with exactly one
``error:`` line naming the file, the key and the value (no traceback, no multi-line
PyYAML block), before any data file is read or any warehouse is needed.

Covers YAML syntax errors (indentation, tabs, unknown tags, NUL bytes), CSV dialects that
pass a per-key check but crash the readers later (a quote char equal to the delimiter, a
bytes-to-bytes codec as the encoding), ``values`` recodings whose keys YAML 1.1 reads as
booleans, numbers or dates, and booleans given for whole numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.sources_file import SourcesFileError, load_sources_file, parse_sources
from tests.extract.test_sources_check import _one_error
from tests.extract.test_sources_check import _run as _run_cli

ORDERS_CSV = "customer_id,order_id,ordered_at,amount,state\nc1,o1,2024-03-01,10,yes\n"

#: A minimal good file; {format} and {status} are replaced per case.
SOURCES_YML = """\
version: 1
business: {{timezone: Europe/Berlin, currency: EUR}}
sources:
  orders:
    kind: csv
    entities:
      orders:
        path: orders.csv
{format}        columns:
          customer_id: customer_id
          ordered_at: ordered_at
          status: {status}
"""

ENTITY = "sources.orders.entities.orders"


def _yml(format: str = "", status: str = "{constant: completed}") -> str:
    return SOURCES_YML.format(format=f"        format: {format}\n" if format else "", status=status)


def _load_error(tmp_path: Path, text: str) -> str:
    """Return the error line `lifecycle` prints for the sources file `text` (what the CLI
    prints: ``error: <message>``), checking it is one line."""
    path = tmp_path / "sources.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourcesFileError) as caught:
        load_sources_file(path)
    message = str(caught.value)
    assert "\n" not in message, message
    return f"error: {message}"


def _run(tmp_path: Path, *args: str, yml: str):
    (tmp_path / "orders.csv").write_text(ORDERS_CSV)
    # a relative path is read from the working directory: name the file in full
    return _run_cli(
        tmp_path, *args, yml=yml.replace("path: orders.csv", f"path: {tmp_path / 'orders.csv'}")
    )


# ------------------------------------------------------------------ YAML syntax


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            _yml() + "  bad:\n     x: 1\n   y: 2\n",
            "line 15, column 4: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping at line 4, column 3)",
        ),
        (
            _yml().replace("        columns:", "\tcolumns:"),
            "line 9, column 1: found character '\\t' that cannot start any token "
            "(indent with spaces, not tabs)",
        ),
        (
            _yml() + "x: !!python/object/apply:os.system [ls]\n",
            "line 13, column 4: unknown tag '!!python/object/apply:os.system' "
            "(the file holds plain values, strings, lists and mappings)",
        ),
        (
            _yml().replace("ordered_at: ordered_at", "ordered_at: ordered\0_at"),
            "line 11, column 30: character U+0000 (a NUL byte) is not allowed in YAML",
        ),
        (
            _yml() + "x: [1, 2\n",
            "line 14, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 13, column 4)",
        ),
    ],
    ids=["indentation", "tab", "python-tag", "nul-byte", "unclosed-list"],
)
def test_yaml_syntax_errors_are_one_line_with_line_and_column(
    tmp_path: Path, text: str, said: str
) -> None:
    error = _load_error(tmp_path, text)
    assert error == f"error: {tmp_path / 'sources.yml'}: not valid YAML: {said}"


# ------------------------------------------------------------------ CSV dialect


@pytest.mark.parametrize(
    ("format", "said"),
    [
        (
            '{quote_char: ","}',
            "format.quote_char: ',' is also the delimiter: they must differ (null for none)",
        ),
        (
            '{delimiter: "\\""}',
            "format.quote_char: '\"' is also the delimiter: they must differ (null for none)",
        ),
        (
            '{delimiter: ";", escape_char: ";"}',
            "format.escape_char: ';' is also the delimiter: they must differ (null for none)",
        ),
        (
            "{escape_char: '\"'}",
            "format.escape_char: '\"' is also the quote_char: they must differ "
            "(a quote doubled inside a quoted field needs no escape_char)",
        ),
        (
            '{delimiter: "\\n"}',
            "format.delimiter: '\\n' ends lines: it cannot be the delimiter",
        ),
        *(
            (
                f"{{encoding: {name}}}",
                f"format.encoding: '{name}' is not a text encoding (e.g. utf-8, latin-1, cp1252)",
            )
            for name in ("hex", "base64", "zlib_codec", "rot13", "undefined")
        ),
        (
            "{encoding: klingon}",
            "format.encoding: 'klingon' is not a known text encoding (e.g. utf-8, latin-1, cp1252)",
        ),
    ],
    ids=[
        "quote-is-delimiter",
        "delimiter-is-default-quote",
        "escape-is-delimiter",
        "escape-is-quote",
        "newline-delimiter",
        "hex",
        "base64",
        "zlib",
        "rot13",
        "undefined",
        "unknown-encoding",
    ],
)
def test_csv_dialects_that_cannot_be_read_fail_at_load(
    tmp_path: Path, format: str, said: str
) -> None:
    error = _load_error(tmp_path, _yml(format=format))
    assert error == f"error: {tmp_path / 'sources.yml'}: {ENTITY}.{said}"


@pytest.mark.parametrize(
    "format",
    [
        '{delimiter: ";"}',
        "{quote_char: null, escape_char: '\\'}",
        "{delimiter: whitespace}",
        "{encoding: latin-1}",
        "{encoding: cp1252}",
        "{encoding: utf-8-sig}",
        "{skip_rows: 2}",
        "{skip_rows: 2.0}",
    ],
)
def test_good_dialects_still_load(tmp_path: Path, format: str) -> None:
    path = tmp_path / "sources.yml"
    path.write_text(_yml(format=format))
    load_sources_file(path)


# ------------------------------------------------------------------ whole numbers


@pytest.mark.parametrize(
    ("format", "said"),
    [
        ("{skip_rows: true}", "format.skip_rows: expected a whole number, got true"),
        ("{skip_rows: false}", "format.skip_rows: expected a whole number, got false"),
        ("{skip_rows: 1.5}", "format.skip_rows: expected a whole number, got 1.5"),
        (
            "{sheet: true}",
            "format.sheet: expected a sheet name or position (0, 1, ...), all, or a list of "
            "them, got true",
        ),
    ],
    ids=["true", "false", "fraction", "sheet-true"],
)
def test_booleans_are_not_whole_numbers(tmp_path: Path, format: str, said: str) -> None:
    error = _load_error(tmp_path, _yml(format=format))
    assert error == f"error: {tmp_path / 'sources.yml'}: {ENTITY}.{said}"


def test_a_boolean_is_not_a_number_either(tmp_path: Path) -> None:
    text = _yml().replace("        path: orders.csv\n", "        path: orders.csv\n"
                          "        max_reject_share: true\n")  # fmt: skip
    error = _load_error(tmp_path, text)
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: {ENTITY}.max_reject_share: expected a number, got true"
    )


# ------------------------------------------------------------------ values recoding


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ("{yes: completed, no: refunded}", {"yes": "completed", "no": "refunded"}),
        ("{1: completed, true: refunded}", {"1": "completed", "true": "refunded"}),
        (
            "{2024-01-01: completed, 1.0: cancelled}",
            {"2024-01-01": "completed", "1.0": "cancelled"},
        ),
        ("{on: completed, 'off': refunded}", {"on": "completed", "off": "refunded"}),
    ],
    ids=["yes-no", "number-and-bool", "date-and-float", "quoted-and-not"],
)
def test_values_keys_are_the_words_as_written(
    tmp_path: Path, values: str, words: dict[str, str]
) -> None:
    path = tmp_path / "sources.yml"
    path.write_text(_yml(status=f"{{column: state, values: {values}}}"))
    fmap = load_sources_file(path).sources["orders"].entities["orders"].columns["status"]
    assert fmap.values == words


def test_a_values_key_written_twice_as_text_and_as_a_word_is_one_error(tmp_path: Path) -> None:
    error = _load_error(
        tmp_path, _yml(status="{column: state, values: {yes: completed, 'yes': refunded}}")
    )
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: not valid YAML: key 'yes' is written twice in "
        "one mapping, lines 12 and 12"
    )


def test_values_keys_that_are_not_text_name_the_key() -> None:
    """A document built in Python (no YAML loader to recover the words) is told to quote."""
    doc = {
        "version": 1,
        "sources": {
            "orders": {
                "kind": "csv",
                "path": "orders.csv",
                "entities": {
                    "orders": {
                        "columns": {"status": {"column": "state", "values": {True: "completed"}}}
                    }
                },
            }
        },
    }
    with pytest.raises(SourcesFileError) as caught:
        parse_sources(doc, "sources.yml")
    assert str(caught.value) == (
        f"sources.yml: {ENTITY}.columns.status.values: the key true is not text: "
        "write it in quotes ('true': ...)"
    )


def test_a_bad_default_is_blamed_on_default(tmp_path: Path) -> None:
    status = "{column: state, values: {yes: completed}, default: done}"
    error = _load_error(tmp_path, _yml(status=status))
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: {ENTITY}.columns.status.default: "
        "'done' is not one of completed, refunded, cancelled"
    )


def test_a_date_that_is_no_day_is_blamed_on_its_key(tmp_path: Path) -> None:
    """PyYAML read `2019-13-01` as a date and raised Python's bare "month must be in
    1..12", naming neither file nor key; it is text now, refused by the key wanting a date."""
    text = _yml().replace(
        "ordered_at: ordered_at", "ordered_at: {column: d, format: epoch_days, origin: 2019-13-01}"
    )
    error = _load_error(tmp_path, text)
    assert error.startswith(
        f"error: {tmp_path / 'sources.yml'}: {ENTITY}.columns.ordered_at.origin: "
        "Input should be a valid date"
    ), error


# ------------------------------------------------------------------ through the CLI


@pytest.mark.parametrize("command", [("sources", "check"), ("extract", "--date", "2024-03-05")])
@pytest.mark.parametrize(
    ("text", "said"),
    [
        (_yml().replace("        columns:", "\tcolumns:"), "not valid YAML: line 9, column 1: "),
        (_yml(format="{encoding: hex}"), f"{ENTITY}.format.encoding: 'hex' is not a text"),
        (_yml(format='{quote_char: ","}'), f"{ENTITY}.format.quote_char: ',' is also the"),
        (_yml(format="{skip_rows: true}"), f"{ENTITY}.format.skip_rows: expected a whole"),
    ],
    ids=["tab", "hex", "quote-is-delimiter", "skip-rows-true"],
)
def test_the_cli_prints_one_error_line(
    tmp_path: Path, command: tuple[str, ...], text: str, said: str
) -> None:
    error = _one_error(_run(tmp_path, *command, yml=text))
    assert error.startswith(f"error: {tmp_path / 'sources.yml'}: {said}"), error


def test_yes_and_no_recode_in_sources_check(tmp_path: Path) -> None:
    yml = _yml(status="{column: state, values: {yes: completed, no: refunded}}")
    result = _run(tmp_path, "sources", "check", yml=yml)
    assert result.exit_code == 0, result.output + result.stderr
    assert "0 would be quarantined" in result.output, result.output
    status = next(line for line in result.output.splitlines() if "status" in line)
    assert "column 'state'" in status and "completed" in status, status
