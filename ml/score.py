"""Batch scoring: every eligible customer as of a date, with the champions, into ml.scores_history.

:func:`score` loads ``models:/lifecycle_churn@champion`` and the CLV and segmentation
champions, streams the point-in-time features as of D from the warehouse (a server-side
cursor, ``chunk_size`` customers at a time), scores each chunk — churn probability, risk
band, top reasons, p_alive, expected purchases and order value, 12-month CLV, segment —
and streams the rows back with ``COPY``. The date partition is deleted and rewritten in
one transaction: a rerun replaces it, a failure leaves the previous partition intact.
Memory is bounded by the chunk, not the customer count. Every row carries the registered
version of each champion and the run id.

The three parts overlap on two cores: a thread starts the feature query before the
champions load (its sorted result takes the database most of the run, and loading the
models is a fixed few seconds of Python) and then stays one chunk ahead of the models,
and ``COPY`` is sent by psycopg's queued writer thread while the next chunk is scored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from lifecycle.locks import holds_lock
from lifecycle.settings import Settings
from ml import features as ft
from ml.tables import CLV_VALUE_COLUMNS, RISK_BANDS, SCORE_COLUMNS, ensure_ml_tables

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 50_000


class ScoreError(RuntimeError):
    """Scoring cannot run (no champion, no features); nothing was written."""


@dataclass
class Champions:
    """The champion models and their registered versions; `clv` is None when there is no CLV
    champion (the data could not fit BG/NBD): customers are scored without CLV columns."""

    churn: Any
    clv: Any | None
    segmentation: Any
    versions: dict[str, str]


@dataclass
class ScoreResult:
    """What one scoring run wrote."""

    score_date: dt.date
    run_id: str
    rows: int
    chunks: int
    versions: dict[str, str]
    risk_bands: dict[str, int]
    segments: dict[str, int]
    elapsed_s: float
    #: seconds: load_models (from the start, the feature query already running), features
    #: (waiting for the next chunk of features), models, write (queuing the CSV for COPY)
    stage_s: dict[str, float] = field(default_factory=dict)
    #: what the scores should be read with (a score date past the end of the data)
    warnings: list[str] = field(default_factory=list)

    @property
    def customers_per_s(self) -> float:
        """Return the scoring throughput."""
        return self.rows / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> str:
        """Return a short readable report for a task log or the CLI."""
        bands = ", ".join(f"{b} {self.risk_bands.get(b, 0)}" for b in RISK_BANDS)
        versions = ", ".join(f"{k} v{v}" for k, v in self.versions.items())
        from ml.tracking import CLV_MODEL

        if CLV_MODEL not in self.versions:
            versions += ", no CLV champion (p_alive and CLV left empty)"
        return (
            f"scored {self.rows} customers as of {self.score_date} in {self.chunks} chunk(s), "
            f"{self.elapsed_s:.1f}s ({self.customers_per_s:.0f}/s); risk bands: {bands}; "
            f"{len(self.segments)} segments; models: {versions}; run {self.run_id}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-able facts (`warnings` only when there are some)."""
        facts = {
            "score_date": self.score_date.isoformat(),
            "run_id": self.run_id,
            "rows": self.rows,
            "chunks": self.chunks,
            "versions": self.versions,
            "risk_bands": self.risk_bands,
            "segments": self.segments,
            "elapsed_s": round(self.elapsed_s, 2),
        }
        if self.warnings:
            facts["warnings"] = list(self.warnings)
        return facts


def _past_the_data(day: dt.date, days_since: Any, horizon: int) -> list[str]:
    """Return a warning when nobody ordered in the `horizon` days before `day`.

    Every customer then has the recency of a churned one and is scored so; the usual
    cause is a score date past the end of an export (scored for "today" on a file of last
    year). Scores are still written: a business can go quiet, and a backfill may want them.
    """
    if days_since is None or pd.isna(days_since) or int(days_since) <= horizon:
        return []
    newest = day - dt.timedelta(days=int(days_since))
    return [
        f"the newest order in the data is of {newest}, {int(days_since)} days before {day} "
        f"(more than the {horizon}-day horizon): every customer is scored as gone quiet "
        f"since; score as of a day the data reaches (--date {newest}) or load the orders "
        "since"
    ]


def load_champions(settings: Settings) -> Champions:
    """Return the champion churn, CLV and segmentation models, or raise ScoreError."""
    from ml import tracking

    try:
        churn, v_churn = tracking.load_champion(settings, tracking.CHURN_MODEL, sklearn=True)
        seg, v_seg = tracking.load_champion(settings, tracking.SEGMENTATION_MODEL)
    except tracking.NoChampionError as exc:
        raise ScoreError(str(exc)) from exc
    versions = {tracking.CHURN_MODEL: v_churn, tracking.SEGMENTATION_MODEL: v_seg}
    try:
        clv, versions[tracking.CLV_MODEL] = tracking.load_champion(settings, tracking.CLV_MODEL)
    except tracking.NoChampionError:
        # orders with too few repeat buyers for BG/NBD (`lifecycle train` said so): churn risk
        # and segments are still worth exporting, so score without the CLV columns
        log.warning(
            "no champion of %s: scoring without p_alive, expected purchases and CLV",
            tracking.CLV_MODEL,
        )
        clv = None
    return Champions(churn, clv, seg, versions)


def score_chunk(
    chunk: pd.DataFrame, champions: Champions, day: dt.date, run_id: str
) -> pd.DataFrame:
    """Return the ml.scores_history rows of one chunk of point-in-time features."""
    from ml import tracking

    features = chunk.reset_index(drop=True)
    p, reasons = champions.churn.probability_and_reasons(features)
    indexed = features.set_index("customer_key")
    if champions.clv is None:
        clv = pd.DataFrame(index=indexed.index, columns=list(CLV_VALUE_COLUMNS), dtype="float64")
    else:
        clv = champions.clv.predict(indexed[list(ft.RFM_COLUMNS)])
    seg_cols = list(champions.segmentation.features)
    segments = champions.segmentation.predict(indexed[seg_cols].astype("float64").fillna(0.0))
    return pd.DataFrame(
        {
            "score_date": day,
            "customer_key": features["customer_key"].to_numpy(),
            "churn_probability": p,
            "risk_band": champions.churn.risk_band(p),
            "top_reasons": reasons,
            "segment_id": segments["segment_id"].to_numpy(),
            "segment_name": segments["segment_name"].to_numpy(),
            "p_alive": clv["p_alive"].to_numpy(),
            "expected_purchases_12m": clv["expected_purchases_12m"].to_numpy(),
            "expected_order_value": clv["expected_order_value"].to_numpy(),
            "clv_12m": clv["clv_12m"].to_numpy(),
            "churn_model_version": champions.versions[tracking.CHURN_MODEL],
            "segmentation_model_version": champions.versions[tracking.SEGMENTATION_MODEL],
            "clv_model_version": champions.versions.get(tracking.CLV_MODEL),
            "run_id": run_id,
        },
        columns=list(SCORE_COLUMNS),
    )


def scores_csv(scored: pd.DataFrame) -> bytes:
    """Return the rows of `scored` as CSV for ``COPY ... (format csv)``.

    Arrow's C++ writer: each double as its shortest round-trip text, which PostgreSQL
    parses back to the very same double; a missing value (None, NaN) as an empty unquoted
    field (NULL) and an empty string quoted (``""``, kept as an empty string). pandas'
    ``to_csv`` before it took 2.7 s of 123,529 rows at 200k, as much as a third of the
    models' time, and wrote an empty string as NULL; a ``float_format`` such as ``%.17g``
    formats value by value in Python (half the time of scoring when it was tried).
    """
    table = pa.Table.from_pandas(scored, preserve_index=False)
    out = pa.BufferOutputStream()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
    return out.getvalue().to_pybytes()


def _stored_features(
    conn: psycopg.Connection, relation: str, chunk_size: int
) -> Iterator[pd.DataFrame]:
    """Yield rows of a precomputed feature table (ml.training_set's columns), in chunks."""
    cols = [c for c in ft.COLUMNS if c not in ("snapshot_date", "horizon_days", "churned")]
    with conn.cursor(name="lifecycle_stored_features") as cur:
        cur.itersize = chunk_size
        query = sql.SQL("select {cols} from {rel} order by customer_key").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            rel=sql.Identifier(*relation.split(".")),
        )
        cur.execute(query)
        while rows := cur.fetchmany(chunk_size):
            yield ft.typed(pd.DataFrame(rows, columns=cols))


def _stored_rfm(conn: psycopg.Connection, relation: str) -> pd.DataFrame:
    """Return the RFM columns of every row of a precomputed feature table."""
    query = sql.SQL("select {cols} from {rel}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, ft.RFM_COLUMNS)),
        rel=sql.Identifier(*relation.split(".")),
    )
    return pd.DataFrame(conn.execute(query).fetchall(), columns=list(ft.RFM_COLUMNS)).astype(
        "float64"
    )


class _Prefetched:
    """The chunks of a feature stream, fetched by a thread up to `ahead` chunks ahead.

    The first fetch runs the whole feature query (its result is sorted by customer), the
    longest part of a scoring run, in the database; the thread waits on the socket with
    the GIL released, so the champions load meanwhile. An exception of the stream is raised
    to the consumer where the chunk would have been. :meth:`close` cancels a query still
    running and waits for the thread (the connection is then in an aborted transaction:
    roll it back before using it again).
    """

    _END = object()

    def __init__(
        self, conn: psycopg.Connection, stream: Callable[[], Iterable[pd.DataFrame]], ahead: int = 1
    ) -> None:
        self._conn = conn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stream,), name="lifecycle-score-features", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, stream: Callable[[], Iterable[pd.DataFrame]]) -> None:
        chunks = iter(())
        try:
            chunks = iter(stream())
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            if not self._stop.is_set():
                self._put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                # the generator's server-side cursor; after a cancel the caller rolls back
                with contextlib.suppress(psycopg.Error):
                    close()

    def __iter__(self) -> Iterator[pd.DataFrame]:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop fetching: cancel the query if it still runs and wait for the thread."""
        if self._thread.is_alive():
            self._stop.set()
            self._conn.cancel_safe()
            self._thread.join()


def _spec_horizon() -> int:
    """Return models/churn.yaml's label horizon, the champion's unless the spec changed
    since it was trained (scoring then runs the feature query again with the champion's)."""
    from ml.specs import load_spec

    try:
        return int(load_spec("churn")["label"]["horizon_days"])
    except Exception:  # noqa: BLE001 - only a guess: any spec problem falls back to 90 days
        return 90


class _EarlyFeatures:
    """The scoring feature query, started before the champions load (with the churn
    spec's horizon: the champion's, unless the spec changed since it was trained).

    :meth:`take` hands the prefetched stream over when the champion can use it, or stops
    it (a different horizon, or a model from before the frozen BTYD fit, whose refit reads
    the connection first) and rolls the connection back for the serial path. On exit a
    stream still running (an error on the way) is cancelled before the connection closes.
    """

    def __init__(
        self,
        reader: psycopg.Connection,
        day: dt.date,
        chunk_size: int,
        features_relation: str | None,
    ) -> None:
        self._reader = reader
        self._horizon = _spec_horizon()
        self._prefetch: _Prefetched | None = None
        if features_relation is None:
            horizon = self._horizon
            self._prefetch = _Prefetched(
                reader,
                lambda: ft.stream_features(
                    reader, day, chunk_size=chunk_size, horizon_days=horizon
                ),
            )

    def take(self, horizon: int, *, usable: bool) -> _Prefetched | None:
        """Return the prefetched stream if it serves `horizon` and is `usable`, else None."""
        if self._prefetch is None:
            return None
        if usable and horizon == self._horizon:
            return self._prefetch
        log.info(
            "score: the champion's horizon is %d days (the spec says %d) or it refits BTYD "
            "first: features fetched again",
            horizon,
            self._horizon,
        )
        self._prefetch.close()
        self._prefetch = None
        self._reader.rollback()
        return None

    def __enter__(self) -> _EarlyFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prefetch is not None:
            self._prefetch.close()


def _alike(rows: int, spread: tuple[float, float]) -> list[str]:
    """Return a warning when every customer got one churn probability: a champion of a
    tiny world whose trees could not split ranks no one, and its bands take everyone."""
    if rows < 2 or spread[1] - spread[0] > 1e-9:
        return []
    return [
        f"every one of the {rows} customers has the churn probability {spread[0]:.4f}: the "
        "champion tells no one apart (trained on too few customers or too little history), "
        "so its risk bands and audiences take everyone or no one alike"
    ]


@holds_lock("score", date_arg="day")
def score(
    day: dt.date,
    settings: Settings,
    *,
    run_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    features_relation: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score every eligible customer as of `day` with the champions into ml.scores_history.

    The partition `day` is replaced in one transaction. `run_id` (default
    ``score:<day>``, so a rerun is identical) is stamped on every row, as are the
    models' versions. `features_relation` reads precomputed features from a table with
    ml.training_set's columns instead of computing them (used by the benchmark).
    `progress(chunks, rows)` is called after each chunk. Two scorings of one day take
    turns (lifecycle.locks): the second waits, then says who holds the day.
    """
    from lifecycle import warehouse as wh

    started = time.perf_counter()
    run_id = run_id or f"score:{day.isoformat()}"
    url = wh.warehouse_url(settings)
    rows = chunks = 0
    bands: dict[str, int] = {}
    segments: dict[str, int] = {}
    t_features = t_models = t_write = 0.0
    fewest_days_since = None  # days since the last order of the latest buyer
    spread = (float("inf"), float("-inf"))  # the lowest and highest churn probability
    with (
        wh.connect(url) as reader,
        wh.connect(url) as writer,
        writer.transaction(),
        _EarlyFeatures(reader, day, chunk_size, features_relation) as early,
    ):
        champions = load_champions(settings)
        loaded = time.perf_counter()
        ensure_ml_tables(writer)
        writer.execute("delete from ml.scores_history where score_date = %s", (day,))
        churn = champions.churn
        horizon = int(getattr(churn, "horizon_days", 90))
        btyd = getattr(churn, "btyd_fit", None)
        refit = getattr(churn, "uses_btyd", False) and not getattr(churn, "btyd_frozen", False)
        prefetched = early.take(horizon, usable=not refit)
        if refit:
            # the BTYD features need a fit on every customer's RFM at `day`, as training's
            # per-snapshot fit had: one pass over the RFM first, then chunk by chunk
            rfm = (
                _stored_rfm(reader, features_relation)
                if features_relation
                else ft.rfm_at(reader, day, horizon_days=horizon)
            )
            btyd = ft.fit_btyd(rfm, churn.btyd_params, label=day)
        if prefetched is not None:
            source: Iterable[pd.DataFrame] = prefetched
        elif features_relation:
            source = _stored_features(reader, features_relation, chunk_size)
        else:
            source = ft.stream_features(reader, day, chunk_size=chunk_size, horizon_days=horizon)
        if getattr(churn, "uses_btyd", False):
            source = (
                pd.concat([c, ft.btyd_features(c, btyd, horizon_days=horizon)], axis=1)
                for c in source
            )
        with (
            writer.cursor() as cur,
            cur.copy(
                f"copy ml.scores_history ({', '.join(SCORE_COLUMNS)}) from stdin (format csv)",
                # a thread sends the rows while the next chunk is scored
                writer=QueuedLibpqWriter(cur),
            ) as copy,
        ):
            t0 = time.perf_counter()
            for chunk in source:
                t1 = time.perf_counter()
                t_features += t1 - t0
                scored = score_chunk(chunk, champions, day, run_id)
                t2 = time.perf_counter()
                t_models += t2 - t1
                copy.write(scores_csv(scored))
                t0 = time.perf_counter()
                t_write += t0 - t2
                rows += len(scored)
                chunks += 1
                nearest = chunk["days_since_last_order"].min()
                fewest_days_since = (
                    nearest if fewest_days_since is None else min(fewest_days_since, nearest)
                )
                lo, hi = scored["churn_probability"].min(), scored["churn_probability"].max()
                spread = (min(spread[0], lo), max(spread[1], hi))
                for band, n in scored["risk_band"].value_counts().items():
                    bands[str(band)] = bands.get(str(band), 0) + int(n)
                for name, n in scored["segment_name"].value_counts().items():
                    segments[str(name)] = segments.get(str(name), 0) + int(n)
                log.info("score %s: chunk %d, %d customers so far", day, chunks, rows)
                if progress:
                    progress(chunks, rows)
        if rows == 0:
            raise ScoreError(
                f"no eligible customer (a completed order by {day}) in the warehouse: "
                "load data and run `lifecycle transform` first; nothing was written"
            )
    result = ScoreResult(
        score_date=day,
        run_id=run_id,
        rows=rows,
        chunks=chunks,
        versions=champions.versions,
        risk_bands=dict(sorted(bands.items())),
        segments=dict(sorted(segments.items())),
        elapsed_s=time.perf_counter() - started,
        warnings=_past_the_data(day, fewest_days_since, horizon) + _alike(rows, spread),
        stage_s={
            "load_models": round(loaded - started, 2),
            "features": round(t_features, 2),
            "models": round(t_models, 2),
            "write": round(t_write, 2),
        },
    )
    log.info("%s", result.summary())
    for warning in result.warnings:
        log.warning("score %s: %s", day, warning)
    return result
