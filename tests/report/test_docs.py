"""The BI catalog in docs/bi.md matches the dbt YAML and the tables the warehouse really has."""

from __future__ import annotations

import re

import psycopg

from lifecycle.report.catalog import DOC, doc_catalog, mart_models, render_catalog

DOCS = DOC.parent


def test_catalog_in_docs_is_current() -> None:
    assert doc_catalog() == render_catalog(), (
        "docs/bi.md is stale: run `python -m lifecycle.report.catalog`"
    )
    names = {m["name"] for m in mart_models()}
    assert {"customers", "stage_counts_daily", "cohort_retention", "channel_ltv"} <= names
    for name in names:
        assert f"### marts.{name}\n" in DOC.read_text(encoding="utf-8")


def test_catalog_columns_are_the_warehouse_columns(report_world) -> None:
    with psycopg.connect(report_world.url) as conn:
        for model in mart_models():
            got = [
                r[0]
                for r in conn.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = 'marts' and table_name = %s order by ordinal_position",
                    (model["name"],),
                )
            ]
            assert got == [c["name"] for c in model["columns"]], model["name"]


def test_guides_link_to_files_that_exist() -> None:
    for guide in ("bi.md", "operations.md"):
        text = (DOCS / guide).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (DOCS / target).resolve().exists(), f"{guide} links to missing {target}"
