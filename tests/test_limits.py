"""Bounds from the machine: messages say the limit and why; the memory bound follows ulimit -v."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tracekit import limits
from tracekit.errors import UsageError
from tracekit.trace.health import missing_ranks


def test_at_most_says_the_limit_and_why() -> None:
    limits.at_most("--ep", 4, 4, "x")
    with pytest.raises(UsageError, match=r"^--ep 5: at most 4 here: each rank is a process$"):
        limits.at_most("--ep", 5, 4, "each rank is a process")


def test_memory_bound_follows_the_address_space_limit() -> None:
    code = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
        from tracekit import limits
        avail = limits.available_memory()
        assert avail is not None and avail < 2 * 1024**3, avail
        try:
            limits.fits_memory("--n", 10**6, 10_000, "the thing")
        except Exception as exc:
            print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.startswith("--n 1000000: the thing needs about 9.3 GiB of memory"), out.stdout
    largest = int(out.stdout.rsplit(" ", 1)[1])
    assert 0 < largest < 2 * 1024**3 // 10_000


def test_missing_ranks_does_not_follow_the_world_size() -> None:
    assert missing_ranks(6, [0, 2, 5]) == (3, [1, 3, 4])
    count, first = missing_ranks(2**31 - 1, [0, 1, 7])
    assert count == 2**31 - 4 and first == [2, 3, 4, 5, 6]
    assert missing_ranks(3, [0, 1, 2, 9]) == (0, [])
