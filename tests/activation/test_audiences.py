"""The audiences file: validation errors a marketer can act on, and safe SQL compilation."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from lifecycle.activation.audiences import AudienceFileError, load_audiences, parse_audiences

REPO_AUDIENCES = Path(__file__).resolve().parents[2] / "audiences.yml"


def one(**audience) -> dict:
    """A document with one audience: defaults plus the given keys."""
    base = {
        "name": "a",
        "description": "d",
        "filter": [{"column": "stage", "op": "eq", "value": "new"}],
    }
    return {"version": 1, "audiences": [base | audience]}


@pytest.mark.parametrize(
    ("audience", "message"),
    [
        (
            {"filter": [{"column": "email", "op": "eq", "value": "x"}]},
            "audience 'a': filter[0]: unknown column 'email' (filterable columns: stage,",
        ),
        (
            {"filter": [{"column": "stage", "op": "like", "value": "n%"}]},
            "audience 'a': filter[0]: unknown op 'like' for column stage (ops: eq, ne,",
        ),
        ({"control_share": 1.0}, "audience 'a': control_share must be a number in [0, 1), got 1.0"),
        ({"control_share": -0.1}, "control_share must be a number in [0, 1), got -0.1"),
        ({"control_share": "10%"}, "control_share must be a number in [0, 1), got '10%'"),
        (
            {"filter": [{"column": "stage", "op": "eq", "value": "vip"}]},
            "filter[0]: 'vip' is not a stage (one of prospect, new, active, loyal, at_risk,",
        ),
        (
            {"filter": [{"column": "clv_12m", "op": "gte", "value": "100"}]},
            "filter[0]: clv_12m is a number: value '100' is not one",
        ),
        (
            {"filter": [{"column": "stage", "op": "in", "value": "new"}]},
            "filter[0]: op in needs a non-empty list as value, got 'new'",
        ),
        (
            {"filter": [{"any": [{"column": "risk_band", "op": "eq", "value": "severe"}]}]},
            "filter[0].any[0]: 'severe' is not a risk_band (one of low, medium, high)",
        ),
        ({"filter": []}, "audience 'a': filter must be a non-empty list of conditions"),
        ({"filter": "stage = 'new'"}, "filter must be a non-empty list of conditions"),
        ({"name": "Win Back"}, "name must be lower-case letters, digits and _"),
        ({"layouts": ["excel"]}, "layouts must be a non-empty list from ['generic', 'mailchimp'"),
        ({"push": {"url": "ftp://x"}}, "push.url must be an http(s) URL, got 'ftp://x'"),
        ({"push": {"url": "http://x", "batch_size": 0}}, "push.batch_size must be an integer"),
        ({"colour": "red"}, "audience 'a': unknown key(s) ['colour']"),
        (
            {"filter": [{"column": "is_scored", "op": "gt", "value": True}]},
            "is_scored is true/false: use eq or ne with true or false",
        ),
    ],
)
def test_bad_audience_is_refused_with_a_clear_message(audience, message) -> None:
    with pytest.raises(AudienceFileError) as err:
        parse_audiences(one(**audience), source="my.yml")
    assert str(err.value).startswith("my.yml has 1 problem(s):")
    assert message in str(err.value)


def test_every_problem_is_listed_at_once() -> None:
    doc = {
        "audiences": [
            {"name": "a", "description": "d", "filter": [{"column": "x", "op": "eq", "value": 1}]},
            {"name": "a", "description": "d", "filter": [{"column": "stage", "op": "is_null"}]},
            {"name": "b", "description": "", "filter": [{"column": "stage", "op": "is_null"}]},
        ]
    }
    with pytest.raises(AudienceFileError) as err:
        parse_audiences(doc)
    text = str(err.value)
    assert "has 2 problem(s)" in text
    assert "\n" not in text  # the CLI's error is one line
    assert "audience 'a': filter[0]: unknown column 'x'" in text
    assert "audience 'b': description is required" in text


def test_duplicate_names_are_refused() -> None:
    doc = one()
    doc["audiences"].append(doc["audiences"][0])
    with pytest.raises(AudienceFileError, match="audience 'a': name is used twice"):
        parse_audiences(doc)


def test_missing_and_broken_files(tmp_path) -> None:
    with pytest.raises(AudienceFileError, match="is a folder, not a file \\(set LIFECYCLE_AUD"):
        load_audiences(tmp_path)  # a folder said "does not exist"
    with pytest.raises(AudienceFileError, match="does not exist \\(set LIFECYCLE_AUDIENCES_FILE"):
        load_audiences(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("audiences: [\n", encoding="utf-8")
    with pytest.raises(AudienceFileError, match="is not valid YAML"):
        load_audiences(bad)
    bad.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(AudienceFileError, match="expected a mapping with a list under 'audiences'"):
        load_audiences(bad)


def test_repository_file_is_valid_and_uses_each_feature() -> None:
    audiences = {a.name: a for a in load_audiences(REPO_AUDIENCES)}
    assert set(audiences) >= {
        "win_back_high_value",
        "at_risk_save",
        "welcome_series",
        "vip_loyalty",
        "referral_ask",
    }
    assert audiences["welcome_series"].control_share == 0
    assert all(0 < a.control_share < 1 for n, a in audiences.items() if n != "welcome_series")


def test_values_are_parameters_never_sql_text(fresh_db) -> None:
    hostile = "x'); drop table activation.t; --"
    doc = one(
        filter=[
            {"column": "segment_name", "op": "eq", "value": hostile},
            {"any": [{"column": "top_reasons", "op": "contains", "value": "%_'"}]},
            {"column": "segment_id", "op": "in", "value": [1, 2]},
            {"column": "clv_12m", "op": "gte", "value": 10},
        ]
    )
    audience = parse_audiences(doc)[0]
    where, params = audience.where("t")
    with psycopg.connect(fresh_db) as conn:
        text = where.as_string(conn)
        assert hostile not in text and "%_'" not in text
        assert params == [hostile, "%_'", [1, 2], 10.0]
        conn.execute("create schema activation")
        conn.execute(
            "create table activation.t (segment_name text, top_reasons text, segment_id int, "
            "clv_12m double precision)"
        )
        conn.execute(
            "insert into activation.t values (%s, 'a %%_'' b', 2, 10), (%s, 'a %%_'' b', 3, 10), "
            "('other', 'a %%_'' b', 1, 99)",
            (hostile, hostile),
        )
        got = conn.execute(
            psycopg.sql.SQL("select segment_id from activation.t as t where {}").format(where),
            params,
        ).fetchall()
        assert got == [(2,)]
        assert conn.execute("select count(*) from activation.t").fetchone() == (3,)
