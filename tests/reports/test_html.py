"""The HTML report: self-contained, escaped, and rendered by headless Chromium without script errors."""

from __future__ import annotations

import json
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
def r1_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepSeek-R1-sized trace: 58 MoE layers (3 to 60) x 256 experts, zipf routing, EP 8."""
    out = tmp_path_factory.mktemp("r1") / "r1"
    r = CliRunner().invoke(
        cli,
        ["synth", "--model", "deepseek-r1", "--phase", "decode", "--tokens-per-step", "64", "--steps", "2",
         "--routing", "zipf:1.0", "--ep", "8", "--no-gate-weights", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def page(inputs: Inputs, r1_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    r = CliRunner().invoke(
        cli,
        ["report", "html", str(inputs.trace), str(inputs.ep.path), f"r1={r1_trace}", str(inputs.replay_h200),
         str(inputs.replay_nvl72), str(inputs.sweep), "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return out


def _figures(text: str) -> list[str]:
    return re.findall(r'<figure class="tk-figure" aria-label="([^"]*)">', text)


def test_page_is_self_contained_and_escaped(page: Path) -> None:
    text = page.read_text()
    p = _Collect()
    p.feed(text)
    assert p.tags.count("script") == 1  # only the page's own script; the kernel name is text
    assert EVIL_KERNEL in p.cells
    assert "<script>document.title" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing loaded from a network
    labels = _figures(text)
    assert text.count('<svg class="tk-plot"') == len(labels)
    # per trace: expert heatmap and layer x rank heatmap at the trace's own EP; the EP trace's
    # measured steps per rank; the comm matrix; the replay breakdown; the Pareto curve
    for name, ep in (("trace_a", 8), ("ep4", 4), ("r1", 8)):
        assert f"{name}: expert load per layer (token-expert pairs / even share)" in labels
        assert f"{name}: rank load per layer at EP {ep} (contiguous placement, all steps)" in labels
    assert "ep4: measured steps per rank (3 steps)" in labels
    assert "ep4: bytes sent, source rank (rows) to destination rank (columns)" in labels
    assert "Replay: mean step time by component" in labels
    assert "Sweep: Pareto frontier per hardware (grey: every point that fits)" in labels
    # the GPU kernels heading is over GPU rows only; CPU operators are counted by self time
    assert "<h3>GPU kernels</h3>" in text


def test_unknown_html_parameter(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="parameter of report html"):
        write_html([inputs.trace], tmp_path / "x.html", params={"eep": 3})


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: Injected into a copy of the page: measures tables, figures and tick labels once laid out, and
#: writes them as JSON into <pre id="tk-measure"> for --dump-dom to return.
_MEASURE = """<script>
window.addEventListener("load", function () {
  function box(el) { var b = el.getBoundingClientRect(); return {x: b.left, y: b.top, w: b.width, h: b.height}; }
  var out = {viewport: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
             tables: [], figures: []};
  document.querySelectorAll("table.tk-table").forEach(function (t) {
    var b = box(t); b.caption = t.caption ? t.caption.textContent : ""; out.tables.push(b);
  });
  document.querySelectorAll("figure.tk-figure").forEach(function (f) {
    var svg = f.querySelector("svg.tk-plot");
    var fig = {label: f.getAttribute("aria-label"), box: box(svg), images: [], axes: [], texts: []};
    svg.querySelectorAll("image").forEach(function (im) { fig.images.push(box(im)); });
    svg.querySelectorAll("text").forEach(function (t) { fig.texts.push(t.textContent); });
    svg.querySelectorAll('g[id^="matplotlib.axis"]').forEach(function (ax) {
      var labels = [];
      ax.querySelectorAll('g[id^="xtick_"] text, g[id^="ytick_"] text').forEach(function (t) {
        var b = box(t); b.text = t.textContent; labels.push(b);
      });
      fig.axes.push({id: ax.id, labels: labels});
    });
    out.figures.push(fig);
  });
  var pre = document.createElement("pre"); pre.id = "tk-measure"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _overlaps(labels: list[dict]) -> list[tuple[str, str]]:
    """Pairs of tick labels whose boxes intersect (0.5 px of slack)."""
    bad = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            if (a["x"] + a["w"] - 0.5 > b["x"] and b["x"] + b["w"] - 0.5 > a["x"]
                    and a["y"] + a["h"] - 0.5 > b["y"] and b["y"] + b["h"] - 0.5 > a["y"]):  # fmt: skip
                bad.append((a["text"], b["text"]))
    return bad


def _chromium_cmd(exe: str, profile: Path) -> list[str]:
    return [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
        "--window-size=1400,1000", "--hide-scrollbars", "--virtual-time-budget=5000",
    ]  # fmt: skip


@pytest.mark.browser
@pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
)
def test_chromium_renders_the_plots_without_script_errors(page: Path, tmp_path: Path) -> None:
    exe = _chromium()
    assert exe is not None
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    cmd = [*_chromium_cmd(exe, tmp_path / "profile"), "--dump-dom", measured.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    assert 'data-report-ok="1"' in body.group(1), dom[:2000]
    plots = len(_figures(page.read_text()))
    assert f'data-plots="{plots}"' in body.group(1)
    assert re.search(r'<pre id="tk-errors"></pre>', dom)  # no script error recorded
    # The hostile kernel name is text in a cell: escaped in the serialised DOM, not a script element,
    # and it did not run (the title is still the report's).
    assert "&lt;script&gt;document.title" in dom
    assert dom.count("<script") == 2  # the page's and the measuring one
    title = re.search(r"<title>(.*?)</title>", dom)
    assert title is not None and title.group(1).startswith("tracekit report:")

    found = re.search(r'<pre id="tk-measure">(.*?)</pre>', dom, re.S)
    assert found is not None, "the measuring script did not run"
    m = json.loads(
        found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    assert m["viewport"] == 1400
    # no table wider than the page, and nothing makes the page scroll sideways
    assert m["scroll"] <= m["viewport"], m["scroll"]
    for t in m["tables"]:
        assert t["x"] + t["w"] <= m["viewport"], (t["caption"], t["x"] + t["w"])
    # every plot rendered with a size, and no two tick labels of an axis overlap
    assert len(m["figures"]) == plots
    for fig in m["figures"]:
        assert fig["box"]["w"] > 200 and fig["box"]["h"] > 100, fig["label"]
        assert fig["box"]["x"] + fig["box"]["w"] <= m["viewport"], fig["label"]
        for ax in fig["axes"]:
            assert not _overlaps(ax["labels"]), (fig["label"], ax["id"], _overlaps(ax["labels"])[:3])
    # the 58-layer layer x rank heatmap: cells and colour scale drawn, scale labelled, layers legible
    (heat,) = [f for f in m["figures"] if f["label"].startswith("r1: rank load per layer at EP 8")]
    assert len(heat["images"]) >= 2 and all(i["w"] > 10 and i["h"] > 100 for i in heat["images"][:2])
    assert "x mean rank load (the busiest rank sets the layer's time)" in heat["texts"]
    layer_axis = max(
        heat["axes"],
        key=lambda a: len([x for x in a["labels"] if x["text"] in {str(i) for i in range(3, 61)}]),
    )
    layer_labels = [x for x in layer_axis["labels"] if x["text"]]
    assert 20 <= len(layer_labels) <= 58 and {"3", "59"} & {x["text"] for x in layer_labels}
    assert min(x["h"] for x in layer_labels) >= 8  # px: readable
    # the replay-compare table shows its speedup row
    assert ">speedup</th>" in dom

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [*_chromium_cmd(exe, tmp_path / "profile2"), f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and shot.stat().st_size > 20_000, proc.stderr[-2000:]
