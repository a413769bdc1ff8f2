"""The report in a real browser: headless Chromium draws every chart, logs no error, screenshots.

Chromium (Debian's ``chromium`` package) loads the report from disk with every host name
unresolvable, so anything the page tried to fetch would fail and show up in the console.
The page's own script logs one line (how many charts drew, how many are empty); any other
console line — an error, a warning, an uncaught exception — fails the test. The screenshot
is kept as a test artifact under ``test-artifacts/report/`` (or ``$LIFECYCLE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.report.conftest import END, REPO
from tests.report.page import read_page

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def browser() -> str:
    """Return the path of a Chromium binary, or skip saying how to install one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH: install it (Debian: apt-get install -y chromium)")


def run_chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on `url` with a private profile and no network; return the run."""
    return subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any fetch would fail loudly
            "--enable-logging=stderr",
            "--v=0",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def console_lines(stderr: str) -> list[str]:
    """Return the page's console messages from Chromium's log."""
    return [m.group(1) for m in re.finditer(r':CONSOLE[^\]]*\] "(.*)", source:', stderr)]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Folder for the screenshot (kept after the run)."""
    folder = Path(os.environ.get("LIFECYCLE_TEST_ARTIFACTS") or REPO / "test-artifacts") / "report"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_every_chart_renders_without_console_errors(report_world, tmp_path) -> None:
    url = report_world.full.path.as_uri()
    done = run_chromium(url, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    page = read_page(done.stdout)  # the DOM after the page's script ran
    charts = report_world.full.charts
    assert charts == 13
    assert page.body.get("data-charts-rendered") == str(charts), "a chart has an empty box"
    assert len(page.charts) == charts
    for name, drawn in page.charts.items():
        assert drawn > 10, f"chart {name} has only {drawn} SVG elements"
    assert console_lines(done.stderr) == [f"lifecycle-report: {charts} charts, 0 empty"]
    # the numbers survived the browser: tiles as the warehouse gave them
    assert page.kpis == read_page(report_world.full_html).kpis


def test_console_errors_would_be_caught(tmp_path) -> None:
    # the check above is only as good as the capture: a page with an error must show it
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); null.x;</script></body></html>")
    done = run_chromium(bad.as_uri(), tmp_path / "profile", "--dump-dom")
    lines = console_lines(done.stderr)
    assert "boom" in lines
    assert any(line.startswith("Uncaught TypeError") for line in lines)


def test_screenshot(report_world, tmp_path, artifacts) -> None:
    from PIL import Image

    shot = artifacts / f"lifecycle-report-{END}.png"
    shot.unlink(missing_ok=True)
    done = run_chromium(
        report_world.full.path.as_uri(),
        tmp_path / "profile",
        "--window-size=1280,9000",
        f"--screenshot={shot}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"screenshot of the report: {shot}")
    with Image.open(shot) as im:
        assert im.size == (1280, 9000)
        top = im.convert("RGB").crop((0, 0, 1280, 1600))
        # a drawn page, not a blank one: many colours (stage tiles, the stacked area)
        assert len(top.getcolors(maxcolors=1_000_000) or []) > 50
