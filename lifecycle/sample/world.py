"""Sample-world generator: writes realistic CRM, order, web-event and spend sources plus truth.

The generative model and every knob are documented in ``lifecycle/sample/README.md``. This module
holds the public API (:class:`WorldConfig`, :class:`WorldSummary`, :func:`generate_world`) and
the chunked writer; the model itself lives in ``people.py``, ``orders.py`` and ``web.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle.sample.campaign import Campaign

GENERATOR = "lifecycle.sample"
GENERATOR_VERSION = "1.0.0"

DEFAULT_CHANNEL_MIX: tuple[tuple[str, float], ...] = (
    ("organic", 0.34),
    ("paid_search", 0.24),
    ("social", 0.18),
    ("referral", 0.10),
    ("email", 0.14),
)
DEFAULT_CAC: tuple[tuple[str, float], ...] = (
    ("paid_search", 38.0),
    ("social", 30.0),
    ("email", 6.0),
)
DEFECT_KINDS = (
    "malformed_row",
    "bad_type",
    "duplicate",
    "future_date",
    "negative_amount",
    "bad_encoding",
    "malformed_json",
)


#: Purchase processes of the sample world (WorldConfig.purchase_process).
PURCHASE_PROCESSES = ("pareto_nbd", "bgnbd")


@dataclass(frozen=True)
class WorldConfig:
    """What to generate; every field is documented in lifecycle/sample/README.md."""

    customers: int  # number of people acquired in [start, end] (buyers + prospects)
    start: datetime.date
    end: datetime.date  # inclusive
    seed: int = 42
    dirty_rate: float = 0.0  # share of rows per file that get a defect injected
    chunk_size: int = 20_000  # people per chunk: memory is bounded by this, not by `customers`
    # --- people and acquisition
    prospect_share: float = 0.35  # people who never buy (CRM contacts only)
    guest_share: float = 0.12  # buyers who check out as guests: no CRM contact, no web login
    channel_mix: tuple[tuple[str, float], ...] = DEFAULT_CHANNEL_MIX
    annual_growth: float = 0.35  # acquisitions grow by this share per year
    q4_peak: float = 0.6  # height of the Black-Friday/Christmas bump over the yearly mean
    opt_in_rate: float = 0.85  # contacts opted in to marketing at creation
    # --- purchases (Pareto/NBD + Gamma-Gamma)
    purchase_rate_mean: float = 2.4  # repeat orders per year while alive, population mean
    purchase_rate_shape: float = 1.2  # Gamma shape of the purchase rate (smaller = wider)
    dropout_rate_mean: float = 0.8  # drop-outs per year while alive, population mean
    dropout_rate_shape: float = 2.0  # Gamma shape of the drop-out rate
    # "pareto_nbd": the above, orders thinned by the calendar's seasonality; "bgnbd": a pure
    # BG/NBD world (no seasonality in repeat orders), drop-out right after a repeat order
    # with probability p ~ Beta(a, b), rate ~ Gamma(r, alpha) per week: bgnbd_params
    purchase_process: str = "pareto_nbd"
    bgnbd_params: tuple[float, float, float, float] = (0.243, 4.414, 0.793, 2.426)  # CDNOW fit
    same_day_first_order: float = 0.4  # buyers whose first order is within hours of acquisition
    first_order_days: float = 10.0  # mean delay (days) to the first order for the others
    order_value_mean: float = 72.0  # USD, population mean of the per-customer mean order value
    order_value_p: float = 6.0  # Gamma-Gamma p: per-order shape (larger = less order noise)
    order_value_q: float = 4.0  # Gamma-Gamma q: customer heterogeneity (larger = less); > 1
    refund_rate: float = 0.04
    # probability that a buyer drops out when one of their orders is refunded (order
    # experience drives churn); 0 = refunds do not change behaviour
    refund_dropout: float = 0.0
    cancel_rate: float = 0.02
    eur_share: float = 0.3  # share of euro-zone buyers who shop in the EUR storefront
    catalog_size: int = 400
    # --- web behaviour
    browse_share: float = 0.8  # buyers who ever use the website (the rest: app/phone/marketplace)
    prospect_browse_share: float = 0.7
    prospect_signup_share: float = 0.5  # browsing prospects who create a web account
    browse_after_dropout_share: float = 0.25  # browsing buyers who keep visiting after dropout
    sessions_per_order: float = 3.0  # browse sessions per expected order (per-person lognormal)
    order_tracking_rate: float = 0.9  # web-buyer orders that emit an order_completed event
    anonymous_visitors_per_person: float = 1.0  # extra never-identified visitors
    late_event_rate: float = 0.035  # events that land 1-4 days after they happened
    duplicate_event_rate: float = 0.015  # events delivered twice (same event_id)
    # --- marketing spend
    cac: tuple[tuple[str, float], ...] = DEFAULT_CAC  # USD spend per acquired person
    # --- output
    gzip_level: int = 3  # zlib level of the event files (3: fast, ~15% larger than 6)

    def __post_init__(self) -> None:
        """Validate the configuration with messages a caller can act on."""
        problems = []
        if self.customers < 1:
            problems.append(f"customers must be >= 1, got {self.customers}")
        if self.end < self.start:
            problems.append(f"end {self.end} is before start {self.start}")
        if self.chunk_size < 1:
            problems.append(f"chunk_size must be >= 1, got {self.chunk_size}")
        for name in (
            "dirty_rate",
            "prospect_share",
            "guest_share",
            "opt_in_rate",
            "same_day_first_order",
            "refund_rate",
            "refund_dropout",
            "cancel_rate",
            "eur_share",
            "browse_share",
            "prospect_browse_share",
            "prospect_signup_share",
            "browse_after_dropout_share",
            "order_tracking_rate",
            "late_event_rate",
            "duplicate_event_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value}")
        if self.purchase_process not in PURCHASE_PROCESSES:
            problems.append(
                f"purchase_process must be one of {PURCHASE_PROCESSES}, got "
                f"{self.purchase_process!r}"
            )
        if len(self.bgnbd_params) != 4 or any(v <= 0 for v in self.bgnbd_params):
            problems.append(f"bgnbd_params needs r, alpha, a, b > 0, got {self.bgnbd_params}")
        if self.refund_rate + self.cancel_rate > 1:
            problems.append("refund_rate + cancel_rate must be <= 1")
        for name in (
            "purchase_rate_mean",
            "purchase_rate_shape",
            "dropout_rate_mean",
            "dropout_rate_shape",
            "first_order_days",
            "order_value_mean",
            "order_value_p",
            "sessions_per_order",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.order_value_q <= 1:
            problems.append(f"order_value_q must be > 1, got {self.order_value_q}")
        if self.annual_growth <= -1 or self.q4_peak < 0 or self.anonymous_visitors_per_person < 0:
            problems.append("annual_growth must be > -1; q4_peak, anonymous visitors >= 0")
        if not 1 <= self.catalog_size <= 89_999:
            problems.append(f"catalog_size must be in [1, 89999], got {self.catalog_size}")
        if not 0 <= self.gzip_level <= 9:
            problems.append(f"gzip_level must be in [0, 9], got {self.gzip_level}")
        from lifecycle.sample.calendar import CHANNELS, PAID_CHANNELS

        mix = dict(self.channel_mix)
        if set(mix) - set(CHANNELS) or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
            problems.append(f"channel_mix needs non-negative weights for channels in {CHANNELS}")
        if set(dict(self.cac)) - set(PAID_CHANNELS) or any(v < 0 for v in dict(self.cac).values()):
            problems.append(f"cac needs non-negative values for channels in {PAID_CHANNELS}")
        if problems:
            raise ValueError("invalid WorldConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        """Return the configuration as JSON-ready values (dates as ISO strings)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime.date):
                value = value.isoformat()
            elif f.name in ("channel_mix", "cac"):
                value = {k: v for k, v in value}
            elif f.name == "bgnbd_params":
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class WorldSummary:
    """Counts of everything written by :func:`generate_world`, plus the output directory."""

    out: Path
    people: int  # truth rows (= config.customers)
    customers: int  # people with at least one order in the files
    prospects: int  # people who never buy
    contacts: int  # CRM contacts (rows in contacts.csv before defects)
    orders: int
    order_items: int
    web_events: int  # JSON lines written, duplicates included
    web_files: int
    web_sessions: int
    late_events: int  # lines in an arrival file later than their dt= day
    duplicate_events: int  # extra copies of an event_id
    anonymous_visitors: int  # devices that never belong to a person in truth
    spend_rows: int
    dirty_rows: Mapping[str, int] = field(default_factory=dict)  # defects by kind

    @property
    def dirty_total(self) -> int:
        """Return the total number of injected defects."""
        return sum(self.dirty_rows.values())

    def __str__(self) -> str:
        """Return a one-line summary."""
        return (
            f"{self.people} people ({self.customers} with orders, {self.prospects} prospects), "
            f"{self.contacts} contacts, {self.orders} orders, {self.order_items} items, "
            f"{self.web_events} web events in {self.web_files} files, "
            f"{self.spend_rows} spend rows, {self.dirty_total} defects -> {self.out}"
        )

    def describe(self) -> str:
        """Return a multi-line, human-readable summary of what was written."""
        rows = [(k, v) for k, v in self.counts().items() if k != "dirty_rows"]
        rows += [(f"dirty: {k}", v) for k, v in self.dirty_rows.items() if v]
        width = max(len(k) for k, _ in rows)
        lines = [f"sample world written to {self.out}"]
        lines += [f"  {k.ljust(width)}  {v:>12,}" for k, v in rows]
        return "\n".join(lines)

    def counts(self) -> dict[str, object]:
        """Return the counts as a JSON-ready dict (no output path)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "out"}
        out["dirty_rows"] = dict(sorted(self.dirty_rows.items()))
        return out


_LAYOUT = ("world.json", "crm", "orders", "web", "marketing", "truth")


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear a previous sample world there, refuse any other non-empty folder."""
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if "world.json" not in entries or set(entries) - set(_LAYOUT):
        raise FileExistsError(
            f"{out} is not empty and is not a sample world (found {entries[:5]}); "
            "pick an empty or new directory"
        )
    for name in _LAYOUT:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def generate_world(
    config: WorldConfig,
    out: Path,
    progress: Callable[[int, int], None] | None = None,
    campaign: Campaign | None = None,
) -> WorldSummary:
    """Write a sample world under `out` and return what was written.

    `campaign` (lifecycle/sample/campaign.py) adds a known treatment effect on the members
    of an earlier export; without it the world is exactly what the config and seed give.
    """
    from lifecycle.sample.writer import WorldWriter

    out = Path(out)
    _prepare_out(out)
    meta: dict[str, object] = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "complete": False,
    }
    if campaign is not None:
        meta["campaign"] = campaign.to_dict()
    (out / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", "utf-8")
    writer = WorldWriter(config, out, campaign)
    try:
        for lo, hi in writer.chunks():
            writer.write_chunk(lo, hi)
            if progress is not None:
                progress(hi, config.customers)
        writer.finish()
    finally:
        writer.close()
    summary = writer.summary()
    meta.update(complete=True, counts=summary.counts())
    (out / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", "utf-8")
    return summary
