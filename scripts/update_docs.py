"""Run the command examples of README.md and docs/*.md; check or rewrite their printed output.

    python scripts/update_docs.py            # re-run every example, rewrite the output lines that changed
    python scripts/update_docs.py --check    # re-run, change nothing, exit 1 when an output differs
    python scripts/update_docs.py docs/sql.md --check   # one page

An example is a fenced block with ``$ `` lines. Each ``$ `` line (with its ``\\`` continuation
lines and the lines of a quoted string it opens) is a command; the lines after it, up to the next ``$ `` line or the fence, are what it prints
(stdout and stderr together). A block holding one command and no output, followed by a Markdown
table (``--format markdown``), takes that table as the command's output. The examples of one page run in order, by bash, in one fresh work
folder per page: a copy of ``sample_traces/`` and links to the repository's other top-level entries,
so a page's later examples see what its earlier ones wrote, and nothing is written into the
repository. Commands run with ``tracekit`` of this interpreter's environment first on PATH, a
100-column terminal (COLUMNS=100) and no colour.

A block that cannot run in CI (a GPU, a cluster, a cloud bucket, files a user has) carries
``<!-- docs-test: skip: REASON -->`` on the line right before its fence. A fenced block that lists
``tracekit`` commands without ``$ `` prompts is a listing: it must be written as examples or carry
the skip comment, so no command in the docs escapes the check.

Printed output is compared line by line after these normalisations, and no others:
- the work folder's absolute path is written ``.``;
- durations of the form ``in 6.9 s`` / ``in 120 ms`` (the time a command took) are written ``in <T>``
  on both sides;
- trailing spaces and trailing blank lines are dropped;
- an output line that is exactly ``...`` stands for any number of lines (an excerpt).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_RE = re.compile(r"^\s*<!--\s*docs-test:\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<info>.*)$")
LISTING_RE = re.compile(r"^\s*tracekit\s")
DURATION_RE = re.compile(r"\bin \d+(?:\.\d+)? ?(?:s|ms|us|min)\b")
ELLIPSIS = "..."
COLUMNS = 100
TIMEOUT_S = 600


@dataclasses.dataclass
class Example:
    """One ``$ `` command of a page and the output lines written under it."""

    page: Path
    line: int  #: 1-based line of the ``$ `` line
    command: str  #: as bash runs it (continuations joined by newlines)
    expected: list[str]
    out_start: int  #: 0-based index of the first output line in the page
    out_end: int  #: 0-based index one past the last output line
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{_rel(self.page)}:{self.line}"


@dataclasses.dataclass
class Listing:
    """A fenced block that lists ``tracekit`` commands without ``$ `` prompts."""

    page: Path
    line: int
    skip: str | None


@dataclasses.dataclass
class Outcome:
    example: Example
    actual: list[str]
    ok: bool
    seconds: float


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every docs/*.md, found afresh on each run (new pages are picked up)."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted((root / "docs").glob("*.md"))


def _blocks(lines: list[str]) -> Iterator[tuple[int, int, str | None]]:
    """(first body line, fence-closing line, skip reason) of each fenced block, 0-based."""
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group("fence")
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
            j += 1
        prev = SKIP_RE.match(lines[i - 1]) if i > 0 else None
        yield i + 1, j, prev.group("reason") if prev else None
        i = j + 1


def parse(page: Path) -> tuple[list[Example], list[Listing]]:
    """The examples and listings of one page, in order."""
    lines = page.read_text().splitlines()
    examples: list[Example] = []
    listings: list[Listing] = []
    for start, end, skip in _blocks(lines):
        body = lines[start:end]
        if not any(ln.startswith("$ ") for ln in body):
            if any(LISTING_RE.match(ln) for ln in body):
                listings.append(Listing(page, start, skip))
            continue
        k = start
        while k < end:
            if not lines[k].startswith("$ "):
                k += 1  # text before the first prompt: not checked
                continue
            first = k
            cmd = [lines[k][2:]]
            while (cmd[-1].endswith("\\") or _open_quote("\n".join(cmd))) and k + 1 < end:
                k += 1
                cmd.append(lines[k])
            k += 1
            out_start = k
            while k < end and not lines[k].startswith("$ "):
                k += 1
            examples.append(Example(page, first + 1, "\n".join(cmd), lines[out_start:k], out_start, k, skip))
        last = examples[-1] if examples else None
        if last is not None and last.out_start == end and last.page == page:
            # a single command with no output in its block, a Markdown table right after the fence:
            # the table is its output (rendered as a table on the page)
            t = end + 1
            while t < len(lines) and not lines[t].strip():
                t += 1
            if t < len(lines) and lines[t].startswith("|"):
                u = t
                while u < len(lines) and lines[u].startswith("|"):
                    u += 1
                last.expected, last.out_start, last.out_end = lines[t:u], t, u
    return examples, listings


def _open_quote(text: str) -> bool:
    """True while a double- or single-quoted string of a command is still open (it goes on below)."""
    quote = None
    for ch in text:
        if quote is None and ch in "\"'":
            quote = ch
        elif ch == quote:
            quote = None
    return quote is not None


def _normalise(lines: list[str], work: Path | None = None) -> list[str]:
    out = []
    for ln in lines:
        if work is not None:
            ln = ln.replace(str(work.resolve()), ".").replace(str(work), ".")
        out.append(DURATION_RE.sub("in <T>", ln).rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality after normalisation, an ``...`` line standing for any lines."""
    exp = _normalise(expected)
    act = _normalise(actual)
    parts: list[list[str]] = [[]]
    for ln in exp:
        if ln.strip() == ELLIPSIS:
            parts.append([])
        else:
            parts[-1].append(ln)
    if len(parts) == 1:
        return exp == act
    head, *middle, tail = parts
    if act[: len(head)] != head or len(act) < len(head) + len(tail):
        return False
    if tail and act[len(act) - len(tail) :] != tail:
        return False
    pos, stop = len(head), len(act) - len(tail)
    for chunk in middle:
        for at in range(pos, stop - len(chunk) + 1):
            if act[at : at + len(chunk)] == chunk:
                pos = at + len(chunk)
                break
        else:
            return False
    return True


def make_work(dest: Path, root: Path = ROOT) -> Path:
    """A work folder: a copy of sample_traces/ and links to the repository's other visible entries."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name.startswith(".") or (dest / entry.name).exists():
            continue
        if entry.name == "sample_traces":
            shutil.copytree(entry, dest / entry.name)
        else:
            (dest / entry.name).symlink_to(entry)
    return dest


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(COLUMNS=str(COLUMNS), LINES="50", NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    for var in ("FORCE_COLOR", "TRACEKIT_DEBUG"):
        env.pop(var, None)
    return env


def run(example: Example, work: Path, env: dict[str, str]) -> Outcome:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", example.command],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
        )
        printed = proc.stdout
    except subprocess.TimeoutExpired:
        printed = f"[docs-test: timed out after {TIMEOUT_S} s]"
    actual = _normalise(printed.splitlines(), work)
    return Outcome(example, actual, matches(example.expected, actual), time.perf_counter() - t0)


def run_page(page: Path, scratch: Path) -> list[Outcome]:
    """Every example of ``page`` that is not skipped, in order, in one fresh work folder."""
    examples, _ = parse(page)
    todo = [e for e in examples if e.skip is None]
    if not todo:
        return []
    work = make_work(scratch / page.stem)
    env = environment()
    return [run(e, work, env) for e in todo]


def rewrite(page: Path, outcomes: list[Outcome]) -> bool:
    """Replace the output lines of the examples that differ; True when the page changed."""
    lines = page.read_text().splitlines()
    changed = False
    for o in sorted(outcomes, key=lambda o: -o.example.out_start):
        if o.ok:
            continue
        lines[o.example.out_start : o.example.out_end] = o.actual
        changed = True
    if changed:
        page.write_text("\n".join(lines) + "\n")
    return changed


def diff_text(o: Outcome) -> str:
    import difflib

    exp = _normalise(o.example.expected)
    body = difflib.unified_diff(exp, o.actual, "documented", "printed", lineterm="", n=2)
    return f"{o.example.where}: $ {o.example.command}\n" + "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pages", nargs="*", type=Path, help="pages to run (default: README.md and docs/*.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when an output differs")
    args = ap.parse_args(argv)
    todo = [p.resolve() for p in args.pages] or pages()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="tracekit-docs-") as tmp:
        for page in todo:
            examples, listings = parse(page)
            for e in examples:
                if e.skip is not None:
                    print(f"skip {e.where}: {e.skip}")
            for li in listings:
                if li.skip is None:
                    print(
                        f"FAIL {_rel(li.page)}:{li.line}: tracekit commands without '$ ' prompts (write them as examples or mark the block skipped)"
                    )
                    bad += 1
            outcomes = run_page(page, Path(tmp))
            for o in outcomes:
                print(f"{'ok  ' if o.ok else 'DIFF'} {o.example.where} ({o.seconds:.1f} s)")
                if not o.ok:
                    bad += 1
                    if args.check:
                        print(diff_text(o))
            if not args.check and rewrite(page, outcomes):
                print(f"rewrote {_rel(page)}")
    return 1 if bad and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
