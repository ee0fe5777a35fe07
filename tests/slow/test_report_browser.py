"""report.html of a real smoke run, rendered by headless Debian chromium (``make setup-browser``).

``rest-react run`` on the smoke config writes the report at the end of each generation
(its report phase); ``rest-react report`` rewrites it. Chromium then takes a
screenshot and dumps the DOM after the page's script ran. The test fails on any
console message (the page logs nothing when it works; chromium reports console calls
and uncaught exceptions alike as ``CONSOLE`` lines on stderr with
``--enable-logging=stderr``), on any table without rows, and on a trajectory browser
that shows no rollout.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import ROOT, SMOKE, ensure_world, env  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? (.*)")


def chromium(page: Path, *args: str) -> tuple[str, list[str]]:
    """Run headless chromium on ``page``; (stdout, the console lines it logged)."""
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: run `make setup-browser` (apt-get install chromium)")
    proc = subprocess.run([str(CHROMIUM), *FLAGS, *args, page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [m.group(1) for line in proc.stderr.splitlines() if (m := CONSOLE.search(line))]


class Dom(HTMLParser):
    """Rows per table body, list items of the question list, step blocks of the detail pane."""

    def __init__(self):
        super().__init__()
        self.tables: list[int] = []
        self.questions = self.steps = 0
        self._body = self._list = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append(0)
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.tables[-1] += 1
        elif tag == "ul" and a.get("id") == "q-list":
            self._list = True
        elif tag == "li" and self._list:
            self.questions += 1
        elif tag == "div" and "step" in (a.get("class") or "").split():
            self.steps += 1

    def handle_endtag(self, tag):
        self._body = self._body and tag != "tbody"
        self._list = self._list and tag != "ul"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-generation smoke run, made by the CLI as a user makes it."""
    runs = tmp_path_factory.mktemp("runs")
    ensure_world()
    proc = subprocess.run([sys.executable, "-m", "rest", "run", "--config", str(SMOKE), "--name", "browser",
                           "--runs-dir", str(runs), "--no-progress"], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return runs / "browser"


def test_the_driver_writes_the_report_and_chromium_renders_it(run_dir, tmp_path):
    report = json.loads((run_dir / "report.json").read_text())
    assert {(e["gen"], e["model"]) for e in report["evals"]} == {(g, m) for g in (0, 1) for m in ("L", "S", "XS")}
    assert report["browser"]["shown"] == 6 and (run_dir / "plots" / "accuracy.png").is_file()
    written_by_driver = (run_dir / "report.html").read_text()

    proc = subprocess.run([sys.executable, "-m", "rest", "report", str(run_dir)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = run_dir / "report.html"
    assert page.read_text().count("<table") == written_by_driver.count("<table")

    shot = tmp_path / "report.png"
    _, console = chromium(page, "--window-size=1280,3200", f"--screenshot={shot}")
    assert console == [], console
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 3200)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not a blank page

    dom_text, console = chromium(page, "--dump-dom")
    assert console == [], console
    dom = Dom()
    dom.feed(dom_text)
    assert len(dom.tables) >= 6 and all(rows > 0 for rows in dom.tables), dom.tables
    assert dom.questions == 6 and dom.steps >= 1
    assert "6 of 6 rollouts" in dom_text


def test_console_errors_are_caught(tmp_path):
    """The console check itself: a page that throws must be reported."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><script>null.x;</script></body></html>')
    _, console = chromium(page, "--dump-dom")
    assert any("Uncaught TypeError" in line for line in console), console
