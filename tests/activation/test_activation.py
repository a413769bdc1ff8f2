"""Activation on a generated sample world: scores, audiences, control groups, exports, push.

One world (800 people) is built as of 2024-06-30; test scores are written for three days.
The run sequence: D1, D2 (same scores: nothing changes for the score-only audience
``high_risk``), then D3 where one customer's churn probability rises above the threshold
and another's falls below it; then D3 is rerun and D2 is backfilled again. ``high_risk``
is pushed to a real HTTP server on loopback that fails 30% of its requests.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import yaml

from lifecycle.activation import ActivationError, control_value, is_control, run_activation
from lifecycle.activation import exports as exports_module
from tests.activation.flaky_server import flaky_server
from tests.activation.scores_data import write_scores
from tests.conftest import make_settings
from tests.transform.conftest import rows, snapshot

D1, D2, D3 = dt.date(2024, 6, 28), dt.date(2024, 6, 29), dt.date(2024, 6, 30)
REPO_AUDIENCES = Path(__file__).resolve().parents[2] / "audiences.yml"
REQUIRED = {"win_back_high_value", "at_risk_save", "welcome_series", "vip_loyalty", "referral_ask"}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
TOKEN = "push-secret"


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path → bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs(built_world, activation_home, tmp_path_factory):
    """Run the sequence (D1, D2, D3, D3 again, D2 again) and keep what each step left."""
    url, _ = built_world
    base = tmp_path_factory.mktemp("activation")
    exports = base / "exports"
    with flaky_server(failure_rate=0.3, seed=7) as (endpoint, received):
        doc = yaml.safe_load(REPO_AUDIENCES.read_text(encoding="utf-8"))
        doc["audiences"].append(
            {
                "name": "high_risk",
                "description": "Scored customers with a churn probability of at least 0.5.",
                "filter": [
                    {"column": "is_scored", "op": "eq", "value": True},
                    {"column": "churn_probability", "op": "gte", "value": 0.5},
                ],
                "control_share": 0.2,
                "push": {"url": endpoint, "batch_size": 7},
            }
        )
        audiences_file = base / "audiences.yml"
        audiences_file.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        env = {
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_AUDIENCES_FILE": str(audiences_file),
            "LIFECYCLE_EXPORT_DIR": str(exports),
            "LIFECYCLE_HTTP_RETRIES": "10",
            "LIFECYCLE_HTTP_BACKOFF_S": "0.01",
            "LIFECYCLE_PUSH_TOKEN": TOKEN,
        }
        settings = make_settings(activation_home, **env)
        write_scores(url, D1, known_by=D1)
        write_scores(url, D2, known_by=D1)
        r1 = run_activation(D1, settings, run_id="r1")
        r2 = run_activation(D2, settings, run_id="r2")
        # A: scored, consenting, not held out, below the threshold on D2 -> above on D3;
        # B: on D2's high_risk send list -> below the threshold on D3.
        sent_d2 = {r["customer_key"] for r in _csv(exports / f"{D2}/high_risk/generic_full.csv")}
        candidates = rows(
            url,
            "select customer_key, churn_probability from activation.customer_scores_history "
            "where as_of_date = %s and is_scored and has_marketing_consent and email is not null "
            "order by customer_key",
            (D2,),
        )
        a = next(k for k, p in candidates if p < 0.5 and not is_control(k, "high_risk", 0.2))
        b = next(k for k, _ in candidates if k in sent_d2)
        write_scores(
            url,
            D3,
            known_by=D1,
            overrides={
                a: {"churn_probability": 0.95, "risk_band": "high"},
                b: {"churn_probability": 0.05, "risk_band": "low"},
            },
        )
        r3 = run_activation(D3, settings, run_id="r3")
        membership_d3 = snapshot(url, "activation.audience_membership")
        files_d3 = _files(exports / str(D3))
        requests_before_rerun = received.requests
        r3_again = run_activation(D3, settings, run_id="r3-again")
        files_d3_again = _files(exports / str(D3))
        r2_again = run_activation(D2, settings, run_id="r2-backfill")
        membership_after = snapshot(url, "activation.audience_membership")
        yield SimpleNamespace(
            url=url,
            settings=settings,
            env=env,
            exports=exports,
            received=received,
            r1=r1,
            r2=r2,
            r3=r3,
            r3_again=r3_again,
            r2_again=r2_again,
            a=a,
            b=b,
            membership_d3=membership_d3,
            membership_after=membership_after,
            files_d3=files_d3,
            files_d3_again=files_d3_again,
            requests_before_rerun=requests_before_rerun,
        )


# ------------------------------------------------------------------------------ scores


@pytest.mark.parametrize("day", [D1, D3])
def test_scores_carry_the_stage_of_the_day_and_the_playbook(runs, day) -> None:
    got = rows(
        runs.url,
        "select customer_key, stage, recommended_action from activation.customer_scores_history "
        "where as_of_date = %s order by 1",
        (day,),
    )
    expected = rows(
        runs.url,
        "select d.customer_key, d.stage, s.recommended_action from marts.customer_stage_daily d "
        "join marts.lifecycle_stages s on s.stage = d.stage where d.date_day = %s order by 1",
        (day,),
    )
    assert got == expected and len(got) > 700


def test_unscored_customers_appear_with_null_scores(runs) -> None:
    (total, scored, prospects, prospect_scored, null_scores) = rows(
        runs.url,
        "select count(*), count(*) filter (where is_scored), "
        "count(*) filter (where stage = 'prospect'), "
        "count(*) filter (where stage = 'prospect' and is_scored), "
        "count(*) filter (where not is_scored and churn_probability is null and clv_12m is null "
        "and segment_id is null and risk_band is null) "
        "from activation.customer_scores",
    )[0]
    written = rows(runs.url, "select count(*) from ml.scores_history where score_date = %s", (D3,))
    assert scored == written[0][0]
    assert prospects > 100 and prospect_scored == 0
    assert null_scores == total - scored


def test_current_scores_are_the_newest_date_even_after_a_backfill(runs) -> None:
    columns = "customer_key, stage, churn_probability, clv_12m, score_date, as_of_date, run_id"
    current = rows(runs.url, f"select {columns} from activation.customer_scores order by 1")
    newest = rows(
        runs.url,
        f"select {columns} from activation.customer_scores_history where as_of_date = %s "
        "order by 1",
        (D3,),
    )
    assert current == newest
    assert {r[6] for r in current} == {"r3-again"}  # D2's backfill did not replace it
    partitions = rows(
        runs.url,
        "select as_of_date, count(*) from activation.customer_scores_history group by 1 order by 1",
    )
    assert [p[0] for p in partitions] == [D1, D2, D3]


# --------------------------------------------------------------------------- audiences


INDEPENDENT = {
    # each audience of audiences.yml (and the test's high_risk), written again by hand
    # against the stage of the day and the scores table
    "win_back_high_value": "d.stage = 'churned' and s.expected_order_value >= 80",
    "at_risk_save": (
        "d.stage in ('active', 'loyal', 'new', 'reactivated', 'at_risk') "
        "and (s.risk_band = 'high' or d.stage = 'at_risk')"
    ),
    "welcome_series": "d.stage = 'new'",
    "vip_loyalty": (
        "(d.stage = 'loyal' or s.clv_12m >= 500) and d.stage not in ('churned', 'prospect')"
    ),
    "referral_ask": "d.stage in ('loyal', 'active') and s.risk_band = 'low'",
    "high_risk": "s.customer_key is not null and s.churn_probability >= 0.5",
}


def test_repository_audiences_file_declares_the_required_audiences() -> None:
    from lifecycle.activation import load_audiences

    names = {a.name for a in load_audiences(REPO_AUDIENCES)}
    assert names >= REQUIRED
    assert set(INDEPENDENT) == names | {"high_risk"}


@pytest.mark.parametrize("day", [D1, D3])
@pytest.mark.parametrize("audience", sorted(INDEPENDENT))
def test_audience_members_match_an_independent_query(runs, audience, day) -> None:
    members = rows(
        runs.url,
        "select customer_key from activation.audience_membership where audience = %s "
        "and entered_date <= %s and (exited_date is null or exited_date > %s) order by 1",
        (audience, day, day),
    )
    expected = rows(
        runs.url,
        "select d.customer_key from marts.customer_stage_daily d "
        "left join ml.scores_history s on s.customer_key = d.customer_key and s.score_date = %s "
        f"where d.date_day = %s and {INDEPENDENT[audience]} order by 1",
        (day, day),
    )
    assert members == expected
    assert len(members) > 0, f"{audience} is empty on {day}: the test would prove little"


def test_control_flag_is_the_deterministic_hash(runs) -> None:
    shares = {"win_back_high_value": 0.1, "at_risk_save": 0.2, "welcome_series": 0.0}
    shares |= {"vip_loyalty": 0.05, "referral_ask": 0.1, "high_risk": 0.2}
    got = rows(
        runs.url, "select audience, customer_key, is_control from activation.audience_membership"
    )
    assert got
    for audience, key, flag in got:
        assert flag == (control_value(key, audience) < shares[audience]), (audience, key)
    controls = collections.Counter(a for a, _, flag in got if flag)
    assert controls["welcome_series"] == 0 and controls["high_risk"] > 0


def test_control_group_is_never_in_a_send_file(runs) -> None:
    for folder in sorted(p for p in runs.exports.glob("*/*") if p.is_dir()):
        audience = folder.name
        control = (
            {r["customer_key"] for r in _csv(folder / exports_module.CONTROL_FILE)}
            if (folder / exports_module.CONTROL_FILE).exists()
            else set()
        )
        sent = {r["customer_key"] for r in _csv(folder / "generic_full.csv")}
        assert not control & sent, folder
        shares = json.loads((folder / "manifest.json").read_text())["control_share"]
        assert all(is_control(k, audience, shares) for k in control)
        assert not any(is_control(k, audience, shares) for k in sent)


# ----------------------------------------------------------------------------- deltas


def test_second_export_without_changes_has_an_empty_delta(runs) -> None:
    facts = runs.r2.audiences["high_risk"].export
    assert (facts.adds, facts.removes, facts.previous_export_date) == (0, 0, D1)
    folder = runs.exports / str(D2) / "high_risk"
    for layout in ("generic", "mailchimp", "hubspot", "klaviyo", "google_ads", "meta"):
        assert _csv(folder / f"{layout}_adds.csv") == []
        assert _csv(folder / f"{layout}_removes.csv") == []
    full_d1 = _csv(runs.exports / str(D1) / "high_risk" / "generic_full.csv")
    full_d2 = _csv(folder / "generic_full.csv")
    assert [r["email"] for r in full_d2] == [r["email"] for r in full_d1] and full_d2


def test_a_changed_score_moves_customers_in_and_out(runs) -> None:
    facts = runs.r3.audiences["high_risk"].export
    assert (facts.adds, facts.removes, facts.previous_export_date) == (1, 1, D2)
    folder = runs.exports / str(D3) / "high_risk"
    assert [r["customer_key"] for r in _csv(folder / "generic_adds.csv")] == [runs.a]
    assert [r["customer_key"] for r in _csv(folder / "generic_removes.csv")] == [runs.b]
    email_a, email_b = (
        rows(
            runs.url, "select email from activation.customer_scores where customer_key = %s", (k,)
        )[0][0]
        for k in (runs.a, runs.b)
    )
    assert [r["Email Address"] for r in _csv(folder / "mailchimp_adds.csv")] == [email_a]
    assert [r["Email"] for r in _csv(folder / "google_ads_removes.csv")] == [
        hashlib.sha256(email_b.encode()).hexdigest()
    ]
    history = rows(
        runs.url,
        "select customer_key, entered_date, exited_date from activation.audience_membership "
        "where audience = 'high_risk' and customer_key = any(%s) order by 1",
        ([runs.a, runs.b],),
    )
    assert sorted(history) == sorted([(runs.a, D3, None), (runs.b, D1, D3)])


def test_membership_is_the_same_after_a_rerun_and_a_backfill(runs) -> None:
    assert runs.membership_after == runs.membership_d3
    exited = rows(
        runs.url,
        "select count(*) from activation.audience_membership where exited_date is not null",
    )[0][0]
    assert exited >= 1  # exited members keep their rows


def test_rerun_gives_byte_identical_files(runs) -> None:
    assert runs.files_d3 == runs.files_d3_again
    assert len(runs.files_d3) == 6 * 21 - 1  # welcome_series has no control file
    leftovers = [p for p in runs.exports.rglob(".*")]
    assert leftovers == []


# ------------------------------------------------------------------------------ files


def test_opted_out_contacts_never_appear_in_any_export(runs) -> None:
    opted_out = {
        r[0]
        for r in rows(
            runs.url,
            "select primary_email from marts.customers "
            "where not has_marketing_consent and primary_email is not null",
        )
    }
    members_without_consent = rows(
        runs.url,
        "select count(*) from activation.audience_membership m "
        "join marts.customers c using (customer_key) where not c.has_marketing_consent",
    )[0][0]
    assert len(opted_out) > 50 and members_without_consent > 20
    forbidden = opted_out | {hashlib.sha256(e.encode()).hexdigest() for e in opted_out}
    scanned = 0
    for path in sorted(runs.exports.rglob("*.csv")):
        text = path.read_text(encoding="utf-8")
        cells = {c for row in csv.reader(io.StringIO(text)) for c in row}
        assert not cells & forbidden, path
        scanned += 1
    assert scanned == 3 * (6 * 20 - 1)  # every CSV of every day was looked at
    pushed = {m["email"] for b in runs.received.batches.values() for m in b["members"]}
    assert pushed and not pushed & opted_out


def test_csvs_round_trip_with_names_intact(runs) -> None:
    db = {
        k: (e, f or "", last or "")
        for k, e, f, last in rows(
            runs.url,
            "select customer_key, email, first_name, last_name "
            "from activation.customer_scores_history where as_of_date = %s",
            (D3,),
        )
    }
    cjk = 0
    for path in sorted((runs.exports / str(D3)).glob("*/generic_full.csv")):
        raw = path.read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")  # UTF-8 without BOM
        for r in _csv(path):
            assert (r["email"], r["first_name"], r["last_name"]) == db[r["customer_key"]]
            cjk += bool(CJK.search(r["first_name"] + r["last_name"]))
    for path in sorted((runs.exports / str(D3)).glob("*/klaviyo_full.csv")):
        for r in _csv(path):
            assert r["First Name"] in {v[1] for v in db.values()}
    assert cjk > 0, "no CJK name was exported: the round trip proves little"


def test_manifest_checksums_and_counts_match_the_files(runs) -> None:
    folders = sorted(p for p in runs.exports.glob("*/*") if p.is_dir())
    assert len(folders) == 3 * 6
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        listed = {f["name"]: f for f in manifest["files"]}
        assert set(listed) == {p.name for p in folder.iterdir()} - {"manifest.json"}
        for name, f in listed.items():
            data = (folder / name).read_bytes()
            assert f["sha256"] == hashlib.sha256(data).hexdigest()
            assert f["bytes"] == len(data)
            assert f["rows"] == len(_csv(folder / name))
        counts = manifest["counts"]
        assert counts["sent"] == listed["generic_full.csv"]["rows"]
        assert counts["adds"] == listed["generic_adds.csv"]["rows"]
        # the control group of the members (customer_ids.csv's group column), and the
        # contactable ones among them (the held-out file's rows)
        groups = [r["group"] for r in _csv(folder / "customer_ids.csv")]
        assert counts["members_control"] == groups.count("control")
        held_out = listed.get("control_group_DO_NOT_SEND.csv", {"rows": 0})  # share 0: none
        assert counts["control"] == held_out["rows"]
        assert counts["members"] == len(groups)


def test_export_log_records_each_successful_export(runs) -> None:
    got = rows(
        runs.url,
        "select audience, as_of_date, run_id, previous_export_date, count_sent, "
        "jsonb_array_length(files) from activation.export_log "
        "where audience = 'high_risk' and status = 'ok' order by export_id",
    )
    sent = runs.r3.audiences["high_risk"].export.sent
    assert [(r[1], r[2], r[3]) for r in got] == [
        (D1, "r1", None),
        (D2, "r2", D1),
        (D3, "r3", D2),
        (D3, "r3-again", D2),
        (D2, "r2-backfill", D1),
    ]
    assert got[2][4] == sent and got[2][5] == 20  # 6 layouts x 3, control, customer ids


# ------------------------------------------------------------------------------- push


def test_push_through_30_percent_failures_delivers_every_row_exactly_once(runs) -> None:
    got = runs.received
    assert got.failures > 5 and got.duplicates > 0  # retries happened, some after applying
    adds = collections.Counter(got.members("add"))
    assert max(adds.values()) == 1
    sent_d1 = {r["customer_key"] for r in _csv(runs.exports / f"{D1}/high_risk/generic_full.csv")}
    assert set(adds) == sent_d1 | {runs.a}
    assert got.members("remove") == [runs.b]
    assert got.auth == {f"Bearer {TOKEN}"}
    log = rows(
        runs.url,
        "select as_of_date, status, count(*), sum(count_rows), sum(attempts) "
        "from activation.push_log group by 1, 2 order by 1",
    )
    batches_d1 = -(-len(sent_d1) // 7)
    assert log == [
        (D1, "delivered", batches_d1, len(sent_d1), log[0][4]),
        (D3, "delivered", 2, 2, log[1][4]),
    ]
    assert log[0][4] + log[1][4] == runs.requests_before_rerun == got.requests
    assert len(got.batches) == batches_d1 + 2


def test_a_rerun_pushes_nothing(runs) -> None:
    assert runs.received.requests == runs.requests_before_rerun
    again = runs.r3_again.audiences["high_risk"].push
    assert (again.batches, again.delivered, again.skipped) == (2, 0, 2)
    assert runs.r2_again.audiences["high_risk"].push.batches == 0
    assert "push 0 batch(es) sent, 2 already delivered" in runs.r3_again.summary()


# ------------------------------------------------------------------------- errors, CLI


def test_cli_exports_one_audience(runs) -> None:
    env = {**os.environ, **runs.env, "LIFECYCLE_HOME": str(runs.settings.home)}
    cmd = [sys.executable, "-m", "lifecycle.cli", "export", "--date", str(D3)]
    done = subprocess.run(
        [*cmd, "--audience", "welcome_series"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"activation {D3}:" in done.stdout and "welcome_series:" in done.stdout
    assert "high_risk" not in done.stdout
    bad = subprocess.run([*cmd, "--audience", "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "no audience named 'nope' (known: win_back_high_value" in bad.stderr
    assert _files(runs.exports / str(D3)) == runs.files_d3


def test_marts_older_than_the_date_are_refused(runs) -> None:
    with pytest.raises(ActivationError, match=r"run `lifecycle transform --date 2024-07-05`"):
        run_activation(dt.date(2024, 7, 5), runs.settings)
    assert rows(
        runs.url,
        "select count(*) from activation.customer_scores_history where as_of_date > %s",
        (D3,),
    ) == [(0,)]


def test_a_failed_export_leaves_the_previous_folder_and_tables(runs, monkeypatch) -> None:
    before_members = snapshot(runs.url, "activation.export_members")
    header, fmt = exports_module.LAYOUTS["meta"]

    def broken(row, audience, day):
        raise RuntimeError("disk full (injected)")

    monkeypatch.setitem(exports_module.LAYOUTS, "meta", (header, broken))
    with pytest.raises(RuntimeError, match="injected"):
        run_activation(D3, runs.settings, audience="high_risk", run_id="broken")
    assert _files(runs.exports / str(D3)) == runs.files_d3
    assert [p for p in runs.exports.rglob(".*")] == []
    assert snapshot(runs.url, "activation.export_members") == before_members
    assert rows(
        runs.url,
        "select status, error from activation.export_log where run_id = 'broken'",
    ) == [("failed", "RuntimeError: disk full (injected)")]
    with psycopg.connect(runs.url) as conn:  # the failed attempt is not a delta base
        from lifecycle.activation.exports import previous_export

        assert previous_export(conn, "high_risk", dt.date(2024, 7, 1)) == D3


def test_the_first_push_of_an_audience_sends_its_whole_list(runs, tmp_path) -> None:
    with flaky_server(failure_rate=0.0) as (endpoint, received):
        doc = yaml.safe_load(REPO_AUDIENCES.read_text(encoding="utf-8"))
        (welcome,) = [a for a in doc["audiences"] if a["name"] == "welcome_series"]
        welcome["push"] = {"url": endpoint, "batch_size": 5}
        audiences_file = tmp_path / "audiences.yml"
        audiences_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
        env = runs.env | {
            "LIFECYCLE_AUDIENCES_FILE": str(audiences_file),
            "LIFECYCLE_EXPORT_DIR": str(tmp_path / "exports"),
        }
        settings = make_settings(runs.settings.home, **env)
        first = run_activation(D3, settings, audience="welcome_series", run_id="push-added")
        again = run_activation(D3, settings, audience="welcome_series", run_id="push-again")
    export = first.audiences["welcome_series"].export
    assert export.previous_export_date == D2 and export.adds < export.sent
    assert sorted(received.members("add")) == sorted(r["customer_key"] for r in export.send_rows)
    assert received.members("remove") == []
    assert again.audiences["welcome_series"].push.delivered == 0
    assert received.requests == first.audiences["welcome_series"].push.batches


def test_customer_id_file_lists_every_member_without_contact_data(runs) -> None:
    members = rows(
        runs.url,
        "select m.customer_key, coalesce(c.primary_customer_id, ''), "
        "case when m.is_control then 'control' else 'treatment' end "
        "from activation.audience_membership m left join marts.customers c using (customer_key) "
        "where m.audience = 'high_risk' and m.entered_date <= %(d)s "
        "and (m.exited_date is null or m.exited_date > %(d)s) order by 1",
        {"d": D3},
    )
    listed = _csv(runs.exports / str(D3) / "high_risk" / exports_module.IDS_FILE)
    assert [(r["customer_key"], r["customer_id"], r["group"]) for r in listed] == [
        tuple(m) for m in members
    ]
    assert list(listed[0]) == list(exports_module.IDS_HEADER)  # no email, name or country
    sent = runs.r3.audiences["high_risk"].export.sent
    assert len(listed) > sent  # also the members without consent: it is not a send list


def test_a_date_before_the_first_scoring_is_said_so(runs, caplog) -> None:
    """An export of a date before the first scoring wrote empty score audiences without a
    word (and the next export counted its adds and removes from them)."""
    from lifecycle.activation.scores import write_scores as write_day_scores

    day = D1 - dt.timedelta(days=1)
    with psycopg.connect(runs.url) as conn:
        with caplog.at_level(logging.WARNING, logger="lifecycle.activation.scores"):
            facts = write_day_scores(conn, day, "probe")
        conn.rollback()  # a probe: the module's tables stay as the runs left them
    assert (facts.score_date, facts.first_later_score, facts.scored) == (None, D1, 0)
    assert f"no scores on or before {day} (the first are of {D1})" in caplog.text
    assert rows(
        runs.url,
        "select count(*) from activation.customer_scores_history where as_of_date = %s",
        (day,),
    ) == [(0,)]
