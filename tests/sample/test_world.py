"""Tests of the sample-world generator: determinism, contract, model consistency, defects."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lifecycle.sample import text as tx
from lifecycle.sample.world import GENERATOR_VERSION, WorldConfig, WorldSummary, generate_world

START, END = dt.date(2023, 1, 1), dt.date(2023, 12, 31)
END_TS = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
START_TS = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
BASE = WorldConfig(customers=900, start=START, end=END, seed=7, chunk_size=350)
EVENT_KEYS = [
    "event_id", "anonymous_id", "user_id", "email", "event", "timestamp", "received_at",
    "session_id", "page_url", "utm_source", "utm_medium", "utm_campaign", "order_id",
    "product_id",
]  # fmt: skip
EVENT_NAMES = {
    "page_viewed", "product_viewed", "added_to_cart", "checkout_started", "signed_up",
    "logged_in", "order_completed",
}  # fmt: skip
CSV_FILES = ("crm/contacts.csv", "orders/orders.csv", "orders/order_items.csv")
FILE_NAME = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/part-(\d{4})-arrived-(\d{8})\.jsonl\.gz$")


# ------------------------------------------------------------------------------ helpers


def _generate(root: Path, config: WorldConfig) -> tuple[Path, WorldSummary]:
    """Generate a world into ``root`` and return (root, summary)."""
    return root, generate_world(config, root)


def _hashes(root: Path) -> dict[str, str]:
    """Return sha256 per relative file path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(root: Path, name: str) -> list[dict[str, str]]:
    """Return the rows of a clean CSV file as dicts."""
    with open(root / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _ts(value: str) -> dt.datetime:
    """Parse a contract timestamp (``YYYY-MM-DDTHH:MM:SSZ``)."""
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _event_files(root: Path) -> list[Path]:
    """Return every event file, sorted."""
    return sorted((root / "web" / "events").rglob("*.jsonl.gz"))


def _event_lines(root: Path) -> Iterator[tuple[str, int, bytes]]:
    """Yield (relative file, 1-based line number, raw line) for every event line."""
    for path in _event_files(root):
        rel = path.relative_to(root).as_posix()
        for n, line in enumerate(gzip.decompress(path.read_bytes()).splitlines(), start=1):
            yield rel, n, line


def _events(root: Path) -> list[dict]:
    """Return every event of a clean world, parsed, with its file name under ``_file``."""
    out = []
    for rel, _, line in _event_lines(root):
        event = json.loads(line)
        event["_file"] = rel
        out.append(event)
    return out


# ------------------------------------------------------------------------------ worlds


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldSummary]:
    """A clean one-year world of 900 people in three chunks (chunk cuts an RNG block)."""
    return _generate(tmp_path_factory.mktemp("world"), BASE)


@pytest.fixture(scope="module")
def root(world: tuple[Path, WorldSummary]) -> Path:
    """The clean world's directory."""
    return world[0]


@pytest.fixture(scope="module")
def truth(root: Path) -> list[dict[str, str]]:
    """The clean world's ground truth."""
    return _rows(root, "truth/customers.csv")


@pytest.fixture(scope="module")
def orders(root: Path) -> list[dict[str, str]]:
    """The clean world's orders."""
    return _rows(root, "orders/orders.csv")


@pytest.fixture(scope="module")
def contacts(root: Path) -> list[dict[str, str]]:
    """The clean world's CRM contacts."""
    return _rows(root, "crm/contacts.csv")


@pytest.fixture(scope="module")
def events(root: Path) -> list[dict]:
    """The clean world's events."""
    return _events(root)


@pytest.fixture(scope="module")
def dirty_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldSummary]:
    """The same world with defects injected at 4%."""
    return _generate(tmp_path_factory.mktemp("dirty"), replace(BASE, dirty_rate=0.04))


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_files(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    again, _ = _generate(tmp_path_factory.mktemp("again"), BASE)
    first, second = _hashes(root), _hashes(again)
    assert len(first) > 100
    assert first == second


def test_different_seed_gives_different_files(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other, _ = _generate(tmp_path_factory.mktemp("other"), replace(BASE, seed=8))
    first, second = _hashes(root), _hashes(other)
    for name in (*CSV_FILES, "truth/customers.csv", "marketing/spend.csv"):
        assert first[name] != second[name], name
    shared_events = {k for k in first if k.startswith("web/") and first[k] == second.get(k)}
    assert not shared_events


def test_chunk_size_changes_only_the_event_file_split(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    one_chunk, _ = _generate(tmp_path_factory.mktemp("rechunked"), replace(BASE, chunk_size=900))
    first, second = _hashes(root), _hashes(one_chunk)
    not_web = [k for k in first if not k.startswith("web/") and k != "world.json"]
    assert {k: first[k] for k in not_web} == {k: second[k] for k in not_web}
    assert len(not_web) == 6

    def by_partition(base: Path) -> dict[tuple[str, str], list[bytes]]:
        out: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for rel, _, line in _event_lines(base):
            day, _, arrived = FILE_NAME.search(rel).groups()
            out[day, arrived].append(line)
        return {k: sorted(v) for k, v in out.items()}

    assert by_partition(root) == by_partition(one_chunk)
    parts = {FILE_NAME.search(k).group(2) for k in second if k.startswith("web/")}
    assert parts == {"0000"}
    meta_a = json.loads((root / "world.json").read_text())
    meta_b = json.loads((one_chunk / "world.json").read_text())
    for meta in (meta_a, meta_b):
        del meta["config"]["chunk_size"], meta["counts"]["web_files"]
    assert meta_a == meta_b


# ------------------------------------------------------------------------------ contract


def test_people_count_is_exact(
    world: tuple[Path, WorldSummary], truth: list[dict[str, str]]
) -> None:
    _, summary = world
    assert len(truth) == BASE.customers == summary.people
    assert [int(r["person_id"]) for r in truth] == list(range(1, BASE.customers + 1))
    assert summary.customers == sum(1 for r in truth if r["customer_id"])
    assert summary.prospects == sum(1 for r in truth if r["is_prospect"] == "true")


def test_world_json_records_config_counts_and_version(
    world: tuple[Path, WorldSummary],
) -> None:
    root, summary = world
    meta = json.loads((root / "world.json").read_text())
    assert meta["version"] == GENERATOR_VERSION
    assert meta["complete"] is True
    assert meta["config"]["customers"] == 900 and meta["config"]["start"] == "2023-01-01"
    assert meta["counts"] == json.loads(json.dumps(summary.counts()))
    assert str(root) not in (root / "world.json").read_text()


def test_clean_world_parses_cleanly(root: Path, events: list[dict]) -> None:
    headers = {
        "crm/contacts.csv": "id,email,first_name,last_name,phone,country,created_at,updated_at,"
        "acquisition_channel,marketing_opt_in,lifecycle_stage,referred_by",
        "orders/orders.csv": "order_id,customer_id,email,ordered_at,updated_at,status,currency,"
        "amount,quantity",
        "orders/order_items.csv": "order_item_id,order_id,product_id,quantity,unit_price,"
        "updated_at",
        "marketing/spend.csv": "date,channel,spend,currency",
    }
    money = re.compile(r"^\d+\.\d{2}$")
    for name, header in headers.items():
        text = (root / name).read_bytes().decode("utf-8")  # strict: raises on bad bytes
        lines = text.split("\n")
        assert lines[0] == header and lines[-1] == ""
        width = header.count(",") + 1
        assert all(len(row) == width for row in csv.reader(lines[1:-1])), name
        assert '"' not in text
    for row in _rows(root, "orders/orders.csv"):
        assert money.match(row["amount"]) and int(row["quantity"]) >= 1
        assert row["status"] in {"completed", "refunded", "cancelled"}
        assert row["currency"] in {"USD", "EUR"}
        assert re.fullmatch(r"O\d{12}", row["order_id"])
        assert re.fullmatch(r"C\d{8}", row["customer_id"])
    for row in _rows(root, "orders/order_items.csv"):
        assert money.match(row["unit_price"]) and int(row["quantity"]) >= 1
        assert re.fullmatch(r"P\d{5}", row["product_id"])
    for row in _rows(root, "crm/contacts.csv"):
        assert row["marketing_opt_in"] in {"true", "false"}
        assert re.fullmatch(r"\d+", row["id"])
        _ts(row["created_at"]), _ts(row["updated_at"])
    assert (root / "truth/dirty.csv").read_text() == "file,locator,kind,detail\n"
    for e in events:
        assert list(e)[:-1] == EVENT_KEYS
        assert e["event"] in EVENT_NAMES
        assert uuid.UUID(e["event_id"]).version == 4
        assert (e["order_id"] is not None) == (e["event"] == "order_completed")
        assert (e["product_id"] is not None) == (e["event"] in {"product_viewed", "added_to_cart"})
        assert (e["email"] is not None) == (e["event"] in {"signed_up", "logged_in"})
        assert e["page_url"].startswith("https://shop.example.com/")


def test_every_date_is_inside_the_window(
    root: Path,
    contacts: list[dict[str, str]],
    orders: list[dict[str, str]],
    truth: list[dict[str, str]],
    events: list[dict],
) -> None:
    def inside(value: str) -> bool:
        return START_TS <= _ts(value) < END_TS

    assert all(inside(r["created_at"]) and inside(r["updated_at"]) for r in contacts)
    assert all(r["created_at"] <= r["updated_at"] for r in contacts)
    assert all(inside(r["ordered_at"]) and inside(r["updated_at"]) for r in orders)
    assert all(r["ordered_at"] <= r["updated_at"] for r in orders)
    items = _rows(root, "orders/order_items.csv")
    assert all(inside(r["updated_at"]) for r in items)
    assert all(inside(r["acquired_at"]) for r in truth)
    assert all(inside(r["first_order_at"]) for r in truth if r["first_order_at"])
    for e in events:
        assert inside(e["timestamp"]) and inside(e["received_at"])
        assert e["timestamp"] <= e["received_at"]
        day, _, arrived = FILE_NAME.search(e["_file"]).groups()
        assert e["timestamp"][:10] == day
        assert e["received_at"][:10].replace("-", "") == arrived
    days = {r["date"] for r in _rows(root, "marketing/spend.csv")}
    assert min(days) == "2023-01-01" and max(days) == "2023-12-31"


# ------------------------------------------------------------------------------ the model


def test_truth_agrees_with_orders(
    truth: list[dict[str, str]], orders: list[dict[str, str]]
) -> None:
    by_customer = {r["customer_id"]: r for r in truth if r["customer_id"]}
    first: dict[str, str] = {}
    for o in orders:
        person = by_customer[o["customer_id"]]  # every order's customer exists in truth
        assert person["is_prospect"] == "false"
        assert o["ordered_at"] < person["dropout_at"]  # nothing after dropout
        assert o["email"] == person["email"]
        first[o["customer_id"]] = min(first.get(o["customer_id"], "9"), o["ordered_at"])
    assert set(first) == set(by_customer)
    assert all(by_customer[c]["first_order_at"] == t for c, t in first.items())
    assert all(r["acquired_at"] < r["first_order_at"] for r in by_customer.values())
    prospects = [r for r in truth if r["is_prospect"] == "true"]
    assert 0.25 < len(prospects) / len(truth) < 0.45
    assert all(not r["customer_id"] and not r["first_order_at"] for r in prospects)
    assert all(r["purchase_rate_per_year"] == "0.0000" for r in prospects)
    # churn is real: a good share of customers drop out inside the window
    dropped = [r for r in by_customer.values() if _ts(r["dropout_at"]) < END_TS]
    assert 0.1 < len(dropped) / len(by_customer) < 0.6


def test_order_items_sum_to_the_order_amount(root: Path, orders: list[dict[str, str]]) -> None:
    items: dict[str, list[dict[str, str]]] = defaultdict(list)
    for it in _rows(root, "orders/order_items.csv"):
        items[it["order_id"]].append(it)
    assert set(items) == {o["order_id"] for o in orders}
    popularity = Counter()
    for o in orders:
        lines = items[o["order_id"]]
        assert 1 <= len(lines) <= 4
        cents = sum(int(it["quantity"]) * int(it["unit_price"].replace(".", "")) for it in lines)
        assert cents == int(o["amount"].replace(".", ""))
        assert sum(int(it["quantity"]) for it in lines) == int(o["quantity"])
        assert [it["order_item_id"] for it in lines] == [
            f"{o['order_id']}-{k}" for k in range(1, len(lines) + 1)
        ]
        popularity.update(it["product_id"] for it in lines)
    counts = sorted(popularity.values(), reverse=True)
    assert counts[0] > 5 * np.median(counts)  # popularity skew
    statuses = Counter(o["status"] for o in orders)
    assert statuses["refunded"] > 0 and statuses["cancelled"] > 0
    assert statuses["completed"] > 0.85 * len(orders)


def test_identities_link_across_sources(
    truth: list[dict[str, str]], contacts: list[dict[str, str]], events: list[dict]
) -> None:
    by_crm = {r["crm_contact_id"]: r for r in truth if r["crm_contact_id"]}
    assert len(contacts) == len(by_crm)
    created = {c["id"]: c["created_at"] for c in contacts}
    raw_differs = 0
    for c in contacts:
        person = by_crm[c["id"]]
        assert c["email"].strip().lower() == person["email"]
        raw_differs += c["email"] != person["email"]
        if c["referred_by"]:
            assert c["referred_by"] in created and c["referred_by"] != c["id"]
            assert created[c["referred_by"]] <= c["created_at"]
            assert person["acquisition_channel"] == "referral"
    assert 0.05 < raw_differs / len(contacts) < 0.35  # case / padding differences exist
    assert any(c["referred_by"] for c in contacts)
    assert len({r["email"] for r in truth}) == len(truth)  # emails are unique
    guests = [r for r in truth if r["customer_id"] and not r["crm_contact_id"]]
    assert guests  # guest-checkout buyers without CRM contact
    assert not set(by_crm) & {r["customer_id"] for r in truth}  # separate id spaces

    by_email = {r["email"]: r for r in truth}
    web_users = {r["web_user_id"] for r in truth if r["web_user_id"]}
    anon_to_user: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["email"] is not None:
            person = by_email[e["email"].lower()]
            assert e["user_id"] == person["web_user_id"]
            if person["customer_id"]:
                assert e["user_id"] == person["customer_id"]
        if e["user_id"] is not None:
            assert e["user_id"] in web_users
            anon_to_user[e["anonymous_id"]].add(e["user_id"])
    assert all(len(users) == 1 for users in anon_to_user.values())
    anonymous = {e["anonymous_id"] for e in events} - set(anon_to_user)
    assert len(anonymous) > len(anon_to_user)  # most devices never identify
    prospect_accounts = {r["web_user_id"] for r in truth if r["is_prospect"] == "true"}
    assert prospect_accounts & {e["user_id"] for e in events}  # identified web prospects


def test_web_behaviour_follows_the_truth(
    truth: list[dict[str, str]], orders: list[dict[str, str]], events: list[dict]
) -> None:
    by_user: dict[str, list[dt.datetime]] = defaultdict(list)
    purchase_sessions = {e["session_id"] for e in events if e["event"] == "order_completed"}
    browse_starts: dict[str, dict[str, dt.datetime]] = defaultdict(dict)
    for e in events:
        if e["user_id"]:
            t = _ts(e["timestamp"])
            by_user[e["user_id"]].append(t)
            if e["session_id"] not in purchase_sessions:
                starts = browse_starts[e["user_id"]]
                starts[e["session_id"]] = min(starts.get(e["session_id"], t), t)
    buyers = [r for r in truth if r["customer_id"]]
    non_browsers = [r for r in buyers if r["browses"] == "false"]
    assert non_browsers and not any(r["customer_id"] in by_user for r in non_browsers)
    stop_browsing, keep_browsing = 0, 0
    before_near, before_far = 0, 0
    for r in buyers:
        dropout = _ts(r["dropout_at"])
        times = by_user.get(r["customer_id"], [])
        after = [t for t in times if t > dropout + dt.timedelta(hours=6)]
        if r["browses_after_dropout"] == "false":
            assert not after, r["person_id"]
            stop_browsing += dropout < END_TS
        else:
            keep_browsing += bool(after)
        if dropout < END_TS and dropout - _ts(r["first_order_at"]) > dt.timedelta(days=95):
            starts = browse_starts[r["customer_id"]].values()
            before_near += sum(dropout - dt.timedelta(days=30) < t <= dropout for t in starts)
            before_far += sum(
                dropout - dt.timedelta(days=90) < t <= dropout - dt.timedelta(days=60)
                for t in starts
            )
    assert stop_browsing > 0 and keep_browsing > 0
    assert before_near < 0.8 * before_far  # browsing thins out in the weeks before dropout
    tracked = {e["order_id"] for e in events if e["event"] == "order_completed"}
    web_buyers = {r["customer_id"] for r in buyers if r["browses"] == "true"}
    web_orders = [o["order_id"] for o in orders if o["customer_id"] in web_buyers]
    share = len(tracked & set(web_orders)) / len(web_orders)
    assert 0.75 < share < 0.99  # most, not all, orders are tracked
    utm = {e["utm_medium"] for e in events if e["utm_source"]}
    assert {"cpc", "paid_social", "email", "referral"} <= utm


def test_acquisition_has_growth_and_a_q4_peak(truth: list[dict[str, str]]) -> None:
    months = Counter(int(r["acquired_at"][5:7]) for r in truth)
    per_day = {m: months[m] / (dt.date(2023 + m // 12, m % 12 + 1, 1) - dt.date(2023, m, 1)).days
               for m in range(1, 13)}  # fmt: skip
    assert (per_day[11] + per_day[12]) / 2 > 1.2 * np.mean([per_day[m] for m in range(1, 11)])
    assert sum(months[m] for m in range(7, 11)) > sum(months[m] for m in range(1, 5))
    channels = Counter(r["acquisition_channel"] for r in truth)
    assert set(channels) == {"organic", "paid_search", "social", "referral", "email"}


def test_cjk_and_accented_names_round_trip_as_utf8(root: Path, contacts: list) -> None:
    raw = (root / "crm/contacts.csv").read_bytes()
    assert raw.decode("utf-8").encode("utf-8") == raw
    names = " ".join(c["first_name"] + " " + c["last_name"] for c in contacts)
    assert re.search(r"[\u4e00-\u9fff]", names)  # Han (Chinese, Japanese kanji)
    assert re.search(r"[\uac00-\ud7af]", names)  # Hangul
    assert re.search(r"[\u3040-\u309f]|さくら|ゆい|ひなた", names) or re.search(
        r"(佐藤|鈴木|高橋|田中|山本|中村)", names
    )  # Japanese
    assert re.search(r"[éèüöäñçã]", names)  # accented Latin


def test_web_events_arrive_late_and_duplicated(
    world: tuple[Path, WorldSummary], events: list[dict]
) -> None:
    root, summary = world
    late_files = 0
    for path in _event_files(root):
        day, _, arrived = FILE_NAME.search(path.as_posix()).groups()
        lag = (dt.datetime.strptime(arrived, "%Y%m%d").date() - dt.date.fromisoformat(day)).days
        assert 0 <= lag <= 5
        late_files += lag > 0
        assert gzip.decompress(path.read_bytes())  # no empty files
        assert path.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime = 0
    assert late_files > 0
    late = sum(e["received_at"][:10] != e["timestamp"][:10] for e in events)
    assert 0.015 < late / len(events) < 0.08
    assert late == summary.late_events
    ids = Counter(e["event_id"] for e in events)
    copies = sum(n - 1 for n in ids.values())
    assert 0.005 < copies / len(events) < 0.03 and copies == summary.duplicate_events
    first_seen: dict[str, dict] = {}
    for e in events:
        if e["event_id"] in first_seen:
            a, b = dict(first_seen[e["event_id"]]), dict(e)
            for d in (a, b):
                del d["received_at"], d["_file"]
            assert a == b
        first_seen.setdefault(e["event_id"], e)
    assert len(events) == summary.web_events


def test_spend_covers_every_day_and_tracks_acquisitions(
    root: Path, truth: list[dict[str, str]]
) -> None:
    spend = _rows(root, "marketing/spend.csv")
    days = {START + dt.timedelta(d) for d in range((END - START).days + 1)}
    keys = {(r["date"], r["channel"]) for r in spend}
    assert len(keys) == len(spend) == 3 * len(days)
    assert keys == {(d.isoformat(), c) for d in days for c in ("paid_search", "social", "email")}
    assert all(float(r["spend"]) > 0 and r["currency"] == "USD" for r in spend)
    for channel, cac in BASE.cac:
        total = sum(float(r["spend"]) for r in spend if r["channel"] == channel)
        acquired = sum(1 for r in truth if r["acquisition_channel"] == channel)
        assert 0.75 * cac < total / acquired < 1.25 * cac, channel


# ------------------------------------------------------------------------------ defects


def _line(root: Path, rel: str, n: int) -> tuple[bytes, bytes | None]:
    """Return line ``n`` (1-based) of a file and the line before it."""
    data = (root / rel).read_bytes()
    if rel.endswith(".gz"):
        data = gzip.decompress(data)
    lines = data.split(b"\n")
    return lines[n - 1], lines[n - 2] if n >= 2 else None


def _bad_value(column: str, value: str) -> bool:
    """Return whether ``value`` fails to parse as the type of ``column``."""
    try:
        if column in {"amount", "unit_price"}:
            float(value)
        elif column == "quantity":
            int(value)
        else:
            _ts(value)
    except ValueError:
        return True
    return False


def test_dirty_world_lists_every_defect_at_its_locator(
    dirty_world: tuple[Path, WorldSummary],
) -> None:
    root, summary = dirty_world
    defects = _rows(root, "truth/dirty.csv")
    kinds = Counter(d["kind"] for d in defects)
    assert set(kinds) == {
        "malformed_row", "bad_type", "duplicate", "future_date", "negative_amount",
        "bad_encoding", "malformed_json",
    }  # fmt: skip
    assert {k: v for k, v in summary.dirty_rows.items() if v} == dict(kinds)
    headers = {name: (root / name).read_text("utf-8", "replace").split("\n")[0].split(",")
               for name in CSV_FILES}  # fmt: skip
    for d in defects:
        loc = dict(part.split("=", 1) for part in d["locator"].split(";"))
        raw, previous = _line(root, d["file"], int(loc["line"]))
        kind, detail = d["kind"], d["detail"]
        if kind == "bad_encoding":
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
            continue
        text = raw.decode("utf-8")
        if d["file"].startswith("web/"):
            if kind == "malformed_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)
                continue
            event = json.loads(text)
            assert event["event_id"] == loc["event_id"]
            column, value = detail.split("=", 1)
            assert event[column] == value
            if kind == "bad_type":
                assert _bad_value(column, value)
            else:
                assert kind == "future_date" and _ts(value) >= END_TS
            continue
        header = headers[d["file"]]
        key_column, key = next((k, v) for k, v in loc.items() if k != "line")
        assert key_column == header[0] and key in text
        row = next(csv.reader([text]))
        if kind == "malformed_row":
            assert len(row) != len(header)
            continue
        assert len(row) == len(header) and row[0] == key
        if kind == "duplicate":
            assert raw == previous
            continue
        column, value = detail.split("=", 1)
        assert row[header.index(column)] == value
        if kind == "bad_type":
            assert _bad_value(column, value)
        elif kind == "future_date":
            assert _ts(value) >= END_TS
        else:
            assert kind == "negative_amount" and float(value) < 0
    rows = sum((root / n).read_bytes().count(b"\n") - 1 for n in CSV_FILES)
    rows += sum(1 for _ in _event_lines(root))
    assert 0.025 < len(defects) / rows < 0.055


def test_defects_leave_every_other_line_untouched(
    root: Path, dirty_world: tuple[Path, WorldSummary]
) -> None:
    dirty_root, _ = dirty_world
    listed: dict[str, set[int]] = defaultdict(set)
    for d in _rows(dirty_root, "truth/dirty.csv"):
        listed[d["file"]].add(int(d["locator"].split(";")[0].split("=")[1]))
    for name in ("truth/customers.csv", "marketing/spend.csv"):
        assert (root / name).read_bytes() == (dirty_root / name).read_bytes()
    for name in CSV_FILES:
        clean = set((root / name).read_bytes().split(b"\n"))
        lines = (dirty_root / name).read_bytes().split(b"\n")
        kept = [line for n, line in enumerate(lines, start=1) if n not in listed[name]]
        assert set(kept) <= clean
    clean_files = {p.relative_to(root).as_posix() for p in _event_files(root)}
    assert clean_files == {p.relative_to(dirty_root).as_posix() for p in _event_files(dirty_root)}
    for rel in sorted(clean_files)[::7]:
        a = gzip.decompress((root / rel).read_bytes()).split(b"\n")
        b = gzip.decompress((dirty_root / rel).read_bytes()).split(b"\n")
        assert len(a) == len(b)
        assert [x for n, x in enumerate(a, 1) if n not in listed[rel]] == [
            y for n, y in enumerate(b, 1) if n not in listed[rel]
        ]


def test_defects_do_not_depend_on_chunking(
    dirty_world: tuple[Path, WorldSummary], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root, summary = dirty_world
    other, other_summary = _generate(
        tmp_path_factory.mktemp("dirty-rechunked"), replace(BASE, dirty_rate=0.04, chunk_size=900)
    )
    for name in CSV_FILES:
        assert (root / name).read_bytes() == (other / name).read_bytes(), name

    def csv_defects(base: Path) -> list[dict[str, str]]:
        return [d for d in _rows(base, "truth/dirty.csv") if not d["file"].startswith("web/")]

    assert csv_defects(root) == csv_defects(other)
    assert summary.dirty_rows == other_summary.dirty_rows


# ------------------------------------------------------------------------------ API edges


def test_progress_is_reported_after_each_chunk(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    config = replace(BASE, customers=250, end=dt.date(2023, 2, 28), chunk_size=100)
    generate_world(config, tmp_path / "w", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(100, 250), (200, 250), (250, 250)]


def test_rewrites_a_previous_world_but_refuses_other_folders(tmp_path: Path) -> None:
    config = replace(BASE, customers=50, end=dt.date(2023, 1, 31))
    first = _hashes(generate_world(config, tmp_path / "w").out)
    assert _hashes(generate_world(config, tmp_path / "w").out) == first
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a sample world"):
        generate_world(config, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "changes",
    [
        {"customers": 0},
        {"end": dt.date(2022, 12, 31)},
        {"dirty_rate": 1.5},
        {"chunk_size": 0},
        {"channel_mix": (("tv", 1.0),)},
        {"order_value_q": 1.0},
        {"purchase_process": "pareto"},
        {"bgnbd_params": (0.2, 4.0, 0.8)},
        {"refund_dropout": 1.2},
    ],
)
def test_invalid_config_is_rejected(changes: dict) -> None:
    with pytest.raises(ValueError, match="invalid WorldConfig"):
        replace(BASE, **changes)


# ------------------------------------------------------------------------------ regimes


def _order_rows(root: Path) -> list[dict[str, str]]:
    with (root / "orders" / "orders.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_bgnbd_world_is_a_bgnbd_world(tmp_path: Path) -> None:
    """A BG/NBD fit of the orders of a `bgnbd` world recovers the parameters it was made with,
    and every buyer stops ordering at their truth drop-out."""
    from ml.clv import fit_bgnbd

    config = WorldConfig(
        customers=12_000,
        start=dt.date(2021, 1, 1),
        end=dt.date(2024, 12, 31),
        seed=3,
        purchase_process="bgnbd",
        refund_rate=0.0,
        cancel_rate=0.0,
    )
    generate_world(config, tmp_path)
    days: dict[str, set[dt.date]] = defaultdict(set)
    last_order: dict[str, str] = {}
    for row in _order_rows(tmp_path):
        days[row["customer_id"]].add(dt.date.fromisoformat(row["ordered_at"][:10]))
        customer = row["customer_id"]
        last_order[customer] = max(last_order.get(customer, ""), row["ordered_at"])
    end = config.end
    f = np.array([len(d) - 1 for d in days.values()], dtype=float)
    rec = np.array([(max(d) - min(d)).days for d in days.values()], dtype=float)
    t = np.array([(end - min(d)).days for d in days.values()], dtype=float)
    fitted = fit_bgnbd(f, rec, t)
    got = (fitted.r, fitted.alpha, fitted.a, fitted.b)
    assert got == pytest.approx(config.bgnbd_params, rel=0.2)
    with (tmp_path / "truth" / "customers.csv").open(encoding="utf-8") as fh:
        truth = {r["customer_id"]: r["dropout_at"] for r in csv.DictReader(fh)}
    assert all(last_order[c] <= truth[c] for c in last_order)  # nothing after the drop-out


def test_refund_dropout_ends_the_buyers_orders_at_the_refund(tmp_path: Path) -> None:
    """With refund_dropout 1, no buyer places an order after their first refund."""
    base = replace(BASE, refund_rate=0.2)
    generate_world(replace(base, refund_dropout=1.0), tmp_path / "on")
    orders = _order_rows(tmp_path / "on")
    first_refund: dict[str, str] = {}
    for row in orders:
        if row["status"] == "refunded":
            prior = first_refund.get(row["customer_id"], row["updated_at"])
            first_refund[row["customer_id"]] = min(prior, row["updated_at"])
    assert len(first_refund) > 50
    assert not [
        r for r in orders if r["customer_id"] in first_refund
        and r["ordered_at"] > first_refund[r["customer_id"]]
    ]  # fmt: skip
    generate_world(base, tmp_path / "off")
    assert len(_order_rows(tmp_path / "off")) > len(orders)


# ------------------------------------------------------------------------------ text helpers


def test_permute_is_a_bijection() -> None:
    for digits in (3, 4):
        out = tx.permute(np.arange(10**digits), digits, key=12345)
        assert sorted(out.tolist()) == list(range(10**digits))
        assert not np.array_equal(out, np.arange(10**digits))


def test_renderers_match_the_standard_library() -> None:
    rng = np.random.default_rng(0)
    secs = rng.integers(-(10**9), 4 * 10**9, 500)
    expected = [
        dt.datetime.fromtimestamp(int(s), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for s in secs
    ]
    assert tx.timestamps(secs).to_pylist() == expected
    assert tx.fixed_point(np.array([0, 5, -5, 1234, -100000]), 2).to_pylist() == [
        "0.00", "0.05", "-0.05", "12.34", "-1000.00",
    ]  # fmt: skip
    hi, lo = tx.random_uuid_halves(rng, 50)
    for s, h, low in zip(tx.uuids(hi, lo).to_pylist(), hi, lo, strict=True):
        u = uuid.UUID(s)
        assert u.version == 4 and u.int == (int(h) << 64) | int(low)


@pytest.mark.parametrize("days", [0, 1, 7])
def test_a_world_too_small_to_hold_an_order_is_generated(tmp_path: Path, days: int) -> None:
    """3 people over a day or a week: web sessions but no order, and the event writer
    indexed the (empty) orders: IndexError instead of a world."""
    start = dt.date(2024, 1, 1)
    config = WorldConfig(customers=3, start=start, end=start + dt.timedelta(days=days), seed=42)
    summary = generate_world(config, tmp_path / "w")
    assert summary.people == 3
    assert summary.orders == 0
    assert summary.web_events > 0
    assert (tmp_path / "w" / "orders" / "orders.csv").read_text().count("\n") == 1
