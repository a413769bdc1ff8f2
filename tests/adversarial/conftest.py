"""The adversarial suite's summary: kinds of bad input tried and held, figures measured.

Every test case here is one kind of hostile input or fault (a parametrized case is one
kind). At the end of a session that ran any of them, pytest prints per class (module)
how many kinds were tried and how many held (passed), and the figures the tests recorded
through the ``figures`` fixture (e.g. privilege cells checked).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_tried: dict[str, Counter] = defaultdict(Counter)
_figures: Counter = Counter()


@pytest.fixture
def figures() -> Counter:
    """Return the session's figures: add to them (``figures["cells"] += n``)."""
    return _figures


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count each adversarial case once, by its outcome."""
    path = Path(str(report.fspath)).resolve()
    if path.parent != HERE.resolve() or not path.name.startswith("test_"):
        return
    kind = path.stem.removeprefix("test_")
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _tried[kind]["held" if report.passed else "skipped" if report.skipped else "broken"] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    """Print kinds tried / held per class, and the recorded figures."""
    if not _tried:
        return
    write = terminalreporter.write_line
    terminalreporter.section("adversarial suite")
    total = Counter()
    for kind in sorted(_tried):
        c = _tried[kind]
        tried = sum(c.values())
        total.update(c)
        write(f"{kind:<16} {tried:>4} tried, {c['held']:>4} held, {c['broken']:>3} broken")
    write(
        f"{'all':<16} {sum(total.values()):>4} tried, {total['held']:>4} held, "
        f"{total['broken']:>3} broken"
    )
    for name, value in sorted(_figures.items()):
        write(f"{name}: {value}")
