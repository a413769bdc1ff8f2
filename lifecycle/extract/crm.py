"""CRM contacts: the REST API (cursor pagination, retries) or its CSV export."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from urllib.parse import urlencode

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from lifecycle.parse import Chunk, Window
from lifecycle.sources_file import Endpoint

log = logging.getLogger(__name__)

RECORDS_PER_CHUNK = 5000
RETRY_STATUSES = (429, 500, 502, 503, 504)


class CrmApiError(RuntimeError):
    """The CRM API could not be read; the message names the request, never the token."""


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def retrying_session(
    *,
    method: str,
    headers: dict[str, str],
    retries: int = 8,
    backoff_s: float = 0.5,
) -> requests.Session:
    """Return an HTTP session that sends `headers` and retries `method` on transient failures.

    urllib3's Retry does the work (exponential backoff with jitter, honouring 429/503
    ``Retry-After``), so the retry policy is the one HTTP clients everywhere share. Used by
    the CRM client (GET) and by activation's push (POST, safe to retry: every batch carries
    its idempotency key).
    """
    http = requests.Session()
    http.headers.update(headers)
    policy = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff_s,
        backoff_jitter=backoff_s,
        backoff_max=30,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({method}),
        respect_retry_after_header=True,
        retry_after_max=300,
        raise_on_status=True,
    )
    http.mount("http://", HTTPAdapter(max_retries=policy))
    http.mount("https://", HTTPAdapter(max_retries=policy))
    return http


def session(token: str, retries: int = 8, backoff_s: float = 0.5) -> requests.Session:
    """Return the CRM API session: bearer token, JSON, GETs retried on transient failures."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    return retrying_session(method="GET", headers=headers, retries=retries, backoff_s=backoff_s)


def iter_contact_pages(
    base_url: str,
    token: str,
    window: Window,
    *,
    retries: int = 8,
    backoff_s: float = 0.5,
    timeout_s: float = 30,
    endpoint: Endpoint | None = None,
    flatten=None,
) -> Iterator[tuple[str, list[dict]]]:
    """Yield (page locator, records) for every page of records updated in `window`.

    `endpoint` (the sources file's dlt-style block) names the path, the fixed params,
    where the records are in the body (``data_selector``), the next-page cursor
    (``paginator.cursor_path``, sent back as ``paginator.cursor_param``) and the window's
    query params (``incremental``); the default is the sample CRM's (HubSpot-like) API.
    """
    endpoint = endpoint or Endpoint()
    base = base_url.rstrip("/")
    path = "/" + endpoint.path.lstrip("/")
    flatten = flatten or _flatten
    inc = endpoint.incremental
    params: dict[str, str | int] = {**endpoint.params, inc.end_param: _iso(window.end)}
    if window.start is not None:
        params[inc.start_param] = _iso(window.start)
    after: str | None = None
    pages = 0
    with session(token, retries, backoff_s) as http:
        while True:
            query = params | ({endpoint.paginator.cursor_param: after} if after else {})
            locator = f"{base}{path}?{urlencode(query)}"
            try:
                resp = http.get(f"{base}{path}", params=query, timeout=timeout_s)
            except requests.exceptions.RetryError as exc:
                raise CrmApiError(
                    f"CRM API kept failing after {retries} retries at GET {locator}: {_reason(exc)}"
                ) from None
            except requests.exceptions.RequestException as exc:
                raise CrmApiError(
                    f"CRM API request failed at GET {locator}: {_reason(exc)}"
                ) from None
            if resp.status_code in (401, 403):
                raise CrmApiError(
                    f"CRM API refused the token ({resp.status_code}) at GET {locator}: "
                    "check LIFECYCLE_CRM_TOKEN"
                )
            if resp.status_code != 200:
                raise CrmApiError(
                    f"CRM API answered {resp.status_code} at GET {locator}: {resp.text[:200]}"
                )
            body = resp.json()
            records = _select(body, endpoint.data_selector)
            if not isinstance(records, list):
                raise CrmApiError(
                    f"CRM API at GET {locator}: data_selector {endpoint.data_selector!r} "
                    f"is not a list of records in the response"
                )
            yield locator, [flatten(r) for r in records if isinstance(r, dict)]
            pages += 1
            after = _select(body, endpoint.paginator.cursor_path)
            if not after:
                return
            if pages >= endpoint.max_pages:
                raise CrmApiError(
                    f"CRM API at GET {locator}: still more pages after max_pages "
                    f"({endpoint.max_pages}); raise endpoint.max_pages or narrow the window"
                )


def _select(body: object, path: str) -> object:
    """Return the value at the dotted `path` of a JSON body (None where it is absent)."""
    for part in path.split(".") if path else ():
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    return body


def _reason(exc: BaseException) -> str:
    # The exception text names the URL and the last error, never request headers.
    inner = getattr(exc, "args", [None])[0]
    return str(getattr(inner, "reason", None) or inner or exc)


def _flatten(record: dict) -> dict:
    """The sample CRM's (HubSpot-like) record: id, properties, createdAt, updatedAt."""
    props = dict(record.get("properties") or {})
    props.setdefault("created_at", record.get("createdAt"))
    props.setdefault("updated_at", record.get("updatedAt"))
    return {"id": record.get("id"), **props}


def flatten_record(record: dict) -> dict:
    """Return a JSON record with nested objects as dotted keys (``address.city``), the
    way the sources file names JSON columns; the keys of a ``properties`` object
    (HubSpot-style APIs) are lifted to plain names (``email``)."""
    out: dict = {}

    def walk(prefix: str, obj: dict) -> None:
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[f"{prefix}{key}"] = value

    walk("", {k: v for k, v in record.items() if k != "properties"})
    props = record.get("properties")
    if isinstance(props, dict):
        for key, value in props.items():
            if not isinstance(value, dict):
                out.setdefault(key, value)
    return out


def api_chunks(
    base_url: str,
    token: str,
    window: Window,
    *,
    retries: int = 8,
    backoff_s: float = 0.5,
    endpoint: Endpoint | None = None,
    flatten=None,
) -> Iterator[Chunk]:
    """Yield the contacts updated in `window` from the REST API as text chunks.

    A chunk's source is the query of the walk (its window, not a cursor: cursors are
    opaque and short-lived); a row's line is its position in the walk.
    """
    records: list[dict] = []
    walk = None
    done = 0
    for locator, page in iter_contact_pages(
        base_url,
        token,
        window,
        retries=retries,
        backoff_s=backoff_s,
        endpoint=endpoint,
        flatten=flatten,
    ):
        walk = walk or locator
        records.extend(page)
        if len(records) >= RECORDS_PER_CHUNK:
            yield _chunk(records, walk, done)
            done += len(records)
            records = []
    if records:
        yield _chunk(records, walk or base_url, done)


def _chunk(records: list[dict], walk: str, done: int) -> Chunk:
    lines = np.arange(done + 1, done + 1 + len(records), dtype=np.int64)
    return Chunk.from_records(records, walk, lines)


def rest_batch(src, emap, window: Window, sources, settings):  # -> lifecycle.extract.Batch
    """Return the batch of the contacts the REST API has updated in `window`."""
    from lifecycle.extract import Batch
    from lifecycle.load import LoadError
    from lifecycle.sources_file import resolve_connection

    base_url, token = src.base_url, None
    if src.connection:
        url, token = resolve_connection(sources, src.connection, settings)
        base_url = base_url or url
    if not base_url:
        raise LoadError(f"{sources.origin}: sources.crm has no base_url")
    if not token:
        conn = sources.connections.get(src.connection or "")
        where = conn.token_env if conn and conn.token_env else "the connection's token_env"
        raise LoadError(f"the CRM API at {base_url} needs a bearer token: set {where}")
    # The built-in source is the sample CRM, whose records keep their fields under
    # `properties`; a configured API's records are flattened to dotted names.
    builtin = sources.origin == "built-in"
    chunks = api_chunks(
        base_url,
        token,
        window,
        retries=settings.http_retries,
        backoff_s=settings.http_backoff_s,
        endpoint=src.endpoint,
        flatten=_flatten if builtin else flatten_record,
    )
    return Batch(chunks=chunks)
