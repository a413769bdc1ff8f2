"""Secrets out of every error and log line: one helper, :func:`redact`, used everywhere.

A secret can reach a message by way of a remote server (a CRM that echoes the
``Authorization`` header in an error body), an exception that quotes a URL with its
password, or a library that logs request headers. So whatever is stored (``ops.load_runs``,
``activation.export_log``, ``activation.push_log``), logged or printed goes through
:func:`redact`, which replaces

- every *known* secret: the values registered with :func:`remember` (tokens and passwords
  as they are resolved: the CRM token, the push token, role passwords, connection
  passwords) and the values of environment variables whose names say they hold one
  (``*_TOKEN``, ``*_PASSWORD``, ``*_SECRET``, ``*_API_KEY``);
- and, whatever the value, the shapes secrets take: ``Bearer``/``Basic``/``Token``
  credentials, the password of a URL (``scheme://user:password@host``) and of a libpq
  ``password=...`` conninfo (a webhook URL's secret path is masked as a known value).

Why not a library: the candidates (Airflow's secrets masker, logging filters of log
frameworks) mask only what their own framework registered, and Airflow is not imported by
the CLI; the logging filter here is a few lines over the same function.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
#: Shorter values are not treated as secrets (masking "a" would mangle every message).
MIN_SECRET_LENGTH = 6
_SECRET_NAME = re.compile(
    r"(TOKEN|PASSWORD|PASSWD|SECRET|SECRET_KEY|FERNET_KEY|API_KEY|PRIVATE_KEY)$", re.I
)

_SHAPES = (
    # Authorization header values, as echoed ("Bearer abc", "authorization: Basic abc==")
    (re.compile(r"\b((?i:bearer)|Basic|Token)(?: |%20|\+)[A-Za-z0-9._~+/=:-]{6,}"), r"\1 " + MASK),
    # the password of a URL: scheme://user:password@host
    (re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^@\s/'\"]+@", re.I), r"\1" + MASK + "@"),
    # libpq conninfo / query parameters: password=..., token=..., access_token=...
    (
        re.compile(
            r"\b((?:password|passwd|access_token|token|api_key|secret)\s*=\s*)[^\s&;'\"]+", re.I
        ),
        r"\1" + MASK,
    ),
)

_known: set[str] = set()
_lock = threading.Lock()


def remember(*secrets: str | None) -> None:
    """Register secret values that :func:`redact` must mask from now on (None is ignored)."""
    with _lock:
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                _known.add(secret)
                decoded = unquote(secret)  # a password quoted in a URL appears both ways
                if len(decoded) >= MIN_SECRET_LENGTH:
                    _known.add(decoded)


def remember_url(url: str | None) -> None:
    """Register the password of `url` (``scheme://user:password@host``), if it has one."""
    if not url or "://" not in url:
        return
    with contextlib.suppress(ValueError):  # not a URL after all: redact() masks its shape
        remember(urlsplit(url).password)


def remember_settings(settings) -> None:
    """Register every secret `settings` holds: tokens, role passwords, URL passwords."""
    remember(
        getattr(settings, "crm_token", None),
        getattr(settings, "push_token", None),
        getattr(settings, "alert_webhook_url", None),  # a webhook URL is its own secret
    )
    for url in (
        getattr(settings, "warehouse_url", None),
        getattr(settings, "shop_db_url", None),
        getattr(settings, "crm_api_url", None),
    ):
        remember_url(url)
    for password in (getattr(settings, "role_passwords", None) or {}).values():
        remember(password)


def mask_in_airflow(settings) -> None:
    """Register `settings`' secrets here and with Airflow's secrets masker (task logs).

    Airflow masks its own Connections and sensitive Variables; the LIFECYCLE_* tokens and
    passwords reach a task through the environment, which its masker does not know about.
    """
    remember_settings(settings)
    if "airflow" not in sys.modules:
        # Not inside an Airflow task: importing Airflow here would fix its home for the
        # whole process (the local runner later needs its own).
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # not under Airflow
        return
    for secret in known_secrets():
        mask_secret(secret)


def _environment_secrets() -> Iterable[str]:
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name):
            yield value
        elif name.startswith("AIRFLOW_CONN_") or name.endswith("_URL"):
            try:
                password = urlsplit(value).password if "://" in value else None
            except ValueError:
                password = None
            if password:
                yield password


def known_secrets() -> list[str]:
    """Return the secret values :func:`redact` masks, longest first."""
    with _lock:
        values = set(_known)
    values.update(v for v in _environment_secrets() if v and len(v) >= MIN_SECRET_LENGTH)
    return sorted(values, key=len, reverse=True)


def redact(text: str | None) -> str | None:
    """Return `text` with every known secret and every secret-shaped value masked."""
    if not text:
        return text
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (and its exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with secrets masked; keep the record."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to every handler of `logger` (the root by default)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
