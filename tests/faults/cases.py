"""The fault cases, in the seven classes of the reliability issue.

``all_cases()`` lists every case (the full run, ``python scripts/faults.py``); cases marked ``fast``
form the subset ``make test`` runs. Each case builds its own damaged input or hostile situation in a
temporary folder, runs tracekit as a user would (in-process, or as a process it kills, races, or
limits), and asserts what must hold: one line and a non-zero exit for a failure, one warning line for
a readable but incomplete or invalid input, the old output intact or a new one every reader
recognises as incomplete, and memory that does not follow a declared count.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.faults.harness import (
    DROP,
    SYNTH,
    Case,
    Result,
    base_trace,
    edit_status,
    invoke,
    kill_after,
    leftovers,
    one_line_error,
    part,
    remount_ro,
    run,
    start,
    status,
    tmpfs,
    tree_digest,
    warned,
)

GIB = 1024**3
#: Address-space limit of the memory cases (ulimit -v): far below what a declared count would need.
MEMORY_LIMIT = 3 * GIB


def _rewrite(path: Path, table: pa.Table, *, checksums: bool = True) -> None:
    pq.write_table(table, path, write_page_checksum=checksums)


def _rows(trace: Path, table: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (trace / table).iterdir())


def _set_rows(trace: Path, table: str) -> None:
    """Make rank 0's status agree with the files of ``table`` (so only the data check can catch it)."""
    raw = json.loads(status(trace).read_text())
    raw["rows"][table] = _rows(trace, table)
    raw["parts"][table] = len(list((trace / table).iterdir()))
    status(trace).write_text(json.dumps(raw))


# -- damage recipes: (name, what validate must say, function) ------------------------------------------


def _dmg_complete(value: object) -> Callable[[Path], None]:
    return lambda t: edit_status(t, complete=value)


def _dmg_missing_part(t: Path) -> None:
    part(t, "routing").unlink()


def _dmg_missing_table(t: Path) -> None:
    shutil.rmtree(t / "tokens")


def _dmg_extra_part(t: Path) -> None:
    shutil.copy(part(t, "routing"), t / "routing" / "r00000-p000001.parquet")


def _dmg_unknown_rank(t: Path) -> None:
    shutil.copy(part(t, "steps"), t / "steps" / "r00007-p000000.parquet")


def _dmg_foreign_name(t: Path) -> None:
    shutil.copy(part(t, "steps"), t / "steps" / "data.parquet")


def _dmg_rows(t: Path) -> None:
    raw = json.loads(status(t).read_text())
    raw["rows"]["routing"] += 5
    status(t).write_text(json.dumps(raw))


def _dmg_other_run(t: Path) -> None:
    edit_status(t, trace_id="0" * 32)


def _dmg_rank_field(t: Path) -> None:
    edit_status(t, rank=3)


def _dmg_world(t: Path) -> None:
    m = json.loads((t / "manifest.json").read_text())
    m["parallel"]["world_size"] = 3
    (t / "manifest.json").write_text(json.dumps(m))


def _dmg_rank_outside_world(t: Path) -> None:
    raw = json.loads(status(t).read_text())
    raw.update(rank=9, rows={}, parts={})
    status(t, 9).write_text(json.dumps(raw))


def _dmg_steps(kind: str) -> Callable[[Path], None]:
    def f(t: Path) -> None:
        p = part(t, "steps")
        tab = pq.read_table(p)
        if kind == "reversed":
            tab = tab.take(pa.array(list(range(tab.num_rows - 1, -1, -1))))
        else:
            tab = pa.concat_tables([tab.slice(0, 1), tab])
        _rewrite(p, tab)
        _set_rows(t, "steps")

    return f


def _dmg_routing(kind: str) -> Callable[[Path], None]:
    def f(t: Path) -> None:
        p = part(t, "routing")
        tab = pq.read_table(p)
        k = tab.schema.field("expert_ids").type.list_size
        n = tab.num_rows
        i = tab.schema.get_field_index("expert_ids")
        if kind == "duplicated":
            tab = pa.concat_tables([tab, tab.slice(n - 3, 3)])
        elif kind in ("expert-99", "expert-negative"):
            v = 99 if kind == "expert-99" else -1
            ids = np.asarray(tab.column("expert_ids").combine_chunks().flatten()).copy()
            ids[5] = v
            arr = pa.FixedSizeListArray.from_arrays(pa.array(ids, pa.int16()), k)
            tab = tab.set_column(i, tab.schema.field(i), arr)
        elif kind == "layer":
            j = tab.schema.get_field_index("layer")
            tab = tab.set_column(j, tab.schema.field(j), pa.array(np.full(n, 999), pa.int16()))
        elif kind == "nan":
            w = np.asarray(tab.column("gate_weights").combine_chunks().flatten()).copy()
            w[3] = np.nan
            j = tab.schema.get_field_index("gate_weights")
            tab = tab.set_column(
                j, tab.schema.field(j), pa.FixedSizeListArray.from_arrays(pa.array(w, pa.float32()), k)
            )
        elif kind == "topk":
            extra = tab.slice(0, 4)
            ids = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * (k + 1)), pa.int16()), k + 1)
            extra = extra.drop_columns(["gate_weights"]).set_column(
                extra.schema.get_field_index("expert_ids"), "expert_ids", ids
            )
            pq.write_table(
                extra.replace_schema_metadata(tab.schema.metadata), t / "routing" / "r00000-p000001.parquet"
            )
            _set_rows(t, "routing")
            return
        elif kind == "missing-column":
            tab = tab.drop_columns(["token_index"])
        elif kind == "mistyped":
            j = tab.schema.get_field_index("step")
            tab = tab.set_column(j, "step", tab.column("step").cast(pa.string()))
        _rewrite(p, tab)
        _set_rows(t, "routing")

    return f


def _dmg_wrong_folder(t: Path) -> None:
    shutil.move(str(part(t, "steps")), t / "tokens" / "r00000-p000001.parquet")


def _dmg_truncated(t: Path) -> None:
    p = part(t, "routing")
    p.write_bytes(p.read_bytes()[:-40])


def _dmg_garbage(t: Path) -> None:
    part(t, "expert_load").write_bytes(b"PAR1 definitely not parquet PAR1")


def _dmg_in_page(t: Path) -> None:
    """Flip bytes inside a data page of an uncompressed part (footer intact)."""
    p = part(t, "routing")
    tab = pq.read_table(p)
    pq.write_table(tab, p, compression="none", write_page_checksum=True)
    data = bytearray(p.read_bytes())
    meta = pq.ParquetFile(p).metadata.row_group(0).column(0)
    at = int(meta.data_page_offset) + 40
    for i in range(at, at + 16):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))


DAMAGES: list[tuple[str, str, Callable[[Path], None]]] = [
    ("complete-string-false", "complete is 'false'", _dmg_complete("false")),
    ("complete-string-true", "complete is 'true'", _dmg_complete("true")),
    ("complete-int", "complete is 1", _dmg_complete(1)),
    ("complete-null", "complete is None", _dmg_complete(None)),
    ("complete-missing", "complete is None", lambda t: edit_status(t, complete=DROP)),
    ("missing-part", "none is here", _dmg_missing_part),
    ("missing-table", "of tokens, none is here", _dmg_missing_table),
    ("extra-part", "the folder holds 2", _dmg_extra_part),
    ("unknown-rank-part", "rank 7, which has no shard status", _dmg_unknown_rank),
    ("foreign-file-name", "not a part file of a tracekit writer", _dmg_foreign_name),
    ("rows-disagree", "its part files hold", _dmg_rows),
    ("status-of-another-run", "written by another run", _dmg_other_run),
    ("status-rank-field", "says rank 3", _dmg_rank_field),
    ("world-larger-than-shards", "2 of the world size 3 ranks wrote no shard", _dmg_world),
    ("rank-outside-world", "outside the manifest's world size", _dmg_rank_outside_world),
    ("steps-reversed", "go backwards", _dmg_steps("reversed")),
    ("steps-duplicated", "appears twice", _dmg_steps("duplicated")),
    ("routing-duplicated", "rows repeat", _dmg_routing("duplicated")),
    ("expert-id-out-of-range", "outside 0..7", _dmg_routing("expert-99")),
    ("expert-id-negative", "outside 0..7", _dmg_routing("expert-negative")),
    ("layer-out-of-range", "column 'layer' holds values 999", _dmg_routing("layer")),
    ("gate-weight-nan", "NaN or infinite", _dmg_routing("nan")),
    (
        "topk-disagrees-between-parts",
        "fixed_size_list<int16>[3], expected fixed_size_list<int16>[2]",
        _dmg_routing("topk"),
    ),
    ("missing-column", "missing required column 'token_index'", _dmg_routing("missing-column")),
    ("mistyped-column", "column 'step' has type string", _dmg_routing("mistyped")),
    ("part-in-wrong-folder", "holds table 'steps' but sits in tokens/", _dmg_wrong_folder),
    ("truncated-footer", "not a readable Parquet file", _dmg_truncated),
    ("garbage-part", "not a readable Parquet file", _dmg_garbage),
    ("in-page-damage", "damaged data inside the file", _dmg_in_page),
]

#: Reading commands a damaged trace goes through: each must warn in one line or fail in one line.
READERS: list[tuple[str, Callable[[Path, Path], Result]]] = [
    ("info", lambda t, tmp: invoke("info", t)),
    ("stats", lambda t, tmp: invoke("stats", t, "--format", "csv")),
    ("sql", lambda t, tmp: invoke("sql", "SELECT count(*) FROM routing", t)),
    ("report", lambda t, tmp: invoke("report", "expert-load", t, "--format", "csv")),
    ("db", lambda t, tmp: invoke("db", t, "--out", tmp / "x.duckdb")),
]


def _validation_case(damage: Callable[[Path], None], expect: str, tmp: Path) -> None:
    t = base_trace(tmp)
    damage(t)
    r = invoke("validate", t)
    assert r.code == 2, f"validate exit {r.code}: {r.out} {r.err}"
    assert "Traceback" not in r.err
    assert expect in r.err, f"expected {expect!r} in: {r.err[-1500:]}"


def _reader_case(damage: Callable[[Path], None], reader: Callable[[Path, Path], Result], tmp: Path) -> None:
    t = base_trace(tmp)
    damage(t)
    r = reader(t, tmp)
    if r.code == 0:
        warned(r)
    else:
        one_line_error(r, code=(1, 2))


def _old_trace_note(tmp: Path) -> None:
    t = base_trace(tmp)
    for table in ("steps", "routing"):
        p = part(t, table)
        _rewrite(p, pq.read_table(p), checksums=False)
    r = invoke("validate", t)
    assert r.code == 0 and "valid" in r.out and "2 of 5 part files have no page checksums" in r.out, r.out


def validation_cases() -> list[Case]:
    out = [
        Case(name, "1-validation", partial(_validation_case, fn, expect), fast=i % 4 == 0)
        for i, (name, expect, fn) in enumerate(DAMAGES)
    ]
    out.append(Case("no-page-checksums-note", "1-validation", _old_trace_note, fast=True))
    out.append(Case("sample-traces-valid", "1-validation", _samples_valid, fast=True))
    return out


def _samples_valid(tmp: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "sample_traces"
    for t in sorted(root.iterdir()):
        r = invoke("validate", t)
        assert r.code == 0 and "valid" in r.out, (t, r.err)


def reader_cases() -> list[Case]:
    return [
        Case(
            f"{dname}-{rname}",
            "7-readers-warn-hostile",
            partial(_reader_case, fn, reader),
            fast=(i + j) % 17 == 0,
        )
        for i, (dname, _, fn) in enumerate(DAMAGES)
        for j, (rname, reader) in enumerate(READERS)
    ]


# -- class 6: one-line errors --------------------------------------------------------------------------


def _manifest(text: str | Callable[[dict], object]) -> Callable[[Path], None]:
    def f(t: Path) -> None:
        if isinstance(text, str):
            (t / "manifest.json").write_text(text)
        else:
            m = json.loads((t / "manifest.json").read_text())
            text(m)
            (t / "manifest.json").write_text(json.dumps(m))

    return f


def _set(path: str, value: object) -> Callable[[dict], object]:
    def f(m: dict) -> None:
        keys = path.split(".")
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return f


MANIFESTS: list[tuple[str, Callable[[Path], None]]] = [
    ("deeply-nested", _manifest("[" * 200_000 + "]" * 200_000)),
    ("deeply-nested-object", _manifest('{"a":' * 100_000 + "1" + "}" * 100_000)),
    ("not-json", _manifest("{not json")),
    ("not-an-object", _manifest("[1, 2, 3]")),
    ("empty", _manifest("")),
    ("binary", _manifest("\x00\xff\xfe")),
    ("world-size-string", _manifest(_set("parallel.world_size", "4"))),
    ("world-size-huge", _manifest(_set("parallel.world_size", 10**12))),
    ("world-size-zero", _manifest(_set("parallel.world_size", 0))),
    ("experts-huge", _manifest(_set("model.num_experts", 10**9))),
    ("top-k-huge", _manifest(_set("model.top_k", 10**9))),
    ("layers-huge", _manifest(_set("model.num_layers", 10**12))),
    ("moe-layer-outside", _manifest(_set("model.moe_layers", [0, 99999]))),
    ("model-missing", _manifest(lambda m: m.pop("model"))),
    ("newer-major", _manifest(_set("schema_version", "9.0"))),
]
MANIFEST_COMMANDS: list[tuple[str, Callable[[Path, Path], Result]]] = [
    ("validate", lambda t, tmp: invoke("validate", t)),
    *READERS,
    (
        "synth-fitted",
        lambda t, tmp: invoke(
            "synth",
            *SYNTH[:-4],
            "--tokens-per-step",
            "4",
            "--steps",
            "2",
            "--routing",
            f"fitted:{t}",
            "--out",
            tmp / "s",
        ),
    ),
]


def _manifest_case(
    name: str, damage: Callable[[Path], None], cmd: Callable[[Path, Path], Result], tmp: Path
) -> None:
    t = base_trace(tmp)
    damage(t)
    r = cmd(t, tmp)
    if name == "validate":  # validate's own format: one line per problem, naming the file
        assert r.code == 2 and len(r.err_lines) == 1 and "Traceback" not in r.err, r.err
        assert "manifest" in r.err_lines[0], r.err_lines[0]
    else:
        one_line_error(r, code=2)


USAGE: list[tuple[str, tuple[str, ...], str]] = [
    ("unknown-command", ("validat", "x"), "No such command"),
    ("bad-int", ("synth", "--steps", "abc"), "not a valid integer"),
    ("missing-option", ("synth", "--phase", "decode"), "Missing option"),
    (
        "bad-choice",
        ("synth", "--phase", "both", "--model", "m", "--steps", "1", "--tokens-per-step", "1", "--out", "o"),
        "Invalid value for '--phase'",
    ),
    ("unknown-option", ("info", "--colour", "x"), "No such option"),
    ("extra-argument", ("schema", "steps", "tokens"), "unexpected extra argument"),
    ("missing-argument", ("info",), "Missing argument"),
    ("negative-max-rows", ("sql", "SELECT 1", "--max-rows", "-1"), "--max-rows"),
    ("bad-format", ("sql", "SELECT 1", "--format", "xml"), "--format"),
    ("option-needs-value", ("db", "x", "--out"), "requires an argument"),
    ("sub-sub-command", ("hw", "nope"), "No such command"),
    ("import-unknown", ("import", "foo"), "No such command"),
    ("report-bad-format", ("report", "x", "--format", "yaml"), "--format"),
]


def _usage_case(args: tuple[str, ...], expect: str, tmp: Path) -> None:
    one_line_error(invoke(*args), code=2, contains=expect)


def _writers(tmp: Path, t: Path, out: Path) -> dict[str, tuple[object, ...]]:
    return {
        "synth": ("synth", *SYNTH, "--out", out),
        "db": ("db", t, "--out", out.with_suffix(".duckdb")),
        "report-html": ("report", "html", t, "--out", out.with_suffix(".html")),
        "report-csv": ("report", "expert-load", t, "--format", "csv", "--out", out.with_suffix(".csv")),
        "stats": ("stats", t, "--out", out),
        "replay": ("replay", t, "--hw", "h200-sxm", "--out", out),
    }


def _disk_full(writer: str, force: bool, tmp: Path) -> None:
    t = base_trace(tmp)
    with tmpfs(tmp, "4m") as mnt:
        out = mnt / "out"
        args = _writers(tmp, t, out)[writer]
        target = Path(str(args[-1]))
        if force:
            r0 = invoke(*args)  # the old output, while there is room
            assert r0.code == 0, r0.err
            before = tree_digest(target)
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # leave almost nothing free
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        fh_free = os.statvfs(mnt).f_bavail
        assert fh_free == 0 or fh_free < 4
        r = invoke(*args, *(["--force"] if force else []))
        one_line_error(r, code=(1, 2))
        assert any(w in r.err_lines[0] for w in ("no space left", "ENOSPC", "on disk")), r.err_lines[0]
        if force:
            assert tree_digest(target) == before, "the old output changed"
        elif target.exists():
            _recognised_incomplete(target)
        assert not leftovers(mnt), leftovers(mnt)


def _read_only(writer: str, tmp: Path) -> None:
    t = base_trace(tmp)
    with tmpfs(tmp, "8m") as mnt:
        out = mnt / "out"
        args = _writers(tmp, t, out)[writer]
        target = Path(str(args[-1]))
        assert invoke(*args).code == 0
        before = tree_digest(target)
        remount_ro(mnt)
        r = invoke(*args, "--force")
        one_line_error(r, code=2, contains="read-only")
        assert tree_digest(target) == before


def error_cases() -> list[Case]:
    out = [
        Case(
            f"manifest-{mname}-{cname}",
            "6-one-line-errors",
            partial(_manifest_case, cname, fn, cmd),
            fast=(i * 7 + j) % 19 == 0,
        )
        for i, (mname, fn) in enumerate(MANIFESTS)
        for j, (cname, cmd) in enumerate(MANIFEST_COMMANDS)
    ]
    out += [
        Case(f"usage-{n}", "6-one-line-errors", partial(_usage_case, a, e), fast=True) for n, a, e in USAGE
    ]
    writers = ["synth", "db", "report-html", "report-csv", "stats", "replay"]
    out += [
        Case(
            f"disk-full-{w}{'-force' if f else ''}",
            "6-one-line-errors",
            partial(_disk_full, w, f),
            needs_root=True,
            fast=w == "db" and not f,
        )
        for w in writers
        for f in (False, True)
    ]
    out += [
        Case(
            f"read-only-{w}", "6-one-line-errors", partial(_read_only, w), needs_root=True, fast=w == "synth"
        )
        for w in writers
    ]
    out += [
        Case(
            "unreadable-query-file",
            "6-one-line-errors",
            lambda tmp: one_line_error(invoke("sql", "-f", tmp / "none.sql"), code=2),
        ),
        Case("out-is-an-input-synth", "6-one-line-errors", _out_is_input_synth, fast=True),
        Case("out-is-an-input-db", "6-one-line-errors", _out_is_input_db),
        Case("out-is-an-input-report", "6-one-line-errors", _out_is_input_report),
        Case("out-is-an-input-stats", "6-one-line-errors", _out_is_input_stats),
        Case("db-mistyped-input-keeps-db", "6-one-line-errors", _db_mistyped_keeps, fast=True),
        Case("partial-result-refused-sql", "6-one-line-errors", partial(_partial_result, "sql"), fast=True),
        Case("partial-result-refused-report", "6-one-line-errors", partial(_partial_result, "report")),
        Case("partial-stats-refused", "6-one-line-errors", _partial_stats),
    ]
    return out


def _out_is_input_synth(tmp: Path) -> None:
    t = base_trace(tmp)
    before = tree_digest(t)
    r = invoke(
        "synth",
        *SYNTH[:-4],
        "--tokens-per-step",
        "4",
        "--steps",
        "2",
        "--routing",
        f"fitted:{t}",
        "--out",
        t,
        "--force",
    )
    one_line_error(r, code=2, contains="also an input")
    assert tree_digest(t) == before


def _out_is_input_db(tmp: Path) -> None:
    t = base_trace(tmp)
    p = part(t, "steps")
    before = tree_digest(t)
    one_line_error(invoke("db", t, "--out", p, "--force"), code=2, contains="also an input")
    assert tree_digest(t) == before


def _out_is_input_report(tmp: Path) -> None:
    t = base_trace(tmp)
    before = tree_digest(t)
    one_line_error(
        invoke("report", "html", t, "--out", t / "manifest.json", "--force"), code=2, contains="also an input"
    )
    assert tree_digest(t) == before


def _out_is_input_stats(tmp: Path) -> None:
    t = base_trace(tmp)
    before = tree_digest(t)
    one_line_error(invoke("stats", t, "--out", t, "--force"), code=2, contains="also an input")
    assert tree_digest(t) == before


def _db_mistyped_keeps(tmp: Path) -> None:
    t = base_trace(tmp)
    db = tmp / "x.duckdb"
    assert invoke("db", t, "--out", db).code == 0
    before = db.read_bytes()
    one_line_error(invoke("db", tmp / "tpyo", "--out", db, "--force"), code=2)
    assert db.read_bytes() == before


def _partial_result(cmd: str, tmp: Path) -> None:
    t = base_trace(tmp)
    res = tmp / "r"
    assert invoke("replay", t, "--hw", "h200-sxm", "--out", res).code == 0
    (res / "result.json").unlink()
    args = (
        ("sql", "SELECT count(*) FROM replay_steps", res)
        if cmd == "sql"
        else ("report", "replay-compare", res)
    )
    one_line_error(invoke(*args), code=2, contains="partial output")


def _partial_stats(tmp: Path) -> None:
    t = base_trace(tmp)
    s = tmp / "s"
    assert invoke("stats", t, "--out", s).code == 0
    (s / "stats.json").unlink()
    one_line_error(invoke("sql", "SELECT count(*) FROM stats_layers", s), code=2, contains="partial output")


# -- class 3: glob characters in paths --------------------------------------------------------------

GLOB_NAMES = [
    ("a[1]", "a1"),
    ("star*", "starX"),
    ("q?", "qX"),
    ("b]", "b"),
    ("c{1,2}", "c1"),
    ("h[a-z]", "hb"),
    ("sp ace", "sp"),
    ("quo'te", "quote"),
]


def _glob_case(name: str, decoy: str, reader: str, tmp: Path) -> None:
    t = base_trace(tmp, name)
    d = base_trace(tmp, decoy)
    # the decoy holds twice the rows: reading it by mistake changes every count
    for table in ("routing", "expert_load", "steps", "tokens"):
        shutil.copy(part(d, table), d / table / "r00000-p000001.parquet")
        _set_rows(d, table)
    want = _rows(t, "routing")
    if reader == "sql":
        r = invoke("sql", "SELECT count(*) AS n FROM routing", t, "--format", "csv")
        assert r.code == 0 and r.out.split()[-1] == str(want), (r.out, r.err)
    elif reader == "db":
        db = tmp / "g.duckdb"
        assert invoke("db", t, "--out", db).code == 0
        con = duckdb.connect(str(db), read_only=True)
        got = con.execute("SELECT count(*) FROM routing").fetchone()
        con.close()
        assert got == (want,), got
    elif reader == "report":
        r = invoke("report", "expert-load", t, "--format", "csv")
        assert r.code == 0, r.err
        lines = r.out.splitlines()
        col = lines[0].split(",").index("num_tokens")
        total = sum(int(line.split(",")[col]) for line in lines[1:] if line)
        want_tokens = int(pq.read_table(part(t, "expert_load")).column("num_tokens").to_numpy().sum())
        assert total == want_tokens, (total, want_tokens)
    elif reader == "stats":
        r = invoke("stats", t, "--json")
        assert r.code == 0, r.err
        rows = json.loads(r.out)
        assert rows and all(row["num_tokens"] == 4 * 8 for row in rows), rows[:1]
    elif reader == "info":
        r = invoke("info", t, "--json")
        assert r.code == 0 and json.loads(r.out)["tables"]["routing"]["rows"] == want
    elif reader == "replay":  # the same trace under a plain name must replay to the same figures
        plain = base_trace(tmp, "plain")
        r = invoke("replay", t, "--hw", "h200-sxm", "--json")
        p = invoke("replay", plain, "--hw", "h200-sxm", "--json")
        assert r.code == 0 and p.code == 0, r.err + p.err
        a, b = json.loads(r.out), json.loads(p.out)
        assert a.get("summary") == b.get("summary"), (a.get("summary"), b.get("summary"))


GLOB_READERS = ["sql", "db", "report", "stats", "info", "replay"]


def glob_cases() -> list[Case]:
    return [
        Case(
            f"{name}-{reader}",
            "3-glob-paths",
            partial(_glob_case, name, decoy, reader),
            fast=(i + j) % 9 == 0,
        )
        for i, (name, decoy) in enumerate(GLOB_NAMES)
        for j, reader in enumerate(GLOB_READERS)
    ]


# -- class 5: kills at random points ------------------------------------------------------------------


def _recognised_incomplete(target: Path) -> None:
    """What a killed writer left at ``target`` is refused or flagged by the readers."""
    if (target / "manifest.json").is_file():
        r = invoke("validate", target)
        assert r.code == 2 and "incomplete" in r.err, (r.out, r.err)
        w = invoke("info", target)
        assert w.code != 0 or "warning" in w.err, w.err
    elif target.is_dir():
        r = invoke("sql", "SELECT 1", target)
        assert r.code == 2, (r.out, r.err)
    else:
        raise AssertionError(f"{target}: a partial file is in place")


def _complete_trace(target: Path, rows: int) -> None:
    r = invoke("validate", target)
    assert r.code == 0, r.err
    assert _rows(target, "routing") == rows


def _kill_writer(writer: str, force: bool, delay: float, tmp: Path) -> None:
    t = base_trace(tmp)
    out = tmp / "out"
    args: tuple[object, ...]
    synth_big = ["--model", "deepseek-v3", "--phase", "decode", "--tokens-per-step", "256", "--steps", "12"]
    if writer == "synth":
        args = ("synth", *synth_big, "--out", out)
        target = out
    elif writer == "db":
        target = tmp / "x.duckdb"
        args = ("db", t, "--out", target)
    elif writer == "report-html":
        target = tmp / "r.html"
        args = ("report", "html", t, "--out", target)
    elif writer == "stats":
        target = out
        args = ("stats", t, "--out", out)
    elif writer == "replay":
        target = out
        args = ("replay", t, "--hw", "h200-sxm", "--out", out)
    elif writer == "sweep":
        target = out
        args = (
            "sweep",
            t,
            "--hw",
            "h200-sxm",
            "--ep",
            "8",
            "--batch-per-gpu",
            "8,16",
            "--no-plot",
            "--out",
            out,
        )
    elif writer == "place":
        target = tmp / "p.parquet"
        args = ("place", t, "--ep", "4", "--policy", "greedy", "--out", target)
    elif writer == "import":
        from tests.importers.kineto_layout import KinetoBuilder

        files = []
        for rank in range(2):
            b = KinetoBuilder(rank=rank, world_size=2)
            for i in range(3000):
                b.kernel(f"k{i % 7}", 1000.0 + i * 3, 2.0)
            files.append(b.write(tmp / f"trace_rank{rank}.json"))
        target = out
        args = ("import", "kineto", *files, "--out", out)
    elif writer == "record":
        target = out
        args = (
            "record",
            "--model",
            "tiny-mixtral",
            "--num-prompts",
            "4",
            "--max-new-tokens",
            "4",
            "--out",
            out,
        )
    else:
        raise ValueError(writer)
    before = None
    if force:
        r0 = run(*args)
        assert r0.code == 0, r0.err
        before = tree_digest(target)
        args = (*args, "--force")
    code = kill_after(start(*args), delay)
    if code == 0:  # finished before the kill: must be complete
        _check_complete(writer, target)
    elif target.exists():
        if before is not None and tree_digest(target) == before:
            pass  # the old output, untouched
        else:
            try:
                _check_complete(writer, target)
            except AssertionError:
                _recognised_incomplete(target)


def _check_complete(writer: str, target: Path) -> None:
    if writer in ("synth", "record", "import"):
        r = invoke("validate", target)
        assert r.code == 0, r.err
        if writer == "synth":
            assert _rows(target, "routing") == 256 * 12 * 58
    elif writer == "db":
        con = duckdb.connect(str(target), read_only=True)
        n = con.execute("SELECT count(*) FROM routing").fetchone()
        con.close()
        assert n and n[0] > 0
    elif writer == "report-html":
        assert target.read_text().rstrip().endswith("</html>")
    elif writer == "place":
        pq.read_table(target)
    else:
        r = invoke("sql", "SELECT 1", target)
        assert r.code == 0, r.err


KILLED = [
    ("synth", 1.0, 9.0, 16, True),
    ("db", 0.5, 3.0, 10, True),
    ("report-html", 0.5, 4.0, 10, True),
    ("stats", 0.5, 4.0, 8, True),
    ("replay", 0.5, 5.0, 8, True),
    ("sweep", 0.5, 8.0, 6, False),
    ("place", 0.3, 2.5, 6, False),
    ("import", 0.5, 4.0, 8, True),
    ("record", 3.0, 14.0, 6, False),
]


def kill_cases() -> list[Case]:
    rng = random.Random(20)
    out = []
    for writer, lo, hi, n, with_force in KILLED:
        for i in range(n):
            delay = round(rng.uniform(lo, hi), 2)
            force = with_force and i % 2 == 1
            known = ""
            out.append(
                Case(
                    f"{writer}{'-force' if force else ''}-at-{delay}s",
                    "5-atomic-outputs",
                    partial(_kill_writer, writer, force, delay),
                    fast=i == 0 and writer in ("db", "synth"),
                    known=known,
                )
            )
    out.append(Case("rename-exchange-or-fallback", "5-atomic-outputs", _exchange_fallback, fast=True))
    out.append(Case("interrupted-swap-is-undone", "5-atomic-outputs", _interrupted_swap, fast=True))
    return out


def _exchange_fallback(tmp: Path) -> None:
    from tracekit.trace import outputs

    a, b = tmp / "a", tmp / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "x").write_text("old")
    outputs.replace_dir(a, b)
    assert (b / "x").read_text() == "new" and not a.exists()


def _interrupted_swap(tmp: Path) -> None:
    """A writer killed between the two renames of the fallback swap: the next writer restores the old."""
    from tracekit.trace import outputs

    t = base_trace(tmp)
    before = tree_digest(t)
    aside = tmp / f".t{outputs.OLD_TAG}12345"
    os.rename(t, aside)
    r = invoke("synth", *SYNTH, "--out", t)  # the next writer of t: restores it, then refuses (no --force)
    one_line_error(r, code=2, contains="--force")
    assert tree_digest(t) == before and not aside.exists()


# -- class 4: racing writers ----------------------------------------------------------------------------


def _race(writer: str, force: bool, tmp: Path) -> None:
    t = base_trace(tmp)
    big = ["--model", "deepseek-v3", "--phase", "decode", "--tokens-per-step", "64", "--steps", "6"]
    out = tmp / "out"
    table = {
        "synth": ("synth", *big, "--out", out),
        "db": ("db", t, "--out", tmp / "x.duckdb"),
        "report-html": ("report", "html", t, "--out", tmp / "r.html"),
        "stats": ("stats", t, "--out", out),
        "replay": ("replay", t, "--hw", "h200-sxm", "--out", out),
    }
    args = table[writer]
    target = Path(str(args[-1]))
    if force:
        assert run(*args).code == 0
        args = (*args, "--force")
    procs = [start(*args) for _ in range(3)]
    results = []
    for p in procs:
        o, e = p.communicate(timeout=300)
        results.append(Result(p.returncode, o, e))
    ok = [r for r in results if r.code == 0]
    busy = [r for r in results if r.code != 0]
    assert ok, [r.err for r in results]
    for r in busy:
        one_line_error(r, code=2)
        assert "is writing it now" in r.err or "already exists" in r.err or "exists" in r.err, r.err
    _check_complete(
        "synth" if writer == "synth" else writer, target
    ) if writer != "synth" else _race_synth_ok(target)
    assert not leftovers(target.parent)


def _race_synth_ok(target: Path) -> None:
    r = invoke("validate", target)
    assert r.code == 0, r.err
    assert _rows(target, "routing") == 64 * 6 * 58


def _lock_message(tmp: Path) -> None:
    from tracekit.trace.outputs import Output

    out = tmp / "o.duckdb"
    with Output(out, kind="file") as o:
        o.target.write_text("held")
        r = invoke("db", base_trace(tmp), "--out", out)
        one_line_error(r, code=2, contains="is writing it now")
        assert str(os.getpid()) in r.err


def _killed_holder_frees(tmp: Path) -> None:
    out = tmp / "out"
    p = start(
        "synth",
        "--model",
        "deepseek-v3",
        "--phase",
        "decode",
        "--tokens-per-step",
        "256",
        "--steps",
        "40",
        "--out",
        out,
    )
    time.sleep(2.5)
    kill_after(p, 0)
    r = invoke("synth", *SYNTH, "--out", out, "--force")
    assert r.code == 0, r.err
    assert invoke("validate", out).code == 0


def race_cases() -> list[Case]:
    out = []
    for writer in ("synth", "db", "report-html", "stats", "replay"):
        for force in (False, True):
            for rep in range(2):
                out.append(
                    Case(
                        f"{writer}{'-force' if force else ''}-x3-{rep}",
                        "4-racing-writers",
                        partial(_race, writer, force),
                        fast=writer == "db" and not force and rep == 0,
                    )
                )
    out.append(Case("busy-message-names-pid", "4-racing-writers", _lock_message, fast=True))
    for i in range(2):
        out.append(Case(f"killed-holder-frees-the-lock-{i}", "4-racing-writers", _killed_holder_frees))
    return out


# -- class 2: memory under ulimit -v -------------------------------------------------------------------


def _memory_manifest(path: str, value: object, cmd: str, expect_ok: bool, tmp: Path) -> None:
    t = base_trace(tmp)
    _manifest(_set(path, value))(t)
    args = {
        "validate": ("validate", t),
        "info": ("info", t),
        "stats": ("stats", t, "--format", "csv"),
        "sql": ("sql", "SELECT count(*) FROM routing", t),
        "db": ("db", t, "--out", tmp / "m.duckdb"),
    }[cmd]
    r = run(*args, memory_bytes=MEMORY_LIMIT)
    assert "MemoryError" not in r.err and "Traceback" not in r.err, r.err[-1500:]
    if expect_ok:
        assert r.code in (0, 2), r.err
        if cmd != "validate":
            assert r.code == 0 and ("warning" in r.err), r.err
        else:
            assert "wrote no shard" in r.err
    elif cmd == "validate":  # validate's own format: one line per problem
        assert r.code == 2 and len(r.err_lines) == 1 and "manifest.json" in r.err_lines[0], r.err
    else:
        one_line_error(r, code=2)


def _memory_kineto(tmp: Path) -> None:
    from tests.importers.kineto_layout import KinetoBuilder

    files = []
    for rank in (0, 1_000_000_000):  # the world size follows the largest rank in the file names
        b = KinetoBuilder(rank=0, world_size=2)
        b.kernel("k", 1000.0, 2.0)
        files.append(b.write(tmp / f"trace_rank{rank}.json"))
    r = run("import", "kineto", *files, "--out", tmp / "k", memory_bytes=MEMORY_LIMIT)
    assert "MemoryError" not in r.err and "Traceback" not in r.err, r.err[-1500:]
    assert r.code == 0 or len(r.err_lines) == 1, r.err
    if r.code == 0:
        v = run("validate", tmp / "k", memory_bytes=MEMORY_LIMIT)
        assert "MemoryError" not in v.err and v.code == 2 and "wrote no shard" in v.err, v.err[-800:]


def _memory_sglang(world: int | None, rank: int, tmp: Path) -> None:
    """A per-pass dump whose record says rank ``rank``: the world size it implies is a declared count."""
    import torch

    phy2log = torch.arange(8, dtype=torch.int32).repeat(3, 1)
    record = {
        "forward_pass_id": 7,
        "rank": rank,
        "gatherer_key": "primary",
        "global_physical_count": torch.ones((3, 8), dtype=torch.int32),
    }
    path = tmp / "expert_distribution_recorder_1.pt"
    torch.save({"records": [record], "last_physical_to_logical_map": phy2log}, path)
    extra = ["--world-size", str(world)] if world else []
    r = run("import", "sglang", path, "--out", tmp / "s", *extra, memory_bytes=MEMORY_LIMIT)
    assert "MemoryError" not in r.err and "Traceback" not in r.err, r.err[-1500:]
    if r.code != 0:
        one_line_error(r, code=2)
        return
    v = run("validate", tmp / "s", memory_bytes=MEMORY_LIMIT)
    assert "MemoryError" not in v.err and "Traceback" not in v.err, v.err[-800:]
    assert v.code == 2 and "wrote no shard" in v.err, (v.out, v.err[-800:])


def _memory_flag(args: tuple[str, ...], known: str, tmp: Path) -> None:
    t = base_trace(tmp)
    argv = [a.replace("{t}", str(t)).replace("{tmp}", str(tmp)) for a in args]
    r = run(*argv, memory_bytes=MEMORY_LIMIT, timeout=120)
    assert "MemoryError" not in r.err and "Traceback" not in r.err, r.err[-1500:]
    one_line_error(r, code=2)


MEMORY_FLAGS: list[tuple[str, tuple[str, ...], str]] = [
    ("record-ep-256", ("record", "--model", "tiny-mixtral", "--ep", "256", "--out", "{tmp}/r"), ""),
    ("record-ep-100000", ("record", "--model", "tiny-mixtral", "--ep", "100000", "--out", "{tmp}/r"), ""),
    (
        "synth-tokens-1e9",
        (
            "synth",
            "--model",
            "deepseek-v3",
            "--phase",
            "decode",
            "--tokens-per-step",
            "1000000000",
            "--steps",
            "1",
            "--out",
            "{tmp}/s",
        ),
        "",
    ),
    (
        "synth-tokens-1e7",
        (
            "synth",
            "--model",
            "deepseek-v3",
            "--phase",
            "decode",
            "--tokens-per-step",
            "10000000",
            "--steps",
            "1",
            "--out",
            "{tmp}/s",
        ),
        "",
    ),
    (
        "synth-steps-2e31",
        (
            "synth",
            "--model",
            "mixtral-8x7b",
            "--phase",
            "decode",
            "--tokens-per-step",
            "8",
            "--steps",
            "4294967296",
            "--out",
            "{tmp}/s",
        ),
        "",
    ),
    (
        "synth-disk",
        (
            "synth",
            "--model",
            "deepseek-v3",
            "--phase",
            "decode",
            "--tokens-per-step",
            "100000",
            "--steps",
            "100000000",
            "--out",
            "{tmp}/s",
        ),
        "",
    ),
    (
        "replay-ep-100000",
        ("replay", "{t}", "--hw", "h200-sxm", "--ep", "100000"),
        "",
    ),
    (
        "replay-batch-1e12",
        ("replay", "{t}", "--hw", "h200-sxm", "--batch-per-gpu", "1000000000000"),
        "",
    ),
    (
        "place-redundant-1e9",
        ("place", "{t}", "--ep", "8", "--redundant", "1000000000"),
        "",
    ),
    (
        "sweep-ep-100000",
        ("sweep", "{t}", "--hw", "h200-sxm", "--ep", "100000", "--out", "{tmp}/w"),
        "",
    ),
]


def memory_cases() -> list[Case]:
    out = []
    for path, value, ok in (
        ("parallel.world_size", 2**31 - 1, True),
        ("parallel.world_size", 10**12, False),
        ("model.num_experts", 10**9, False),
        ("model.top_k", 10**9, False),
        ("model.num_layers", 10**9, False),
    ):
        for cmd in ("validate", "info", "stats", "sql", "db"):
            out.append(
                Case(
                    f"manifest-{path.split('.')[-1]}-{value}-{cmd}",
                    "2-memory",
                    partial(_memory_manifest, path, value, cmd, ok),
                    fast=cmd == "validate" and value == 2**31 - 1,
                )
            )
    out.append(Case("kineto-rank-1000000000", "2-memory", _memory_kineto, fast=True))
    out.append(Case("sglang-rank-1000000000", "2-memory", partial(_memory_sglang, None, 1_000_000_000)))
    out.append(Case("sglang-world-size-1e12", "2-memory", partial(_memory_sglang, 10**12, 0)))
    out += [
        Case(f"flag-{n}", "2-memory", partial(_memory_flag, a, k), known=k, fast=n == "record-ep-256")
        for n, a, k in MEMORY_FLAGS
    ]
    return out


# -- class 7: hostile strings ---------------------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    "x'; DROP TABLE routing; --",
    'quote"double',
    "new\nline",
    "tab\tand\rreturn",
    "\u202eright-to-left",
    "emoji-\U0001f525",
    "back\\slash",
    "{{template}}",
    "%s%n%x",
]


def _hostile_model_name(name: str, cmd: str, tmp: Path) -> None:
    t = base_trace(tmp)
    _manifest(_set("model.name", name))(t)
    if cmd == "html":
        out = tmp / "r.html"
        r = invoke("report", "html", t, "--out", out)
        assert r.code == 0, r.err
        assert "<script>alert(1)</script>" not in out.read_text()
    elif cmd == "info":
        r = invoke("info", t)
        assert r.code == 0 and "Traceback" not in r.err, r.err
    elif cmd == "sql":
        r = invoke("sql", "SELECT model FROM inputs", t, "--format", "json")
        assert r.code == 0 and json.loads(r.out)[0]["model"] == name, r.out
    elif cmd == "db":
        db = tmp / "h.duckdb"
        assert invoke("db", t, "--out", db).code == 0
        con = duckdb.connect(str(db), read_only=True)
        got = con.execute("SELECT model FROM inputs").fetchone()
        con.close()
        assert got == (name,), got


def _hostile_param(value: str, tmp: Path) -> None:
    t = base_trace(tmp)
    r = invoke("report", "imbalance", t, "-p", f"ep={value}", "--format", "csv")
    if r.code != 0:
        one_line_error(r, code=2)
    r2 = invoke("sql", "SELECT count(*) FROM routing", t)
    assert r2.code == 0, "the trace was changed by a parameter"


def _hostile_input_name(value: str, tmp: Path) -> None:
    t = base_trace(tmp)
    r = invoke("sql", "SELECT 1", f"{value}={t}")
    if r.code != 0:
        one_line_error(r, code=2)


def _hostile_path(name: str, tmp: Path) -> None:
    t = base_trace(tmp, name)
    r = invoke("sql", "SELECT count(*) AS n FROM routing", t, "--format", "csv")
    if r.code != 0:
        one_line_error(r, code=2)
    else:
        assert r.out.split()[-1] == str(_rows(t, "routing"))
    out = tmp / (name + "-out")
    r = invoke("synth", *SYNTH, "--out", out)
    assert r.code == 0 or len(r.err_lines) == 1, r.err


def _long_name(tmp: Path) -> None:
    one_line_error(invoke("synth", *SYNTH, "--out", tmp / ("x" * 300)), code=2)


def hostile_cases() -> list[Case]:
    out = []
    for i, name in enumerate(HOSTILE):
        for cmd in ("html", "info", "sql", "db"):
            out.append(
                Case(
                    f"model-name-{i}-{cmd}",
                    "7-readers-warn-hostile",
                    partial(_hostile_model_name, name, cmd),
                    fast=i == 0 and cmd == "html",
                )
            )
        out.append(Case(f"report-param-{i}", "7-readers-warn-hostile", partial(_hostile_param, name)))
        out.append(
            Case(f"input-name-{i}", "7-readers-warn-hostile", partial(_hostile_input_name, name), fast=i == 1)
        )
        if "\n" not in name and "\r" not in name:
            out.append(
                Case(f"path-{i}", "7-readers-warn-hostile", partial(_hostile_path, name.replace("/", "_")))
            )
    out.append(Case("path-too-long", "7-readers-warn-hostile", _long_name, fast=True))
    out.append(Case("incomplete-trace-warns-sql", "7-readers-warn-hostile", _incomplete_warns, fast=True))
    return out


def _incomplete_warns(tmp: Path) -> None:
    t = base_trace(tmp)
    edit_status(t, complete=False)
    warned(invoke("sql", "SELECT count(*) FROM routing", t), contains="incomplete")


def all_cases() -> list[Case]:
    cases = (
        validation_cases()
        + memory_cases()
        + glob_cases()
        + race_cases()
        + kill_cases()
        + error_cases()
        + reader_cases()
        + hostile_cases()
    )
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases
