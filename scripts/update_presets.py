"""Rewrite the fitted part of the built-in hardware presets (maintainers, in a source checkout).

    python scripts/update_presets.py            # comm fits and kernel curves (needs the aiconfigurator extra)
    python scripts/update_presets.py --check    # exit 1 if the presets differ from a fresh fit

Runs the fits of ``tracekit calibrate --kernels`` (published communication measurements, published
kernel tables and the measured kernel databases of AIConfigurator) and writes each preset's part
below its calibration marker: ``[comm.*]`` fits, ``[calibration]`` residuals and ``[kernel.*]``
curves, every value with its source and residual. ``tracekit calibrate --write`` never touches the
built-in presets; this script is how they change, reviewed like any other diff.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tracekit" / "data" / "hardware"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when a preset would change")
    args = ap.parse_args()
    if not (ROOT / "pyproject.toml").is_file() or not DATA.is_dir():
        print(f"update_presets: {ROOT} is not a tracekit source checkout; run this from one", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from tracekit.cost.calibration import calibrate, update_shipped_presets
    from tracekit.cost.kernel_fit import calibrate_kernels, database_rows, kernel_sections, preset_curves

    database_rows(required=True)  # the presets' curves need the measured databases
    fits = calibrate_kernels(loo=True)
    sections = {p: kernel_sections(c) for p, c in preset_curves(fits).items()}
    report = calibrate(fit=True)
    before = {p: p.read_text(encoding="utf-8") for p in DATA.glob("*.toml")}
    written = update_shipped_presets(report, sections, DATA)
    changed = [p for p in written if before.get(p) != p.read_text(encoding="utf-8")]
    if args.check:
        for p, text in before.items():
            p.write_text(text, encoding="utf-8")
        for p in changed:
            print(f"update_presets: {p.name} differs from a fresh fit", file=sys.stderr)
        return 1 if changed else 0
    for p in written:
        print(f"{'updated' if p in changed else 'unchanged'} {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
