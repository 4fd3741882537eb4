"""Upper bounds for size-like arguments and declared counts, from the data and the machine.

A command checks each size-like argument before it starts: a count that the data or the machine
cannot back is refused with one line that says the limit and why (``--ep 256: at most 8 here: each
rank is a process and this machine has 2 CPU cores``). Memory and disk estimates are deliberately
rough (within a factor of two); they exist to refuse what cannot finish, not to plan capacity.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

from tracekit.errors import UsageError

GIB = 1024**3
#: Share of the available memory a command plans to use (the rest: the interpreter, libraries, page cache).
MEMORY_SHARE = 0.8


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((base / "memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _address_space_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return soft


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of free memory, the cgroup's limit and the
    address-space limit (ulimit -v); None when none of them can be read."""
    values = [
        v for v in (_meminfo_available(), _cgroup_available(), _address_space_available()) if v is not None
    ]
    return min(values) if values else None


def free_disk(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system that ``path`` (or its nearest existing parent) is on."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human(n: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def at_most(option: str, value: int, limit: int, why: str) -> None:
    """Refuse ``option value`` above ``limit``; ``why`` says where the limit comes from."""
    if value > limit:
        raise UsageError(f"{option} {value}: at most {limit} here: {why}")


def at_least(option: str, value: int, low: int = 1) -> None:
    if value < low:
        raise UsageError(f"{option} must be at least {low}, got {value}")


def fits_memory(option: str, value: int, bytes_each: float, what: str, fixed_bytes: float = 0) -> None:
    """Refuse ``option value`` when ``value * bytes_each + fixed_bytes`` exceeds the memory this
    process can use; the message gives the largest value that fits."""
    avail = available_memory()
    if avail is None:
        return
    budget = avail * MEMORY_SHARE - fixed_bytes
    need = value * bytes_each + fixed_bytes
    if need > avail * MEMORY_SHARE:
        largest = max(0, int(budget // bytes_each)) if bytes_each > 0 else 0
        raise UsageError(
            f"{option} {value}: {what} needs about {human(need)} of memory, more than the "
            f"{human(avail)} available here; give at most {option} {largest}"
        )


def fits_disk(option: str, path: str | os.PathLike[str], need_bytes: float, what: str) -> None:
    """Refuse an output that would need more disk than is free where it goes."""
    free = free_disk(path)
    if free is not None and need_bytes > free:
        raise UsageError(
            f"{option} {path}: {what} needs about {human(need_bytes)} on disk, {human(free)} is free there; "
            "write it elsewhere or ask for less"
        )
