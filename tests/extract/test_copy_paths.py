"""The loader's two COPY paths (binary from typed values, CSV text) land the same rows.

A chunk whose values are all exact as typed goes to PostgreSQL as binary COPY; one with
a value PostgreSQL must round (a number with more than two decimals) goes as CSV text.
These tests pin that both give what PostgreSQL itself makes of the source text, that
each path is taken when it should be, that a source failing mid-stream reports its own
error and publishes nothing, and the vectorized helpers the checker is built on.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lifecycle.extract import SOURCES, extract
from lifecycle.extract.readers import read_csv_chunks
from lifecycle.load import LoadError, Window, _csv_bytes, day_window, load_batch
from lifecycle.parse import (
    Checker,
    Chunk,
    SeenHashes,
    _all_utc_seconds,
    _empty_to_null,
    hash_strings,
    type_column,
)
from lifecycle.raw import CRM_CONTACTS, FX_RATES, MARKETING_SPEND, ORDERS, RawEntity
from lifecycle.sample.world import WorldConfig, generate_world
from tests.conftest import make_settings, scratch_database

D1 = dt.date(2024, 1, 1)
ALL_UNTIL_D1 = Window(None, day_window(D1).end)

ORDERS_CSV = (
    "order_id,customer_id,email,ordered_at,updated_at,status,currency,amount,quantity,coupon\n"
    "O1,C1,a@x.com,2024-01-01T10:00:00Z,2024-01-01T10:00:00Z,completed,USD,10.50,1,\n"
    'O2,C2,"Lee, ""Ann"" <ann@x.com>",2024-01-01T11:00:00+05:30,2024-01-01 11:00z,'
    "completed,USD,1e3,007,SPRING\n"
    "O3,C3,美咲@例え.jp,2024-01-01T09:15:00.123456-03,2024-01-01T09:15,refunded,EUR,.5,5.0,\n"
    "O4,C4,,2023-12-31T23:59:59.5Z,,cancelled,,00012.30,,\n"
    "O5,C5,e@x.com,2023-06-01 08:00:00+0200,2023-06-01T08:00:00.000001Z,completed,USD,5.,0,\n"
)
#: One more row whose amount PostgreSQL rounds: its chunk must go as CSV text.
ROUNDED_ROW = "O6,C6,f@x.com,2024-01-01T12:00:00Z,2024-01-01T12:00:00Z,completed,USD,1.005,1,\n"

CONTACTS_CSV = (
    "id,email,created_at,updated_at,marketing_opt_in,country\n"
    "K1,a@x.com,2023-01-01T00:00:00Z,2024-01-01T00:00:00Z,yes,PT\n"
    "K2,b@x.com,,2024-01-01T01:00:00+01:00,FALSE,JP\n"
    "K3,c@x.com,2023-02-03T04:05:06.7Z,2023-12-31T00:00:00Z,,KR\n"
)
SPEND_CSV = (
    "date,channel,spend,currency\n"
    "2024-01-01,paid_search,120.50,USD\n2023-12-31,social,80,USD\n2023-02-28,email,0.01,\n"
)


def _chunks(text: str, block_bytes: int = 1 << 20) -> list[Chunk]:
    return list(read_csv_chunks(io.BytesIO(text.encode()), "mem.csv", block_bytes))


def _rows(url: str, entity: RawEntity) -> list[tuple]:
    """Every column but the load time, typed as PostgreSQL holds them, in a stable order."""
    with psycopg.connect(url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_schema = 'raw' "
                "and table_name = %s and column_name <> '_loaded_at' order by ordinal_position",
                (entity.table,),
            )
        ]
        quoted = ", ".join(f'"{c}"' for c in cols)
        return conn.execute(f"select {quoted} from {entity.qualified} order by _line").fetchall()


@pytest.mark.parametrize(
    ("entity", "text"),
    [(ORDERS, ORDERS_CSV), (CRM_CONTACTS, CONTACTS_CSV)],
    ids=["orders", "contacts"],
)
def test_binary_copy_lands_what_the_text_copy_lands(
    fresh_db: str, entity: RawEntity, text: str
) -> None:
    [chunk] = _chunks(text)
    checked = Checker(entity, ALL_UNTIL_D1, None).check(chunk)
    assert checked.values is not None  # the binary path
    load_batch(fresh_db, entity, D1, ALL_UNTIL_D1, [chunk], window_filter=False)
    binary = _rows(fresh_db, entity)
    assert len(binary) == text.count("\n") - 1

    # The same checked rows as CSV text, typed by PostgreSQL: what the text path lands.
    with psycopg.connect(fresh_db) as conn:
        conn.execute("set timezone = 'Asia/Tokyo'")  # no loaded timestamp depends on it
        conn.execute(f"create temp table src (like {entity.qualified} including defaults)")
        conn.execute("select set_config('lifecycle.source', 'mem.csv', false)")
        conn.execute(f"select set_config('lifecycle.batch_id', '{entity.table}:{D1}', false)")
        columns = ", ".join(f'"{n}"' for n in checked.table.column_names)
        with conn.cursor().copy(f"copy src ({columns}) from stdin with (format csv)") as cp:
            cp.write(_csv_bytes(checked.table))
        names = ", ".join(f'"{n}"' for n in (*entity.names, "_extra", "_source", "_line"))
        expected = conn.execute(f"select {names}, _batch_id from src order by _line").fetchall()
    assert binary == expected


def test_a_chunk_with_a_value_postgres_rounds_goes_as_text_and_lands_the_same(
    fresh_db: str,
) -> None:
    [clean] = _chunks(ORDERS_CSV)
    [rounded] = _chunks(ORDERS_CSV + ROUNDED_ROW)
    assert Checker(ORDERS, ALL_UNTIL_D1, None).check(rounded).values is None  # CSV text
    exact = load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, [clean], window_filter=False)
    binary = _rows(fresh_db, ORDERS)
    res = load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, [rounded], window_filter=False)
    text = _rows(fresh_db, ORDERS)
    # The rounding is said: 0.001 would be stored as 0.00 without a word.
    assert exact.warnings == []
    assert res.warnings == [
        "amount: 1 value(s) with more than two decimals are stored rounded to cents "
        "(e.g. '1.005' as 1.01)"
    ]
    assert text[:-1] == binary
    assert text[-1][0] == "O6" and text[-1][7] == Decimal("1.01")  # PostgreSQL rounded it
    by_id = {r[0]: r for r in text}
    assert by_id["O2"][2] == 'Lee, "Ann" <ann@x.com>'
    assert by_id["O2"][3] == dt.datetime(2024, 1, 1, 5, 30, tzinfo=dt.UTC)
    assert by_id["O2"][7:9] == (Decimal("1000.00"), 7)
    assert by_id["O2"][9] == {"coupon": "SPRING"}  # _extra
    assert by_id["O3"][2] == "美咲@例え.jp"
    assert by_id["O4"][4] is None and by_id["O4"][6] is None
    assert [r[11] for r in text] == [2, 3, 4, 5, 6, 7]  # _line
    assert {(r[10], r[12]) for r in text} == {("mem.csv", "orders__orders:2024-01-01")}


def test_binary_and_text_chunks_mix_in_one_batch(fresh_db: str) -> None:
    # Small blocks: several chunks, the one holding the 1.005 row goes as text.
    body = ORDERS_CSV + ROUNDED_ROW + ORDERS_CSV.split("\n", 1)[1].replace("O", "P")
    chunks = _chunks(body, block_bytes=200)
    checker = Checker(ORDERS, ALL_UNTIL_D1, None)
    kinds = [checker.check(c).values is not None for c in chunks]
    assert True in kinds and False in kinds
    res = load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, chunks, window_filter=False)
    assert res.rows_loaded == 11
    rows = _rows(fresh_db, ORDERS)
    assert [r[11] for r in rows] == list(range(2, 13))
    assert [r[0] for r in rows] == [
        *(f"O{i}" for i in range(1, 7)),
        *(f"P{i}" for i in range(1, 6)),
    ]


def test_dates_load_as_dates(fresh_db: str) -> None:
    load_batch(fresh_db, MARKETING_SPEND, D1, ALL_UNTIL_D1, _chunks(SPEND_CSV))
    rows = _rows(fresh_db, MARKETING_SPEND)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (dt.date(2024, 1, 1), "paid_search", Decimal("120.50"), "USD"),
        (dt.date(2023, 12, 31), "social", Decimal("80.00"), "USD"),
        (dt.date(2023, 2, 28), "email", Decimal("0.01"), None),
    ]


def _failing(chunks: list[Chunk], exc: BaseException) -> Iterator[Chunk]:
    yield from chunks
    raise exc


@pytest.mark.parametrize("tail", ["", ROUNDED_ROW], ids=["binary", "text"])
def test_a_source_failing_midway_reports_its_error_and_publishes_nothing(
    fresh_db: str, tail: str
) -> None:
    [first] = _chunks("order_id,customer_id,ordered_at,amount\nX1,C1,2024-01-01T00:00:00Z,1\n")
    load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, [first])
    published = _rows(fresh_db, ORDERS)
    with pytest.raises(OSError, match="connection to the source was reset"):
        load_batch(
            fresh_db,
            ORDERS,
            D1,
            ALL_UNTIL_D1,
            _failing(_chunks(ORDERS_CSV + tail), OSError("connection to the source was reset")),
        )
    assert _rows(fresh_db, ORDERS) == published
    with psycopg.connect(fresh_db) as conn:
        runs = conn.execute(
            "select status, error from ops.load_runs order by started_at"
        ).fetchall()
    assert runs == [("success", None), ("failed", "OSError: connection to the source was reset")]
    # A later chunk missing a required column: the checker's error, nothing published.
    bad = _chunks("order_id,amount\nZ1,1\n")
    with pytest.raises(LoadError, match="required column.s. missing .*: customer_id, ordered_at"):
        load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, _chunks(ORDERS_CSV + tail) + bad)
    assert _rows(fresh_db, ORDERS) == published
    res = load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, _chunks(ORDERS_CSV + tail))
    assert res.rows_loaded == 5 + bool(tail)


# ------------------------------------------------------------------ vectorized helpers


def test_hash_strings_depends_on_the_bytes_alone() -> None:
    values = ["", "a", "a\x00", "ab", "abcdefgh", "abcdefgh\x00", "abcdefghi", "x" * 70, "y" * 70]
    hashes = hash_strings(pa.array(values))
    assert len(set(hashes.tolist())) == len(values)
    # The same value hashes the same in any array, at any offset, sliced or not.
    shuffled = pa.array(["pad", *reversed(values)]).slice(1)
    assert hash_strings(shuffled).tolist() == list(reversed(hashes.tolist()))
    many = pa.array([f"O{i:012d}" for i in range(50_000)])
    assert len(np.unique(hash_strings(many))) == 50_000
    # Values of one length take a faster path that must agree with the general one.
    for value in ["O000000012345", "2024-01-01T00:00:00Z", "x" * 70, "abcdefgh"]:
        alone = hash_strings(pa.array([value, value]))[0]
        assert alone == hash_strings(pa.array([value, "odd length"]))[0], value


def test_seen_hashes_across_levels() -> None:
    seen = SeenHashes()
    for start in range(0, 1000, 100):
        batch = np.arange(start, start + 100, dtype=np.uint64) * np.uint64(7919)
        assert not seen.contains(batch).any()
        seen.add(np.sort(batch))
    probe = np.array([0, 7919 * 999, 7919 * 1000, 5], dtype=np.uint64)
    assert seen.contains(probe).tolist() == [True, True, False, False]
    assert sum(len(level) for level in seen.levels) == 1000
    assert all((np.diff(level.astype(np.int64)) > 0).all() for level in seen.levels)


def test_duplicates_are_found_across_chunks_with_long_keys() -> None:
    key = "K" * 100
    text = (
        "order_id,customer_id,ordered_at,amount\n"
        f"{key},C1,2024-01-01T00:00:00Z,1\n{key}2,C1,2024-01-01T00:00:00Z,1\n"
        f"{key},C1,2024-01-01T00:00:00Z,1\n"
    )
    checker = Checker(ORDERS, ALL_UNTIL_D1, None)
    results = [checker.check(c) for c in _chunks(text, block_bytes=60)]
    assert len(results) == 3
    # orders quarantine a repeated key: counted as quarantined, not also as duplicate
    assert [(r.rows_duplicate, len(r.quarantine)) for r in results] == [(0, 0), (0, 0), (0, 1)]
    assert "duplicate of an earlier row" in results[2].quarantine[0][2]


def test_canonical_utc_timestamps_are_recognized_and_nothing_else() -> None:
    ok = ["2024-01-01T00:00:00Z", "1999-12-31T23:59:59Z"]
    assert _all_utc_seconds(pa.array(ok))
    assert _all_utc_seconds(pa.array([*ok, None]))
    assert _all_utc_seconds(pa.array(["x", *ok]).slice(1))
    for other in [
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00:00z",
        "2024-01-01T00:00:0/Z",
        "2024-01-01T00:00:0:Z",
        "2024-01-01T00:00:00+0",
        "2024-01-01T00:00:00.5Z",
    ]:
        assert not _all_utc_seconds(pa.array([*ok, other])), other
    assert not _all_utc_seconds(pa.array([None], pa.string()))


def test_empty_strings_become_null_and_nothing_else() -> None:
    assert _empty_to_null(pa.array(["", None, "x", " "])).to_pylist() == [None, None, "x", " "]
    plain = pa.array(["a", None, "b"])
    assert _empty_to_null(plain) is plain  # nothing to change: no copy


def test_a_lower_case_z_reads_as_utc_whatever_else_the_chunk_holds() -> None:
    # It used to be normalized only when another value of the chunk had no offset.
    load, value, bad = type_column(
        "timestamp", pa.array(["2024-01-01T00:00:00Z", "2024-01-01 11:00z"])
    )
    assert load.to_pylist() == ["2024-01-01T00:00:00Z", "2024-01-01 11:00Z"]
    assert value[1].as_py() == dt.datetime(2024, 1, 1, 11, tzinfo=dt.UTC)
    assert not pc.any(bad).as_py()


@pytest.mark.parametrize("bad_too", [False, True], ids=["alone", "with-another-bad-value"])
def test_year_zero_is_an_invalid_value_not_a_crash(bad_too: bool) -> None:
    # Arrow reads year 0000, PostgreSQL rejects it: it used to fail the whole load (or
    # crash the checker's per-value path, taken when another value is bad too).
    other = "2023-02-29T00:00:00Z" if bad_too else "2024-01-01T00:00:00Z"
    text = pa.array(["0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", other])
    load, value, bad = type_column("timestamp", text)
    assert bad.to_pylist() == [True, False, bad_too]
    assert load[0].as_py() is None and value[0].as_py() is None
    # Year 1 with an offset is a valid instant (in year 0 UTC), as in PostgreSQL.
    assert value.cast(pa.int64())[1].as_py() == -62135596800_000000 - 3600_000000
    dates = type_column("date", pa.array(["0000-12-31", "2024-02-29", "2023-02-29"]))
    assert dates[2].to_pylist() == [True, False, True]


RAW_TABLES = ("crm__contacts", "orders__orders", "orders__order_items", "web__events")


def _world_tables(url: str) -> dict[str, list[tuple]]:
    """Every raw table's rows as text, load time left out, in a stable order."""
    out = {}
    with psycopg.connect(url) as conn:
        for t in (*RAW_TABLES, "marketing__spend", "quarantine"):
            cols = [
                r[0]
                for r in conn.execute(
                    "select column_name from information_schema.columns where table_schema = "
                    "'raw' and table_name = %s and column_name <> '_loaded_at' "
                    "order by ordinal_position",
                    (t,),
                )
            ]
            quoted = ", ".join(f'"{c}"::text' for c in cols)
            order = ", ".join(str(i + 1) for i in range(len(cols)))
            out[t] = conn.execute(f"select {quoted} from raw.{t} order by {order}").fetchall()
    return out


def test_a_whole_dirty_world_lands_the_same_through_either_path(
    fresh_db: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = tmp_path_factory.mktemp("paths") / "world"
    end = dt.date(2024, 2, 29)
    config = WorldConfig(customers=300, start=dt.date(2024, 1, 1), end=end, seed=3, dirty_rate=0.02)
    generate_world(config, world)
    env = {"LIFECYCLE_WORLD_DIR": str(world), "LIFECYCLE_MAX_REJECT_SHARE": "0.5"}

    def full_load(url: str) -> dict[str, list[tuple]]:
        settings = make_settings(
            tmp_path_factory.mktemp("home"), LIFECYCLE_WAREHOUSE_URL=url, **env
        )
        for source in SOURCES:
            extract(source, end, settings, full=True)
        return _world_tables(url)

    binary = full_load(fresh_db)
    # Every chunk as CSV text, as the loader sent everything before binary COPY.
    monkeypatch.setattr(Checker, "_typed", lambda *args: None)
    with scratch_database(fresh_db, prefix="text") as url:
        text = full_load(url)
    assert all(binary[t] for t in RAW_TABLES)
    assert binary["quarantine"]  # dirty rows were there, and skipped alike
    assert binary == text, {t: (len(binary[t]), len(text[t])) for t in binary}


def test_numbers_at_every_base_10000_boundary_land_exactly(fresh_db: str) -> None:
    # PostgreSQL's binary numeric groups digits by 10000 around the decimal point; an
    # encoder that misplaces a group shifts a value by powers of 10000.
    amounts = [
        "0", "0.01", "0.1", "0.99", "1", "12.3", "9999.99", "10000", "10000.01", "12345.6",
        "99999999.99", "100000000", "100000000.01", "123456789012.34", "999999999999.99",
    ]  # fmt: skip
    text = "order_id,customer_id,ordered_at,amount\n" + "".join(
        f"N{i},C1,2024-01-01T00:00:00Z,{a}\n" for i, a in enumerate(amounts)
    )
    [chunk] = _chunks(text)
    assert Checker(ORDERS, ALL_UNTIL_D1, None).check(chunk).values is not None  # binary
    load_batch(fresh_db, ORDERS, D1, ALL_UNTIL_D1, [chunk])
    assert [r[7] for r in _rows(fresh_db, ORDERS)] == [
        Decimal(a).quantize(Decimal("0.01")) for a in amounts
    ]


def test_a_rate_of_zero_or_too_small_to_keep_is_quarantined(fresh_db: str) -> None:
    """A 0 loaded, then staging dropped it and the day took another rate; 1e-12 was stored
    as 0.0000000000 and the transform said the currency had no rate at all."""
    text = (
        "date,currency,rate\n2024-01-01,EUR,1.08\n2024-01-01,JPY,0\n"
        "2024-01-01,VND,1e-12\n2024-01-01,IDR,0.0000615\n2024-01-01,XAU,0.0000000001\n"
    )
    res = load_batch(fresh_db, FX_RATES, D1, ALL_UNTIL_D1, _chunks(text), max_reject_share=0.9)
    assert (res.rows_loaded, res.rows_quarantined) == (3, 2)
    assert _rows_of(fresh_db, "select _line, reason from raw.quarantine order by 1") == [
        (3, "rate 0 is no rate: it must be at least 0.0000000001"),
        (4, "rate 1e-12 is no rate: it must be at least 0.0000000001"),
    ]


def _rows_of(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()
