"""How an error that reaches the user is told: one line naming the file, setting or cause.

The CLI's root group (:class:`lifecycle.cli.LifecycleGroup`) and the commands that catch
errors themselves print :func:`describe` of the exception after ``error:``.
"""

from __future__ import annotations

import errno
import os

#: Longest error message printed: a message may quote the input it chokes on (a YAML
#: alias bomb expands to megabytes), and the first lines say what went wrong.
MAX_ERROR_CHARS = 500


def one_line(text: str, *, capped: bool = True) -> str:
    """Return `text` as one line for an ``error:`` (secrets redacted; `capped` to
    MAX_ERROR_CHARS, for what a library says): libpq's connection errors, a library's
    hint, span several lines."""
    from lifecycle.redact import redact

    text = " ".join(redact(text).split())
    if capped and len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + f"... ({len(text):,} characters in all)"
    return text


def print_error(message: str | BaseException, *, keep_lines: bool = False) -> None:
    """Print ``error: <message>`` on stderr, on one line.

    `keep_lines` keeps the lines of a message written as several (a list of the settings
    to change, the failed task's log tail, the dates a backfill did not run).
    """
    import click

    from lifecycle.redact import redact

    # our own messages are not capped: they end with what to do (the cap is for what
    # escapes from a library, lifecycle.cli.error_line)
    text = redact(str(message)).strip() if keep_lines else one_line(str(message), capped=False)
    click.secho(f"error: {text}", fg="red", err=True)


#: The settings that name a folder or file of the state, most specific first.
PATH_SETTINGS = (
    "LIFECYCLE_CRM_CSV",
    "LIFECYCLE_ORDERS_CSV_DIR",
    "LIFECYCLE_WORLD_DIR",
    "LIFECYCLE_REPORT_DIR",
    "LIFECYCLE_EXPORT_DIR",
    "LIFECYCLE_HOME",
)


def _path_setting(filename: str | bytes | os.PathLike) -> str | None:
    """Return ``NAME=value`` of the path setting `filename` is at or under (a state folder
    that cannot be created, such as LIFECYCLE_HOME=/proc/nope, is named with its setting)."""
    from pathlib import Path

    try:
        path = Path(os.fsdecode(filename)).expanduser().resolve()
    except (OSError, ValueError):
        return None
    for name in PATH_SETTINGS:
        value = os.environ.get(name)
        if not value:
            continue
        root = Path(value).expanduser().resolve()
        if path == root or root in path.parents:
            return f"{name}={value}"
    return None


def describe(exc: BaseException) -> str:
    """Return what went wrong in `exc`, for people: the cause, not the call stack."""
    import psycopg

    if isinstance(exc, OSError) and not isinstance(exc, psycopg.Error) and exc.filename:
        what = {
            errno.ENOENT: "does not exist",
            errno.ENOTDIR: "is under a path that is a file, not a folder",
            errno.EACCES: "is not accessible (permission denied)",
            errno.EPERM: "is not accessible (operation not permitted)",
            errno.EROFS: "is on a read-only file system",
            errno.EEXIST: "already exists",
            errno.EISDIR: "is a folder, not a file",
            errno.ENOSPC: "cannot be written: no space left on the device",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        if exc.errno == errno.EEXIST and os.path.isfile(exc.filename):
            what = "is a file, where a folder is wanted"  # mkdir of a path a file holds
        setting = _path_setting(exc.filename)
        return f"{exc.filename}: {what}" + (f" (set by {setting})" if setting else "")
    if isinstance(exc, psycopg.OperationalError):
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        hint = "is it running? see `lifecycle warehouse status`"
        return f"the warehouse connection failed: {first} ({hint})"
    if isinstance(exc, psycopg.Error):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"the warehouse refused a statement: {type(exc).__name__}: {first}"
    text = str(exc).strip()
    if isinstance(exc, KeyError | IndexError | AttributeError | TypeError) or not text:
        return f"{type(exc).__name__}: {text or 'no message'} (internal error: run with -v)"
    return text
