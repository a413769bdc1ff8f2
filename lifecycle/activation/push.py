"""HTTP push of an audience to a campaign tool: JSON batches with idempotency keys and retries.

Each batch is one POST whose body is canonical JSON (audience, date, action, batch number,
members sorted by customer key) and whose ``Idempotency-Key`` header is the SHA-256 of
that body: the same batch always has the same key, so an endpoint that de-duplicates by
key applies it once however often it arrives. Transient failures (connection errors,
429 honouring ``Retry-After``, 5xx) are retried with exponential backoff by urllib3's
Retry, as the CRM client does. Every delivered batch is recorded in
``activation.push_log`` as soon as it is acknowledged, and batches whose key is already
recorded as delivered are skipped, so a rerun sends nothing twice.

Redirects are not left to the HTTP library, which would re-POST the members' emails and
names wherever a 307/308 points. A push follows a 307 or 308 only within the endpoint's
origin (scheme, host, port) or to a host listed in ``LIFECYCLE_PUSH_REDIRECT_HOSTS``,
never from https to http, at most ``MAX_REDIRECTS`` times; any other redirect fails the
batch with an error naming both URLs, and nothing is sent to the other host. Errors
stored in ``activation.push_log`` and raised go through :func:`lifecycle.redact.redact`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from lifecycle.activation.audiences import Push
from lifecycle.extract.crm import retrying_session
from lifecycle.redact import redact, remember

#: Redirects (307/308 within the allowed hosts) a push follows for one batch.
MAX_REDIRECTS = 5

#: Member fields sent in a push (removes carry only the identifiers).
PUSH_FIELDS = (
    "customer_key",
    "email",
    "first_name",
    "last_name",
    "country_code",
    "stage",
    "recommended_action",
    "churn_probability",
    "risk_band",
    "segment_name",
    "clv_12m",
)


class PushError(RuntimeError):
    """A batch could not be delivered; the message names the audience, batch and endpoint."""


@dataclass(frozen=True)
class Batch:
    """One POST: its key, body and what it carries."""

    key: str
    batch_no: int
    action: str
    rows: int
    body: bytes


@dataclass(frozen=True)
class PushFacts:
    """What pushing one audience did."""

    audience: str
    batches: int  # batches of this date
    delivered: int  # delivered by this run
    skipped: int  # already delivered before (rerun)
    rows_delivered: int
    attempts: int  # HTTP requests made by this run, retries included


def _member(row: dict, action: str) -> dict:
    if action == "remove":
        return {"customer_key": row["customer_key"], "email": row["email"]}
    out = {k: row.get(k) for k in PUSH_FIELDS}
    for k in ("churn_probability", "clv_12m"):
        if out[k] is not None:
            out[k] = round(float(out[k]), 4)
    return out


def make_batches(
    audience: str, day: dt.date, action: str, rows: list[dict], batch_size: int, first_no: int = 0
) -> list[Batch]:
    """Return the batches of `rows` (sorted by customer key) with deterministic keys."""
    ordered = sorted(rows, key=lambda r: r["customer_key"])
    out = []
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i : i + batch_size]
        no = first_no + len(out)
        payload = {
            "audience": audience,
            "as_of_date": day.isoformat(),
            "action": action,
            "batch_no": no,
            "members": [_member(r, action) for r in chunk],
        }
        body = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        data = body.encode("utf-8")
        out.append(Batch(hashlib.sha256(data).hexdigest(), no, action, len(chunk), data))
    return out


def push_session(token: str | None, retries: int, backoff_s: float) -> requests.Session:
    """Return an HTTP session that retries POSTs on transient failures.

    Like ``lifecycle.extract.crm.session`` but POST is retried too (safe here: every batch
    carries its idempotency key) and the bearer token is optional.
    """
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return retrying_session(method="POST", headers=headers, retries=retries, backoff_s=backoff_s)


def _origin(url: str) -> tuple[str, str, int | None]:
    split = urlsplit(url)
    port = split.port or {"http": 80, "https": 443}.get(split.scheme)
    return split.scheme, (split.hostname or "").lower(), port


def redirect_refusal(url: str, location: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """Return why a push from `url` must not follow a redirect to `location` (None: it may)."""
    scheme, host, port = _origin(url)
    to_scheme, to_host, to_port = _origin(location)
    if to_scheme not in ("http", "https"):
        return f"the redirect is not to an http(s) URL ({to_scheme or 'no scheme'})"
    if scheme == "https" and to_scheme != "https":
        return "the redirect leaves https"
    if (to_scheme, to_host, to_port) == (scheme, host, port):
        return None
    if to_host in allowed_hosts or f"{to_host}:{to_port}" in allowed_hosts:
        return None
    return f"{to_host}:{to_port} is another host, not listed in LIFECYCLE_PUSH_REDIRECT_HOSTS"


def _post(http, url: str, batch: Batch, timeout_s: float, allowed: tuple[str, ...]):
    """POST `batch` to `url`, following only permitted 307/308 redirects; return the answer.

    Raises _RedirectRefused for a redirect it must not follow (nothing was sent there).
    """
    target = url
    for _ in range(MAX_REDIRECTS + 1):
        resp = http.post(
            target,
            data=batch.body,
            headers={"Idempotency-Key": batch.key},
            timeout=timeout_s,
            allow_redirects=False,
        )
        if not resp.is_redirect:
            return resp
        location = urljoin(target, resp.headers["Location"])
        if resp.status_code not in (307, 308):
            why = f"a {resp.status_code} redirect would turn the POST into a GET"
        else:
            why = redirect_refusal(target, location, allowed)
        if why is not None:
            raise _RedirectRefused(
                f"push refused to follow the redirect ({resp.status_code}) from {target} to "
                f"{location}: {why}",
                resp.status_code,
            )
        target = location
    raise _RedirectRefused(
        f"push stopped after {MAX_REDIRECTS} redirects at {target}", resp.status_code
    )


class _RedirectRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _delivered_keys(conn, keys: list[str]) -> set[str]:
    rows = conn.execute(
        "select idempotency_key from activation.push_log "
        "where idempotency_key = any(%s) and status = 'delivered'",
        (keys,),
    ).fetchall()
    return {r[0] for r in rows}


def _pushed_before(conn, audience: str, day: dt.date) -> bool:
    """Return True when a batch of the audience was delivered for a date before `day`."""
    return conn.execute(
        "select exists (select 1 from activation.push_log where audience = %s "
        "and as_of_date < %s and status = 'delivered')",
        (audience, day),
    ).fetchone()[0]


def _record(conn, audience: str, day: dt.date, batch: Batch, url: str, run_id: str, **kw) -> None:
    conn.execute(
        """
        insert into activation.push_log (
            idempotency_key, audience, as_of_date, batch_no, action, count_rows, status,
            attempts, http_status, url, run_id, error
        ) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        on conflict (idempotency_key) do update set
            status = excluded.status, attempts = excluded.attempts,
            http_status = excluded.http_status, url = excluded.url, run_id = excluded.run_id,
            error = excluded.error, logged_at = now()
        """,
        (
            batch.key,
            audience,
            day,
            batch.batch_no,
            batch.action,
            batch.rows,
            kw["status"],
            kw["attempts"],
            kw.get("http_status"),
            url,
            run_id,
            kw.get("error"),
        ),
    )


def push_audience(
    conn,
    audience: str,
    day: dt.date,
    push: Push,
    *,
    send_rows: list[dict],
    add_rows: list[dict],
    remove_rows: list[dict],
    run_id: str,
    token: str | None,
    retries: int,
    backoff_s: float,
    timeout_s: float = 30,
    redirect_hosts: tuple[str, ...] = (),
) -> PushFacts:
    """POST the audience's batches not delivered yet; return what was sent.

    `conn` must be in autocommit mode: each delivery is recorded the moment it is
    acknowledged. Raises PushError when a batch cannot be delivered (earlier deliveries
    stay recorded; a rerun resumes after them). `redirect_hosts` are the hosts a redirect
    may lead to besides the endpoint's own origin.
    """
    remember(token)
    if push.mode == "full":
        batches = make_batches(audience, day, "upsert", send_rows, push.batch_size)
    elif not _pushed_before(conn, audience, day):
        # the first push of an audience sends its whole list: the tool starts empty
        batches = make_batches(audience, day, "add", send_rows, push.batch_size)
    else:
        batches = make_batches(audience, day, "add", add_rows, push.batch_size)
        batches += make_batches(
            audience, day, "remove", remove_rows, push.batch_size, first_no=len(batches)
        )
    done = _delivered_keys(conn, [b.key for b in batches]) if batches else set()
    delivered = rows = attempts = 0
    with push_session(token, retries, backoff_s) as http:
        for batch in batches:
            if batch.key in done:
                continue
            where = f"audience {audience} {day} batch {batch.batch_no} to POST {push.url}"
            record = functools.partial(_record, conn, audience, day, batch, push.url, run_id)
            try:
                resp = _post(http, push.url, batch, timeout_s, redirect_hosts)
            except _RedirectRefused as exc:
                attempts += 1
                message = redact(str(exc))
                record(status="failed", attempts=1, http_status=exc.status, error=message)
                raise PushError(f"{message} ({where})") from None
            except requests.exceptions.RequestException as exc:
                attempts += retries + 1
                message = redact(str(exc))
                record(status="failed", attempts=retries + 1, error=message[:2000])
                raise PushError(
                    f"push failed after {retries} retries: {where}: {message}"
                ) from None
            history = getattr(getattr(resp.raw, "retries", None), "history", ()) or ()
            tries = len(history) + 1
            attempts += tries
            if not 200 <= resp.status_code < 300:
                record(
                    status="failed",
                    attempts=tries,
                    http_status=resp.status_code,
                    error=redact(resp.text[:65_536])[:2000],
                )
                excerpt = " ".join((redact(resp.text[:65_536]) or "").split())[:200]
                raise PushError(f"push refused ({resp.status_code}): {where}: {excerpt}")
            record(status="delivered", attempts=tries, http_status=resp.status_code)
            delivered += 1
            rows += batch.rows
    return PushFacts(audience, len(batches), delivered, len(done), rows, attempts)
