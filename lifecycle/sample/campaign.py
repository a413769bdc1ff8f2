"""Campaign effects in the sample world: a known treatment effect on exported treatment members.

How the generator knows who was exported — two passes, on purpose:

1. generate the world as usual, run the pipeline up to an export day E and export the
   audience (``lifecycle export --date E``);
2. generate the same world again (same config and seed) with ``--campaign-export
   <exports>/<E>/<audience>`` (:class:`Campaign`): the generator reads that folder's
   ``customer_ids.csv`` and gives every *treatment* member, with probability
   ``conversion_boost``, one extra completed order at a uniform time in the window
   (E, E + window_days] (business days in UTC, the sample world's zone).

Re-simulating the audience rule inside the generator was the alternative; it was rejected
because the rule reads the warehouse's view of the data (identity resolution, stages,
scores, consent, the control-group hash of the warehouse's customer key), which the
generator would have to re-implement and keep in step. The export folder is what the
campaign tool really receives, so the effect lands on exactly the people who were sent,
and control members (also in the file) are never touched.

The extra orders come from their own random stream (``spawn_key=(2, block)``), are added
after everything else of a block is drawn and are never tracked on the web, so every file
row of the first pass is unchanged: the second world is the first plus the campaign orders
(order ids ``person * 1000 + 999``, a sequence number no organic order reaches in a window
this short). The people table (truth/customers.csv, the CRM) describes the organic process
only. The true effect is written to ``truth/campaign.csv`` (one row per treatment member:
the campaign order if any, and whether they converted anyway) and ``truth/campaign.json``
(the parameters and the realised effect on the treatment group: extra conversions and
revenue per treatment member).

Without the option nothing here runs: generated worlds are byte-identical to before.
"""

from __future__ import annotations

import csv
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lifecycle.sample.orders import COMPLETED, orders_at
from lifecycle.sample.text import SECONDS_PER_DAY

if TYPE_CHECKING:
    from lifecycle.sample.context import Context, Table

CAMPAIGN_STREAM = 2  # SeedSequence spawn_key root of the campaign streams
CAMPAIGN_SEQ = 999  # the sequence number of a campaign order in its order id
IDS_FILE = "customer_ids.csv"
TRUTH_CSV = "truth/campaign.csv"
TRUTH_JSON = "truth/campaign.json"
TRUTH_COLUMNS = (
    "person_id",
    "customer_id",
    "audience",
    "export_date",
    "campaign_order_id",
    "campaign_ordered_at",
    "campaign_amount",
    "currency",
    "converted_anyway",
)


class CampaignError(ValueError):
    """The campaign export folder or the effect's parameters are not usable."""


@dataclass(frozen=True)
class Campaign:
    """A campaign effect: who was sent (an export folder) and how much it moves them."""

    export_folder: Path
    audience: str
    export_date: datetime.date
    treated_accounts: np.ndarray  # account numbers (C + digits) of the treatment members
    control_members: int
    conversion_boost: float = 0.2  # chance a treatment member places one extra order
    window_days: int = 30

    def to_dict(self) -> dict[str, object]:
        """Return the parameters as JSON-ready values."""
        return {
            "export_folder": str(self.export_folder),
            "audience": self.audience,
            "export_date": self.export_date.isoformat(),
            "treatment_members": int(self.treated_accounts.size),
            "control_members": self.control_members,
            "conversion_boost": self.conversion_boost,
            "window_days": self.window_days,
        }


def load_campaign(folder: Path, conversion_boost: float, window_days: int) -> Campaign:
    """Return the campaign of an export folder (``<exports>/<date>/<audience>``)."""
    folder = Path(folder)
    if not 0 < conversion_boost <= 1:
        raise CampaignError(f"campaign boost must be in (0, 1], got {conversion_boost}")
    if not 1 <= window_days <= 365:
        raise CampaignError(f"campaign window must be 1-365 days, got {window_days}")
    path = folder / IDS_FILE
    if not path.is_file():
        raise CampaignError(f"{path} does not exist: pass an audience's export folder")
    accounts: list[int] = []
    control = 0
    audience = export_date = None
    with path.open(encoding="utf-8", newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                group, audience = row["group"], row["audience"]
                export_date = datetime.date.fromisoformat(row["as_of_date"])
                customer_id = row["customer_id"]
            except (KeyError, ValueError) as exc:
                raise CampaignError(f"{path} line {line}: not an export id row ({exc})") from None
            if group == "control":
                control += 1
            elif group == "treatment" and customer_id.startswith("C") and customer_id[1:].isdigit():
                accounts.append(int(customer_id[1:]))
    if audience is None or export_date is None:
        raise CampaignError(f"{path} has no members")
    return Campaign(
        folder,
        audience,
        export_date,
        np.unique(np.array(accounts, dtype=np.int64)),
        control,
        conversion_boost,
        window_days,
    )


def add_campaign_orders(
    ctx: Context, block: int, people: Table, orders: Table, items: Table
) -> tuple[Table, Table]:
    """Return the block's orders and items with the campaign orders merged in (sorted by
    person then time, as make_orders returns them)."""
    campaign = ctx.campaign
    assert campaign is not None
    ss = np.random.SeedSequence(ctx.config.seed, spawn_key=(CAMPAIGN_STREAM, block))
    rng = np.random.default_rng(ss)
    treated = np.flatnonzero(np.isin(people["account"], campaign.treated_accounts))
    hit = treated[rng.random(treated.size) < campaign.conversion_boost]
    day0 = (campaign.export_date - datetime.date(1970, 1, 1)).days + 1
    t = day0 * SECONDS_PER_DAY + rng.random(hit.size) * campaign.window_days * SECONDS_PER_DAY
    t = t.astype(np.int64)
    keep = t < ctx.cal.end_ts  # the world ends before the window does: no order after it
    hit, t = hit[keep], t[keep]
    if hit.size == 0:
        return orders, items
    extra, extra_items = orders_at(ctx, rng, people, hit, t, np.full(hit.size, CAMPAIGN_SEQ))
    extra["status"][:] = COMPLETED  # the campaign order is kept: the effect is exact
    extra["updated"] = np.minimum(t + 60, ctx.cal.end_ts - 1)
    extra_items["updated"] = extra["updated"][extra_items["order_row"]]
    n = orders["t"].size
    extra_items["order_row"] = extra_items["order_row"] + n
    merged = {k: np.concatenate([orders[k], extra[k]]) for k in orders}
    merged_items = {k: np.concatenate([items[k], extra_items[k]]) for k in items}
    order = np.lexsort((merged["t"], merged["local"]))
    merged = {k: v[order] for k, v in merged.items()}
    new_row = np.empty_like(order)
    new_row[order] = np.arange(order.size)
    merged_items["order_row"] = new_row[merged_items["order_row"]]
    item_order = np.lexsort((merged_items["item_no"], merged_items["order_row"]))
    merged_items = {k: v[item_order] for k, v in merged_items.items()}
    return merged, merged_items


def write_campaign_truth(ctx: Context, out: Path, orders: Table, people: Table) -> list[list]:
    """Return the truth/campaign.csv rows of a chunk's treatment members."""
    campaign = ctx.campaign
    assert campaign is not None
    rows: list[list] = []
    treated = np.flatnonzero(np.isin(people["account"], campaign.treated_accounts))
    if treated.size == 0:
        return rows
    lo = (campaign.export_date - datetime.date(1970, 1, 1)).days + 1
    w_lo, w_hi = lo * SECONDS_PER_DAY, (lo + campaign.window_days) * SECONDS_PER_DAY
    idx = people["idx"]
    for i in treated:
        person = idx[i]
        mine = orders["person"] == person
        is_campaign = mine & (orders["seq"] == CAMPAIGN_SEQ)
        organic = (
            mine
            & ~is_campaign
            & (orders["status"] == COMPLETED)
            & (orders["t"] >= w_lo)
            & (orders["t"] < w_hi)
        )
        account = f"C{int(people['account'][i]):0{ctx.account_digits}d}"
        c = np.flatnonzero(is_campaign)
        if c.size:
            j = c[0]
            when = datetime.datetime.fromtimestamp(int(orders["t"][j]), datetime.UTC)
            rows.append(
                [
                    int(person) + 1,
                    account,
                    campaign.audience,
                    campaign.export_date.isoformat(),
                    f"O{int(orders['order_num'][j]):012d}",
                    when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    f"{int(orders['amount'][j]) / 100:.2f}",
                    "EUR" if orders["eur"][j] else "USD",
                    bool(organic.any()),
                ]
            )
        else:
            rows.append(
                [
                    int(person) + 1,
                    account,
                    campaign.audience,
                    campaign.export_date.isoformat(),
                    "",
                    "",
                    "",
                    "",
                    bool(organic.any()),
                ]
            )
    return rows


def finish_campaign_truth(ctx: Context, out: Path, rows: list[list]) -> dict[str, object]:
    """Write truth/campaign.csv and truth/campaign.json; return the JSON document."""
    campaign = ctx.campaign
    assert campaign is not None
    rows = sorted(rows, key=lambda r: r[0])
    with (out / TRUTH_CSV).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(
            ["true" if v is True else "false" if v is False else v for v in r] for r in rows
        )
    n = len(rows)
    orders = [r for r in rows if r[4]]
    extra_conversions = sum(1 for r in orders if not r[8])
    amounts: dict[str, float] = {}
    for r in orders:
        amounts[r[7]] = round(amounts.get(r[7], 0.0) + float(r[6]), 2)
    doc = {
        **campaign.to_dict(),
        "treatment_members_in_world": n,
        "campaign_orders": len(orders),
        "extra_conversions": extra_conversions,
        "true_conversion_lift": extra_conversions / n if n else None,
        "campaign_revenue_by_currency": amounts,
        "note": (
            "true_conversion_lift: treatment members converted only by the campaign order, "
            "per treatment member (the effect a treatment-vs-control comparison estimates); "
            "campaign revenue per treatment member is the true revenue-per-member lift"
        ),
    }
    (out / TRUTH_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
    return doc
