"""The DeepSeek-R1 decode table of docs/calibration.md (analytic vs measured vs profile-fitted,
component by component, on h200-sxm and gb200-nvl72) is what ``benchmarks/r1_decode_sources.py``
computes now; the profile-fitted source reproduces the profiled run's components; the measured
components are the database's own lookups."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "calibration.md"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "r1_decode_sources", ROOT / "benchmarks" / "r1_decode_sources.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def computed() -> tuple[ModuleType, list]:
    mod = _script()
    return mod, mod.run_all()


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ") and not line.startswith("| hardware")]  # fmt: skip


def _block(name: str) -> str:
    doc = DOCS.read_text()
    m = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", doc, flags=re.S)
    assert m, f"docs/calibration.md has no {name} block"
    return m.group(1)


def _same(got: list[list[str]], want: list[list[str]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3]
        for a, b in zip(g[3:6], w[3:6], strict=True):
            assert float(a) == pytest.approx(float(b), rel=0.01, abs=0.002), (g, w)


@pytest.mark.slow
def test_the_docs_table_is_recomputed(computed: tuple[ModuleType, list]) -> None:
    mod, results = computed
    _same(_rows(mod.component_table(results)), _rows(_block("r1-decode-components")))
    _same(_rows(mod.holdout_table(results)), _rows(_block("r1-decode-holdout")))


@pytest.mark.slow
def test_the_fit_reproduces_the_profiled_run(computed: tuple[ModuleType, list]) -> None:
    """At the profiled batch, every kernel component of the fitted replay is within 5% of the
    measured replay the profile was written from (the communication is not repriced by the
    measured source, so its three columns agree), and the step within 6%."""
    mod, results = computed
    for r in results:
        m = r.ms[r.case.batch]
        for comp, _ in mod.COMPONENTS:
            assert m["profile-fitted"][comp] == pytest.approx(m["measured"][comp], rel=0.05), (
                r.case.hw,
                comp,
            )
        for comp in ("dispatch", "combine"):
            assert m["analytic"][comp] == pytest.approx(m["measured"][comp], rel=1e-9)
        assert m["profile-fitted"]["step"] == pytest.approx(m["measured"]["step"], rel=0.06)
