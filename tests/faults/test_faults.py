"""The fast subset of the fault-injection suite (the full run: python scripts/faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.cases import all_cases
from tests.faults.harness import Case, is_root

FAST = [c for c in all_cases() if c.fast]


@pytest.mark.parametrize("case", FAST, ids=[c.id for c in FAST])
def test_fault(case: Case, tmp_path: Path) -> None:
    if case.needs_root and not is_root():
        pytest.skip("needs root to mount a small tmpfs (disk full, read-only)")
    if case.known:
        pytest.xfail(case.known)
    case.run(tmp_path)


def test_the_full_run_has_enough_cases() -> None:
    cases = all_cases()
    assert len(cases) >= 500
    assert {c.klass for c in cases} == {
        "1-validation",
        "2-memory",
        "3-glob-paths",
        "4-racing-writers",
        "5-atomic-outputs",
        "6-one-line-errors",
        "7-readers-warn-hostile",
    }
