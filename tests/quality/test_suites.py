"""The suites in expectations/: well-formed, one per checked table, with clear errors."""

from __future__ import annotations

import json

import pytest

from lifecycle.quality.suites import SuiteError, load_suites, substitute


def test_every_layer_has_its_suites() -> None:
    names = {layer: [s.name for s in load_suites(layer)] for layer in ("raw", "marts")}
    assert names["raw"] == [
        "raw.crm__contacts",
        "raw.marketing__spend",
        "raw.orders__order_items",
        "raw.orders__orders",
        "raw.web__events",
    ]
    assert len(names["marts"]) == 13 and "marts.customer_stage_history" in names["marts"]
    assert [s.name for s in load_suites("scores")] == ["scores.scores_history"]
    assert [s.name for s in load_suites("activation")] == [
        "activation.customer_scores_history",
        "activation.export_members",
    ]
    web = {s.name: s for s in load_suites("raw")}["raw.web__events"]
    assert web.requires_batch == "web__events" and web.row_count.min_ratio == 0.3
    assert web.query({"batch_id": "web__events:2024-03-31"}) == (
        "select * from raw.web__events where _batch_id = 'web__events:2024-03-31'"
    )


def test_severity_is_gx_native_and_some_expectations_only_warn() -> None:
    severities = {
        e["severity"]
        for layer in ("raw", "marts", "scores", "activation")
        for s in load_suites(layer)
        for e in s.spec["expectations"]
    }
    assert severities == {"critical", "warning"}


def test_tokens_are_substituted_but_gx_batch_is_left(tmp_path) -> None:
    assert (
        substitute(
            "select * from {batch} join {schema}.x on d = '{as_of_date}'",
            {"schema": "marts__build", "as_of_date": "2024-03-31"},
        )
        == "select * from {batch} join marts__build.x on d = '2024-03-31'"
    )


def _suite(tmp_path, name: str, spec: dict):
    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / f"{name}.json").write_text(json.dumps(spec))


def test_malformed_suites_are_refused_with_the_file_named(tmp_path) -> None:
    good = {
        "name": "raw.t",
        "meta": {"lifecycle": {"table": "raw.t"}},
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}}
        ],
    }
    _suite(tmp_path, "t", {**good, "meta": {}})
    with pytest.raises(SuiteError, match=r"t\.json: meta.lifecycle.table"):
        load_suites("raw", tmp_path)
    _suite(tmp_path, "t", {**good, "name": "raw.other"})
    with pytest.raises(SuiteError, match="suite name must be 'raw.t'"):
        load_suites("raw", tmp_path)
    bad = dict(good["expectations"][0], severity="fatal")
    _suite(tmp_path, "t", {**good, "expectations": [bad]})
    with pytest.raises(SuiteError, match="severity 'fatal'; one of critical, warning, info"):
        load_suites("raw", tmp_path)
    _suite(tmp_path, "t", {**good, "meta": {"lifecycle": {"table": "x", "requires_batch": "x"}}})
    with pytest.raises(SuiteError, match="requires_batch 'x' is not a raw table"):
        load_suites("raw", tmp_path)
    (tmp_path / "raw" / "t.json").write_text("{not json")
    with pytest.raises(SuiteError, match="not a readable JSON suite"):
        load_suites("raw", tmp_path)
    with pytest.raises(SuiteError, match="unknown layer 'gold'"):
        load_suites("gold")
