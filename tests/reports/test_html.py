"""The HTML report: self-contained, escaped, and rendered by headless Chromium without script errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.reports.builders import EVIL_KERNEL
from tests.reports.conftest import Inputs
from tracekit.cli.main import cli
from tracekit.errors import UnknownNameError
from tracekit.reports.html import write_html


class _Collect(HTMLParser):
    """Tags, and the text of table cells, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_td = tag == "td"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False

    def handle_data(self, data: str) -> None:
        if self._in_td:
            self.cells.append(data)


@pytest.fixture(scope="module")
def page(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    r = CliRunner().invoke(
        cli,
        ["report", "html", str(inputs.trace), str(inputs.ep.path), str(inputs.replay_h200),
         str(inputs.replay_nvl72), str(inputs.sweep), "--out", str(out), "--param", "ep=4"],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return out


def test_page_is_self_contained_and_escaped(page: Path) -> None:
    text = page.read_text()
    p = _Collect()
    p.feed(text)
    assert p.tags.count("script") == 1  # only the page's own script; the kernel name is text
    assert EVIL_KERNEL in p.cells
    assert "<script>document.title" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing loaded from a network
    # heatmaps (2 traces + comm matrix), per-rank bars (2), replay breakdown, Pareto curve
    assert text.count('<svg class="tk-plot"') == 7


def test_unknown_html_parameter(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="parameter of report html"):
        write_html([inputs.trace], tmp_path / "x.html", params={"eep": 3})


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.browser
@pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
)
def test_chromium_renders_the_plots_without_script_errors(page: Path, tmp_path: Path) -> None:
    exe = _chromium()
    assert exe is not None
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    assert 'data-report-ok="1"' in body.group(1), dom[:2000]
    assert 'data-plots="7"' in body.group(1)
    assert re.search(r'<pre id="tk-errors"></pre>', dom)  # no script error recorded
    assert dom.count("<svg") >= 7 and dom.count("<rect") > 100
    # The hostile kernel name is text in a cell: escaped in the serialised DOM, not a script element,
    # and it did not run (the title is still the report's).
    assert "&lt;script&gt;document.title" in dom
    assert dom.count("<script") == 1
    title = re.search(r"<title>(.*?)</title>", dom)
    assert title is not None and title.group(1).startswith("tracekit report:")
