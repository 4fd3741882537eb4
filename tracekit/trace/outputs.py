"""Outputs that are never half-written: an advisory lock per output and replacement by rename.

Every writing command goes through :class:`Output`:

- **Lock.** A sibling file ``.NAME.tracekit-lock`` is locked with ``flock`` for as long as the output
  is being written, and holds the writer's pid, so a second writer of the same path is refused with
  one line (:class:`~tracekit.errors.OutputBusyError`). The kernel drops the lock when the process
  dies, so a killed writer never leaves a stale lock behind.
- **Staging.** A file output, and a directory output that replaces an existing one, is written to a
  hidden sibling (``.NAME.tracekit-new-PID``) and renamed into place only once it is complete
  (``--force`` replaces only then). Directories are swapped with ``renameat2(RENAME_EXCHANGE)`` where
  the system has it; elsewhere with two renames, and an interrupted swap is undone by the next writer.
  A new trace directory is written in place (a killed recording stays readable and its shard status
  says incomplete).
- **Inputs.** :func:`check_not_input` refuses an output that is, contains, or lies inside an input.

The processes of one multi-process writer (EP ranks) share the lock of their launcher: it exports
:data:`TOKEN_ENV`, and writers that carry the same token join the holder's output.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tracekit.errors import OutputBusyError, ResourceError, UsageError

LOCK_TAG = ".tracekit-lock"
NEW_TAG = ".tracekit-new-"
OLD_TAG = ".tracekit-old-"
#: Environment variable naming the output token a launcher shares with its child processes.
TOKEN_ENV = "TRACEKIT_OUTPUT_TOKEN"


def lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}{LOCK_TAG}"


def _tagged(path: Path, tag: str, pid: int, *, keep_suffix: bool) -> Path:
    if keep_suffix and path.suffix:
        return path.parent / f".{path.stem}{tag}{pid}{path.suffix}"
    return path.parent / f".{path.name}{tag}{pid}"


def _is_tagged(name: str, path: Path, tag: str) -> bool:
    """Is ``name`` (an entry next to ``path``) a staging or aside copy of ``path``, or a file a
    library made beside one (DuckDB's ``.wal``)?"""
    for stem, suffix in ((path.name, ""), (path.stem, path.suffix)):
        head = f".{stem}{tag}"
        if not name.startswith(head):
            continue
        rest = name[len(head) :]
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if digits and (rest[digits:] == "" or rest[digits:].startswith(suffix or ".")):
            return True
    return False


#: errno values that mean the path the user gave cannot be written (exit 2, UsageError); any other
#: OSError while writing is the machine refusing (exit 1, ResourceError): ENOSPC, EDQUOT, EIO, ...
USER_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a component of the path is a file",
    errno.EEXIST: "a component of the path is a file",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error(exc: OSError, what: str, option: str = "--out") -> ResourceError | UsageError:
    """One-line error for an OSError met while writing ``what``: a UsageError (exit 2) when the path
    cannot be written (permission, read-only, not a directory), else a ResourceError (exit 1)."""
    code = errno.errorcode.get(exc.errno or 0, "OSError")
    if exc.errno in USER_ERRNOS:
        return UsageError(
            f"{what}: {USER_ERRNOS[exc.errno]} ({code}); give a {option} in a writable location"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"{what}: no space left on the device ({code}); free space or write elsewhere")
    return ResourceError(f"{what}: {exc.strerror or type(exc).__name__} ({code})")


@dataclass(frozen=True, kw_only=True)
class Holder:
    """Who holds an output's lock, as the lock file says."""

    pid: int
    token: str
    #: Where the holder is writing now (the output itself or its staging sibling).
    target: str
    #: Trace rank of the holding writer, or None for a launcher / a non-trace output.
    rank: int | None = None

    def describe(self) -> str:
        return f"process {self.pid}"


def _read_holder(fd: int) -> Holder | None:
    try:
        raw = json.loads(os.pread(fd, 65_536, 0).decode() or "{}")
        return Holder(
            pid=int(raw["pid"]),
            token=str(raw["token"]),
            target=str(raw["target"]),
            rank=None if raw.get("rank") is None else int(raw["rank"]),
        )
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def current_holder(path: str | os.PathLike[str]) -> Holder | None:
    """The live holder of ``path``'s lock, or None when nobody is writing it."""
    lp = lock_path(Path(path))
    try:
        fd = os.open(lp, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or Holder(pid=0, token="", target=str(path))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class OutputLock:
    """An exclusive advisory lock on an output path (a locked sibling file holding the pid)."""

    def __init__(self, path: Path, *, option: str = "--out") -> None:
        self.path = path
        self.option = option
        self.file = lock_path(path)
        self._fd: int | None = None
        self.token = os.environ.get(TOKEN_ENV) or uuid.uuid4().hex

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, target: Path, rank: int | None = None) -> None:
        for _ in range(20):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise os_error(
                    exc, f"{self.option} {self.path}: cannot create the lock file {self.file}", self.option
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                who = holder.describe() if holder else "another process"
                raise OutputBusyError(
                    f"{self.option} {self.path}: {who} is writing it now (lock {self.file.name}); "
                    f"wait for it to finish or choose another {self.option}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self.update(target, rank)
                return
            os.close(fd)  # the previous holder removed the file between our open and lock: retry
        raise OutputBusyError(f"{self.option} {self.path}: the lock {self.file.name} keeps changing; retry")

    def update(self, target: Path, rank: int | None = None) -> None:
        assert self._fd is not None
        info = {"pid": os.getpid(), "token": self.token, "target": str(target), "rank": rank}
        data = json.dumps(info).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:
            raise os_error(
                exc, f"{self.option} {self.path}: cannot write the lock file", self.option
            ) from None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.file)
        os.close(self._fd)
        self._fd = None


# -- replacing by rename ---------------------------------------------------------------------------


def _libc_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    return fn  # type: ignore[no-any-return]


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False when the system cannot (then nothing changed)."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace_dir(new: Path, final: Path) -> None:
    """Put directory ``new`` at ``final``, replacing what is there only now, in one step where possible."""
    if not final.exists():
        os.rename(new, final)
        return
    if exchange(new, final):
        _remove(new)  # now holds the old output
        return
    aside = _tagged(final, OLD_TAG, os.getpid(), keep_suffix=False)
    os.rename(final, aside)
    os.rename(new, final)
    _remove(aside)


def recover(path: Path) -> None:
    """Undo what a killed writer of ``path`` left (call while holding the lock): staging copies are
    removed; an aside copy of the old output (a swap cut between its two renames) is put back."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        entry = path.parent / name
        if _is_tagged(name, path, NEW_TAG):
            _remove(entry)
        elif _is_tagged(name, path, OLD_TAG):
            if not path.exists():
                os.rename(entry, path)
            else:
                _remove(entry)


# -- inputs ----------------------------------------------------------------------------------------


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_not_input(
    out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None], option: str = "--out"
) -> None:
    """Refuse an output that is an input, holds an input, or lies inside an input directory."""
    o = Path(out).resolve()
    for raw in inputs:
        if raw is None:
            continue
        i = Path(raw).resolve()
        if not i.exists():
            continue
        if _inside(i, o) or (i.is_dir() and _inside(o, i)):
            raise UsageError(
                f"{option} {out}: it is also an input ({raw}), or holds or lies inside one; "
                f"write the output somewhere else"
            )


# -- the output ------------------------------------------------------------------------------------


class Output:
    """One output path (a file or a directory), locked and replaced by rename; a context manager.

    ``target`` is where to write. On a clean exit the output is committed (moved into place); on an
    exception a staging copy is removed, so the old output stays as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        force: bool = False,
        option: str = "--out",
        what: str = "output",
        is_ours: Callable[[Path], bool] | None = None,
        stage_new: bool = True,
        inputs: Iterable[str | os.PathLike[str] | None] = (),
        rank: int | None = None,
    ) -> None:
        if kind not in ("file", "dir"):
            raise ValueError(kind)
        self.path = Path(path)
        self.kind = kind
        self.force = force
        self.option = option
        self.what = what
        self.is_ours = is_ours
        self.stage_new = stage_new
        self.inputs = list(inputs)
        self.rank = rank
        self.lock = OutputLock(self.path, option=option)
        self.target = self.path
        self._open = False

    @property
    def staged(self) -> bool:
        return self.target != self.path

    def check(self, *, busy: bool = True) -> None:
        """Refuse now what :meth:`open` would refuse (call before long work); touches nothing."""
        check_not_input(self.path, self.inputs, self.option)
        p = self.path
        if self.kind == "dir" and p.exists() and not p.is_dir():
            raise UsageError(
                f"{self.option} {p}: exists and is not a directory; choose another {self.option}"
            )
        if self.kind == "file" and p.is_dir():
            raise UsageError(f"{self.option} {p}: is a directory; give a file name")
        if self._nonempty():
            if not self.force:
                found = "file exists" if self.kind == "file" else "directory exists and is not empty"
                raise UsageError(
                    f"{self.option} {p}: {found}; choose another {self.option} or pass --force to replace it"
                )
            if self.is_ours is not None and not self.is_ours(p):
                raise UsageError(
                    f"{self.option} {p}: not empty and not a tracekit {self.what}; refusing to delete it"
                )
        holder = current_holder(p) if busy else None
        if holder is not None:
            raise OutputBusyError(
                f"{self.option} {p}: {holder.describe()} is writing it now; "
                f"wait for it to finish or choose another {self.option}"
            )

    def _nonempty(self) -> bool:
        p = self.path
        if self.kind == "file":
            return p.exists() or p.is_symlink()
        try:
            return p.is_dir() and any(p.iterdir())
        except OSError:
            return True

    def open(self) -> Output:
        self.check()
        parent = self.path.parent
        if self.kind == "file" and not parent.is_dir():
            raise UsageError(
                f"{self.option} {self.path}: cannot write the file (its folder {parent} does not exist); "
                f"create it or give a {self.option} in an existing, writable folder"
            )
        if not parent.is_dir():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(
                    exc, f"{self.option} {self.path}: cannot create its folder", self.option
                ) from None
        self.lock.acquire(self.path, self.rank)
        try:
            recover(self.path)
            self.check(busy=False)  # again, under the lock
            stage = self.kind == "file" or self._nonempty() or self.stage_new
            if stage:
                self.target = _tagged(self.path, NEW_TAG, os.getpid(), keep_suffix=self.kind == "file")
                _remove(self.target)
            if self.kind == "dir":
                try:
                    self.target.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise os_error(
                        exc, f"{self.option} {self.path}: cannot create the directory", self.option
                    ) from None
                if not os.access(self.target, os.W_OK):
                    raise UsageError(
                        f"{self.option} {self.path}: directory is not writable; give a {self.option} you can write to"
                    )
            self.lock.update(self.target, self.rank)
        except BaseException:
            self.lock.release()
            raise
        self._open = True
        return self

    def commit(self) -> Path:
        """Move the finished output into place (nothing to do when it was written in place)."""
        if self.staged and self._open:
            try:
                if self.kind == "file":
                    os.replace(self.target, self.path)
                else:
                    replace_dir(self.target, self.path)
            except OSError as exc:
                raise os_error(
                    exc, f"{self.option} {self.path}: cannot move the new {self.what} into place", self.option
                ) from None
            self.target = self.path
        return self.path

    def abort(self) -> None:
        """Drop a staging copy (the old output stays); an in-place output is left as it is."""
        if self.staged:
            _remove(self.target)
            _remove(self.target.with_name(self.target.name + ".wal"))
            self.target = self.path

    def close(self, ok: bool) -> None:
        if not self._open:
            return
        try:
            if ok:
                self.commit()
            else:
                self.abort()
        finally:
            self._open = False
            self.lock.release()

    def __enter__(self) -> Output:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exc is None)


def write_file_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary sibling and a rename (no lock: for files a writer owns)."""
    tmp = path.with_name("." + path.name + ".tmp")
    payload = data.encode() if isinstance(data, str) else data
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def json_bytes(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def check_output(
    path: str | os.PathLike[str],
    *,
    kind: str,
    force: bool = False,
    what: str = "output",
    is_ours: Callable[[Any], bool] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    option: str = "--out",
) -> None:
    """Refuse now what writing ``path`` would refuse (a local path or a URI such as ``s3://...``)."""
    from tracekit.trace import store

    loc = store.location(path)
    if isinstance(loc, store.RemotePath):
        if any(str(i) == str(loc) for i in inputs if i is not None):
            raise UsageError(f"{option} {path}: it is also an input; write the output somewhere else")
        store.check_remote_output(loc, force=force, what=what, is_ours=is_ours, option=option)
        return
    Output(path, kind=kind, force=force, what=what, is_ours=is_ours, inputs=inputs, option=option).check()
