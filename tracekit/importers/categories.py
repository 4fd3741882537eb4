"""Kernel categories from kernel names: an ordered list of regular expressions kept as data.

The rules live in ``data/kernel_categories.json`` (first match wins); :func:`categorize` applies them
once per distinct name, so millions of kernels cost one regex pass per unique name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from tracekit.errors import UsageError

CATEGORIES: tuple[str, ...] = (
    "dense_gemm",
    "expert_gemm",
    "attention",
    "moe_dispatch",
    "moe_combine",
    "collective",
    "quantization",
    "elementwise",
    "memcpy",
    "other",
)
#: Profiler event categories whose events are copies or fills whatever their name.
MEMCPY_EVENT_CATS = frozenset({"gpu_memcpy", "gpu_memset"})


@dataclass(frozen=True, kw_only=True)
class CategoryRule:
    """One rule: a kernel whose name contains a match of ``pattern`` gets ``category``."""

    #: Whose kernels the rule is written for (documentation only).
    library: str
    #: Category given on a match; one of CATEGORIES.
    category: str
    #: Python regular expression, searched anywhere in the name.
    pattern: re.Pattern[str]


@cache
def category_rules() -> tuple[CategoryRule, ...]:
    """The shipped rules, in order."""
    text = resources.files("tracekit.importers").joinpath("data/kernel_categories.json").read_text()
    raw = json.loads(text)
    rules = []
    for i, r in enumerate(raw["rules"]):
        if r["category"] not in CATEGORIES:
            raise UsageError(f"kernel_categories.json rule {i}: unknown category {r['category']!r}")
        rules.append(
            CategoryRule(library=r["library"], category=r["category"], pattern=re.compile(r["pattern"]))
        )
    return tuple(rules)


def category_of(name: str) -> str:
    """The category of one kernel name."""
    for rule in category_rules():
        if rule.pattern.search(name):
            return rule.category
    return "other"


def categorize(names: list[str]) -> np.ndarray:
    """Categories of distinct ``names`` (an object array of the same length)."""
    return np.array([category_of(n) for n in names], dtype=object)


_NCCL_OP = re.compile(r"nccl(?:Dev)?Kernel_([A-Za-z]+?)(?:_|\(|$)")
_NCCL_NAMES = {
    "AllReduce": "allreduce",
    "AllGather": "allgather",
    "ReduceScatter": "reduce_scatter",
    "Broadcast": "broadcast",
    "Reduce": "reduce",
    "SendRecv": "send_recv",
    "AllToAll": "all_to_all",
}


def nccl_collective_from_name(name: str) -> str | None:
    """The collective an NCCL kernel's name spells (``ncclDevKernel_AllReduce_Sum_bf16_RING_LL``)."""
    m = _NCCL_OP.search(name)
    if not m:
        return None
    return _NCCL_NAMES.get(m.group(1))
