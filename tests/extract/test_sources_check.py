"""`lifecycle sources check` and the errors of a wrong sources file, through the CLI.

Each wrong file must fail with exactly one ``error:`` line naming the file, the key and
the value (no traceback), from `lifecycle sources check` and from `lifecycle extract`
alike; a good mapping is reported field by field without loading anything.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from lifecycle.cli import main
from lifecycle.settings import get_settings
from tests.conftest import ORDERS_ONLY_SOURCES, cli_env, run_cli

SHOPIFY_CSV = (
    "Name,Email,Created at,Total,Financial Status,Tags\n"
    "#1001,ana@example.com,2024-03-05 14:02:11 -0500,25.00,paid,vip\n"
    "#1002,bo@example.com,2024-03-05 16:10:00 -0500,12.50,refunded,\n"
    "#1003,cy@example.com,2024-03-06 09:00:00 -0500,40.00,paid,\n"
)

SHOPIFY_YML = """
version: 1
sources:
  orders:
    kind: csv
    entities:
      orders:
        path: {path}
        columns:
          order_id: Name
          customer_id: Email
          email: Email
          ordered_at: {{column: Created at, format: "%Y-%m-%d %H:%M:%S %z"}}
          amount: Total
          status:
            column: Financial Status
            values: {{paid: completed, refunded: refunded, voided: cancelled}}
          currency: {{constant: USD}}
"""


def _run(tmp_path: Path, *args: str, yml: str | None = None, **env: str):
    if yml is not None:
        (tmp_path / "sources.yml").write_text(textwrap.dedent(yml))
    environ = {
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_SOURCES_FILE": str(tmp_path / "sources.yml"),
        **env,
    }
    get_settings.cache_clear()  # the CLI reads the settings once per process
    try:
        return CliRunner().invoke(main, list(args), env=environ, catch_exceptions=False)
    finally:
        get_settings.cache_clear()


def _one_error(result) -> str:
    """Return the single error line of a failed command (and that it is the only line)."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "orders_export.csv"
    path.write_text(SHOPIFY_CSV)
    return path


def test_good_mapping_is_reported_field_by_field_and_loads_nothing(
    tmp_path: Path, shop: Path, fresh_db: str
) -> None:
    result = _run(
        tmp_path,
        "sources", "check", "--entity", "orders",
        yml=SHOPIFY_YML.format(path=shop),
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"raw.orders__orders <- csv {shop}" in out
    assert "3 rows sampled, 3 after mapping, 0 would be quarantined (0.0%)" in out
    fields = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "column 'Name'" in fields["order_id"] and "#1001 | #1002 | #1003" in fields["order_id"]
    # -0500 is read as an offset: 14:02:11 there is 19:02:11 UTC.
    assert "2024-03-05T19:02:11+00:00" in fields["ordered_at"]
    assert "completed | refunded" in fields["status"]
    assert "25.00 | 12.50 | 40.00" in fields["amount"]
    assert fields["quantity"].split()[1:3] == ["-", "(not"]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("select to_regclass('raw.orders__orders')").fetchone() == (None,)


def test_bad_rows_are_counted_with_their_reason(tmp_path: Path, shop: Path) -> None:
    shop.write_text(SHOPIFY_CSV + "#1004,di@example.com,2024-03-06 10:00:00 -0500,-5.00,paid,\n")
    result = _run(tmp_path, "sources", "check", "--rows", "10",
                  yml=SHOPIFY_YML.format(path=shop))  # fmt: skip
    # 1 of 4 rows is more than an extract allows (5%): the check says so and fails.
    error = _one_error(result)
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.amount: "
        "25.0% of 4 sampled rows would be quarantined, more than an extract allows (5.0%, "
        "sources.orders.entities.orders.max_reject_share or LIFECYCLE_MAX_REJECT_SHARE); "
        "most: amount: negative, e.g. -5.00"
    )
    amount = next(line for line in result.stdout.splitlines() if line.startswith("  amount"))
    assert amount.endswith("25.0%  negative x1 (e.g. -5.00)")


def test_every_value_failing_the_format_names_field_and_value(tmp_path: Path, shop: Path) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace("%Y-%m-%d %H:%M:%S %z", "%m/%d/%Y %H:%M")
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert error.startswith(
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.ordered_at: "
        "every sampled value fails: '2024-03-05 14:02:11 -0500' does not match the format "
        "'%m/%d/%Y %H:%M' (from column 'Created at' (format '%m/%d/%Y %H:%M'))"
    ), error


@pytest.mark.parametrize("command", [("sources", "check"), ("extract", "--date", "2024-03-06")])
def test_unknown_key(tmp_path: Path, shop: Path, command: tuple[str, ...]) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace("columns:", "colums:")
    error = _one_error(_run(tmp_path, *command, yml=yml))
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.colums: "
        "unknown key (a typo?)"
    )


def test_missing_required_mapping_in_check(tmp_path: Path, shop: Path) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace("          customer_id: Email\n", "")
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert error.startswith(
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.customer_id: "
        f"required field 'customer_id' is not mapped and {shop} has no column 'customer_id'"
    ), error
    assert "(columns: Name, Email, Created at, Total, Financial Status, Tags)" in error


def test_missing_required_mapping_in_extract(tmp_path: Path, shop: Path, fresh_db: str) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace("          customer_id: Email\n", "")
    result = _run(tmp_path, "extract", "--source", "orders", "--date", "2024-03-06", yml=yml,
                  LIFECYCLE_WAREHOUSE_URL=fresh_db)  # fmt: skip
    error = _one_error(result)
    assert "sources.orders.entities.orders.columns.customer_id: required field 'customer_id' " \
        "is not mapped" in error  # fmt: skip
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("select count(*) from raw.orders__orders").fetchone() == (0,)


def test_column_not_in_the_file(tmp_path: Path, shop: Path) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace("column: Created at", "column: created_at")
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert error.startswith(
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.ordered_at."
        f"column: column 'created_at' is not in {shop} (columns: Name, Email, Created at, "
        "Total, Financial Status, Tags); did you mean 'Created at'?"
    ), error


@pytest.mark.parametrize(
    ("data", "columns", "hint"),
    [
        (SHOPIFY_CSV.replace(",", ";").encode(),
         "Name;Email;Created at;Total;Financial Status;Tags",
         'the header is one column: set format.delimiter: ";"?'),
        (SHOPIFY_CSV.replace(",", "\t").encode(),
         "Name\\tEmail\\tCreated at\\tTotal\\tFinancial Status\\tTags",
         'the header is one column: set format.delimiter: "\\t"?'),
        (bytes(range(256)) * 4, None,
         "the header is not text: is the file a CSV (see format.encoding and format.compression)?"),
    ],
    ids=["semicolons", "tabs", "binary"],
)  # fmt: skip
def test_a_header_that_holds_no_mapped_column_says_why(
    tmp_path: Path, data: bytes, columns: str | None, hint: str
) -> None:
    """One `error:` line, each column name printable and short, and what to look at."""
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    error = _one_error(_run(tmp_path, "sources", "check", yml=SHOPIFY_YML.format(path=path)))
    head = f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns."
    assert error.startswith(head) and error.endswith("; " + hint), error
    listed = error.split("(columns: ", 1)[1].rsplit("); ", 1)[0]
    if columns is not None:
        assert listed == columns
    assert listed.isprintable() and all(len(n) <= 63 for n in listed.split(", ")), listed


def test_bad_format_string(tmp_path: Path, shop: Path) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %Q")
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.ordered_at: "
        "'%Y-%m-%d %Q': %Q is not a strptime directive"
    )


@pytest.mark.parametrize("command", [("sources", "check"), ("extract", "--date", "2024-03-06")])
@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("{tmp}/no_such_export.csv", "no file at {tmp}/no_such_export.csv"),
        ("{tmp}", "no file at {tmp} (a folder: name the file or a glob)"),
        ("nosuchproto://bucket/orders.csv", "cannot list nosuchproto://bucket/orders.csv: "),
    ],
    ids=["missing-file", "folder", "unknown-scheme"],
)
def test_a_path_that_names_no_file_is_one_error_line(
    tmp_path: Path, shop: Path, command: tuple[str, ...], path: str, said: str, fresh_db: str
) -> None:
    path = path.format(tmp=tmp_path)
    yml = SHOPIFY_YML.format(path=shop).replace(str(shop), path)
    # a warehouse of the test's own, so extract starts no embedded server that outlives it
    error = _one_error(_run(tmp_path, *command, yml=yml, LIFECYCLE_WAREHOUSE_URL=fresh_db))
    assert error.startswith(
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.path: "
        + said.format(tmp=tmp_path)
    ), error


def test_a_glob_that_matches_nothing_yet_is_a_skip_in_extract(
    tmp_path: Path, shop: Path, fresh_db: str
) -> None:
    yml = SHOPIFY_YML.format(path=tmp_path / "exports" / "orders_*.csv")
    result = _run(tmp_path, "extract", "--source", "orders", "--date", "2024-03-06", yml=yml,
                  LIFECYCLE_WAREHOUSE_URL=fresh_db)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "raw.orders__orders 2024-03-06 skipped" in result.output


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            ("    kind: csv\n", "    kind: csv\n    format: {encoding: utf-16}\n"),
            "{shop}: cannot be read: UTF-16 stream does not start with BOM (see format.encoding)",
        ),
        (
            ("    kind: csv\n", "    kind: csv\n    format: {sheet: 1}\n"),
            "{yml}: sources.orders: format.sheet is for kind excel (this source is csv)",
        ),
        (
            ("version: 1\n", "version: 1\nx: " + "[" * 100 + "]" * 100 + "\n"),
            "{yml}: not valid YAML: nested more than 64 levels deep, line 3",
        ),
    ],
    ids=["utf16-without-bom", "sheet-on-csv", "nested-yaml"],
)
def test_wrong_dialects_and_yaml_are_one_error_line(
    tmp_path: Path, shop: Path, change: tuple[str, str], said: str
) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace(*change)
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert said.format(shop=shop, yml=tmp_path / "sources.yml") in error, error


def test_a_file_shorter_than_its_skip_rows_is_a_warning_not_a_hang(
    tmp_path: Path, shop: Path, fresh_db: str
) -> None:
    yml = SHOPIFY_YML.format(path=shop).replace(
        "    kind: csv\n", "    kind: csv\n    format: {skip_rows: 1000000000}\n"
    )
    result = _run(tmp_path, "extract", "--source", "orders", "--date", "2024-03-06", yml=yml,
                  LIFECYCLE_WAREHOUSE_URL=fresh_db)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{shop}: the file ends after 4 of its 1000000000 skip_rows lines" in result.output


POSTGRES_YML = """
version: 1
connections:
  shop:
    env: SHOP_URL
sources:
  orders:
    kind: postgres
    connection: {connection}
    entities:
      orders:
        table: public.sales
        columns:
          order_id: id
          customer_id: {customer}
          ordered_at: sale_time
          amount: total_eur
"""


def test_unknown_connection(tmp_path: Path) -> None:
    yml = POSTGRES_YML.format(connection="shop_db", customer="client_ref")
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: sources.orders.connection: 'shop_db' is not in "
        "connections (defined: shop)"
    )


def test_missing_env_var_of_a_connection(tmp_path: Path) -> None:
    yml = POSTGRES_YML.format(connection="shop", customer="client_ref")
    error = _one_error(_run(tmp_path, "sources", "check", "--entity", "orders", yml=yml))
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: connections.shop.env: no URL for connection "
        "'shop': set the environment variable SHOP_URL"
    )


@pytest.fixture
def sales_db(external_db: str) -> str:
    with psycopg.connect(external_db) as conn:
        conn.execute(
            "create table public.sales (id int, client_ref text, sale_time timestamptz, "
            "total_eur numeric); insert into public.sales values (1, 'C1', now(), 5)"
        )
    return external_db


def test_column_not_in_the_table(tmp_path: Path, sales_db: str) -> None:
    yml = POSTGRES_YML.format(connection="shop", customer="client")
    error = _one_error(_run(tmp_path, "sources", "check", "--entity", "orders", yml=yml,
                            SHOP_URL=sales_db))  # fmt: skip
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.customer_id."
        "column: column 'client' is not in public.sales (columns: id, client_ref, sale_time, "
        "total_eur)"
    )


def test_table_that_does_not_exist_and_bad_sql(tmp_path: Path, sales_db: str) -> None:
    yml = POSTGRES_YML.format(connection="shop", customer="client_ref")
    missing = yml.replace("public.sales", "public.sale")
    error = _one_error(_run(tmp_path, "sources", "check", "--entity", "orders", yml=missing,
                            SHOP_URL=sales_db))  # fmt: skip
    assert error == (
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.table: "
        "'public.sale' does not exist"
    )
    bad_sql = yml.replace("order_id: id", "order_id: {sql: \"'S-' ||| id\"}")
    error = _one_error(_run(tmp_path, "sources", "check", "--entity", "orders", yml=bad_sql,
                            SHOP_URL=sales_db))  # fmt: skip
    assert error.startswith(
        f"error: {tmp_path / 'sources.yml'}: sources.orders.entities.orders.columns.order_id.sql: "
        "\"'S-' ||| id\" fails in PostgreSQL: "
    ), error


def test_example_file_and_its_commented_alternatives_are_valid() -> None:
    import yaml

    from lifecycle.sources_file import load_sources_file, parse_sources

    example = Path(__file__).resolve().parents[2] / "sources.example.yml"
    doc = load_sources_file(example)
    assert set(doc.sources) == {"orders", "crm"}
    assert doc.sources["orders"].entities["orders"].columns["ordered_at"].format == (
        "%Y-%m-%d %H:%M:%S %z"
    )
    # The commented-out blocks (the postgres orders, the latin-1 spend) are valid too.
    lines = example.read_text().splitlines()
    blocks: dict[str, list[str]] = {}
    name = None
    for line in lines:
        head = re.match(r"^  # (\w+):$", line)
        if head:
            name = head.group(1)
            blocks[name] = []
        elif name and line.startswith("  #   "):
            blocks[name].append(line[4:])
        else:
            name = None
    assert set(blocks) == {"shop_db", "orders", "marketing"}
    connections = {"shop_db": yaml.safe_load("\n".join(blocks.pop("shop_db")))}
    for name, body in blocks.items():
        doc = parse_sources(
            {
                "version": 1,
                "connections": connections,
                "sources": {name: yaml.safe_load("\n".join(body))},
            },
            "sources.example.yml",
        )
        assert name in doc.sources


def test_show_prints_the_effective_mapping(tmp_path: Path, shop: Path) -> None:
    result = _run(tmp_path, "sources", "show", yml=SHOPIFY_YML.format(path=shop))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        f"raw.orders__orders <- csv {shop} (sync incremental, cursor updated_at, grain order)"
        in lines
    )
    assert "  ordered_at   column 'Created at' (format '%Y-%m-%d %H:%M:%S %z')" in lines
    assert "  status       column 'Financial Status' (values 3 recoded)" in lines
    # The source lists only orders: it has no order lines, and crm is not configured.
    assert "raw.orders__order_items: not configured" in lines
    assert "raw.crm__contacts: not configured" in lines


def test_show_without_a_sources_file_is_the_built_in_layout(tmp_path: Path) -> None:
    result = _run(tmp_path, "sources", "show")  # LIFECYCLE_SOURCES_FILE names no file ...
    assert result.exit_code == 1 and "no such sources file" in result.stderr
    get_settings.cache_clear()
    env = {"LIFECYCLE_HOME": str(tmp_path / "home"), "LIFECYCLE_SOURCES_FILE": ""}
    result = CliRunner().invoke(main, ["sources", "show"], env=env)  # ... and here none is set
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "sources: built-in" in result.stdout
    assert f"raw.orders__order_items <- csv {tmp_path / 'home/world/orders/order_items.csv'}" in (
        result.stdout
    )


def test_a_source_without_entities_delivers_its_main_entity() -> None:
    from lifecycle.raw import CRM_CONTACTS, ORDER_ITEMS, ORDERS
    from lifecycle.sources_file import parse_sources

    doc = parse_sources(
        {
            "version": 1,
            "sources": {
                "crm": {"kind": "csv", "path": "contacts.csv"},
                "orders": {"kind": "csv", "path": "orders.csv"},
            },
        }
    )
    assert doc.entity(CRM_CONTACTS) is not None
    assert doc.entity(ORDERS) is not None
    assert doc.entity(ORDER_ITEMS) is None  # not the orders file read as order lines


def test_the_check_counts_the_reject_share_as_an_extract_does(tmp_path: Path) -> None:
    """A repeated row and a bad one among three: the check said 50.0% (its duplicate
    counted twice in the rows considered) where the extract refused 66.7%."""
    (tmp_path / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount,quantity\n"
        "C1,O1,2024-01-01,1.00,1\nC1,O1,2024-01-01,1.00,1\nC2,O2,2024-01-01,2.00,x\n"
    )
    yml = ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv")
    result = _run(tmp_path, "sources", "check", "--entity", "orders", yml=yml)
    assert "3 rows sampled, 3 after mapping, 2 would be quarantined (66.7%)" in result.output
    assert "columns.quantity: 66.7% of 3 sampled rows would be quarantined" in _one_error(result)


def test_a_relative_path_is_the_sources_files_folders(tmp_path: Path, fresh_db: str) -> None:
    """`path: orders.csv` was read from the working directory: under a scheduler (or run
    from another folder) the file was not found. It is the sources file's folder's."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "orders.csv").write_text(
        "customer_id,order_id,ordered_at,amount\nC1,O1,2024-01-01,1.00\n"
    )
    (config / "sources.yml").write_text(ORDERS_ONLY_SOURCES.format(orders="orders.csv"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = cli_env(
        LIFECYCLE_HOME=str(tmp_path / "home"),
        LIFECYCLE_WAREHOUSE_URL=fresh_db,
        LIFECYCLE_SOURCES_FILE=str(config / "sources.yml"),
    )
    done = run_cli(
        ["extract", "--source", "orders", "--date", "2024-01-01", "--full"], env, cwd=elsewhere
    )
    assert done.returncode == 0, done.stderr
    assert "1 read, 1 loaded" in done.stdout
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute("select _source from raw.orders__orders").fetchall()
    assert got == [(str(config / "orders.csv"),)]


def test_a_sources_file_that_configures_nothing_fails_the_check(tmp_path: Path) -> None:
    """`sources: {}` passed (exit 0): every entity skipped, and every daily run would load
    nothing without a word."""
    result = _run(tmp_path, "sources", "check", yml="version: 1\nsources: {}\n")
    assert result.exit_code == 1, result.output
    path = tmp_path / "sources.yml"
    assert result.stderr.splitlines()[-1] == (
        f"error: {path}: configures no source: every entity is skipped (map your orders at "
        "least; see sources.example.yml)"
    )


def test_a_required_field_whose_column_differs_in_case_names_it(tmp_path: Path) -> None:
    """Ta Feng's header is CUSTOMER_ID: the error said "map it, e.g. `customer_id:
    <column>`" without naming the column that is there."""
    (tmp_path / "orders.csv").write_text(
        "TRANSACTION_DT,CUSTOMER_ID,order_id,ordered_at,amount\n11/1/2000,1,o1,2000-11-01,2\n"
    )
    yml = (
        "version: 1\nsources:\n  orders:\n    kind: csv\n    entities:\n      orders:\n"
        f"        path: {tmp_path / 'orders.csv'}\n      order_items: {{skip: true}}\n"
    )
    error = _one_error(_run(tmp_path, "sources", "check", yml=yml))
    assert "has no column 'customer_id': map it, e.g. `customer_id: CUSTOMER_ID` (columns: " in (
        error
    ), error


def test_an_entity_set_to_skip_is_said_so_not_called_unconfigured(tmp_path: Path) -> None:
    """`order_items: {skip: true}` was reported as "not configured in sources.yml", as if
    the user had forgotten it; a source left out entirely still is."""
    (tmp_path / "orders.csv").write_text(
        "order_id,customer_id,ordered_at,amount\no1,c1,2024-01-01,2\n"
    )
    yml = ORDERS_ONLY_SOURCES.format(orders=tmp_path / "orders.csv")
    result = _run(tmp_path, "sources", "check", yml=yml)
    assert result.exit_code == 0, result.output
    src = tmp_path / "sources.yml"
    lines = result.stdout.splitlines()
    assert f"raw.orders__order_items: skipped (set to skip: true in {src})" in lines
    assert f"raw.crm__contacts: skipped (not configured in {src})" in lines
