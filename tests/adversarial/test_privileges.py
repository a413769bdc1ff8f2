"""Least privilege: the full role × schema × action matrix, PII columns and NOLOGIN roles.

Against the embedded warehouse: bootstrap a fresh database, put a probe table in every
schema, then try every action as every role for real (``set role``; each try in its own
savepoint) and compare with the matrix below, which is written out here on purpose rather
than derived from ``lifecycle.warehouse.ROLES``. The BI role must read the non-personal
columns of ``marts.customers`` and not one personal column; roles are NOLOGIN unless a
password comes from the settings.
"""

from __future__ import annotations

import psycopg
import pytest

from lifecycle import warehouse as wh
from lifecycle.pii import ACTIVATION_PII, pii_columns
from lifecycle.quality.publish import prepare_build
from lifecycle.settings import load_settings
from lifecycle.transform import PROJECT_DIR
from tests.conftest import make_settings

ACTIONS = ("select", "insert", "update", "delete", "truncate", "create")
SCHEMAS = ("raw", "staging", "intermediate", "marts", "ml", "activation", "ops")
ALL_SCHEMAS = (*SCHEMAS, "marts__build", "public")
W, R, C = set(ACTIONS), {"select"}, {"create"}

#: role -> schema -> actions allowed (absent: nothing)
MATRIX: dict[str, dict[str, set[str]]] = {
    "lifecycle_loader": {"raw": W, "ops": W},
    "lifecycle_transformer": {
        "raw": R,
        "staging": W,
        "intermediate": W,
        "marts": W,
        "marts__build": C,  # dbt builds there; what it builds it owns
        "ml": W,
        "ops": W,
    },
    "lifecycle_activator": {"marts": R, "ml": R, "activation": W},
    "lifecycle_bi": {"marts": R},  # without PII columns: see below
    "lifecycle_pii_analyst": {"marts": R},
    "lifecycle_activation_reader": {"activation": R},
}

STATEMENTS = {
    "select": "select * from {s}.probe",
    "insert": "insert into {s}.probe (x) values (1)",
    "update": "update {s}.probe set x = 2",
    "delete": "delete from {s}.probe",
    "truncate": "truncate {s}.probe",
    "create": "create table {s}.made_by_{role} (x int)",
}

CUSTOMERS = """
create table marts.customers (
    customer_key text primary key, primary_email text, primary_customer_id text,
    first_name text, last_name text, country_code text, current_stage text
)
"""


def attempt(conn: psycopg.Connection, role: str, statement: str) -> bool:
    """Return whether `statement` succeeds as `role` (rolled back either way)."""
    try:
        with conn.transaction():
            conn.execute(f"set local role {role}")
            conn.execute(statement)
            raise _Undo
    except _Undo:
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


class _Undo(Exception):
    pass


@pytest.fixture
def bootstrapped(fresh_db, tmp_path):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for schema in SCHEMAS:
            conn.execute(f"create schema if not exists {schema}")
        conn.execute(CUSTOMERS)
        conn.execute(
            "insert into marts.customers values ('k1', 'a@x.example', 'c1', 'Zoë', "
            "'Ødegård', 'NO', 'active')"
        )
        # a grant an older bootstrap made must not survive the new one
        conn.execute("create role lifecycle_transformer nologin") if not conn.execute(
            "select 1 from pg_roles where rolname = 'lifecycle_transformer'"
        ).fetchone() else None
        conn.execute("create table activation.before_bootstrap (x int)")
        conn.execute("grant usage on schema activation to lifecycle_transformer")
        conn.execute("grant select on activation.before_bootstrap to lifecycle_transformer")
    wh.bootstrap(fresh_db)
    prepare_build(make_settings(tmp_path / "home", LIFECYCLE_WAREHOUSE_URL=fresh_db))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # probes created after bootstrap: default privileges must cover them
        for schema in ALL_SCHEMAS:
            conn.execute(f"create table {schema}.probe (x int)")
            conn.execute(f"insert into {schema}.probe values (1)")
    wh.bootstrap(fresh_db)  # publish and bootstrap grant what default privileges do not
    return fresh_db


def test_the_full_privilege_matrix(bootstrapped, figures) -> None:
    wrong = []
    cells = 0
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        for role, allowed in MATRIX.items():
            for schema in ALL_SCHEMAS:
                for action in ACTIONS:
                    sql = STATEMENTS[action].format(s=schema, role=role)
                    got = attempt(conn, role, sql)
                    cells += 1
                    if got != (action in allowed.get(schema, set())):
                        wrong.append(f"{role} {action} {schema}: {'allowed' if got else 'denied'}")
    assert wrong == []
    assert cells == len(MATRIX) * len(ALL_SCHEMAS) * len(ACTIONS) == 324
    figures["privilege cells checked (role x schema x action)"] += cells


def test_the_roles_in_the_code_are_the_roles_of_the_matrix() -> None:
    assert set(wh.ROLES) == set(MATRIX)


def test_bi_reads_marts_without_pii_and_the_pii_analyst_reads_it_all(bootstrapped, figures):
    pii = pii_columns()["customers"]
    assert pii == {"primary_email", "first_name", "last_name"}
    cells = 0
    with psycopg.connect(bootstrapped, autocommit=True) as conn:
        for column in ("customer_key", "primary_customer_id", "country_code", "current_stage"):
            assert attempt(conn, "lifecycle_bi", f"select {column} from marts.customers")
            cells += 1
        for column in sorted(pii):
            assert not attempt(conn, "lifecycle_bi", f"select {column} from marts.customers")
            assert attempt(conn, "lifecycle_pii_analyst", f"select {column} from marts.customers")
            assert attempt(conn, "lifecycle_activator", f"select {column} from marts.customers")
            cells += 3
        assert not attempt(conn, "lifecycle_bi", "select * from marts.customers")
        assert not attempt(
            conn,
            "lifecycle_bi",
            "select count(*) from marts.customers where primary_email like 'a%'",
        )
        assert attempt(conn, "lifecycle_bi", "select count(*) from marts.customers")
        assert not attempt(conn, "lifecycle_activation_reader", "select 1 from marts.customers")
    figures["PII column privilege cells checked"] += cells + 3


def test_a_table_created_outside_publish_is_not_readable_by_bi_until_granted(fresh_db) -> None:
    wh.bootstrap(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(CUSTOMERS)
        assert not attempt(conn, "lifecycle_bi", "select customer_key from marts.customers")
        assert attempt(conn, "lifecycle_pii_analyst", "select primary_email from marts.customers")
        wh.apply_grants(conn, "marts", ["customers"])
        assert attempt(conn, "lifecycle_bi", "select customer_key from marts.customers")
        assert not attempt(conn, "lifecycle_bi", "select primary_email from marts.customers")


def test_activation_holds_no_personal_column_beyond_what_exports_need() -> None:
    from lifecycle.activation.exports import MEMBER_FIELDS
    from lifecycle.activation.tables import SCORE_COLUMNS

    assert set(MEMBER_FIELDS) >= ACTIVATION_PII
    personal = {c for c in SCORE_COLUMNS if c in {"phone", "primary_email", "identifier_value"}}
    assert personal == set()


def test_every_personal_column_of_the_dbt_project_is_marked() -> None:
    import yaml

    names = {"email", "primary_email", "first_name", "last_name", "phone", "identifier_value"}
    unmarked = []
    for path in sorted(PROJECT_DIR.glob("models/**/*.yml")):
        for model in (yaml.safe_load(path.read_text()) or {}).get("models") or []:
            for column in model.get("columns") or []:
                if column["name"] in names and column["name"] not in pii_columns().get(
                    model["name"], ()
                ):
                    unmarked.append(f"{model['name']}.{column['name']}")
    assert unmarked == []
    assert sum(len(c) for c in pii_columns().values()) == 19


def _can_login(url: str, role: str) -> bool:
    try:
        with psycopg.connect(url, user=role, password="x", connect_timeout=5):
            return True
    except psycopg.OperationalError as exc:
        assert "not permitted to log in" in str(exc), exc
        return False


def test_roles_are_nologin_unless_a_password_comes_from_the_settings(fresh_db, tmp_path) -> None:
    wh.bootstrap(fresh_db)
    roles = (
        "select rolname, rolcanlogin from pg_roles where rolname like 'lifecycle\\_%' order by 1"
    )
    with psycopg.connect(fresh_db) as conn:
        assert {r: login for r, login in conn.execute(roles)} == dict.fromkeys(MATRIX, False)
    assert not _can_login(fresh_db, "lifecycle_loader")

    secret = tmp_path / "bi_password"
    secret.write_text("bi-Pw-from-a-secrets-file\n")
    settings = load_settings(
        {
            "LIFECYCLE_HOME": str(tmp_path),
            "LIFECYCLE_LOADER_PASSWORD": "loader-Pw-from-env",
            "LIFECYCLE_BI_PASSWORD_FILE": str(secret),
            "LIFECYCLE_DBT_PASSWORD": "not-a-role",
        }
    )
    assert dict(settings.role_passwords) == {
        "lifecycle_bi": "bi-Pw-from-a-secrets-file",
        "lifecycle_loader": "loader-Pw-from-env",
    }
    wh.bootstrap(fresh_db, dict(settings.role_passwords))
    with psycopg.connect(fresh_db) as conn:
        logins = {r for r, login in conn.execute(roles) if login}
        stored = conn.execute(
            "select rolpassword from pg_authid "
            "where rolname in ('lifecycle_bi', 'lifecycle_loader')"
        ).fetchall()
    assert logins == {"lifecycle_bi", "lifecycle_loader"}
    assert all(p.startswith("SCRAM-SHA-256$") and "Pw-from" not in p for (p,) in stored)
    assert _can_login(fresh_db, "lifecycle_bi")

    wh.bootstrap(fresh_db)  # the passwords are gone from the settings: NOLOGIN again
    with psycopg.connect(fresh_db) as conn:
        assert not any(login for _, login in conn.execute(roles))
        assert (
            conn.execute(
                "select count(*) from pg_authid where rolname like 'lifecycle\\_%' "
                "and rolpassword is not null"
            ).fetchone()[0]
            == 0
        )


#: Hand-built score rows: (customer_key, consent, send list on that date?, control list?)
SCORE_ROWS = [
    ("k_sent", True, True, False),
    ("k_consent_not_exported", True, False, False),
    ("k_no_consent_listed", False, True, False),  # inconsistent on purpose: consent rules
    ("k_control", True, False, True),
]


def _visible(conn: psycopg.Connection, role: str, table: str) -> list[tuple]:
    with conn.transaction():
        conn.execute(f"set local role {role}")
        got = conn.execute(
            f"select customer_key, email from activation.{table} order by 1"
        ).fetchall()
        conn.execute("reset role")
    return got


def test_activation_reader_sees_contact_fields_only_of_people_exports_sent_to(
    fresh_db, figures
) -> None:
    from lifecycle.activation.tables import READER_ROW_TABLES, ensure_activation_tables

    day, other_day = "2024-03-31", "2024-03-30"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_activation_tables(conn)  # tables before the roles exist: bootstrap adds rows rules
    wh.bootstrap(fresh_db)
    cells = 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_activation_tables(conn)  # again: idempotent
        for table in READER_ROW_TABLES:
            for key, consent, _sent, _control in SCORE_ROWS:
                conn.execute(
                    f"insert into activation.{table} (customer_key, email, first_name, "
                    "has_marketing_consent, stage, stage_since, days_in_stage, "
                    "recommended_action, is_scored, as_of_date, run_id) "
                    "values (%s, %s, 'Zoë', %s, 'active', %s, 1, 'none', false, %s, 'r')",
                    (key, f"{key}@x.example", consent, day, day),
                )
        for key, _, sent, control in SCORE_ROWS:
            for flag, name in ((sent, "send"), (control, "control")):
                if flag:
                    conn.execute(
                        "insert into activation.export_members values ('a', %s, %s, %s, %s)",
                        (day, key, f"{key}@x.example", name),
                    )
        # sent on another date only: not a reason to see this date's row
        conn.execute(
            "insert into activation.export_members values ('b', %s, 'k_consent_not_exported', "
            "'k@x.example', 'send')",
            (other_day,),
        )
        for table in READER_ROW_TABLES:
            assert _visible(conn, "lifecycle_activation_reader", table) == [
                ("k_sent", "k_sent@x.example")
            ]
            assert len(_visible(conn, "lifecycle_activator", table)) == len(SCORE_ROWS)
            assert len(conn.execute(f"select 1 from activation.{table}").fetchall()) == 4
            # the reader cannot write, nor lift its own restriction
            assert not attempt(
                conn, "lifecycle_activation_reader", f"delete from activation.{table}"
            )
            assert not attempt(
                conn,
                "lifecycle_activation_reader",
                f"alter table activation.{table} disable row level security",
            )
            # the activator still writes every row (activation runs as it may)
            assert attempt(
                conn, "lifecycle_activator", f"update activation.{table} set run_id = 'r2'"
            )
            cells += len(SCORE_ROWS) * 2 + 3
    figures["activation row-security cells checked"] += cells
