"""Run a layer's expectation suites with Great Expectations, store the results, give a verdict.

:func:`validate_layer` connects GX (an ephemeral context, ``data_sources.add_sql`` on the
warehouse's SQLAlchemy URL: ``add_postgres`` rejects the embedded server's Unix-socket
host) to the warehouse, runs every suite of the layer on the rows of the logical date,
writes every expectation result to ``ops.dq_results`` (and one row per run to
``ops.dq_runs``) in one transaction, and returns a :class:`Verdict`. A failed
``critical`` expectation fails the gate; ``warning`` and ``info`` ones are reported only.

:func:`run_validate` is the step the DAG calls: the same, raising :class:`GateFailed`
(with the failing expectations in its message) when the gate fails.
:func:`gate_and_publish` validates a pending marts build and publishes it only if it
passes (write-audit-publish).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import statistics
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from lifecycle.availability import absent_entities
from lifecycle.quality.publish import PublishResult, pending_build, publish_marts
from lifecycle.quality.suites import (
    COMPOUND_UNIQUE,
    LAYERS,
    RowCountRule,
    Suite,
    load_suites,
    tokens_for,
)
from lifecycle.settings import Settings, get_settings
from lifecycle.sources_file import business_zone
from lifecycle.transform import BUILD_SCHEMA
from lifecycle.warehouse import connect, sqlalchemy_url, warehouse_url

log = logging.getLogger(__name__)

DQ_DDL = """
create schema if not exists ops;
create table if not exists ops.dq_runs (
    run_id text not null,
    logical_date date not null,
    layer text not null,
    schema_name text not null,
    passed boolean not null,
    count_suites integer not null,
    count_skipped_suites integer not null,
    count_expectations integer not null,
    count_failed_critical integer not null,
    count_failed_warning integer not null,
    summary text not null,
    duration_s double precision,
    recorded_at timestamptz not null default now(),  -- bookkeeping only
    primary key (run_id, layer)
);
create table if not exists ops.dq_results (
    run_id text not null,
    logical_date date not null,
    layer text not null,
    suite text not null,
    ordinal integer not null,
    relation text not null,
    expectation text not null,
    column_name text,
    severity text not null check (severity in ('critical', 'warning', 'info')),
    success boolean not null,
    observed_value jsonb,
    unexpected_count bigint,
    unexpected_percent double precision,
    element_count bigint,
    partial_unexpected jsonb,
    exception text,
    description text,
    kwargs jsonb,
    primary key (run_id, layer, suite, ordinal),
    foreign key (run_id, layer) references ops.dq_runs (run_id, layer) on delete cascade
);
create index if not exists dq_results_date_idx on ops.dq_results (logical_date, layer);
"""


#: What GX returns per expectation: counts and at most this many example values (stored
#: in ops.dq_results.partial_unexpected), never every unexpected row.
RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
#: A gate's first pass: the same counts, no examples. Each expectation's examples are one
#: more query, a whole scan of the rows when none is unexpected (a uniqueness check's: the
#: window over every key again), which most runs throw away: 80 of the 209 s of a first
#: load's raw gate at 1M. Only the expectations that found unexpected values run a second
#: time, with :data:`RESULT_FORMAT`.
COUNTS_ONLY: dict[str, Any] = {**RESULT_FORMAT, "partial_unexpected_count": 0}


class QualityError(RuntimeError):
    """The gate could not run (bad suite, nothing to validate); nothing was stored."""


class GateFailed(RuntimeError):
    """A gate found failing critical expectations; `verdict` lists them."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.summary())
        self.verdict = verdict


@dataclass(frozen=True)
class Outcome:
    """The result of one expectation on one batch."""

    suite: str
    ordinal: int
    relation: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    observed_value: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    element_count: int | None = None
    partial_unexpected: list[Any] | None = None
    exception: str | None = None
    description: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Return ``suite: expectation(column)``."""
        col = f"({self.column})" if self.column else ""
        return f"{self.suite}: {self.expectation}{col}"

    def describe(self) -> str:
        """Return one line saying what failed and by how much."""
        parts = []
        if self.exception:
            parts.append(f"error: {self.exception.strip().splitlines()[-1][:200]}")
        if self.unexpected_count is not None:
            pct = f" ({self.unexpected_percent:.2f}%)" if self.unexpected_percent else ""
            of = f" of {self.element_count}" if self.element_count is not None else ""
            parts.append(f"{self.unexpected_count} unexpected{of}{pct}")
        if self.observed_value is not None and self.unexpected_count is None:
            parts.append(f"observed {json.dumps(self.observed_value, default=str)}")
        if self.partial_unexpected:
            sample = json.dumps(self.partial_unexpected[:3], default=str, ensure_ascii=False)
            parts.append(f"e.g. {sample}")
        bounds = {
            k: v
            for k, v in self.kwargs.items()
            if k in ("min_value", "max_value", "value_set") and not isinstance(v, list)
        }
        if bounds:
            parts.append(", ".join(f"{k}={v}" for k, v in bounds.items()))
        why = f" — {self.description}" if self.description else ""
        return f"[{self.severity}] {self.label}{why}: {'; '.join(parts) or 'failed'}"


@dataclass
class Verdict:
    """What a gate found for one layer and logical date."""

    layer: str
    logical_date: dt.date
    run_id: str
    schema: str
    outcomes: list[Outcome] = field(default_factory=list)
    suites: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # suite -> why
    elapsed_s: float = 0.0
    data_docs: Path | None = None  # index.html of the run's GX Data Docs site, when built

    @property
    def failures(self) -> list[Outcome]:
        """Return the failed critical expectations (they fail the gate)."""
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[Outcome]:
        """Return the failed warning/info expectations (reported, not blocking)."""
        return [o for o in self.outcomes if not o.success and o.severity != "critical"]

    @property
    def passed(self) -> bool:
        """Return True when no critical expectation failed."""
        return not self.failures

    def failing(self) -> set[tuple[str, str, str | None]]:
        """Return (suite, expectation, column) of every failed critical expectation."""
        return {(o.suite, o.expectation, o.column) for o in self.failures}

    def summary(self) -> str:
        """Return a readable text for a task log: the verdict, then each failure and warning."""
        state = "PASSED" if self.passed else "FAILED"
        head = (
            f"quality gate {self.layer} {self.logical_date} {state}: "
            f"{len(self.outcomes)} expectations in {len(self.suites)} suite(s) on "
            f"schema {self.schema}, {len(self.failures)} failed, "
            f"{len(self.warnings)} warning(s) ({self.elapsed_s:.1f}s, run {self.run_id})"
        )
        lines = [head]
        lines += [f"  FAIL {o.describe()}" for o in self.failures]
        lines += [f"  WARN {o.describe()}" for o in self.warnings]
        lines += [f"  skipped {name}: {why}" for name, why in sorted(self.skipped.items())]
        if not self.passed:
            lines.append(
                f"  details: select * from ops.dq_results where run_id = '{self.run_id}' "
                f"and layer = '{self.layer}' and not success"
            )
        if self.data_docs is not None:
            lines.append(f"  data docs: {self.data_docs}")
        return "\n".join(lines)

    def facts(self) -> dict[str, Any]:
        """Return small JSON-able facts (for XCom and asset metadata)."""
        return {
            "layer": self.layer,
            "logical_date": self.logical_date.isoformat(),
            "run_id": self.run_id,
            "schema": self.schema,
            "passed": self.passed,
            "expectations": len(self.outcomes),
            "failed": [o.label for o in self.failures],
            "warnings": [o.label for o in self.warnings],
            "skipped": sorted(self.skipped),
            "data_docs": str(self.data_docs) if self.data_docs else None,
        }


# ------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class _Plan:
    """One suite to run: on which relation, which rows, with which parameters."""

    suite: Suite
    relation: str
    query: str | None  # None: the relation does not exist
    tokens: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def _marts_schema(conn: psycopg.Connection, day: dt.date) -> str:
    """Return the schema holding the marts to validate for `day` (a pending build first)."""
    built = pending_build(conn)
    if built == day:
        return BUILD_SCHEMA
    if built is not None:
        raise QualityError(
            f"{BUILD_SCHEMA} holds an unpublished build of {built}, not {day}: build {day} "
            f"first (transform({day}, publish=False)) or pass schema='marts' to check the "
            "published marts"
        )
    return "marts"


def _batch_exists(conn: psycopg.Connection, batch_id: str) -> bool:
    """Return True when the load batch `batch_id` was committed."""
    if not _table_exists(conn, "ops.load_batches"):
        return False
    row = conn.execute("select 1 from ops.load_batches where batch_id = %s", (batch_id,))
    return row.fetchone() is not None


def _table_exists(conn: psycopg.Connection, relation: str) -> bool:
    """Return True when `relation` (schema.name) exists."""
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


def row_count_bounds(
    conn: psycopg.Connection, entity: str, day: dt.date, rule: RowCountRule
) -> tuple[int | None, int | None, list[int]]:
    """Return (min, max, history): bounds on the batch of `day` from earlier one-day batches.

    The history is the row count of each of the latest ``history_batches`` one-day
    batches of `entity` (``raw.<entity>``) within ``history_days`` before `day`; full or
    catch-up loads spanning more than a day are left out. No bounds (None) when there
    are fewer than ``min_history`` such batches or their median is under ``min_median``.
    """
    rows = conn.execute(
        "select b.batch_id from ops.load_batches b "
        "where b.source || '__' || b.entity = %s and b.logical_date < %s "
        "and b.logical_date >= %s and b.window_start is not null "
        "and b.window_end - b.window_start = interval '1 day' "
        "order by b.logical_date desc limit %s",
        (entity, day, day - dt.timedelta(days=rule.history_days), rule.history_batches),
    ).fetchall()
    ids = [r[0] for r in rows]
    counts: list[int] = []
    if ids:
        # count what raw holds (the truth), not what the loader logged
        found = dict(
            conn.execute(
                sql.SQL(
                    "select _batch_id, count(*) from raw.{} where _batch_id = any(%s) group by 1"
                ).format(sql.Identifier(entity)),
                (ids,),
            ).fetchall()
        )
        counts = [int(found.get(i, 0)) for i in ids]
    if len(counts) < rule.min_history:
        return None, None, counts
    median = statistics.median(counts)
    if median < rule.min_median:
        return None, None, counts
    return math.ceil(median * rule.min_ratio), math.floor(median * rule.max_ratio), counts


# ------------------------------------------------------------------------ running


def _exception(info: dict[str, Any]) -> str | None:
    """Return the message of a GX exception_info (flat, or one entry per metric), or None."""
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [
        str(e.get("exception_message") or e.get("exception_traceback"))
        for e in entries
        if isinstance(e, dict) and e.get("raised_exception")
    ]
    return "; ".join(messages) or None


def _column(kwargs: dict[str, Any]) -> str | None:
    """Return the column(s) an expectation is about (comma-joined for compound ones)."""
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_list"):
        return ",".join(kwargs["column_list"])
    return None


def _outcome(
    suite: Suite,
    relation: str,
    ordinal: int,
    res: dict[str, Any],
    declared: dict[str, Any] | None = None,
) -> Outcome:
    """Return the Outcome of one GX ExpectationValidationResult (as JSON).

    A compound uniqueness check run grouped (:func:`grouped_uniqueness`) is recorded as
    the suite `declared` it: its type and columns.
    """
    config = res.get("expectation_config") or {}
    if declared is not None and declared["type"] == COMPOUND_UNIQUE != config.get("type"):
        config = {**config, "type": COMPOUND_UNIQUE, "kwargs": declared.get("kwargs") or {}}
    kwargs = dict(config.get("kwargs") or {})
    result = res.get("result") or {}
    exception = _exception(res.get("exception_info") or {})
    return Outcome(
        suite=suite.name,
        ordinal=ordinal,
        relation=relation,
        expectation=str(config.get("type")),
        column=_column(kwargs),
        severity=str(config.get("severity") or "critical"),
        success=bool(res.get("success")),
        observed_value=result.get("observed_value"),
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=result.get("unexpected_percent"),
        element_count=result.get("element_count"),
        partial_unexpected=result.get("partial_unexpected_list") or None,
        exception=exception,
        description=config.get("description"),
        kwargs={k: v for k, v in kwargs.items() if k not in ("batch_id",)},
    )


def _gx_context():  # -> great_expectations.data_context.EphemeralDataContext
    """Return a quiet ephemeral GX context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage statistics calls home
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.datasource.fluent.interfaces import GxDatasourceWarning

    # GX suggests its PostgresDatasource, which rejects the embedded server's Unix-socket
    # URL (STACK.md): the generic SQL source is deliberate, the warning is noise in task logs.
    warnings.filterwarnings("ignore", category=GxDatasourceWarning)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def validate_layer(
    layer: str,
    day: dt.date,
    settings: Settings | None = None,
    *,
    schema: str | None = None,
    run_id: str | None = None,
) -> Verdict:
    """Run every suite of `layer` on the data of `day`, store the results, return the verdict.

    `schema` overrides the schema validated (default: the layer's; for ``marts`` the
    pending build in ``marts__build`` when it is of `day`, else the published ``marts``).
    Results go to ``ops.dq_results``/``ops.dq_runs`` under `run_id` (default: a new uuid).
    Raises :class:`QualityError` when the suites are malformed or the layer's schema holds
    a build of another day; never raises for failing expectations (see :func:`run_validate`).
    """
    settings = settings or get_settings()
    suites = load_suites(layer)
    url = warehouse_url(settings)
    run_id = run_id or uuid.uuid4().hex
    started = time.perf_counter()
    absent = absent_entities(settings) if any(s.requires_batch for s in suites) else {}
    zone = business_zone(settings).key
    with connect(url) as conn:
        if schema is None:
            schema = _marts_schema(conn, day) if layer == "marts" else LAYERS[layer]
        verdict = Verdict(layer, day, run_id, schema)
        plans: list[_Plan] = []
        for suite in suites:
            tokens = tokens_for(day, schema, timezone=zone)
            if suite.requires_batch in absent:
                verdict.skipped[suite.name] = absent[suite.requires_batch]
                continue
            if suite.requires_batch:
                tokens["batch_id"] = f"{suite.requires_batch}:{day.isoformat()}"
                if not _batch_exists(conn, tokens["batch_id"]):
                    verdict.skipped[suite.name] = (
                        f"no batch {tokens['batch_id']} was loaded (source not configured "
                        "or skipped: see ops.load_runs)"
                    )
                    continue
            relation = suite.relation(schema)
            if not _table_exists(conn, relation):
                if suite.layer == "marts":  # the marts must all be there
                    plans.append(_Plan(suite, relation, None))
                else:
                    verdict.skipped[suite.name] = f"{relation} does not exist"
                continue
            params: dict[str, Any] = {}
            if suite.row_count and suite.requires_batch:
                low, high, history = row_count_bounds(
                    conn, suite.requires_batch, day, suite.row_count
                )
                params = {"row_count_min": low, "row_count_max": high}
                log.debug("%s row count bounds %s..%s from %s", suite.name, low, high, history)
            plans.append(_Plan(suite, relation, suite.query(tokens), tokens, params))
    if plans:
        _run_gx(verdict, plans, url, data_docs_dir(settings, day, layer, run_id))
    verdict.elapsed_s = time.perf_counter() - started
    _store(url, verdict)
    log.info("%s", verdict.summary())
    return verdict


def data_docs_dir(settings: Settings, day: dt.date, layer: str, run_id: str) -> Path:
    """Return the folder of the GX Data Docs site of one gate run (`layer`, `day`, `run_id`)."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in run_id)[:120]
    return settings.state_dir / "data_docs" / day.isoformat() / layer / safe


def data_docs_index(settings: Settings, day: dt.date, layer: str, run_id: str) -> Path | None:
    """Return the index.html of a gate run's Data Docs site, or None when none was built."""
    index = data_docs_dir(settings, day, layer, run_id) / "index.html"
    return index if index.is_file() else None


def _build_data_docs(ctx, verdict: Verdict, folder: Path) -> None:
    """Render the run's suites and validation results as a GX Data Docs site in `folder`.

    The standard site (``SiteBuilder`` on a filesystem store), so data-quality users get
    the pages they know; one site per gate run (GX rebuilds a site from the context's
    results, and an ephemeral context holds only this run's). A failure to render is
    logged and never fails the gate.
    """
    started = time.perf_counter()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ctx.add_data_docs_site(
            site_name="lifecycle",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(folder),
                },
            },
        )
        ctx.build_data_docs(site_names=["lifecycle"])
    except Exception:  # noqa: BLE001 - GX raises many kinds; the verdict stands without docs
        log.warning("could not build the GX Data Docs in %s", folder, exc_info=True)
        return
    index = folder / "index.html"
    verdict.data_docs = index if index.is_file() else None
    log.debug("GX Data Docs of %s built in %.1fs", verdict.run_id, time.perf_counter() - started)


@contextmanager
def _without_unused_rows(plans: list[_Plan]) -> Iterator[None]:
    """Make GX's queries whose rows it never uses return none: run in PostgreSQL, not fetched.

    Two kinds, each matched by its exact text (this run's batch queries, whitespace aside),
    nothing else:

    * the column-name probe of a query asset: GX 1.x runs the asset's query itself,
      unwrapped and unbounded, and reads only the result's column names; the client-side
      cursor still receives every row (a first load of 24M web events at 1M customers:
      17 GB in the gate). Every metric wraps the query in a subquery, so the bare query
      text is that probe alone: it is sent as ``select * from (<query>) limit 0``.
    * the rows of an ``unexpected_rows_expectation``: GX fetches every row its query
      returns (the ``unexpected_rows_query.table`` metric), which only the COMPLETE result
      format shows; :data:`RESULT_FORMAT` reports the count (a separate ``count(*)``
      query). It is sent with ``limit 0``: PostgreSQL returns at once, without running
      the query (a scan of the batch: 7.5 s of a 24M-event first load).

    Every check still runs in PostgreSQL; only counts and bounded examples come back. The
    hook is on SQLAlchemy's Engine class (GX builds its execution engine's own Engine) for
    the duration of the run only.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    bare = {_squeezed(p.query) for p in plans if p.query}
    unused = {
        # the text GX sends: `{batch}` replaced by the batch query as a derived table, named
        # `subselect` unless the query joins (then it names its tables itself)
        _squeezed(query.replace("{batch}", batch))
        for p in plans
        if p.query
        for exp in p.suite.gx_spec(p.tokens)["expectations"]
        if isinstance(query := (exp.get("kwargs") or {}).get("unexpected_rows_query"), str)
        for batch in (f"({p.query}) AS subselect", f"({p.query})")
    }

    def rewrite(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        squeezed = _squeezed(statement)
        if squeezed in bare or squeezed in unused:
            statement = f"select * from ({_normalized(statement)}) as gx_unused_rows limit 0"
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", rewrite, retval=True)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", rewrite)


def _normalized(query: str) -> str:
    return query.strip().rstrip(";").strip()


def _squeezed(query: str) -> str:
    """Return `query` without its trailing semicolon and without any whitespace (GX's
    compiled batch queries re-indent the text)."""
    return "".join(_normalized(query).split())


def _run_gx(verdict: Verdict, plans: list[_Plan], url: str, docs_dir: Path | None = None) -> None:
    """Run the planned suites with GX and add their outcomes to `verdict`.

    With `docs_dir`, the run's GX Data Docs site is built there afterwards.
    """
    from great_expectations.core.run_identifier import RunIdentifier

    ctx = _gx_context()
    source = ctx.data_sources.add_sql(name="warehouse", connection_string=sqlalchemy_url(url))
    # one GX run per gate run: its pages in Data Docs carry the gate's run id
    run_identifier = RunIdentifier(run_name=f"{verdict.layer}-{verdict.run_id}")
    try:
        with _without_unused_rows(plans):
            for i, plan in enumerate(plans):
                suite, relation = plan.suite, plan.relation
                verdict.suites.append(suite.name)
                if plan.query is None:  # a mart that was not built: every expectation fails
                    for n, exp in enumerate(suite.spec["expectations"]):
                        verdict.outcomes.append(
                            Outcome(
                                suite.name,
                                n,
                                relation,
                                exp["type"],
                                _column(exp.get("kwargs") or {}),
                                exp.get("severity", "critical"),
                                False,
                                exception=f"{relation} does not exist",
                            )
                        )
                    continue
                asset = source.add_query_asset(name=f"a{i}", query=plan.query)
                batch = asset.add_batch_definition_whole_table(f"b{i}")
                spec = suite.gx_spec(plan.tokens)
                results = _validate(
                    ctx, batch, spec, f"v{i}", plan.params, run_identifier, COUNTS_ONLY
                )
                # examples for the expectations that found unexpected values: a second pass
                # over those alone, whose results (the same rows: the same counts) replace
                # the first pass's; a compound uniqueness check ran grouped (a count of
                # keys) runs as GX's own there, for the rows and examples
                grouped = {
                    j
                    for j, exp in enumerate(suite.spec["expectations"])
                    if exp["type"] == COMPOUND_UNIQUE
                }
                found = [
                    j
                    for j, item in results
                    if _unexpected(item) or (j in grouped and not item.get("success"))
                ]
                if found:
                    declared = suite.gx_spec(plan.tokens, grouped=False)
                    examples = {
                        **spec,
                        "name": f"{spec['name']} (examples)",
                        "expectations": [declared["expectations"][j] for j in found],
                    }
                    again = _validate(
                        ctx, batch, examples, f"v{i}x", plan.params, run_identifier, RESULT_FORMAT
                    )
                    redone = {found[k]: item for k, item in again}
                    results = [(j, redone.get(j, item)) for j, item in results]
                for n, (j, item) in enumerate(results):
                    declared = suite.spec["expectations"][j]
                    verdict.outcomes.append(_outcome(suite, relation, n, item, declared))
            if docs_dir is not None:
                _build_data_docs(ctx, verdict, docs_dir)
    finally:
        source.get_engine().dispose()


def _validate(
    ctx: Any,
    batch: Any,
    spec: dict[str, Any],
    name: str,
    params: dict[str, Any],
    run_identifier: Any,
    result_format: dict[str, Any],
) -> list[tuple[int, dict[str, Any]]]:
    """Run the GX suite `spec` on `batch` as validation `name`; return its results as JSON
    in GX's order, each with the position of its expectation in ``spec["expectations"]``
    (GX orders its results its own way: table-level expectations first)."""
    import great_expectations as gx

    gx_suite = ctx.suites.add(gx.ExpectationSuite(**spec))
    position = {exp.id: j for j, exp in enumerate(gx_suite.expectations)}
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=gx_suite)
    )
    res = definition.run(
        result_format=result_format, expectation_parameters=params, run_id=run_identifier
    )
    return [
        (position[item["expectation_config"]["id"]], item) for item in res.to_json_dict()["results"]
    ]


def _unexpected(item: dict[str, Any]) -> bool:
    """Return whether a GX result (as JSON) counted unexpected values (examples to fetch)."""
    return bool((item.get("result") or {}).get("unexpected_count"))


def _jsonb(value: Any) -> str | None:
    """Return `value` as JSON text for a jsonb column (None stays NULL)."""
    return None if value is None else json.dumps(value, default=str, ensure_ascii=False)


def _store(url: str, verdict: Verdict) -> None:
    """Write the run and every outcome to ops.dq_runs / ops.dq_results in one transaction."""
    with connect(url) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('lifecycle.dq_ddl'))")
        conn.execute(DQ_DDL)
        # a retried task (same run id and layer) replaces its earlier attempt
        conn.execute(
            "delete from ops.dq_runs where run_id = %s and layer = %s",
            (verdict.run_id, verdict.layer),
        )
        conn.execute(
            "insert into ops.dq_runs (run_id, logical_date, layer, schema_name, passed, "
            "count_suites, count_skipped_suites, count_expectations, count_failed_critical, "
            "count_failed_warning, summary, duration_s) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                verdict.run_id,
                verdict.logical_date,
                verdict.layer,
                verdict.schema,
                verdict.passed,
                len(verdict.suites),
                len(verdict.skipped),
                len(verdict.outcomes),
                len(verdict.failures),
                len(verdict.warnings),
                verdict.summary(),
                verdict.elapsed_s,
            ),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "insert into ops.dq_results (run_id, logical_date, layer, suite, ordinal, "
                "relation, expectation, column_name, severity, success, observed_value, "
                "unexpected_count, unexpected_percent, element_count, partial_unexpected, "
                "exception, description, kwargs) values "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        verdict.run_id,
                        verdict.logical_date,
                        verdict.layer,
                        o.suite,
                        o.ordinal,
                        o.relation,
                        o.expectation,
                        o.column,
                        o.severity,
                        o.success,
                        _jsonb(o.observed_value),
                        o.unexpected_count,
                        o.unexpected_percent,
                        o.element_count,
                        _jsonb(o.partial_unexpected),
                        o.exception,
                        o.description,
                        _jsonb(o.kwargs),
                    )
                    for o in verdict.outcomes
                ],
            )


# ------------------------------------------------------------------------ DAG steps


def run_validate(
    day: dt.date,
    settings: Settings | None = None,
    *,
    layer: str = "raw",
    schema: str | None = None,
    run_id: str | None = None,
) -> Verdict:
    """Validate `layer` for `day` and return the verdict; raise GateFailed when it fails."""
    verdict = validate_layer(layer, day, settings, schema=schema, run_id=run_id)
    if not verdict.passed:
        raise GateFailed(verdict)
    return verdict


@dataclass
class GateResult:
    """A passed marts gate and the publish that followed it."""

    verdict: Verdict
    published: PublishResult

    def summary(self) -> str:
        """Return a readable text for a task log."""
        return f"{self.verdict.summary()}\n{self.published.summary()}"

    def facts(self) -> dict[str, Any]:
        """Return small JSON-able facts."""
        return {**self.verdict.facts(), **self.published.facts()}


def _latest_publication(conn: psycopg.Connection) -> dt.date | None:
    """Return the logical date of the marts published last (None before any publish)."""
    if conn.execute("select to_regclass('ops.marts_publications')").fetchone()[0] is None:
        return None
    row = conn.execute(
        "select logical_date from ops.marts_publications order by published_at desc limit 1"
    ).fetchone()
    return row[0] if row else None


def gate_and_publish(
    day: dt.date, settings: Settings | None = None, *, run_id: str | None = None
) -> GateResult:
    """Validate the pending marts build of `day` and publish it only if it passes.

    Returns the verdict and what was published. Raises :class:`GateFailed` (nothing is
    published; ``marts`` keeps yesterday's tables) when a critical expectation fails, and
    :class:`QualityError` when ``marts__build`` holds no build of `day`.
    """
    settings = settings or get_settings()
    with connect(warehouse_url(settings)) as conn:
        built = pending_build(conn)
        latest = _latest_publication(conn)
    if built is None and latest == day:
        # An earlier attempt published this build, then died before its task was marked
        # done (a retry after a crash): gate the published marts again, publish nothing.
        verdict = run_validate(day, settings, layer="marts", schema="marts", run_id=run_id)
        log.info("the marts of %s were already published by an earlier attempt", day)
        return GateResult(verdict, PublishResult(day))
    if built != day:
        what = f"a build of {built}" if built else "no pending build"
        raise QualityError(
            f"cannot gate the marts of {day}: {BUILD_SCHEMA} holds {what}; run "
            f"transform({day}, publish=False) first"
        )
    verdict = run_validate(day, settings, layer="marts", schema=BUILD_SCHEMA, run_id=run_id)
    return GateResult(verdict, publish_marts(day, settings))
