"""The on-failure callback of the DAGs: say which task failed, for which date, where its log is.

:func:`on_task_failure` runs in the task's process (an Airflow worker, or the local
runner's process under ``dag.test()``) after the last try of a task has failed. It logs a
one-paragraph report and, when ``LIFECYCLE_ALERT_WEBHOOK_URL`` is set, POSTs it as JSON
(with a ``text`` field, which chat webhooks display). The callback never raises: a broken
webhook must not hide the failure it reports.

The log location is the task's log file as Airflow's workers write it
(``[logging] base_log_folder`` + ``log_filename_template``); under the local runner,
which runs tasks in-process and writes one log file per run, it is that file. The UI link
(``log_url``) is included too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: Reports of the failures seen in this process, newest last (the local runner reads them).
RECENT_FAILURES: list[FailureReport] = []


@dataclass(frozen=True)
class FailureReport:
    """What the callback reports about one failed task."""

    dag_id: str
    task_id: str
    run_id: str
    logical_date: str | None  # YYYY-MM-DD: the day the run processes
    try_number: int | None
    max_tries: int | None
    error: str
    log_file: str | None
    log_url: str | None
    hostname: str

    def text(self) -> str:
        """Return the human-readable report (also the webhook's ``text``)."""
        tries = (
            f" (try {self.try_number}; {self.max_tries} retries configured)"
            if self.try_number
            else ""
        )
        lines = [
            f"Lifecycle: task {self.task_id} of {self.dag_id} failed for logical date "
            f"{self.logical_date or '(none)'}{tries}.",
            f"Error: {self.error}",
            f"Log: {self.log_file or '(no local file)'}",
        ]
        if self.log_url:
            lines.append(f"In Airflow: {self.log_url}")
        lines.append(f"Run: {self.run_id} on {self.hostname}")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """Return the JSON body POSTed to the webhook."""
        return {"event": "task_failed", "text": self.text(), **asdict(self)}


def _logical_day(context: dict[str, Any]) -> str | None:
    value = context.get("logical_date")
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        try:  # the run's day is in the business zone; an alert must go out regardless
            from lifecycle.orchestration.daily import business_zone

            zone: dt.tzinfo = business_zone()
        except Exception:  # noqa: BLE001 - e.g. a broken sources file: say the UTC day
            zone = dt.UTC
        return value.astimezone(zone).date().isoformat()
    return str(value)


def task_log_file(ti: Any) -> Path | None:
    """Return where an Airflow worker writes the log of `ti`'s current try, if configured."""
    from lifecycle.orchestration import logs

    if (active := logs.active_run_log()) is not None:
        return active
    try:
        from airflow.sdk.configuration import conf

        base = conf.get("logging", "base_log_folder")
        template = conf.get("logging", "log_filename_template")
    except Exception:  # noqa: BLE001 - best effort: a report without a path still helps
        return None
    try:
        if "{{" in template:
            import jinja2

            name = jinja2.Template(template).render(ti=ti, try_number=ti.try_number)
        else:
            name = template.format(
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                logical_date=_logical_day({"logical_date": getattr(ti, "logical_date", None)}),
                try_number=ti.try_number,
            )
    except Exception:  # noqa: BLE001
        return None
    return Path(base) / name


def build_report(context: dict[str, Any]) -> FailureReport:
    """Return the failure report of the task in `context`."""
    ti = context["ti"]
    error = context.get("exception")
    error_text = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    log_file = task_log_file(ti)
    try:
        log_url = ti.log_url
    except Exception:  # noqa: BLE001
        log_url = None
    return FailureReport(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        logical_date=_logical_day(context),
        try_number=getattr(ti, "try_number", None),
        max_tries=getattr(ti, "max_tries", None),
        error=error_text[:4000],
        log_file=str(log_file) if log_file else None,
        log_url=log_url,
        hostname=socket.gethostname(),
    )


def _redacted(url: str) -> str:
    # Webhook URLs often carry their secret in the path: show scheme and host only.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..."


def post_webhook(
    url: str, payload: dict[str, Any], *, timeout_s: float = 10.0, tries: int = 2
) -> bool:
    """POST `payload` as JSON to `url`; return True on a 2xx answer (never raises)."""
    body = json.dumps(payload, default=str).encode()
    for attempt in range(1, tries + 1):
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "lifecycle-alerts"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if 200 <= response.status < 300:
                    return True
                log.warning("alert webhook %s answered %s", _redacted(url), response.status)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning(
                "alert webhook %s failed (try %d of %d): %s", _redacted(url), attempt, tries, exc
            )
        if attempt < tries:
            time.sleep(1.0)
    return False


def on_task_failure(context: dict[str, Any]) -> None:
    """Airflow ``on_failure_callback``: log the failure report and POST it to the webhook."""
    try:
        from lifecycle.orchestration.config import load_orchestration_settings

        report = build_report(context)
        RECENT_FAILURES.append(report)
        log.error("%s", report.text())
        url = load_orchestration_settings().alert_webhook_url
        if url and post_webhook(url, report.payload()):
            log.info("failure reported to the alert webhook %s", _redacted(url))
    except Exception:  # noqa: BLE001 - the callback must never mask the task's own failure
        log.exception("the failure callback itself failed")
