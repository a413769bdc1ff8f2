"""Batch scoring with the champions: one row per eligible customer, reruns replace, versions
on every row, a failure keeps the previous partition, no champion is a clear error."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import psycopg
import pytest

from ml.score import ScoreError, score, scores_csv
from ml.tables import CLV_VALUE_COLUMNS, RISK_BANDS, SCORE_COLUMNS, ensure_ml_tables
from tests.ml.conftest import temp_home
from tests.transform.conftest import rows, snapshot

ELIGIBLE_SQL = """
with recorded as (
    select distinct on (o.order_id) o.order_id, o.customer_id, o.status
    from staging.stg_orders__orders as o
    where (o.ordered_at at time zone 'UTC')::date <= %(d)s
      and (o.updated_at at time zone 'UTC')::date <= %(d)s
    order by o.order_id, o.updated_at desc
)
select count(distinct k.customer_key)
from recorded
join intermediate.int_identifiers_clustered as k
  on k.identifier_type = 'customer_id' and k.identifier_value = recorded.customer_id
where recorded.status = 'completed'
"""


@pytest.fixture(scope="module")
def scored(trained):
    """The world scored as of its last day twice (different chunk sizes), and a day earlier."""
    day = trained.world.end
    url = trained.world.url
    first = score(day, trained.settings, chunk_size=700)
    once = snapshot(url, "ml.scores_history")
    second = score(day, trained.settings, chunk_size=1000)
    twice = snapshot(url, "ml.scores_history")
    earlier = score(day - dt.timedelta(days=30), trained.settings, run_id="backfill-1")
    return trained, first, second, earlier, once, twice


def test_one_row_per_eligible_customer(scored) -> None:
    trained, first, _, earlier, _, _ = scored
    url, day = trained.world.url, trained.world.end
    [(expected,)] = rows(url, ELIGIBLE_SQL, {"d": day})
    assert expected > 1500
    assert first.rows == expected
    assert first.chunks == -(-expected // 700)
    counts = dict(rows(url, "select score_date, count(*) from ml.scores_history group by 1"))
    assert counts[day] == expected
    earlier_day = day - dt.timedelta(days=30)
    assert counts[earlier_day] == rows(url, ELIGIBLE_SQL, {"d": earlier_day})[0][0] == earlier.rows
    assert (
        rows(
            url,
            "select count(*) from ml.scores_history where score_date = %s "
            "group by customer_key having count(*) > 1",
            (day,),
        )
        == []
    )


def test_rerun_replaces_the_partition(scored) -> None:
    _, first, second, _, once, twice = scored
    assert second.rows == first.rows
    # the earlier day was added after `twice`: compare the first partition only
    assert once == twice


def test_model_versions_and_run_id_on_every_row(scored) -> None:
    trained, first, _, _, _, _ = scored
    url = trained.world.url
    versions = trained.result.versions
    stamped = rows(
        url,
        "select churn_model_version, clv_model_version, segmentation_model_version, run_id, "
        "count(*) from ml.scores_history where score_date = %s group by 1, 2, 3, 4",
        (trained.world.end,),
    )
    assert stamped == [
        (
            versions["lifecycle_churn"],
            versions["lifecycle_clv"],
            versions["lifecycle_segmentation"],
            f"score:{trained.world.end}",
            first.rows,
        )
    ]
    assert rows(
        url,
        "select distinct run_id from ml.scores_history where score_date = %s",
        (trained.world.end - dt.timedelta(days=30),),
    ) == [("backfill-1",)]


def test_scores_are_consistent(scored) -> None:
    trained, first, _, _, _, _ = scored
    url = trained.world.url
    [(bad_bands,)] = rows(
        url,
        "select count(*) from ml.scores_history where "
        "(risk_band = 'high') <> (churn_probability >= 0.75) or "
        "(risk_band = 'low') <> (churn_probability < 0.5)",
    )
    assert bad_bands == 0
    assert set(first.risk_bands) <= set(RISK_BANDS) and sum(first.risk_bands.values()) == first.rows
    [(reasons, segments, clv)] = rows(
        url,
        "select count(*) filter (where top_reasons like '%% risk)%%'), "
        "count(distinct segment_id), count(*) filter (where clv_12m > 0) "
        "from ml.scores_history where score_date = %s",
        (trained.world.end,),
    )
    assert reasons > 0.9 * first.rows
    assert segments >= 3
    assert clv == first.rows
    assert "scored" in first.summary() and "lifecycle_churn v1" in first.summary()


def test_a_failed_run_keeps_the_previous_partition(scored) -> None:
    trained, _, _, _, _, twice = scored
    with pytest.raises(Exception, match="no_such_table"):
        score(trained.world.end, trained.settings, features_relation="ml.no_such_table")
    after = rows(
        trained.world.url,
        "select count(*) from ml.scores_history where score_date = %s",
        (trained.world.end,),
    )
    assert after == [(sum(1 for r in twice if r[0] == str(trained.world.end)),)]


def _partition(url: str, day: dt.date) -> list:
    return [r for r in snapshot(url, "ml.scores_history") if r[0] == str(day)]


def test_features_fetched_ahead_for_another_horizon_are_fetched_again(scored, monkeypatch, caplog):
    """The feature query starts before the champions load, with the spec's horizon; a
    champion trained with another one gets features of its own horizon: the same rows."""
    import ml.score

    trained, _, _, _, once, _ = scored
    day = trained.world.end
    monkeypatch.setattr(ml.score, "_spec_horizon", lambda: 30)
    with caplog.at_level("INFO", logger="ml.score"):
        score(day, trained.settings, chunk_size=700)
    assert _partition(trained.world.url, day) == [r for r in once if r[0] == str(day)]
    assert "features fetched again" in caplog.text


def test_an_error_of_the_features_fetched_ahead_reaches_the_caller(scored, monkeypatch) -> None:
    """The feature stream runs in a thread: its error is raised by score(), and the
    partition stays as it was."""
    from ml import features as ft

    trained, _, _, _, once, _ = scored
    day = trained.world.end

    def broken(*args, **kwargs):
        raise ft.FeatureError("the warehouse lacks something")
        yield  # a generator, like stream_features

    monkeypatch.setattr(ft, "stream_features", broken)
    with pytest.raises(ft.FeatureError, match="the warehouse lacks something"):
        score(day, trained.settings)
    assert _partition(trained.world.url, day) == [r for r in once if r[0] == str(day)]


def test_no_champion_is_a_clear_error(ml_world) -> None:
    for home in temp_home("lifecycle-ml-empty-"):
        with pytest.raises(ScoreError, match="run `lifecycle train` first"):
            score(ml_world.end, ml_world.settings(home))


def test_cli_scores_a_date(scored) -> None:
    trained = scored[0]
    env = {
        **os.environ,
        "LIFECYCLE_HOME": str(trained.settings.home),
        "LIFECYCLE_WAREHOUSE_URL": trained.world.url,
    }
    day = trained.world.end
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycle.cli",
            "score",
            "--date",
            str(day),
            "--chunk-size",
            "5000",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"scored {scored[1].rows} customers as of {day}" in done.stdout
    assert "warning:" not in done.stderr and scored[1].warnings == []
    bad = subprocess.run(
        [sys.executable, "-m", "lifecycle.cli", "score", "--date", "2024-13-01"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_a_score_date_past_the_data_is_scored_with_a_warning(scored) -> None:
    """Scored for "today" on an export that ended long ago, everyone looks churned: the
    scores are written (a backfill may want them) and the run says why they look so."""
    trained = scored[0]
    url = trained.world.url
    [(newest,)] = rows(url, "select max(last_order_date) from marts.customers")
    day = newest + dt.timedelta(days=200)
    env = {
        **os.environ,
        "LIFECYCLE_HOME": str(trained.settings.home),
        "LIFECYCLE_WAREHOUSE_URL": url,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lifecycle.cli", "score", "--date", str(day)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == [
            f"warning: the newest order in the data is of {newest}, 200 days before {day} "
            "(more than the 90-day horizon): every customer is scored as gone quiet since; "
            f"score as of a day the data reaches (--date {newest}) or load the orders since"
        ]
        [(written,)] = rows(
            url, "select count(*) from ml.scores_history where score_date = %s", (day,)
        )
        assert f"scored {written} customers as of {day}" in done.stdout
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("delete from ml.scores_history where score_date = %s", (day,))


def _copy_scores(conn: psycopg.Connection, scored: pd.DataFrame) -> None:
    """Write `scored` to ml.scores_history with COPY, as scoring does."""
    ensure_ml_tables(conn)
    with (
        conn.cursor() as cur,
        cur.copy(
            f"copy ml.scores_history ({', '.join(SCORE_COLUMNS)}) from stdin (format csv)"
        ) as copy,
    ):
        copy.write(scores_csv(scored))


def test_scores_csv_round_trips_every_double_exactly(fresh_db: str) -> None:
    rng = np.random.default_rng(5)
    tricky = [0.1, 0.1 + 0.2, 1 / 3, 5e-324, 2.2250738585072014e-308, 1 - 2**-53, 0.0, 1.0]
    floats = np.concatenate(
        [tricky, rng.random(2000), rng.random(2000) * 10.0 ** rng.integers(-8, 9, 2000)]
    )
    n = len(floats)
    scored = pd.DataFrame(
        {
            "score_date": dt.date(2024, 12, 31),
            "customer_key": [f"k{i}" for i in range(n)],
            "churn_probability": np.clip(floats, 0, 1),
            "risk_band": "low",
            "top_reasons": 'last order 3 days ago (lowers risk); a, "quoted" reason',
            "segment_id": 1,
            "segment_name": "Loyal",
            "p_alive": np.clip(floats[::-1], 0, 1),
            "expected_purchases_12m": floats,
            "expected_order_value": floats * 1e6,
            "clv_12m": floats / 7,
            "churn_model_version": "1",
            "segmentation_model_version": "2",
            "clv_model_version": "3",
            "run_id": "r",
        },
        columns=list(SCORE_COLUMNS),
    )
    with psycopg.connect(fresh_db) as conn:
        _copy_scores(conn, scored)
        back = pd.DataFrame(
            conn.execute(
                f"select {', '.join(SCORE_COLUMNS)} from ml.scores_history order by "
                "substr(customer_key, 2)::int"
            ).fetchall(),
            columns=list(SCORE_COLUMNS),
        )
    pd.testing.assert_frame_equal(back, scored, check_dtype=False, rtol=0, atol=0)
    for col in ("churn_probability", "expected_purchases_12m", "clv_12m"):
        assert back[col].to_numpy().tobytes() == scored[col].to_numpy().tobytes()


def test_scores_csv_writes_missing_values_as_null_and_keeps_empty_text(fresh_db: str) -> None:
    """No CLV champion leaves the CLV columns NaN and its version None: NULL in the table,
    never 'nan' or a failed COPY; an empty text stays an empty string."""
    scored = pd.DataFrame(
        {
            "score_date": [dt.date(2024, 12, 31)] * 2,
            "customer_key": ["a", "b"],
            "churn_probability": [0.25, 0.5],
            "risk_band": ["low", "medium"],
            "top_reasons": ["", "typical customer profile"],
            "segment_id": [1, 2],
            "segment_name": ["Loyal", "New"],
            **{col: np.full(2, np.nan) for col in CLV_VALUE_COLUMNS},
            "churn_model_version": ["1", "1"],
            "segmentation_model_version": ["2", "2"],
            "clv_model_version": [None, None],
            "run_id": ["r", "r"],
        },
        columns=list(SCORE_COLUMNS),
    )
    with psycopg.connect(fresh_db) as conn:
        _copy_scores(conn, scored)
        back = conn.execute(
            "select customer_key, top_reasons, p_alive, expected_purchases_12m, "
            "expected_order_value, clv_12m, clv_model_version, churn_probability, segment_id "
            "from ml.scores_history order by customer_key"
        ).fetchall()
    assert back == [
        ("a", "", None, None, None, None, None, 0.25, 1),
        ("b", "typical customer profile", None, None, None, None, None, 0.5, 2),
    ]


def test_scoring_computes_the_btyd_features_as_training_does(ml_world) -> None:
    """Training fits BG/NBD per snapshot on the whole snapshot; scoring fits once on the day's
    RFM (``rfm_at``) and applies the fit chunk by chunk: the very same numbers."""
    from ml import features as ft
    from ml.specs import load_spec

    params = load_spec("clv")["params"]
    day = ml_world.end
    with psycopg.connect(ml_world.url) as conn:
        whole = ft.compute_features(conn, [day], horizon_days=90, data_as_of=day)
        training_way = ft.add_btyd_features(whole, horizon_days=90, clv_params=params)
        fit = ft.fit_btyd(ft.rfm_at(conn, day, horizon_days=90), params, label=day)
        chunks = [
            pd.concat([c, ft.btyd_features(c, fit, horizon_days=90)], axis=1)
            for c in ft.stream_features(conn, day, chunk_size=400, horizon_days=90)
        ]
    scoring_way = pd.concat(chunks).sort_values("customer_key", ignore_index=True)
    training_way = training_way.sort_values("customer_key", ignore_index=True)
    assert len(chunks) > 3 and len(scoring_way) == len(training_way) > 1500
    assert scoring_way["customer_key"].equals(training_way["customer_key"])
    for col in ft.BTYD_FEATURES:
        assert training_way[col].notna().all(), col
        np.testing.assert_array_equal(
            scoring_way[col].to_numpy(), training_way[col].to_numpy(), err_msg=col
        )
