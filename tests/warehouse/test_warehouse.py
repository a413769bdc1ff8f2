"""The warehouse: embedded start/reuse/stop, bootstrap, roles, the external-URL path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from lifecycle import warehouse as wh
from lifecycle.cli import main
from tests.conftest import make_settings

EXPECTED_SCHEMAS = ("raw", "staging", "intermediate", "marts", "ml", "activation", "ops")
EXPECTED_ROLES = {
    "lifecycle_loader",
    "lifecycle_transformer",
    "lifecycle_activator",
    "lifecycle_bi",
    "lifecycle_pii_analyst",
    "lifecycle_activation_reader",
}


def _schemas(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select schema_name from information_schema.schemata").fetchall()
    return {r[0] for r in rows}


def test_embedded_starts_is_reused_by_another_process_and_stops(pg_home: Path) -> None:
    tmp_path = pg_home
    settings = make_settings(tmp_path / "home")
    assert wh.status(settings).running is False

    url = wh.up(settings)
    first = wh.status(settings)
    assert first.running and first.mode == "embedded"
    assert first.pgdata == tmp_path / "home" / "pgdata"
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
    assert set(first.schemas) == set(EXPECTED_SCHEMAS)

    # A second command (another process) reuses the running server: same postmaster pid.
    code = (
        "from lifecycle import warehouse as wh; from lifecycle.settings import load_settings;"
        f"s = load_settings({{'LIFECYCLE_HOME': {str(tmp_path / 'home')!r}}});"
        "print(wh.up(s)); print(wh.status(s).pid)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [url, str(first.pid)]

    # The server outlived that process; data persists across a stop/start.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table ops.keepme (x int)")
        conn.execute("insert into ops.keepme values (7)")
    assert wh.down(settings) is True
    down = wh.status(settings)
    assert down.running is False and down.pid is None
    assert wh.down(settings) is False  # stopping twice is harmless
    with pytest.raises(wh.WarehouseError, match="not running"):
        wh.warehouse_url(settings, start=False)

    url_again = wh.up(settings)
    assert url_again == url
    assert wh.status(settings).pid != first.pid
    with psycopg.connect(url) as conn:
        assert conn.execute("select x from ops.keepme").fetchone() == (7,)
    wh.down(settings)


def test_bootstrap_creates_schemas_and_roles_idempotently(fresh_db: str) -> None:
    wh.bootstrap(fresh_db)
    wh.bootstrap(fresh_db)  # a second run changes nothing and does not fail
    assert set(EXPECTED_SCHEMAS) <= _schemas(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        roles = {r[0] for r in conn.execute("select rolname from pg_roles").fetchall()}
    assert roles >= EXPECTED_ROLES


def _as_role(url: str, role: str, statements: str) -> list[tuple]:
    """Run `;`-separated statements as `role`; return the rows of the last one."""
    with psycopg.connect(url) as conn:
        conn.execute(f"set role {role}")
        *head, last = [s for s in statements.split(";") if s.strip()]
        for statement in head:
            conn.execute(statement)
        return conn.execute(last).fetchall()


def test_bi_role_reads_marts_only_and_activation_reader_activation_only(fresh_db: str) -> None:
    wh.bootstrap(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # Created after bootstrap: default privileges cover the activation reader's future
        # tables; BI's are granted by publish (or bootstrap) once their PII is known.
        for schema in ("raw", "marts", "activation", "ml"):
            conn.execute(f"create table {schema}.t (x int)")
            conn.execute(f"insert into {schema}.t values (1)")
        wh.apply_grants(conn, "marts", ["t"])

    assert _as_role(fresh_db, "lifecycle_bi", "select x from marts.t") == [(1,)]
    for schema in ("raw", "activation", "ml"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _as_role(fresh_db, "lifecycle_bi", f"select x from {schema}.t")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(fresh_db, "lifecycle_bi", "create table marts.mine (x int)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(fresh_db, "lifecycle_bi", "insert into marts.t values (2) returning x")

    assert _as_role(fresh_db, "lifecycle_activation_reader", "select x from activation.t") == [(1,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(fresh_db, "lifecycle_activation_reader", "select x from marts.t")


def test_loader_writes_raw_but_cannot_touch_marts(fresh_db: str) -> None:
    wh.bootstrap(fresh_db)
    assert _as_role(
        fresh_db,
        "lifecycle_loader",
        "create table raw.l (x int); insert into raw.l values (3) returning x",
    ) == [(3,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(fresh_db, "lifecycle_loader", "create table marts.l (x int)")
    # The transformer reads what the loader landed and builds marts from it.
    assert _as_role(
        fresh_db,
        "lifecycle_transformer",
        "create table marts.m as select x from raw.l; select x from marts.m",
    ) == [(3,)]


def test_external_url_is_used_as_is_and_never_started_or_stopped(
    tmp_path: Path, external_db: str
) -> None:
    settings = make_settings(tmp_path / "home", LIFECYCLE_WAREHOUSE_URL=external_db)
    assert wh.up(settings) == external_db
    st = wh.status(settings)
    assert st.mode == "external" and st.running and st.pgdata is None
    assert set(st.schemas) == set(EXPECTED_SCHEMAS)
    assert wh.down(settings) is False
    assert not (tmp_path / "home" / "pgdata").exists()  # no embedded server was started
    assert _as_role(external_db, "lifecycle_bi", "select 1") == [(1,)]


def test_unreachable_external_url_fails_with_a_clear_message(tmp_path: Path) -> None:
    url = "postgresql://nobody:s3cret@127.0.0.1:1/none"
    settings = make_settings(tmp_path / "home", LIFECYCLE_WAREHOUSE_URL=url)
    with pytest.raises(wh.WarehouseError) as err:
        wh.up(settings)
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/none" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_cli_status_url_and_down(
    tmp_path: Path, pg_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.settings import get_settings

    monkeypatch.setenv("LIFECYCLE_HOME", str(pg_home / "home"))
    monkeypatch.delenv("LIFECYCLE_WAREHOUSE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        down = runner.invoke(main, ["warehouse", "status"])
        assert down.exit_code == 3 and "running:  no" in down.output
        up = runner.invoke(main, ["warehouse", "up"])
        assert up.exit_code == 0, up.output
        url = up.output.strip().splitlines()[-1]
        assert url.startswith("postgresql://") and url.split("?")[0].endswith("/lifecycle")
        st = runner.invoke(main, ["warehouse", "status"])
        assert st.exit_code == 0 and "running:  yes" in st.output
        assert "schemas:  raw, staging, intermediate, marts, ml, activation, ops" in st.output
        assert runner.invoke(main, ["warehouse", "url"]).output.strip() == url
        sa = runner.invoke(main, ["warehouse", "url", "--sqlalchemy"]).output.strip()
        assert sa.startswith("postgresql+psycopg://")
        stop = runner.invoke(main, ["warehouse", "down"])
        assert stop.exit_code == 0 and "stopped the embedded warehouse" in stop.output
    finally:
        wh.down(get_settings())
        get_settings.cache_clear()


def test_url_helpers() -> None:
    url = "postgresql://postgres:@/lifecycle?host=/tmp/x/pgdata"
    assert wh.with_database(url, "shop") == "postgresql://postgres:@/shop?host=/tmp/x/pgdata"
    assert wh.with_database("postgresql://u:p@h:5/a", "b") == "postgresql://u:p@h:5/b"
    assert wh.sqlalchemy_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert wh.redact("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"


def test_a_state_folder_with_a_space_is_refused_in_one_line(tmp_path: Path) -> None:
    """The embedded server's pg_ctl splits a data directory with a space: a page of
    server log and a CalledProcessError before; now one error saying what to set."""
    home = tmp_path / "my state"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lifecycle"), "warehouse", "up"],
        env={"PATH": "/usr/bin:/bin", "LIFECYCLE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: the embedded warehouse cannot run in {home / 'pgdata'}: its path has a "
        "space (pg_ctl splits it); set LIFECYCLE_HOME to a folder without spaces, or "
        "LIFECYCLE_WAREHOUSE_URL to a PostgreSQL server"
    ]
    assert not (home / "pgdata").exists()


def test_an_embedded_server_that_will_not_start_says_why_in_one_line(pg_home: Path) -> None:
    """A state folder whose server cannot start (here a setting PostgreSQL refuses, as a
    hand edit or a restored backup may leave) printed pages of server log and then
    `error: Command '(... pg_ctl ...)' returned non-zero exit status 1`. Now one line: the
    server's own reason and where its log is."""
    settings = make_settings(pg_home / "home")
    wh.up(settings)
    assert wh.down(settings) is True
    conf = settings.pgdata / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nshared_buffers = banana\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lifecycle"), "warehouse", "up"],
        env={"PATH": "/usr/bin:/bin", "LIFECYCLE_HOME": str(pg_home / "home")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: the embedded warehouse in {settings.pgdata} did not start: ")
    assert f'did not start: FATAL: configuration file "{conf}" contains errors (server' in line
    assert line.endswith(f"(server log: {settings.pgdata / 'log'})")
    assert "Traceback" not in done.stderr and "pg_ctl'" not in done.stdout
