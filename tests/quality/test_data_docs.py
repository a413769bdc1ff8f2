"""GX Data Docs: every gate run renders the standard site under the state folder."""

from __future__ import annotations

import time

import pytest

from lifecycle.quality.gate import GateFailed, data_docs_dir, run_validate, validate_layer
from tests.quality.conftest import DAY, execute


def test_each_gate_run_builds_a_data_docs_site(warehouse) -> None:
    url, settings = warehouse
    started = time.perf_counter()
    raw = validate_layer("raw", DAY, settings, run_id="docs-raw-1")
    marts = validate_layer("marts", DAY, settings, run_id="docs-marts-1")
    elapsed = time.perf_counter() - started
    for verdict in (raw, marts):
        folder = data_docs_dir(settings, DAY, verdict.layer, verdict.run_id)
        assert verdict.data_docs == folder / "index.html"
        assert folder.is_relative_to(settings.state_dir)
        index = verdict.data_docs.read_text(encoding="utf-8")
        pages = sorted((folder / "validations").rglob("*.html"))
        assert len(pages) == len(verdict.suites) > 0  # one page per suite validated
        assert all(f"{verdict.layer}-{verdict.run_id}" in str(p) for p in pages)
        for suite in verdict.suites:
            assert suite in index
        assert f"data docs: {verdict.data_docs}" in verdict.summary()
        assert verdict.facts()["data_docs"] == str(verdict.data_docs)
    assert elapsed < 120


def test_a_failing_gate_has_its_failures_on_the_site_and_a_rerun_gets_its_own(warehouse) -> None:
    url, settings = warehouse
    batch = f"'orders__orders:{DAY.isoformat()}'"
    assert (
        execute(
            url,
            "update raw.orders__orders set amount = -12.50 where ctid = "
            f"(select min(ctid) from raw.orders__orders where _batch_id = {batch})",
        )
        == 1
    )
    with pytest.raises(GateFailed) as err:
        run_validate(DAY, settings, layer="raw", run_id="docs-fail")
    verdict = err.value.verdict
    assert verdict.data_docs is not None and f"data docs: {verdict.data_docs}" in str(err.value)
    folder = verdict.data_docs.parent
    failed = [p for p in (folder / "validations").rglob("*.html") if "docs-fail" in str(p)]
    assert failed and any("Failed" in p.read_text(encoding="utf-8") for p in failed)
    again = validate_layer("raw", DAY, settings, run_id="docs-again")
    assert again.data_docs == folder.parent / "docs-again" / "index.html"
    assert again.data_docs.is_file() and verdict.data_docs.is_file()  # each run keeps its site


def test_the_report_links_the_data_docs_of_the_days_gate_runs(warehouse) -> None:
    from lifecycle.quality.gate import gate_and_publish
    from lifecycle.report import build_report

    url, settings = warehouse
    raw = validate_layer("raw", DAY, settings, run_id="report-raw")
    marts = gate_and_publish(DAY, settings, run_id="report-marts").verdict
    report = build_report(DAY, settings)
    html = report.path.read_text(encoding="utf-8")
    for verdict in (raw, marts):
        assert f'<a href="{verdict.data_docs.as_uri()}">' in html
        assert f"GX Data Docs of the {verdict.layer} gate run {verdict.run_id}:" in html
