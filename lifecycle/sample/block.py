"""One RNG block of the world: its people, orders, items and web events, with defect marks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifecycle.sample import dirty
from lifecycle.sample.campaign import add_campaign_orders
from lifecycle.sample.context import RNG_BLOCK, Context, Table, concat_tables, take_rows
from lifecycle.sample.orders import make_orders
from lifecycle.sample.people import make_people
from lifecycle.sample.web import make_events


@dataclass(frozen=True)
class Block:
    """Tables of a run of people; ``person``/``idx`` columns hold global person indices."""

    people: Table
    orders: Table
    items: Table
    events: Table

    def slice(self, lo: int, hi: int) -> Block:
        """Return the part of the block for people ``[lo, hi)``."""
        idx = self.people["idx"]
        if idx.size and lo <= idx[0] and idx[-1] < hi:
            return self

        def within(v: np.ndarray) -> np.ndarray:
            return (v >= lo) & (v < hi)

        return Block(
            people=take_rows(self.people, within(idx)),
            orders=take_rows(self.orders, within(self.orders["person"])),
            items=take_rows(self.items, within(self.items["person"])),
            events=take_rows(self.events, within(self.events["person"])),
        )


def concat_blocks(blocks: list[Block]) -> Block:
    """Return the blocks joined in order."""
    return Block(
        people=concat_tables([b.people for b in blocks]),
        orders=concat_tables([b.orders for b in blocks]),
        items=concat_tables([b.items for b in blocks]),
        events=concat_tables([b.events for b in blocks]),
    )


def make_block(ctx: Context, block: int) -> Block:
    """Return block ``block``: people ``[block*RNG_BLOCK, ...)`` and everything they did."""
    cfg = ctx.config
    lo = block * RNG_BLOCK
    hi = min(cfg.customers, lo + RNG_BLOCK)
    r_people, r_orders, r_web, r_dirty = ctx.block_rngs(block)
    people = make_people(ctx, r_people, np.arange(lo, hi, dtype=np.int64))
    orders, items = make_orders(ctx, r_orders, people)
    events = make_events(ctx, r_web, people, orders, items)

    n = hi - lo
    n_orders = np.bincount(orders["local"], minlength=n)
    last = np.full(n, -1, np.int64)
    np.maximum.at(last, orders["local"], orders["t"])
    people["n_orders"] = n_orders
    people["first_order"] = np.where(n_orders > 0, people["first_t"], -1)
    people["last_order"] = last
    if ctx.campaign is not None:  # after the people's facts: they describe organic orders
        orders, items = add_campaign_orders(ctx, block, people, orders, items)
    del orders["local"]
    del items["order_row"]

    rate = cfg.dirty_rate
    rng = r_dirty if rate > 0 else None
    for table, kinds in (
        (people, dirty.CONTACT_KINDS),
        (orders, dirty.ORDER_KINDS),
        (items, dirty.ITEM_KINDS),
        (events, dirty.EVENT_KINDS),
    ):
        size = next(iter(table.values())).shape[0]
        table["defect"], table["darg"] = dirty.decide(rng, size, rate, kinds)
    # only CRM contacts are rows of contacts.csv
    people["defect"] = np.where(people["has_contact"], people["defect"], dirty.NONE).astype(np.int8)
    return Block(people=people, orders=orders, items=items, events=events)
