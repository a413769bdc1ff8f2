"""Control groups: a deterministic hash of (audience, customer key), the same in SQL and Python."""

from __future__ import annotations

import math

import psycopg
import pytest
from psycopg import sql

from lifecycle.activation.membership import CONTROL_SQL, control_value, is_control


def test_sql_and_python_draw_the_same_number(fresh_db) -> None:
    expr = sql.SQL(CONTROL_SQL).format(audience=sql.Literal("vip_loyalty"), key=sql.SQL("k"))
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute(
            sql.SQL(
                "select k, {} from (select md5(i::text) || '東京' as k "
                "from generate_series(1, 3000) as i) as keys"
            ).format(expr)
        ).fetchall()
    assert len(got) == 3000
    for key, value in got:
        assert value == control_value(key, "vip_loyalty"), key


@pytest.mark.parametrize("share", [0.05, 0.1, 0.25])
def test_share_is_within_a_binomial_tolerance(share) -> None:
    n = 40_000
    held = sum(is_control(f"customer-{i}", "at_risk_save", share) for i in range(n))
    sd = math.sqrt(n * share * (1 - share))
    assert abs(held - n * share) < 4 * sd, (held, n * share)


def test_draws_are_stable_and_differ_between_audiences() -> None:
    keys = [f"k{i}" for i in range(5000)]
    first = [control_value(k, "a") for k in keys]
    assert first == [control_value(k, "a") for k in keys]
    assert all(0 <= v < 1 for v in first)
    other = [is_control(k, "b", 0.2) for k in keys]
    same = sum(a == b for a, b in zip([v < 0.2 for v in first], other, strict=True))
    assert same < 0.75 * len(keys)  # independent draws agree on ~68%, identical ones on 100%
    assert control_value("k1", "a") == control_value("k1", "a")
    assert not any(is_control(k, "a", 0.0) for k in keys)
