"""World-wide tables shared by every block (calendar, catalog, names, id keys) and RNG plumbing.

Randomness comes in three kinds, all derived from ``config.seed`` with numpy ``SeedSequence``:

* world streams (``spawn_key=(0, k)``): the calendar noise, the catalog, the spend noise;
* block streams (``spawn_key=(1, b)``): everything about the people ``[b*RNG_BLOCK,
  (b+1)*RNG_BLOCK)``, split into people / orders / web / dirty sub-streams, so defect injection
  never changes clean data;
* counter hashes (:func:`lifecycle.sample.text.hash_uniform`) for the few per-person facts that
  another block must be able to look up (is the person a prospect, do they have a CRM contact:
  needed to pick a referrer).

``RNG_BLOCK`` is a fixed constant, not a knob: output therefore depends on the config but not on
``chunk_size`` (a chunk is just a run of blocks, possibly cut mid-block).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lifecycle.sample.calendar import Calendar, build_calendar
from lifecycle.sample.names import NameTables, country_arrays, name_tables
from lifecycle.sample.orders import Catalog, build_catalog
from lifecycle.sample.text import SECONDS_PER_DAY, hash_uniform, splitmix64

if TYPE_CHECKING:
    from lifecycle.sample.campaign import Campaign
    from lifecycle.sample.world import WorldConfig

RNG_BLOCK = 500  # people per RNG block
WORLD_STREAM, BLOCK_STREAM = 0, 1
SALT_PROSPECT, SALT_GUEST, SALT_CRM_ID = 1, 2, 3

Table = dict[str, np.ndarray]


@dataclass(frozen=True)
class Context:
    """Everything a block needs besides its own random stream."""

    config: WorldConfig
    cal: Calendar
    catalog: Catalog
    names: NameTables
    country_codes: tuple[str, ...]
    country_cum: np.ndarray
    locale_cum: np.ndarray
    calling_codes: tuple[str, ...]
    national_digits: np.ndarray
    eurozone: np.ndarray
    spend_noise: np.ndarray  # (n_days, paid channels) execution noise of spend
    email_digits: int
    account_digits: int
    key_email: int
    key_account: int
    key_order: int
    campaign: Campaign | None = None  # a known treatment effect (lifecycle/sample/campaign.py)

    def block_rngs(self, block: int) -> tuple[np.random.Generator, ...]:
        """Return the (people, orders, web, dirty) generators of block ``block``."""
        ss = np.random.SeedSequence(self.config.seed, spawn_key=(BLOCK_STREAM, block))
        return tuple(np.random.default_rng(child) for child in ss.spawn(4))

    def is_prospect(self, idx: np.ndarray) -> np.ndarray:
        """Return whether each person never buys (a counter hash: any block can ask)."""
        return hash_uniform(self.config.seed, SALT_PROSPECT, idx) < self.config.prospect_share

    def has_contact(self, idx: np.ndarray) -> np.ndarray:
        """Return whether each person has a CRM contact (prospects always; buyers unless guest)."""
        guest = hash_uniform(self.config.seed, SALT_GUEST, idx) < self.config.guest_share
        return self.is_prospect(idx) | ~guest

    def crm_id(self, idx: np.ndarray) -> np.ndarray:
        """Return the CRM contact id number: increasing with the person index, jittered."""
        jitter = np.floor(hash_uniform(self.config.seed, SALT_CRM_ID, idx) * 50).astype(np.int64)
        return 1001 + 50 * idx.astype(np.int64) + jitter


def _world_rng(seed: int, k: int) -> np.random.Generator:
    """Return world stream ``k``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WORLD_STREAM, k)))


def _key(seed: int, k: int) -> int:
    """Return a 32-bit key for an id scrambler."""
    return int(splitmix64(np.array([seed * 7919 + k], dtype=np.uint64))[0] >> np.uint64(32))


def build_context(config: WorldConfig, campaign: Campaign | None = None) -> Context:
    """Return the shared world tables for ``config``."""
    start_day = (config.start - datetime.date(1970, 1, 1)).days
    n_days = (config.end - config.start).days + 1
    cal = build_calendar(
        start_day,
        n_days,
        config.customers,
        dict(config.channel_mix),
        config.annual_growth,
        config.q4_peak,
        _world_rng(config.seed, 0),
    )
    catalog = build_catalog(_world_rng(config.seed, 1), config.catalog_size)
    spend_noise = _world_rng(config.seed, 2).lognormal(0.0, 0.08, (n_days, 3))
    codes, weights, locale_cum, calling, digits, euro = country_arrays()
    max_index = max(config.customers - 1, 1)
    assert cal.end_ts - cal.start_ts == n_days * SECONDS_PER_DAY
    return Context(
        config=config,
        cal=cal,
        catalog=catalog,
        names=name_tables(),
        country_codes=codes,
        country_cum=np.cumsum(weights),
        locale_cum=locale_cum,
        calling_codes=calling,
        national_digits=digits,
        eurozone=euro,
        spend_noise=spend_noise,
        email_digits=max(3, len(str(max_index))),
        account_digits=max(8, len(str(max_index))),
        key_email=_key(config.seed, 1),
        key_account=_key(config.seed, 2),
        key_order=_key(config.seed, 3),
        campaign=campaign,
    )


def take_rows(table: Table, rows: np.ndarray) -> Table:
    """Return the rows ``rows`` (indices or boolean mask) of every column."""
    return {k: v[rows] for k, v in table.items()}


def concat_tables(tables: list[Table]) -> Table:
    """Return the row-wise concatenation of tables with the same columns."""
    if len(tables) == 1:
        return tables[0]
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
