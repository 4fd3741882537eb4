"""Where traces and results live: a local path, or a URI of any filesystem pyarrow or fsspec reads.

``location(text)`` turns what a user gave into a :class:`pathlib.Path` (a local path or ``file://``
URI) or a :class:`RemotePath` (``s3://bucket/trace``, ``gs://...``, ``hdfs://...``, ``abfs://...``,
and any protocol an installed fsspec implementation registers, such as ``memory://``).
A :class:`RemotePath` offers the part of ``pathlib.Path`` the trace store uses (``/``, ``name``,
``exists``, ``is_dir``, ``iterdir``, ``stat``, ``open``, ``read_bytes``, ``write_bytes``), so the
reader, the validator and the writer work on both.

Filesystems come from pyarrow (``pyarrow.fs.FileSystem.from_uri``: S3, GCS, HDFS, Azure) and
otherwise from fsspec, wrapped for pyarrow; one instance per scheme, bucket and options is kept per
process. Credentials and endpoints come from each library's usual sources: for S3 the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` variables, ``~/.aws``, the instance or pod role,
and ``AWS_ENDPOINT_URL`` for an S3-compatible store (MinIO, Ceph); options pyarrow takes in a URI
(``s3://bucket/trace?endpoint_override=host:9000&scheme=http``) are kept on every path below it.

Object stores have no rename and no locks: a writer puts each file whole, in one request (an object
appears only when its upload completes), so a killed writer leaves whole part files only.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tracekit.errors import MissingDependencyError, StorageError, UsageError, first_line

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_uri(text: str | os.PathLike[str] | RemotePath) -> bool:
    """True for a URI of a remote filesystem (``s3://...``); False for a local path or ``file://``."""
    if isinstance(text, RemotePath):
        return True
    if isinstance(text, Path):
        return False
    m = _SCHEME.match(os.fspath(text))
    return m is not None and m.group(1).lower() != "file"


def is_remote(p: object) -> bool:
    return isinstance(p, RemotePath)


def location(p: str | os.PathLike[str] | RemotePath) -> Location:
    """A local :class:`~pathlib.Path` or a :class:`RemotePath` for what a user gave."""
    if isinstance(p, RemotePath | Path):
        return p
    text = os.fspath(p)
    m = _SCHEME.match(text)
    if m is None:
        return Path(text)
    if m.group(1).lower() == "file":
        return Path(urlsplit(text).path)
    return RemotePath.parse(text)


def absolute(p: str | os.PathLike[str] | RemotePath) -> str:
    """``p`` as text another process (a worker on another machine) can open: a URI as it is, a local
    path made absolute."""
    loc = location(p)
    return str(loc) if isinstance(loc, RemotePath) else str(loc.resolve())


@dataclass(frozen=True)
class _Stat:
    """What :meth:`RemotePath.stat` gives (the fields of ``os.stat_result`` the store reads)."""

    st_size: int
    st_mtime_ns: int
    st_ino: int = 0


@dataclass(frozen=True)
class _Fs:
    """A filesystem and how its paths print as URIs."""

    fs: pafs.FileSystem
    #: What a path is printed after: ``s3://`` for bucket stores, ``hdfs://host:port`` elsewhere.
    prefix: str
    scheme: str
    #: Query string of the URI it came from (pyarrow's options), kept on every path below it.
    query: str
    #: How a path inside the filesystem is written: ``bucket`` (``bucket/key``, S3 and GCS), ``rooted``
    #: (``/a/b``, fsspec filesystems) or ``plain`` (as pyarrow gave it: HDFS, Azure).
    style: str


#: Schemes whose paths are ``bucket/key`` in pyarrow.
_BUCKET_SCHEMES = ("s3", "gs", "gcs")
_FILESYSTEMS: dict[tuple[str, str, str], _Fs] = {}
_FS_LOCK = threading.Lock()


def _path_in(fs: _Fs, netloc: str, path: str) -> str:
    if fs.style == "bucket":
        inner = (netloc + path).rstrip("/")
    elif fs.style == "rooted":
        inner = "/" + (netloc + path).strip("/")
    else:
        inner = path.rstrip("/") or "/"
    return inner


def _filesystem(uri: str) -> tuple[_Fs, str]:
    """The (cached) filesystem of ``uri`` and the path inside it."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    key = (scheme, parts.netloc if scheme not in _BUCKET_SCHEMES else "", parts.query)
    with _FS_LOCK:
        known = _FILESYSTEMS.get(key)
    if known is not None:
        return known, _path_in(known, parts.netloc, parts.path)
    try:
        fs, _ = pafs.FileSystem.from_uri(uri)
        style = "bucket" if scheme in _BUCKET_SCHEMES else "plain"
        prefix = f"{scheme}://" if style == "bucket" else f"{scheme}://{parts.netloc}"
        made = _Fs(fs=fs, prefix=prefix, scheme=scheme, query=parts.query, style=style)
    except pa.ArrowInvalid as exc:
        if "nrecognized filesystem" not in str(exc) and "not supported" not in str(exc):
            raise UsageError(f"{uri}: not a URI pyarrow can open ({first_line(exc)})") from None
        made = _fsspec(uri, scheme)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"{uri}: cannot reach its filesystem ({first_line(exc)}); {_HINT.get(scheme, _HINT_ANY)}"
        ) from None
    with _FS_LOCK:
        made = _FILESYSTEMS.setdefault(key, made)
    return made, _path_in(made, parts.netloc, parts.path)


def _fsspec(uri: str, scheme: str) -> _Fs:
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError("fsspec", "fsspec", f"reading {scheme}:// paths") from None
    try:
        fs, _ = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UsageError(
            f"{uri}: no filesystem for {scheme}:// ({first_line(exc)}); install the fsspec package that "
            "implements it, or give a local path or an s3://, gs://, hdfs:// or abfs:// URI"
        ) from None
    wrapped = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return _Fs(fs=wrapped, prefix=f"{scheme}://", scheme=scheme, query="", style="rooted")


_HINT_ANY = "check the URI and the credentials for it"
_HINT = {
    "s3": "check the bucket name, the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws or "
    "the instance role) and, for an S3-compatible store, AWS_ENDPOINT_URL",
    "gs": "check the bucket name and the credentials (GOOGLE_APPLICATION_CREDENTIALS)",
    "gcs": "check the bucket name and the credentials (GOOGLE_APPLICATION_CREDENTIALS)",
}


class RemotePath:
    """A file or folder on a remote filesystem, with the part of ``pathlib.Path``'s API the trace
    store uses. Prints (and pickles) as its URI; equal paths compare and hash equal."""

    __slots__ = ("_fs", "_info", "path")

    def __init__(self, fs: _Fs, path: str, info: pafs.FileInfo | None = None) -> None:
        self._fs = fs
        #: Path inside the filesystem (``bucket/key`` for S3).
        self.path = path
        #: What a listing said about it (None: asked when needed).
        self._info = info

    @classmethod
    def parse(cls, uri: str) -> RemotePath:
        fs, path = _filesystem(uri)
        return cls(fs, path)

    # -- names ----------------------------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs.fs

    @property
    def scheme(self) -> str:
        return self._fs.scheme

    def __str__(self) -> str:
        query = f"?{self._fs.query}" if self._fs.query else ""
        path = self.path.lstrip("/") if self._fs.style == "rooted" else self.path
        return f"{self._fs.prefix}{path}{query}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (RemotePath.parse, (str(self),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: str) -> RemotePath:
        name = str(name).strip("/")
        return RemotePath(self._fs, f"{self.path.rstrip('/')}/{name}" if name else self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        n = self.name
        i = n.rfind(".")
        return n[i:] if 0 < i < len(n) - 1 else ""

    @property
    def stem(self) -> str:
        s = self.suffix
        return self.name[: -len(s)] if s else self.name

    @property
    def parent(self) -> RemotePath:
        head = self.path.rstrip("/").rsplit("/", 1)[0] if "/" in self.path.strip("/") else self.path
        return RemotePath(self._fs, head)

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def resolve(self) -> RemotePath:
        return self

    absolute = resolve

    # -- what is there --------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            hint = _HINT.get(self.scheme, _HINT_ANY)
            raise StorageError(f"{self}: cannot {what} ({first_line(exc)}); {hint}") from None

    def info(self) -> pafs.FileInfo:
        """What the filesystem says now (a path from a listing answers from that listing)."""
        if self._info is not None:
            return self._info
        return self._call("be read", self.fs.get_file_info, self.path)

    def exists(self) -> bool:
        return bool(self.info().type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        return bool(self.info().type == pafs.FileType.Directory)

    def is_file(self) -> bool:
        return bool(self.info().type == pafs.FileType.File)

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> _Stat:
        info = self.info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return _Stat(st_size=int(info.size or 0), st_mtime_ns=int(info.mtime_ns or 0))

    def iterdir(self) -> Iterator[RemotePath]:
        """Entries directly below this folder (none when it does not exist)."""
        yield from self._list(recursive=False)

    def rglob(self, pattern: str = "*") -> Iterator[RemotePath]:
        """Every entry below this folder, at any depth (``pattern`` must be ``*``)."""
        if pattern != "*":
            raise ValueError("RemotePath.rglob supports only '*'")
        yield from self._list(recursive=True)

    def _list(self, *, recursive: bool) -> list[RemotePath]:
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        infos = self._call("be listed", self.fs.get_file_info, sel)
        return [RemotePath(self._fs, i.path, i) for i in infos]

    # -- reading and writing --------------------------------------------------------------------
    def open(self, mode: str = "rb") -> IO[Any]:
        """``rb``: a seekable file; ``wb``: an upload that appears whole when the file is closed;
        ``r`` / ``w``: the same as UTF-8 text."""
        if mode in ("rb", "r"):
            raw: Any = self._call("be read", self.fs.open_input_file, self.path)
        elif mode in ("wb", "w"):
            raw = self._call("be written", self.fs.open_output_stream, self.path)
        else:
            raise ValueError(f"mode {mode!r}")
        return io.TextIOWrapper(raw, encoding="utf-8") if "b" not in mode else raw  # type: ignore[no-any-return]

    def read_bytes(self) -> bytes:
        with self.open("rb") as fh:
            return bytes(fh.read())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """Put the whole file in one upload (replacing it): readers see the old or the new file."""
        with self._call("be written", self.fs.open_output_stream, self.path) as fh:
            self._call("be written", fh.write, data)
        self._info = None
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Folders are implicit on object stores; elsewhere the folder is created."""
        if self.scheme in ("s3", "gs", "gcs"):
            return
        self._call("be created", self.fs.create_dir, self.path, recursive=True)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._call("be deleted", self.fs.delete_file, self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self._info = None

    def remove_tree(self) -> None:
        """Delete this folder and everything below it."""
        if self.exists():
            self._call("be deleted", self.fs.delete_dir_contents, self.path, missing_dir_ok=True)
            if self.exists():
                self._call("be deleted", self.fs.delete_dir, self.path)
        self._info = None


#: A local path or a remote one.
Location = Path | RemotePath


def listdir(folder: Location) -> list[str]:
    """Names of the entries directly in ``folder`` (``os.listdir`` for a local one)."""
    if isinstance(folder, RemotePath):
        return [p.name for p in folder.iterdir()]
    return os.listdir(folder)


def children(folder: Location) -> list[Location]:
    """The entries directly in ``folder`` (remote ones with their size already known)."""
    if isinstance(folder, RemotePath):
        return list(folder.iterdir())
    return [folder / n for n in os.listdir(folder)]


def parquet_file(f: str | os.PathLike[str] | RemotePath, **kwargs: Any) -> pq.ParquetFile:
    """``pq.ParquetFile`` of a local or remote file (remote reads are coalesced: ``pre_buffer``)."""
    loc = location(f)
    if isinstance(loc, RemotePath):
        kwargs.setdefault("pre_buffer", True)
        return pq.ParquetFile(loc.path, filesystem=loc.fs, **kwargs)
    return pq.ParquetFile(loc, **kwargs)


def read_table(f: Location, columns: list[str] | None = None) -> pa.Table:
    if isinstance(f, RemotePath):
        return pq.read_table(f.path, filesystem=f.fs, columns=columns)
    return pq.read_table(f, columns=columns)


def write_parquet(table: pa.Table, dest: Location, **kwargs: Any) -> None:
    """Write ``table`` to ``dest``: locally as it is; remotely encoded in memory first and put in one
    upload, so a failure while encoding never leaves a partial object."""
    if isinstance(dest, RemotePath):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **kwargs)
        dest.write_bytes(sink.getvalue().to_pybytes())
        return
    pq.write_table(table, dest, **kwargs)


def dataset_paths(files: list[Location]) -> tuple[list[str], pafs.FileSystem | None]:
    """Paths and filesystem for ``pyarrow.dataset.dataset`` over ``files`` (all on one filesystem)."""
    remote = [f for f in files if isinstance(f, RemotePath)]
    if not remote:
        return [str(f) for f in files], None
    return [f.path for f in remote], remote[0].fs


def check_remote_output(
    path: RemotePath,
    *,
    force: bool,
    what: str,
    is_ours: Callable[[RemotePath], bool] | None = None,
    option: str = "--out",
) -> None:
    """Refuse a remote output where something already is, unless ``force`` and it is ours."""
    if not any(True for _ in path.iterdir()):
        return
    if not force:
        raise UsageError(
            f"{option} {path}: not empty (a {what} or other files are there); choose another {option} "
            "or pass --force to replace it"
        )
    if is_ours is not None and not is_ours(path):
        raise UsageError(f"{option} {path}: not empty and not a tracekit {what}; refusing to delete it")
