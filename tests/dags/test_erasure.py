"""Erasure (issue 17, part 3): forget three people, then reload, backfill and retrain.

A 300-person world goes through daily (D1) → train → daily (D2, scored and exported). Three
customers are then forgotten with the real CLI: one by email, one by shop customer id and
one through a web anonymous id stitched to them. Then a full reload of D2 (the source
files still hold them), a backfill of D1 and a training run. Afterwards no table, export
file or training set holds any identifier or derived row of theirs; aggregates changed by
exactly their contribution; everyone else's rows are as they were (checksums).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from lifecycle.orchestration.config import TRAIN_DAG_ID
from lifecycle.privacy import Request, file_requests
from tests.conftest import run_cli
from tests.dags.conftest import DAYS, compared_columns, lifecycle_env, scratch_database

START, END = dt.date(2023, 1, 1), dt.date(2024, 3, 31)
D1, D2 = DAYS[0], DAYS[1]
SECRET = "erasure-test-site-key-0123456789"
UNKNOWN = "nobody-we-know@example.com"
#: Relations compared for everyone else, before and after (per-person facts). Population-
#: relative columns are not per-person facts and are left out of this comparison: RFM
#: quintiles and everything ranked against the whole customer base.
COMPARED = (
    "staging.stg_crm__contacts",
    "staging.stg_orders__orders",
    "staging.stg_orders__order_items",
    "staging.stg_web__events",
    "intermediate.int_identifier_links_unioned",
    "intermediate.int_identifiers_clustered",
    "intermediate.int_anonymous_ids_stitched",
    "intermediate.int_orders_enriched",
    "marts.customers",
    "marts.customer_identities",
    "marts.customer_stage_history",
    "ml.scores_history",
    "activation.customer_scores",
    "activation.customer_scores_history",
    "activation.audience_membership",
)
#: Columns that identify a person (or one of their records) beside every `*_id` column.
ID_NAMES = {
    "customer_key",
    "email",
    "primary_email",
    "identifier_value",
    "identifier_a",
    "identifier_b",
    "identified_by_value",
    "anchor_identifier_value",
    "referred_by",
}


def _is_id(column: str) -> bool:
    return column in ID_NAMES or column.endswith("_id")


def _query(url: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _stage_counts(url: str, day: dt.date) -> dict[str, int]:
    return dict(
        _query(
            url,
            "select stage, count_customers from marts.stage_counts_daily where date_day = %s",
            (day,),
        )
    )


def _dropped_at_load(url: str) -> list[tuple]:
    return _query(
        url,
        "select location, sum(count_rows)::int from ops.erasure_log "
        "where batch_id is not null group by 1 order by 1",
    )


def _relation_rows(url: str, relation: str) -> tuple[list[str], list[tuple]]:
    schema, name = relation.split(".")
    with psycopg.connect(url) as conn:
        cols = compared_columns(conn, schema, name)
        select = ", ".join(f'"{c}"::text' for c in cols)
        return cols, conn.execute(f"select {select} from {relation}").fetchall()


def _others(url: str, relation: str, forgotten: set[str]) -> tuple[int, str]:
    """Return (row count, checksum) of the rows of `relation` that are not the forgotten's."""
    cols, rows = _relation_rows(url, relation)
    ids = [i for i, c in enumerate(cols) if _is_id(c)]
    # which batch delivered a row's latest copy changes with any full reload, by design
    same = [i for i, c in enumerate(cols) if c != "_batch_id"]
    kept = sorted(
        repr([r[i] for i in same])
        for r in rows
        if not any(r[i] is not None and r[i] in forgotten for i in ids)
    )
    return len(kept), hashlib.sha256("\n".join(kept).encode()).hexdigest()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")} | env
    return run_cli(args, full)


def _pick(url: str) -> dict[str, str]:
    """Return three exported buyers who referred nobody and were referred by nobody: one
    found by email, one by customer id, one by a stitched anonymous id."""
    rows = _query(
        url,
        """
        select c.customer_key, c.primary_email, c.primary_customer_id,
            (select min(identifier_value) from marts.customer_identities i
             where i.customer_key = c.customer_key and i.identifier_type = 'anonymous_id')
        from marts.customers c
        where c.count_orders >= 2 and c.primary_email is not null
            and c.primary_customer_id is not null and c.count_referred_customers = 0
            and not exists (select 1 from intermediate.int_contacts_attributed a
                where a.customer_key = c.customer_key and a.referred_by_contact_id is not null)
            and exists (select 1 from activation.export_members m
                where m.customer_key = c.customer_key and m.as_of_date = %s)
            and exists (select 1 from marts.customer_identities i
                where i.customer_key = c.customer_key and i.identifier_type = 'anonymous_id')
        order by c.customer_key
        limit 3
        """,
        (D2,),
    )
    assert len(rows) == 3, rows
    return {
        "by_email": rows[0],
        "by_customer_id": rows[1],
        "by_anonymous_id": rows[2],
    }


def _identifiers(url: str, keys: list[str]) -> set[str]:
    """Every identifier and record id of the people with `keys` (plain, for searching)."""
    found = set(keys)
    found |= {
        r[0]
        for r in _query(
            url,
            "select identifier_value from marts.customer_identities where customer_key = any(%s)",
            (keys,),
        )
    }
    emails = [
        r[0]
        for r in _query(
            url,
            "select identifier_value from marts.customer_identities "
            "where customer_key = any(%s) and identifier_type = 'email'",
            (keys,),
        )
    ]
    found |= {hashlib.sha256(e.encode()).hexdigest() for e in emails}
    ids = list(found)
    found |= {
        r[0]
        for r in _query(
            url,
            "select order_id from staging.stg_orders__orders where customer_id = any(%s) "
            "or lower(email) = any(%s)",
            (ids, ids),
        )
    }
    found |= {
        r[0]
        for r in _query(
            url,
            "select event_id from staging.stg_web__events where anonymous_id = any(%s) "
            "or user_id = any(%s) or lower(email) = any(%s)",
            (ids, ids, ids),
        )
    }
    return found


def _tables(url: str) -> list[str]:
    return [
        f"{s}.{t}"
        for s, t in _query(
            url,
            "select table_schema, table_name from information_schema.tables "
            "where table_schema in ('raw', 'staging', 'intermediate', 'marts', 'marts__build', "
            "'ml', 'activation', 'ops') and table_name not like 'erasure\\_%%' order by 1, 2",
        )
    ]


def _traces(url: str, forgotten: set[str], long_values: set[str]) -> dict[str, int]:
    """Return the tables (views too) holding a forgotten identifier: in an id column, or
    (long values: emails, keys, hashes, device ids) anywhere in a row's text."""
    hits = {}
    for relation in _tables(url):
        cols, rows = _relation_rows(url, relation)
        ids = [i for i, c in enumerate(cols) if _is_id(c)]
        n = sum(
            any(r[i] in forgotten for i in ids if r[i] is not None)
            or any(v is not None and any(x in v for x in long_values) for v in r)
            for r in rows
        )
        if n:
            hits[relation] = n
    return hits


def _files_with(root: Path, forgotten: set[str]) -> dict[str, int]:
    """Return files under `root` holding a forgotten identifier, with how many lines do: a
    CSV cell equal to one, or a long one (email, key, hash, device id) anywhere."""
    long_values = {v for v in forgotten if len(v) >= 12}
    hits = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        cells = csv.reader(io.StringIO(text)) if path.suffix == ".csv" else []
        n = sum(any(c.lstrip("'") in forgotten for c in row) for row in cells)
        n += sum(any(v in line for v in long_values) for line in text.splitlines())
        if n:
            hits[str(path.relative_to(root))] = n
    return hits


def _manifest_problems(root: Path) -> list[str]:
    """Return what does not agree between each manifest and its folder's files."""
    problems = []
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for entry in manifest["files"]:
            data = (manifest_path.parent / entry["name"]).read_bytes()
            rows = len(list(csv.reader(io.StringIO(data.decode("utf-8"))))) - 1
            if (rows, len(data), hashlib.sha256(data).hexdigest()) != (
                entry["rows"],
                entry["bytes"],
                entry["sha256"],
            ):
                problems.append(f"{manifest_path.parent.name}/{entry['name']}")
        # the member counts follow the rewritten id list (an erased member leaves both)
        ids = list(
            csv.DictReader(
                io.StringIO((manifest_path.parent / "customer_ids.csv").read_text(encoding="utf-8"))
            )
        )
        counts = manifest["counts"]
        if (counts["members"], counts["members_control"]) != (
            len(ids),
            sum(r["group"] == "control" for r in ids),
        ):
            problems.append(f"{manifest_path.parent.name}/counts")
    return problems


def _event_of(line: str, forgotten: set[str]) -> bool:
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and (
        event.get("anonymous_id") in forgotten or event.get("user_id") in forgotten
    )


def _redeliver(world: Path, forgotten: set[str], day: dt.date) -> int:
    """Deliver the forgotten people's web events again, as late files arriving on `day`
    (a tracker replaying its backlog); return how many distinct events the files hold."""
    n = 0
    for i, path in enumerate(sorted((world / "web" / "events").rglob("*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            theirs = [line for line in fh if _event_of(line, forgotten)]
        if theirs:
            late = path.parent / f"replay-{i:04d}-arrived-{day:%Y%m%d}.jsonl.gz"
            with gzip.open(late, "wt", encoding="utf-8") as fh:
                fh.writelines(theirs)
            n += len({json.loads(line)["event_id"] for line in theirs})
    return n


@pytest.fixture(scope="module")
def erased(embedded_settings, airflow_cfg, tmp_path_factory):
    from lifecycle.orchestration.runner import run_dates
    from lifecycle.sample.world import WorldConfig, generate_world

    # fifteen months: the models need a year of history for their training snapshots
    world = tmp_path_factory.mktemp("erasure-world") / "world"
    generate_world(WorldConfig(customers=300, start=START, end=END, seed=11), world)

    state = tmp_path_factory.mktemp("erasure-state")
    exports = state / "exports"
    quiet = lambda _m: None  # noqa: E731
    out: dict = {"exports": exports}
    with scratch_database(embedded_settings, "t_erasure") as url:
        env = {
            "LIFECYCLE_HOME": str(state),
            "LIFECYCLE_WAREHOUSE_URL": url,
            "LIFECYCLE_WORLD_DIR": str(world),
            "LIFECYCLE_ERASURE_SECRET": SECRET,
        }
        out["url"] = url
        with lifecycle_env(**env):
            run_dates([D1], cfg=airflow_cfg, echo=quiet)
            run_dates([D1], dag_id=TRAIN_DAG_ID, cfg=airflow_cfg, echo=quiet)
            run_dates([D2], cfg=airflow_cfg, echo=quiet)
            people = _pick(url)
            keys = [p[0] for p in people.values()]
            forgotten = _identifiers(url, keys)
            out.update(people=people, keys=keys, forgotten=forgotten)
            out["before"] = {r: _others(url, r, forgotten) for r in COMPARED}
            out["revenue_before"] = _query(
                url,
                "select sum(total_revenue), sum(total_revenue) filter "
                "(where customer_key = any(%s)) from marts.customers",
                (keys,),
            )[0]
            out["stages_before"] = _stage_counts(url, D2)
            out["their_stages"] = _query(
                url,
                "select current_stage, count(*) from marts.customers "
                "where customer_key = any(%s) group by 1",
                (keys,),
            )
            out["exports_before"] = _files_with(exports, forgotten)
            out["forget"] = _cli(
                env,
                "privacy",
                "forget",
                "--email",
                f"  {people['by_email'][1].upper()} ",
                "--customer-id",
                people["by_customer_id"][2],
                "--anonymous-id",
                people["by_anonymous_id"][3],
            )
            out["redelivered"] = _redeliver(world, forgotten, D2)
            out["exports_after_forget"] = _files_with(exports, forgotten)
            out["manifests_after_forget"] = _manifest_problems(exports)
            out["counts_after_forget"] = _query(
                url,
                "select count_members, count_sent from activation.export_log "
                "where status = 'ok' and as_of_date = %s order by audience",
                (D2,),
            )
            # a request filed while the warehouse could not apply it stays pending: the
            # daily run's first task applies it (here: someone the data never knew)
            with psycopg.connect(url) as conn:
                [out["pending_id"]] = file_requests(conn, SECRET, [Request("email", UNKNOWN)])
            out["reload"] = run_dates([D2], conf={"full_reload": True}, cfg=airflow_cfg, echo=quiet)
            out["after"] = {r: _others(url, r, forgotten) for r in COMPARED}
            out["revenue_after"] = _query(url, "select sum(total_revenue) from marts.customers")[0]
            out["stages_after"] = _stage_counts(url, D2)
            out["dropped"] = _dropped_at_load(url)
            run_dates([D1], cfg=airflow_cfg, echo=quiet)  # a backfill of an earlier day
            out["train"] = run_dates([D2], dag_id=TRAIN_DAG_ID, cfg=airflow_cfg, echo=quiet)
            long_values = {v for v in forgotten if len(v) >= 12}
            out["traces"] = _traces(url, forgotten, long_values)
            out["file_traces"] = _files_with(exports, forgotten)
            out["state_traces"] = _files_with(state, long_values)
            out["training_rows"] = _query(url, "select count(*) from ml.training_set")[0][0]
            out["dropped_in_all"] = _dropped_at_load(url)
            out["report"] = _cli(env, "privacy", "report")
            out["report_json"] = _cli(env, "privacy", "report", "--json")
            out["ledger"] = _query(
                url,
                "select kind, identifier_hash, status, count_customers, request_id "
                "from ops.erasure_requests order by requested_at, kind",
            )
        yield out


def test_forget_applies_at_once_and_rewrites_the_exports(erased) -> None:
    forget = erased["forget"]
    assert forget.returncode == 0, forget.stderr
    assert "3 request(s) on file" in forget.stdout
    assert "3 customer(s)" in forget.stdout
    assert erased["exports_before"], "the chosen people were in the exports before"
    assert erased["exports_after_forget"] == {}
    assert erased["manifests_after_forget"] == []
    for email in (p[1] for p in erased["people"].values()):
        assert email not in forget.stdout + forget.stderr  # counts only, never an identifier


def test_ledger_holds_hashes_only(erased) -> None:
    *ledger, unknown = erased["ledger"]
    assert sorted(r[0] for r in ledger) == ["anonymous_id", "customer_id", "email"]
    assert all(r[2] == "applied" and r[3] == 1 for r in ledger)
    # the pending request was applied by the daily run, before its loads
    assert unknown[4] == erased["pending_id"] and unknown[2:4] == ("applied", 0)
    [reload] = erased["reload"]
    assert {t.task_id: t.state for t in reload.tasks}["apply_erasures"] == "success"
    for _kind, digest, *_ in ledger:
        assert len(digest) == 64 and digest not in erased["forgotten"]


def test_full_reload_backfill_and_training_leave_no_trace(erased) -> None:
    assert erased["traces"] == {}
    assert erased["file_traces"] == {}
    assert erased["state_traces"] == {}  # MLflow runs and artifacts, reports, dbt's target
    assert erased["training_rows"] > 0
    # the reload met them in every source that still holds them, and dropped them
    dropped = dict(erased["dropped"])
    assert set(dropped) == {
        "raw.crm__contacts",
        "raw.orders__orders",
        "raw.orders__order_items",
        "raw.web__events",
    }, dropped
    # the replayed events, and their events of D2 (the day's own files are read again)
    assert dropped["raw.web__events"] >= erased["redelivered"] > 0


def test_everyone_else_is_unchanged(erased) -> None:
    changed = [r for r in COMPARED if erased["before"][r] != erased["after"][r]]
    assert changed == []


def test_aggregates_change_by_exactly_their_contribution(erased) -> None:
    total, theirs = erased["revenue_before"]
    assert theirs > 0
    assert erased["revenue_after"][0] == total - theirs
    expected = dict(erased["stages_before"])
    for stage, n in erased["their_stages"]:
        expected[stage] -= n
    assert erased["stages_after"] == expected


def test_report_says_what_was_removed_where(erased) -> None:
    text = erased["report"].stdout
    assert erased["report"].returncode == 0, erased["report"].stderr
    assert text.startswith("erasure requests: 4 (4 applied, 0 pending)")
    facts = json.loads(erased["report_json"].stdout)
    removed = {r["location"]: r["rows"] for r in facts["applied"]}
    assert removed["marts.customers"] == 3
    assert removed["activation.customer_scores"] == 3
    exports = str(erased["exports"])
    assert sum(n for loc, n in removed.items() if loc.startswith(exports)) > 0
    loads = {r["location"]: r["rows"] for r in facts["dropped_at_load"]}
    assert loads == dict(erased["dropped_in_all"])
    # the backfill of D1 re-read D1's files, which hold them too
    assert all(loads[t] > n for t, n in erased["dropped"])
