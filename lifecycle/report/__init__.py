"""The lifecycle report: one self-contained HTML page of charts and key numbers per logical date.

``build_report(day, settings)`` is the entry point of the daily DAG's last task and of
``lifecycle report --date D``.
"""

from lifecycle.report.build import ReportError, ReportResult, build_report, default_path

__all__ = ["ReportError", "ReportResult", "build_report", "default_path"]
