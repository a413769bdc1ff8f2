"""The activation tables' set-up, run by every activation: idempotent, and it does not
queue behind autovacuum (which holds a lock on the scores after each run's rewrite)."""

from __future__ import annotations

import psycopg

from lifecycle.activation.tables import READER_ROW_TABLES, ensure_activation_tables


def _row_security(conn: psycopg.Connection) -> dict[str, bool]:
    return dict(
        conn.execute(
            "select relname::text, relrowsecurity from pg_class "
            "where relnamespace = 'activation'::regnamespace and relname = any(%s)",
            (list(READER_ROW_TABLES),),
        ).fetchall()
    )


def test_row_security_is_turned_on_when_off_and_left_alone_when_on(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_activation_tables(conn)
        assert _row_security(conn) == dict.fromkeys(READER_ROW_TABLES, True)
        # as a release before row security left the table
        conn.execute("alter table activation.customer_scores disable row level security")
        ensure_activation_tables(conn)
        assert _row_security(conn) == dict.fromkeys(READER_ROW_TABLES, True)
    # a lock as autovacuum's (share update exclusive): ALTER TABLE would wait behind it
    with psycopg.connect(fresh_db) as vacuum, psycopg.connect(fresh_db, autocommit=True) as conn:
        for table in READER_ROW_TABLES:
            vacuum.execute(f"lock table activation.{table} in share update exclusive mode")
        conn.execute("set lock_timeout = '2s'")
        ensure_activation_tables(conn)  # no statement waits: nothing to change
        assert _row_security(conn) == dict.fromkeys(READER_ROW_TABLES, True)
