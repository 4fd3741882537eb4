"""What the fault cases share: small traces built in code, running the CLI in-process or as a
process (to kill it, limit its memory, or race it), and the checks every case ends with."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from tracekit.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
#: The seven classes of the issue, in its order.
CLASSES = (
    "1-validation",
    "2-memory",
    "3-glob-paths",
    "4-racing-writers",
    "5-atomic-outputs",
    "6-one-line-errors",
    "7-readers-warn-hostile",
)
SYNTH = ["--model", "mixtral-8x7b", "--phase", "decode", "--tokens-per-step", "8", "--steps", "4"]


@dataclass(frozen=True)
class Case:
    """One fault case: ``run(tmp)`` raises AssertionError when tracekit misbehaves."""

    name: str
    klass: str
    run: Callable[[Path], None]
    #: Part of the fast subset that ``make test`` runs.
    fast: bool = False
    #: Needs root (tmpfs mounts); skipped with this reason otherwise.
    needs_root: bool = False
    #: Set when the case is known to fail in code this suite may not change: the reason.
    known: str = ""

    @property
    def id(self) -> str:
        return f"{self.klass}:{self.name}"


@dataclass
class Result:
    code: int
    out: str
    err: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def invoke(*args: object) -> Result:
    """Run the CLI in this process (click's runner), as a user would from a shell."""
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"the CLI raised {type(r.exception).__name__}: {r.exception}")
    return Result(r.exit_code, r.stdout, r.stderr)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEKIT_", "PYTEST"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def command(*args: object) -> list[str]:
    return [sys.executable, "-c", "from tracekit.cli.main import main; main()", *map(str, args)]


def run(
    *args: object, timeout: float = 300, memory_bytes: int | None = None, cwd: Path | None = None
) -> Result:
    """Run the CLI as its own process (optionally under an address-space limit, like ulimit -v)."""

    def limit() -> None:
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    p = subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        preexec_fn=limit,
        cwd=cwd,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group: a kill reaches its worker processes too
    )


def kill_after(proc: subprocess.Popen[str], delay_s: float) -> int:
    """SIGKILL ``proc`` and its process group after ``delay_s`` (unless it ended before); returns its
    exit code."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay_s)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return int(proc.returncode)


def one_line_error(r: Result, *, code: int | Sequence[int] = (1, 2), contains: str = "") -> None:
    """The command failed with exactly one line on stderr, no traceback."""
    codes = (code,) if isinstance(code, int) else tuple(code)
    assert r.code in codes, f"exit {r.code}, expected {codes}: {r.err[-600:]}"
    assert "Traceback" not in r.err, r.err[-1500:]
    assert len(r.err_lines) == 1, f"{len(r.err_lines)} stderr lines: {r.err[-1500:]}"
    assert r.err_lines[0].startswith("tracekit: error: "), r.err_lines[0]
    if contains:
        assert contains in r.err_lines[0], r.err_lines[0]


def warned(r: Result, contains: str = "") -> None:
    """The command succeeded and warned in exactly one line."""
    assert r.code == 0, f"exit {r.code}: {r.err[-800:]}"
    lines = [ln for ln in r.err_lines if ln.startswith("tracekit: warning:")]
    assert len(lines) == 1, f"expected one warning line, got: {r.err[-1200:]}"
    assert "Traceback" not in r.err
    if contains:
        assert contains in lines[0], lines[0]


# -- fixtures built in code --------------------------------------------------------------------------

_BASE: dict[str, Path] = {}


def _base_dir() -> Path:
    if "dir" not in _BASE:
        d = Path(tempfile.mkdtemp(prefix="tracekit-faults-"))
        atexit.register(shutil.rmtree, d, True)
        _BASE["dir"] = d
    return _BASE["dir"]


def base_trace(tmp: Path, name: str = "t") -> Path:
    """A small complete synthetic trace (mixtral-8x7b layout, 4 decode steps x 8 tokens) at tmp/name,
    copied from one made once per process."""
    cache = _base_dir() / "base"
    if not (cache / "manifest.json").is_file():
        r = invoke("synth", *SYNTH, "--out", cache)
        assert r.code == 0, r.err
    out = tmp / name
    shutil.copytree(cache, out)
    return out


def status(trace: Path, rank: int = 0) -> Path:
    return trace / "_shards" / f"rank-{rank:05d}.json"


def edit_status(trace: Path, **changes: object) -> None:
    p = status(trace)
    raw = json.loads(p.read_text())
    for k, v in changes.items():
        if v is _DROP:
            raw.pop(k, None)
        else:
            raw[k] = v
    p.write_text(json.dumps(raw))


_DROP = object()
DROP = _DROP


def part(trace: Path, table: str, index: int = 0) -> Path:
    return sorted((trace / table).iterdir())[index]


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes, for "left intact" checks."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Staging or aside copies left next to outputs (a lock file without a live holder is fine)."""
    return sorted(n for n in os.listdir(folder) if ".tracekit-new-" in n or ".tracekit-old-" in n)


@contextlib.contextmanager
def tmpfs(tmp: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted under ``tmp`` (root only)."""
    mnt = tmp / f"tmpfs-{size}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        for _ in range(10):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:  # a handle still open (a library's): detach it now, the kernel frees it when closed
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount_ro(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def is_root() -> bool:
    return os.geteuid() == 0
