"""The full fault-injection run: every case of tests/faults in parallel processes; counts per class.

    python scripts/faults.py [--jobs 2] [--only SUBSTRING] [--fast]

Prints one line per failed case and a table of cases per class (passed, failed, known failures in
code this suite does not change, skipped). Exit 1 when a case failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run_one(index: int) -> tuple[int, str, str, float]:
    from tests.faults.cases import all_cases
    from tests.faults.harness import is_root

    case = all_cases()[index]
    if case.needs_root and not is_root():
        return index, "skipped", "needs root to mount a small tmpfs", 0.0
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="tracekit-fault-")
    try:
        case.run(Path(tmp))
        outcome, detail = ("unexpected-pass" if case.known else "passed"), ""
    except Exception as exc:
        outcome = "known" if case.known else "failed"
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:400]
        if os.environ.get("TRACEKIT_FAULTS_TRACEBACK"):
            detail += "\n" + traceback.format_exc()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index, outcome, detail, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="run the cases whose id contains this")
    ap.add_argument("--fast", action="store_true", help="only the subset make test runs")
    args = ap.parse_args()
    from tests.faults.cases import all_cases

    cases = all_cases()
    chosen = [i for i, c in enumerate(cases) if args.only in c.id and (c.fast or not args.fast)]
    counts: dict[str, Counter[str]] = {}
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="tracekit-faults-run-")
    os.environ["TMPDIR"] = scratch  # every case's files and the workers' base traces, removed at the end
    tempfile.tempdir = None
    try:
        _run_all(args.jobs, cases, chosen, counts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _table(counts, started, args.jobs)


def _run_all(jobs: int, cases: list, chosen: list[int], counts: dict[str, Counter[str]]) -> None:
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_one, i) for i in chosen]
        for fut in as_completed(futures):
            i, outcome, detail, secs = fut.result()
            c = cases[i]
            counts.setdefault(c.klass, Counter())[outcome] += 1
            if outcome in ("failed", "unexpected-pass"):
                print(f"{outcome.upper()} {c.id} ({secs:.1f} s): {detail}", flush=True)
            elif outcome == "known":
                print(f"known {c.id}: {c.known} [{detail[:160]}]", flush=True)


def _table(counts: dict[str, Counter[str]], started: float, jobs: int) -> int:
    cols = ["passed", "failed", "known", "unexpected-pass", "skipped"]
    print(f"\n{'class':26s} {'cases':>6s} " + " ".join(f"{c:>15s}" for c in cols))
    total: Counter[str] = Counter()
    for klass in sorted(counts):
        n = sum(counts[klass].values())
        total.update(counts[klass])
        print(f"{klass:26s} {n:6d} " + " ".join(f"{counts[klass][c]:15d}" for c in cols))
    print(f"{'all':26s} {sum(total.values()):6d} " + " ".join(f"{total[c]:15d}" for c in cols))
    print(f"{time.perf_counter() - started:.0f} s with {jobs} workers")
    return 1 if total["failed"] or total["unexpected-pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
