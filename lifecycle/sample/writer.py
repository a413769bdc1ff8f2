"""Chunked writer of the sample world: renders blocks to the output layout, file by file.

Files are appended chunk by chunk in person order, so the bytes depend on the config only (not
on ``chunk_size``), except for how web events are split into ``part-CCCC`` files.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lifecycle.raw import CRM_CONTACTS, MARKETING_SPEND, ORDER_ITEMS, ORDERS
from lifecycle.sample import dirty
from lifecycle.sample import text as tx
from lifecycle.sample.block import Block, concat_blocks, make_block
from lifecycle.sample.calendar import CHANNELS, PAID_CHANNELS
from lifecycle.sample.campaign import Campaign, finish_campaign_truth, write_campaign_truth
from lifecycle.sample.context import RNG_BLOCK, Context, Table, build_context, take_rows
from lifecycle.sample.names import EMAIL_DOMAINS, ascii_fold
from lifecycle.sample.orders import STATUSES
from lifecycle.sample.web import (
    ADDED_TO_CART,
    EVENTS,
    P_PRODUCT,
    PAGES,
    PRODUCT_VIEWED,
    SHOP_URL,
    UTM,
)
from lifecycle.sample.world import WorldConfig, WorldSummary

# The source files carry exactly the fields of the raw contracts (one name for one thing).
CONTACT_COLUMNS = CRM_CONTACTS.names
ORDER_COLUMNS = ORDERS.names
ITEM_COLUMNS = ORDER_ITEMS.names
SPEND_COLUMNS = MARKETING_SPEND.names
TRUTH_COLUMNS = (
    "person_id",
    "customer_id",
    "crm_contact_id",
    "email",
    "acquisition_channel",
    "acquired_at",
    "first_order_at",
    "purchase_rate_per_year",
    "dropout_at",
    "mean_order_value",
    "browses",
    "browses_after_dropout",
    "is_prospect",
    "web_user_id",
)
DIRTY_COLUMNS = ("file", "locator", "kind", "detail")
CONTACTS_FILE = "crm/contacts.csv"
ORDERS_FILE = "orders/orders.csv"
ITEMS_FILE = "orders/order_items.csv"
SPEND_FILE = "marketing/spend.csv"
TRUTH_FILE = "truth/customers.csv"
DIRTY_FILE = "truth/dirty.csv"
_SPOOLS = (CONTACTS_FILE, ORDERS_FILE, ITEMS_FILE, "web/events")
EVENT_BATCH = 100_000  # events rendered at once (bounds the size of rendered text)
EVANGELIST_ORDERS = 6  # CRM marks customers with this many orders as "evangelist"

_BOOL = tx.string_table(["false", "true"])


def _sparse(n: int, values: dict[int, str]) -> pa.Array:
    """Return an array of ``n`` strings: CSV-quoted ``values`` at their rows, empty elsewhere."""
    out = np.full(n, "", dtype=object)
    for r, v in values.items():
        out[r] = f'"{v}"'
    return pa.array(out, type=pa.string())


def _quoted_table(values: list[str | None]) -> pa.Array:
    """Return JSON literals for a lookup table (None -> null)."""
    return tx.string_table(["null" if v is None else f'"{v}"' for v in values])


class WorldWriter:
    """Writes one world, chunk by chunk; see :func:`lifecycle.sample.world.generate_world`."""

    def __init__(self, config: WorldConfig, out: Path, campaign: Campaign | None = None) -> None:
        """Open every output file, write headers and the spend file."""
        self.config = config
        self.out = out
        self.ctx: Context = build_context(config, campaign)
        self._campaign_rows: list[list] = []
        for sub in ("crm", "orders", "web/events", "marketing", "truth"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        self._files = {
            name: open(out / name, "wb")  # noqa: SIM115 - closed in close()
            for name in (CONTACTS_FILE, ORDERS_FILE, ITEMS_FILE, TRUTH_FILE)
        }
        self._lines: dict[str, int] = {}
        for name, header in (
            (CONTACTS_FILE, CONTACT_COLUMNS),
            (ORDERS_FILE, ORDER_COLUMNS),
            (ITEMS_FILE, ITEM_COLUMNS),
            (TRUTH_FILE, TRUTH_COLUMNS),
        ):
            self._files[name].write((",".join(header) + "\n").encode("ascii"))
            self._lines[name] = 1
        # defects are spooled per source and merged in finish(): CSV defects first, in line order
        self._spool_paths = [out / "truth" / f".dirty-{k}.part" for k in range(len(_SPOOLS))]
        self._spool_handles = [
            open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
            for path in self._spool_paths
        ]
        self._spools = [csv.writer(h, lineterminator="\n") for h in self._spool_handles]
        self.counts: Counter[str] = Counter()
        self.defects: Counter[str] = Counter({k: 0 for k in dirty.KINDS})
        self._cache: tuple[int, Block] | None = None
        self._made_dirs: set[str] = set()
        cal = self.ctx.cal
        self._day_names = tx.dates(cal.start_day + np.arange(cal.n_days + 8)).to_pylist()
        self._chunk = 0
        self._tables()
        self._write_spend()

    # ------------------------------------------------------------------ lookup tables

    def _tables(self) -> None:
        """Build the small string lookup tables used by the renderers."""
        names = self.ctx.names
        self.first_native = tx.string_table(list(names.first_native))
        self.last_native = tx.string_table(list(names.last_native))
        self.first_roman = tx.string_table(list(names.first_ascii))
        self.last_roman = tx.string_table(list(names.last_ascii))
        first_tok = [ascii_fold(s) or "x" for s in names.first_ascii]
        self.first_token = tx.string_table(first_tok)
        self.first_initial = tx.string_table([s[0] for s in first_tok])
        self.last_token = tx.string_table([ascii_fold(s) or "x" for s in names.last_ascii])
        self.email_sep = tx.string_table([".", "", "", "_", ".", ""])
        self.domains = tx.string_table(list(EMAIL_DOMAINS))
        self.countries = tx.string_table(list(self.ctx.country_codes))
        self.calling = tx.string_table([f"+{c} " for c in self.ctx.calling_codes])
        self.channels = tx.string_table(list(CHANNELS))
        self.statuses = tx.string_table(list(STATUSES))
        self.currencies = tx.string_table(["USD", "EUR"])
        cat = self.ctx.catalog
        self.product_ids = tx.prefixed("P", cat.product_num, 5)
        self.event_json = _quoted_table(list(EVENTS))
        self.page_paths = tx.string_table([SHOP_URL + p for p in PAGES])
        self.utm_query = tx.string_table(
            [f"?utm_source={s}&utm_medium={m}&utm_campaign={c}" for s, m, c in UTM]
        )
        self.utm_json = [_quoted_table([None] + [u[i] for u in UTM]) for i in range(3)]

    # ------------------------------------------------------------------ chunks

    def chunks(self) -> list[tuple[int, int]]:
        """Return the person ranges of the chunks, in order."""
        n, size = self.config.customers, self.config.chunk_size
        return [(lo, min(n, lo + size)) for lo in range(0, n, size)]

    def _block(self, b: int) -> Block:
        """Return block ``b``, reusing the last one when a chunk boundary cuts it."""
        if self._cache is not None and self._cache[0] == b:
            return self._cache[1]
        block = make_block(self.ctx, b)
        self._cache = (b, block)
        return block

    def write_chunk(self, lo: int, hi: int) -> None:
        """Generate and write the people ``[lo, hi)`` and everything they did."""
        blocks = range(lo // RNG_BLOCK, (hi - 1) // RNG_BLOCK + 1)
        chunk = concat_blocks([self._block(b).slice(lo, hi) for b in blocks])
        p, events = chunk.people, chunk.events
        email = self._emails(p)
        self._write_contacts(p, email)
        self._write_orders(chunk.orders, p, email, lo)
        self._write_items(chunk.items)
        self._write_truth(p, email)
        if self.ctx.campaign is not None:
            self._campaign_rows += write_campaign_truth(self.ctx, self.out, chunk.orders, p)
        del chunk, email
        # sort by file, then arrival; rebinding drops the unsorted copy (memory)
        if events["t"].size:
            order = np.lexsort(
                (events["ev_lo"], events["ev_hi"], events["received"], events["arrival"],
                 events["dt"])
            )  # fmt: skip
            events = take_rows(events, order)
            del order
        self._write_events(events, p, lo)
        self.counts["people"] += p["idx"].size
        self.counts["customers"] += int((p["n_orders"] > 0).sum())
        self.counts["prospects"] += int(p["is_prospect"].sum())
        self._chunk += 1

    def finish(self) -> None:
        """Close every output file and write truth/dirty.csv from the spooled defects."""
        self._close_files()
        if self.ctx.campaign is not None:
            finish_campaign_truth(self.ctx, self.out, self._campaign_rows)
        with open(self.out / DIRTY_FILE, "wb") as out:
            out.write((",".join(DIRTY_COLUMNS) + "\n").encode("ascii"))
            for path in self._spool_paths:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out)
        self.close()

    def close(self) -> None:
        """Close every output file and delete the defect spools (idempotent)."""
        self._close_files()
        for path in self._spool_paths:
            path.unlink(missing_ok=True)

    def _close_files(self) -> None:
        """Close every open output file."""
        for f in [*self._files.values(), *self._spool_handles]:
            f.close()

    def summary(self) -> WorldSummary:
        """Return the counts of what was written."""
        c = self.counts
        return WorldSummary(
            out=self.out,
            people=c["people"],
            customers=c["customers"],
            prospects=c["prospects"],
            contacts=c["contacts"],
            orders=c["orders"],
            order_items=c["order_items"],
            web_events=c["web_events"],
            web_files=c["web_files"],
            web_sessions=c["web_sessions"],
            late_events=c["late_events"],
            duplicate_events=c["duplicate_events"],
            anonymous_visitors=c["anonymous_visitors"],
            spend_rows=c["spend_rows"],
            dirty_rows=dict(sorted(self.defects.items())),
        )

    # ------------------------------------------------------------------ shared helpers

    def _emails(self, p: Table) -> pa.Array:
        """Return the canonical (lower-case) email of each person."""
        fmt = p["email_fmt"]
        first = tx.take(self.first_token, p["first"])
        last = tx.take(self.last_token, p["last"])
        initial = tx.take(self.first_initial, p["first"])
        head = tx.where(fmt == 4, last, tx.where(fmt == 2, initial, first))
        tail = tx.where(fmt == 4, first, tx.where(fmt == 5, "", last))
        return tx.concat(
            head,
            tx.take(self.email_sep, fmt),
            tail,
            tx.integers(p["email_num"]),
            "@",
            tx.take(self.domains, p["email_domain"]),
        )

    def _account_ids(self, account: np.ndarray) -> pa.Array:
        """Return shop customer ids (``C`` + digits) for account numbers."""
        return tx.prefixed("C", account, self.ctx.account_digits)

    def _emit(
        self,
        name: str,
        lines: pa.Array,
        defect: np.ndarray,
        arg: np.ndarray,
        key_name: str,
        keys: pa.Array,
        header: tuple[str, ...],
        field_details: dict[int, str],
    ) -> None:
        """Append rendered CSV lines to file ``name`` with row-level defects and records."""
        rows = np.flatnonzero(defect >= 0)
        key_map = {int(r): keys[int(r)].as_py() for r in rows}
        pieces, found, written = dirty.splice(
            lines,
            defect,
            arg,
            file=name,
            first_line=self._lines[name] + 1,
            key_name=key_name,
            keys=key_map,
            header=header,
            field_details=field_details,
        )
        handle = self._files[name]
        for piece in pieces:
            handle.write(piece)
        self._lines[name] += written
        self._record(found)

    def _record(self, found: list[dirty.Defect]) -> None:
        """Write defects to dirty.csv and count them."""
        for d in found:
            spool = _SPOOLS.index(d.file) if d.file in _SPOOLS else len(_SPOOLS) - 1
            self._spools[spool].writerow((d.file, d.locator, d.kind, d.detail))
            self.defects[d.kind] += 1

    def _future(self, arg: np.ndarray) -> np.ndarray:
        """Return epoch seconds 30-400 days after the world's end (deterministic from arg)."""
        return self.ctx.cal.end_ts + (30 * 86_400 + arg * 370 * 86_400).astype(np.int64)

    # ------------------------------------------------------------------ spend

    def _write_spend(self) -> None:
        """Write marketing/spend.csv: one row per day and paid channel."""
        cal, cfg = self.ctx.cal, self.config
        cac = dict(cfg.cac)
        cols = [CHANNELS.index(c) for c in PAID_CHANNELS]
        spend = cal.expected[:, cols] * np.array([cac.get(c, 0.0) for c in PAID_CHANNELS])
        cents = np.round(spend * self.ctx.spend_noise * 100).astype(np.int64)
        days = np.repeat(cal.start_day + np.arange(cal.n_days), len(PAID_CHANNELS))
        channel = np.tile(np.arange(len(PAID_CHANNELS)), cal.n_days)
        lines = tx.csv_lines(
            [
                tx.dates(days),
                tx.take(tx.string_table(list(PAID_CHANNELS)), channel),
                tx.fixed_point(cents.ravel(), 2),
                pa.array(np.full(days.size, "USD")),
            ]
        )
        with open(self.out / SPEND_FILE, "wb") as f:
            f.write((",".join(SPEND_COLUMNS) + "\n").encode("ascii"))
            f.write(tx.body(lines))
        self.counts["spend_rows"] = days.size

    # ------------------------------------------------------------------ CRM contacts

    def _write_contacts(self, p: Table, email: pa.Array) -> None:
        """Append the chunk's CRM contacts (final state at `end`) to contacts.csv."""
        end_ts = self.ctx.cal.end_ts
        rows = np.flatnonzero(p["has_contact"])
        c = take_rows(p, rows)
        n = rows.size
        if n == 0:
            return
        mail = tx.take(email, rows)
        mail = tx.where(c["crm_case"] == 1, pc.utf8_title(mail), mail)
        mail = tx.where(c["crm_case"] == 2, pc.utf8_upper(mail), mail)
        mail = tx.where(c["crm_pad"], tx.concat(" ", mail, " "), mail)
        first = tx.where(
            c["romanized"],
            tx.take(self.first_roman, c["first"]),
            tx.take(self.first_native, c["first"]),
        )
        last = tx.where(
            c["romanized"],
            tx.take(self.last_roman, c["last"]),
            tx.take(self.last_native, c["last"]),
        )
        nat = tx.integers(c["phone"])
        phone = tx.concat(
            tx.take(self.calling, c["country"]),
            pc.utf8_slice_codeunits(nat, 0, 3),
            " ",
            pc.utf8_slice_codeunits(nat, 3, 6),
            " ",
            pc.utf8_slice_codeunits(nat, 6, 12),
        )
        phone = tx.where(c["has_phone"], phone, "")

        customer = (c["n_orders"] > 0) & (c["first_order"] + c["stage_lag"] < end_ts)
        stage_t = np.where(customer, c["first_order"] + c["stage_lag"], -1)
        updated = np.maximum.reduce([c["acq_t"], stage_t, c["optout_t"], c["edit_t"]])
        stage = np.where(
            customer,
            np.where(c["n_orders"] >= EVANGELIST_ORDERS, 0, 1),
            np.where(
                c["is_prospect"] & c["signup"],
                np.where(c["mql"], 2, 3),
                np.where(c["is_prospect"], 4, 3),
            ),
        )
        stages = tx.string_table(
            ["evangelist", "customer", "marketingqualifiedlead", "lead", "subscriber"]
        )
        opt_in = c["opt_in"] & (c["optout_t"] < 0)

        defect, arg = c["defect"], c["darg"]
        details: dict[int, str] = {}
        created_s = tx.timestamps(c["acq_t"])
        updated_s = tx.timestamps(updated)
        for r in np.flatnonzero(defect == dirty.BAD_TYPE).tolist():
            details[r] = "created_at=not-a-date" if arg[r] < 0.5 else "updated_at=2024-13-45"
        future = defect == dirty.FUTURE_DATE
        if future.any():
            fut = self._future(arg)
            created_s = tx.where(future, tx.timestamps(fut), created_s)
            for r in np.flatnonzero(future).tolist():
                details[r] = f"created_at={tx.timestamps(fut[r : r + 1])[0].as_py()}"
        bad = defect == dirty.BAD_TYPE
        if bad.any():
            created_s = tx.where(bad & (arg < 0.5), "not-a-date", created_s)
            updated_s = tx.where(bad & (arg >= 0.5), "2024-13-45", updated_s)

        ids = tx.integers(c["crm_id"])
        referred = tx.where(c["referred_by"] >= 0, tx.integers(c["referred_by"]), "")
        channel = tx.where(c["crm_channel_missing"], "", tx.take(self.channels, c["channel"]))
        lines = tx.csv_lines(
            [
                ids,
                mail,
                first,
                last,
                phone,
                tx.take(self.countries, c["country"]),
                created_s,
                updated_s,
                channel,
                tx.take(_BOOL, opt_in.astype(np.int64)),
                tx.take(stages, stage),
                referred,
            ]
        )
        self._emit(CONTACTS_FILE, lines, defect, arg, "id", ids, CONTACT_COLUMNS, details)
        self.counts["contacts"] += n

    # ------------------------------------------------------------------ orders

    def _write_orders(self, o: Table, p: Table, email: pa.Array, lo: int) -> None:
        """Append the chunk's orders to orders.csv."""
        n = o["t"].size
        if n == 0:
            return
        local = o["person"] - lo
        account = p["account"][local]
        order_ids = tx.prefixed("O", o["order_num"], 12)
        ordered = tx.timestamps(o["t"])
        updated = tx.timestamps(o["updated"])
        amount = tx.fixed_point(o["amount"], 2)
        quantity = tx.integers(o["quantity"])
        defect, arg = o["defect"], o["darg"]
        details: dict[int, str] = {}
        bad = defect == dirty.BAD_TYPE
        if bad.any():
            third = np.floor(arg * 3).astype(np.int64)
            dollars, cents = np.divmod(o["amount"], 100)
            texts: dict[int, str] = {}
            for r in np.flatnonzero(bad).tolist():
                if third[r] == 0:
                    texts[r] = f"{dollars[r]},{cents[r] // 10}x"
                    details[r] = f"amount={texts[r]}"
                elif third[r] == 1:
                    details[r] = "ordered_at=not-a-date"
                else:
                    details[r] = "quantity=two"
            if texts:
                amount = tx.where(bad & (third == 0), _sparse(n, texts), amount)
            ordered = tx.where(bad & (third == 1), "not-a-date", ordered)
            quantity = tx.where(bad & (third == 2), "two", quantity)
        future = defect == dirty.FUTURE_DATE
        if future.any():
            fut = self._future(arg)
            ordered = tx.where(future, tx.timestamps(fut), ordered)
            for r in np.flatnonzero(future).tolist():
                details[r] = f"ordered_at={tx.timestamps(fut[r : r + 1])[0].as_py()}"
        negative = defect == dirty.NEGATIVE_AMOUNT
        if negative.any():
            neg = tx.fixed_point(-np.maximum(o["amount"], 1), 2)
            amount = tx.where(negative, neg, amount)
            for r in np.flatnonzero(negative).tolist():
                details[r] = f"amount={neg[r].as_py()}"
        lines = tx.csv_lines(
            [
                order_ids,
                self._account_ids(account),
                tx.take(email, local),
                ordered,
                updated,
                tx.take(self.statuses, o["status"]),
                tx.take(self.currencies, o["eur"].astype(int)),
                amount,
                quantity,
            ]
        )
        self._emit(ORDERS_FILE, lines, defect, arg, "order_id", order_ids, ORDER_COLUMNS, details)
        self.counts["orders"] += n

    def _write_items(self, it: Table) -> None:
        """Append the chunk's order items to order_items.csv."""
        n = it["qty"].size
        if n == 0:
            return
        order_ids = tx.prefixed("O", it["order_num"], 12)
        item_ids = tx.concat(order_ids, "-", tx.integers(it["item_no"]))
        quantity = tx.integers(it["qty"])
        unit = tx.fixed_point(it["unit"], 2)
        defect, arg = it["defect"], it["darg"]
        details: dict[int, str] = {}
        bad = defect == dirty.BAD_TYPE
        if bad.any():
            half = arg < 0.5
            dollars, cents = np.divmod(it["unit"], 100)
            texts: dict[int, str] = {}
            for r in np.flatnonzero(bad).tolist():
                if half[r]:
                    details[r] = "quantity=two"
                else:
                    texts[r] = f"{dollars[r]},{cents[r] // 10}x"
                    details[r] = f"unit_price={texts[r]}"
            quantity = tx.where(bad & half, "two", quantity)
            if texts:
                unit = tx.where(bad & ~half, _sparse(n, texts), unit)
        negative = defect == dirty.NEGATIVE_AMOUNT
        if negative.any():
            neg = tx.fixed_point(-np.maximum(it["unit"], 1), 2)
            unit = tx.where(negative, neg, unit)
            for r in np.flatnonzero(negative).tolist():
                details[r] = f"unit_price={neg[r].as_py()}"
        lines = tx.csv_lines(
            [
                item_ids,
                order_ids,
                tx.take(self.product_ids, it["product"]),
                quantity,
                unit,
                tx.timestamps(it["updated"]),
            ]
        )
        self._emit(ITEMS_FILE, lines, defect, arg, "order_item_id", item_ids, ITEM_COLUMNS, details)
        self.counts["order_items"] += n

    # ------------------------------------------------------------------ truth

    def _write_truth(self, p: Table, email: pa.Array) -> None:
        """Append the chunk's ground-truth rows (one per person) to truth/customers.csv."""
        bought = p["n_orders"] > 0
        buyer = ~p["is_prospect"]
        account = self._account_ids(p["account"])
        web_user = bought | p["signup"]
        lines = tx.csv_lines(
            [
                tx.integers(p["idx"] + 1),
                tx.where(bought, account, ""),
                tx.where(p["has_contact"], tx.integers(p["crm_id"]), ""),
                email,
                tx.take(self.channels, p["channel"]),
                tx.timestamps(p["acq_t"]),
                tx.where(bought, tx.timestamps(np.maximum(p["first_order"], 0)), ""),
                tx.fixed_point(np.round(p["lam"] * 10_000).astype(np.int64), 4),
                tx.where(buyer, tx.timestamps(np.maximum(p["dropout_t"], 0)), ""),
                tx.where(
                    buyer, tx.fixed_point(np.round(p["mean_value"] * 100).astype(np.int64), 2), ""
                ),
                tx.take(_BOOL, p["browses"].astype(np.int64)),
                tx.take(_BOOL, p["after"].astype(np.int64)),
                tx.take(_BOOL, p["is_prospect"].astype(np.int64)),
                tx.where(web_user, account, ""),
            ]
        )
        self._files[TRUTH_FILE].write(tx.body(lines))

    # ------------------------------------------------------------------ web events

    def _write_events(self, ev: Table, p: Table, lo: int) -> None:
        """Write the chunk's events (sorted by dt, arrival, received) into their files."""
        n = ev["t"].size
        if n == 0:
            return
        self.counts["web_events"] += n
        self.counts["late_events"] += int((ev["arrival"] > ev["dt"]).sum())
        self.counts["duplicate_events"] += int(ev["copy"].sum())
        self.counts["web_sessions"] += np.unique(ev["sess_hi"]).size
        self.counts["anonymous_visitors"] += np.unique(ev["dev_hi"][ev["anonymous"]]).size
        web_email = self._web_emails(p)
        change = np.flatnonzero((np.diff(ev["dt"]) != 0) | (np.diff(ev["arrival"]) != 0)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [n]])
        g = 0
        while g < starts.size:
            g_end = int(np.searchsorted(starts, starts[g] + EVENT_BATCH, side="left"))
            g_end = max(g_end, g + 1)
            b0, b1 = int(starts[g]), int(stops[g_end - 1])
            batch = {k: v[b0:b1] for k, v in ev.items()}
            lines = self._event_lines(batch, web_email, lo)
            for s0, s1 in zip(starts[g:g_end].tolist(), stops[g:g_end].tolist(), strict=True):
                self._write_event_file(batch, lines, s0 - b0, s1 - b0)
            g = g_end

    def _web_emails(self, p: Table) -> pa.Array:
        """Return the email each person types on the website (mostly lower-case)."""
        email = self._emails(p)
        email = tx.where(p["web_case"] == 1, pc.utf8_title(email), email)
        return tx.where(p["web_case"] == 2, pc.utf8_upper(email), email)

    def _event_lines(self, ev: Table, web_email: pa.Array, lo: int) -> pa.Array:
        """Return one JSON line per event (keys in the contract's order)."""
        ts = tx.timestamps(ev["t"])
        defect, arg = ev["defect"], ev["darg"]
        bad = defect == dirty.BAD_TYPE
        if bad.any():
            ts = tx.where(bad, "not-a-date", ts)
        future = defect == dirty.FUTURE_DATE
        if future.any():
            ts = tx.where(future, tx.timestamps(self._future(arg)), ts)
        user = tx.where(
            ev["user"] >= 0,
            tx.concat('"', self._account_ids(np.maximum(ev["user"], 0)), '"'),
            "null",
        )
        email = tx.where(
            ev["email"], tx.concat('"', tx.take(web_email, ev["person"] - lo), '"'), "null"
        )
        product = np.maximum(ev["product"], 0)
        pid = tx.take(self.product_ids, product)
        is_product_event = (ev["etype"] == PRODUCT_VIEWED) | (ev["etype"] == ADDED_TO_CART)
        url = tx.concat(
            tx.take(self.page_paths, ev["page"]),
            tx.where(ev["page"] == P_PRODUCT, pid, ""),
            tx.where(ev["utm"] >= 0, tx.take(self.utm_query, np.maximum(ev["utm"], 0)), ""),
        )
        utm = ev["utm"].astype(np.int64) + 1
        order = tx.where(
            ev["order_num"] >= 0,
            tx.concat('"', tx.prefixed("O", np.maximum(ev["order_num"], 0), 12), '"'),
            "null",
        )
        return tx.concat(
            '{"event_id":"',
            tx.uuids(ev["ev_hi"], ev["ev_lo"]),
            '","anonymous_id":"',
            tx.uuids(ev["dev_hi"], ev["dev_lo"]),
            '","user_id":',
            user,
            ',"email":',
            email,
            ',"event":',
            tx.take(self.event_json, ev["etype"]),
            ',"timestamp":"',
            ts,
            '","received_at":"',
            tx.timestamps(ev["received"]),
            '","session_id":"',
            tx.uuids(ev["sess_hi"], ev["sess_lo"]),
            '","page_url":"',
            url,
            '","utm_source":',
            tx.take(self.utm_json[0], utm),
            ',"utm_medium":',
            tx.take(self.utm_json[1], utm),
            ',"utm_campaign":',
            tx.take(self.utm_json[2], utm),
            ',"order_id":',
            order,
            ',"product_id":',
            tx.where(is_product_event, tx.concat('"', pid, '"'), "null"),
            "}\n",
        )

    def _write_event_file(self, ev: Table, lines: pa.Array, s0: int, s1: int) -> None:
        """Write events ``[s0, s1)`` of a batch (one dt / arrival group) as a gzip file."""
        day = int(ev["dt"][s0])
        arrival = int(ev["arrival"][s0])
        dt, stamp = self._day_names[day], self._day_names[arrival].replace("-", "")
        rel = f"web/events/dt={dt}/part-{self._chunk:04d}-arrived-{stamp}.jsonl.gz"
        group = lines.slice(s0, s1 - s0)
        defect = ev["defect"][s0:s1]
        arg = ev["darg"][s0:s1]
        rows = np.flatnonzero(defect >= 0)
        keys: dict[int, str] = {}
        details: dict[int, str] = {}
        if rows.size:
            ids = tx.uuids(ev["ev_hi"][s0:s1][rows], ev["ev_lo"][s0:s1][rows]).to_pylist()
            keys = dict(zip(rows.tolist(), ids, strict=True))
            ts = (
                tx.timestamps(self._future(arg)).to_pylist()
                if (defect == dirty.FUTURE_DATE).any()
                else []
            )
            for r in rows.tolist():
                if defect[r] == dirty.BAD_TYPE:
                    details[r] = "timestamp=not-a-date"
                elif defect[r] == dirty.FUTURE_DATE:
                    details[r] = f"timestamp={ts[r]}"
        pieces, found, _ = dirty.splice(
            group,
            defect,
            arg,
            file=rel,
            first_line=1,
            key_name="event_id",
            keys=keys,
            header=(),
            field_details=details,
        )
        folder = f"{self.out}/web/events/dt={dt}"
        if folder not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(folder)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        packed = gzip.compress(data, compresslevel=self.config.gzip_level, mtime=0)
        fd = os.open(f"{self.out}/{rel}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(packed)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self.counts["web_files"] += 1
        self._record(found)
