"""CRM contacts: the REST API (cursor pagination, retries) or its CSV export."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from urllib.parse import urlencode

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from lifecycle.load import LoadError
from lifecycle.parse import Chunk, Window
from lifecycle.redact import redact, remember
from lifecycle.sources_file import Endpoint

log = logging.getLogger(__name__)

RECORDS_PER_CHUNK = 5000
RETRY_STATUSES = (429, 500, 502, 503, 504)


class CrmApiError(LoadError):
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
    endpoint: Endpoint | None = None,
    retries: int = 8,
    backoff_s: float = 0.5,
    timeout_s: float = 30,
    flatten=None,
) -> Iterator[tuple[str, list[dict]]]:
    """Yield (page locator, contacts) for every page of contacts updated in `window`.

    Every answer is checked before it is used: a status other than 200, a body that is not
    a JSON object, a `data_selector` that is not an array of objects, a cursor that repeats
    (the walk would never end) or more pages than ``endpoint.max_pages`` raise
    CrmApiError naming the request; nothing in the message carries the token.
    """
    endpoint = endpoint or Endpoint()
    flatten = flatten or _flatten
    remember(token)
    base = base_url.rstrip("/")
    url = f"{base}/{endpoint.path.lstrip('/')}"
    # The window is [start, end); APIs name their bounds "after" (exclusive) and "before"
    # (inclusive, as the sample CRM does, or exclusive): asking for (start - 1 us, end -
    # 1 us] returns exactly the window from the first and at most rows of that last
    # microsecond's from the second. The checker places every row returned anyway.
    tick = dt.timedelta(microseconds=1)
    params: dict[str, str | int] = {
        **endpoint.params,
        endpoint.incremental.end_param: _iso(window.end - tick),
    }
    if window.start is not None:
        params[endpoint.incremental.start_param] = _iso(window.start - tick)
    cursor_param = endpoint.paginator.cursor_param
    after: str | None = None
    seen: set[str] = set()
    pages = 0
    with session(token, retries, backoff_s) as http:
        while True:
            query = params | ({cursor_param: after} if after else {})
            locator = f"{url}?{urlencode(query)}"
            if pages >= endpoint.max_pages:
                raise CrmApiError(
                    f"CRM API walk stopped after endpoint.max_pages={endpoint.max_pages} pages "
                    f"at GET {locator}: raise max_pages in the sources file if the data is "
                    "really that large"
                )
            body = _get_page(http, url, query, locator, retries, timeout_s)
            pages += 1
            yield locator, [flatten(r) for r in _records(body, endpoint.data_selector, locator)]
            after = _cursor(body, endpoint.paginator.cursor_path, locator)
            if after is None:
                return
            if after in seen:
                raise CrmApiError(
                    f"CRM API cursor {after[:80]!r} repeated after page {pages} at GET {locator}: "
                    "the walk would never end (the server's paging is broken)"
                )
            seen.add(after)


def _get_page(http, url: str, query: dict, locator: str, retries: int, timeout_s: float) -> dict:
    """Return the JSON object the API answered for `query`, or raise CrmApiError."""
    try:
        resp = http.get(url, params=query, timeout=timeout_s)
    except requests.exceptions.RetryError as exc:
        raise CrmApiError(
            f"CRM API kept failing after {retries} retries at GET {locator}: {_reason(exc)}"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise CrmApiError(f"CRM API request failed at GET {locator}: {_reason(exc)}") from None
    if resp.status_code in (401, 403):
        raise CrmApiError(
            f"CRM API refused the token ({resp.status_code}) at GET {locator}: "
            "check LIFECYCLE_CRM_TOKEN"
        )
    if resp.status_code != 200:
        raise CrmApiError(
            f"CRM API answered {resp.status_code} at GET {locator}: {_excerpt(resp.text)}"
        )
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    try:
        body = json.loads(resp.content)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
        raise CrmApiError(
            f"CRM API answered 200 with {kind}, not JSON, at GET {locator}: {_excerpt(resp.text)}"
        ) from None
    if not isinstance(body, dict):
        raise CrmApiError(
            f"CRM API answered 200 with {_json_type(body)}, not an object, at GET {locator}"
        )
    return body


def _records(body: dict, selector: str, locator: str) -> list[dict]:
    """Return the page's records at `selector`, checked to be a list of objects."""
    records = _at(body, selector)
    if records is None:
        raise CrmApiError(
            f"CRM API answer has no {selector!r} array (keys: {', '.join(sorted(body)[:10])}) "
            f"at GET {locator}: check endpoint.data_selector in the sources file"
        )
    if not isinstance(records, list):
        raise CrmApiError(
            f"CRM API answer's {selector!r} is {_json_type(records)}, not an array, "
            f"at GET {locator}"
        )
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise CrmApiError(
                f"CRM API answer's {selector}[{i}] is {_json_type(record)}, "
                f"not an object, at GET {locator}: {_excerpt(json.dumps(record))}"
            )
        props = record.get("properties")
        if props is not None and not isinstance(props, dict):
            raise CrmApiError(
                f"CRM API answer's {selector}[{i}].properties is "
                f"{_json_type(props)}, not an object, at GET {locator}"
            )
    return records


def _cursor(body: dict, path: str, locator: str) -> str | None:
    """Return the next-page cursor at `path` of the body, or None on the last page."""
    value = _at(body, path)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CrmApiError(
            f"CRM API answer's {path!r} is {_json_type(value)}, not a cursor, at GET {locator}"
        )
    return str(value)


def _json_type(value: object) -> str:
    """Return what `value` is in JSON's words ("a string", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "a value")


def _at(body: dict, path: str):
    """Return the value at dotted `path` in `body`, None where a step is missing."""
    value: object = body
    for step in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _excerpt(text: str, limit: int = 200) -> str:
    """Return the start of a server's answer on one line, secrets masked."""
    # Masked before it is cut, so the cut never leaves half a secret unrecognised.
    flat = " ".join((redact(text[:65_536]) or "").split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


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
