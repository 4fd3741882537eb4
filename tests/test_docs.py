"""Every command example of README.md and docs/*.md runs as written and prints what the page shows.

The examples are found afresh on each run (a page added to docs/ is picked up) and run as
scripts/update_docs.py runs them (its docstring lists the rules and the only normalisations). A
page's examples run in order in one work folder, one test per page, so pages run in parallel under
pytest-xdist. To bring a page up to date: ``python scripts/update_docs.py docs/PAGE.md``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Pages other branches are writing; their listings are reported, not failed, until they land.


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["update_docs"] = mod
    spec.loader.exec_module(mod)
    return mod


docs = _load()
PAGES = docs.pages()


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_pages_are_found() -> None:
    names = {_id(p) for p in PAGES}
    assert {"README.md", "docs/replay.md", "docs/sql.md"} <= names
    assert len(names) == 1 + len(list((ROOT / "docs").glob("*.md")))


@pytest.mark.parametrize("page", [p for p in PAGES if any(e.skip is None for e in docs.parse(p)[0])], ids=_id)
def test_examples_print_what_the_page_shows(page: Path, tmp_path: Path) -> None:
    examples, _ = docs.parse(page)
    for e in examples:
        if e.skip is not None:
            print(f"skipped {e.where}: {e.skip}")
    outcomes = docs.run_page(page, tmp_path)
    assert outcomes
    bad = [docs.diff_text(o) for o in outcomes if not o.ok]
    assert not bad, (
        f"{len(bad)} example(s) of {_id(page)} print something else "
        f"(python scripts/update_docs.py {_id(page)} rewrites them):\n" + "\n\n".join(bad)
    )


def _skipped() -> list[tuple[str, str]]:
    return [(e.where, e.skip) for p in PAGES for e in docs.parse(p)[0] if e.skip is not None] + [
        (f"{_id(li.page)}:{li.line}", li.skip)
        for p in PAGES
        for li in docs.parse(p)[1]
        if li.skip is not None
    ]


@pytest.mark.parametrize(("where", "reason"), _skipped() or [("-", "-")])
def test_skipped_example(where: str, reason: str) -> None:
    """Each example marked ``docs-test: skip`` is reported as skipped, with its reason."""
    if where == "-":
        pytest.skip("no example is marked skipped")
    assert reason.strip(), f"{where}: a skip comment needs a reason"
    pytest.skip(f"{where}: {reason}")


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_listed_commands_are_examples_or_marked(page: Path) -> None:
    """A block listing ``tracekit`` commands without ``$`` prompts escapes the check: it must be
    written as examples or carry the skip comment with its reason."""
    _, listings = docs.parse(page)
    loose = [f"{_id(page)}:{li.line}" for li in listings if li.skip is None]
    assert not loose, f"tracekit commands without '$ ' prompts and no docs-test skip comment: {loose}"


# -- the harness itself, on pages written here ---------------------------------------------------


def test_parser_and_matcher_on_a_written_page(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n```console\n$ echo one \\\n  two\none two\n$ printf 'a\\nb\\nc\\n'\na\n...\n```\n\n"
        "<!-- docs-test: skip: needs a GPU -->\n```\n$ nvidia-smi\n```\n\n"
        "```\ntracekit info x\n```\n\n```\n$ printf '| a |\\n|---|\\n| 1 |\\n'\n```\n| a |\n|---|\n| 1 |\n"
    )
    examples, listings = docs.parse(page)
    assert [e.command for e in examples] == [
        "echo one \\\n  two",
        "printf 'a\\nb\\nc\\n'",
        "nvidia-smi",
        examples[3].command,
    ]
    assert examples[0].expected == ["one two"] and examples[1].expected == ["a", "..."]
    assert examples[2].skip == "needs a GPU" and examples[3].expected == ["| a |", "|---|", "| 1 |"]
    assert [(li.line, li.skip) for li in listings] == [(17, None)]  # the fence line
    outcomes = docs.run_page(page, tmp_path / "work")
    assert [o.ok for o in outcomes] == [True, True, True]
    # a wrong output is found and rewritten to what the command prints
    page.write_text(page.read_text().replace("one two\n", "one three\n"))
    outcomes = docs.run_page(page, tmp_path / "work2")
    assert [o.ok for o in outcomes] == [False, True, True]
    assert docs.rewrite(page, outcomes) and "one two\n" in page.read_text()


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (["a", "...", "d"], ["a", "b", "c", "d"], True),
        (["a", "...", "d"], ["a", "d"], True),
        (["a", "...", "c", "...", "e"], ["a", "b", "c", "d", "e"], True),
        (["a", "...", "x"], ["a", "b"], False),
        (["wrote it in 6.9 s"], ["wrote it in 12 s"], True),
        (["took 6.9 s"], ["took 12 s"], False),
        (["a  "], ["a", ""], True),
        (["1.0"], ["1.00"], False),
    ],
)
def test_matching_is_exact_but_for_the_documented_normalisations(
    expected: list[str], actual: list[str], ok: bool
) -> None:
    assert docs.matches(expected, actual) is ok
