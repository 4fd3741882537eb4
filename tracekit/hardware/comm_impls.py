"""The expert-parallel communication implementations tracekit models, named once.

Each entry says what one copy on the wire is (its deduplication rule), which links it may use, and
which phase uses it by default. The cost model (:func:`tracekit.cost.link_loads`) derives every
rank's NVLink and NIC bytes from these properties; hardware presets parameterise each
implementation in a ``[comm.<name>]`` table; the command line offers exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tracekit.errors import UnknownNameError

#: What one copy on the wire is:
#: ``rank``: a token once per destination rank (per-rank deduplication);
#: ``expert``: a token once per (token, expert) pair, no deduplication;
#: ``domain``: a token once per destination scale-up domain over the NIC, then forwarded over
#: NVLink to each destination rank (DeepEP's normal kernels across nodes).
Dedup = Literal["rank", "expert", "domain"]

#: Which links carry the traffic:
#: ``both``: NVLink inside the scale-up domain, the NIC across;
#: ``domain``: NVLink only, so every rank must sit in one scale-up domain;
#: ``nic``: every peer over the NIC, even inside the domain (RDMA-only kernels).
Links = Literal["both", "domain", "nic"]


@dataclass(frozen=True, kw_only=True)
class CommImpl:
    """One implementation of dispatch and combine."""

    name: str
    description: str
    dedup: Dedup
    links: Links
    #: The phase that uses it when a deployment names none (None: never a default).
    default_for: str | None = None


COMM_IMPL_REGISTRY: dict[str, CommImpl] = {
    c.name: c
    for c in (
        CommImpl(
            name="deepep-normal",
            description="DeepEP normal (high-throughput) kernels: per-rank dedup in a domain, one NIC copy "
            "per destination domain forwarded over NVLink",
            dedup="domain",
            links="both",
            default_for="prefill",
        ),
        CommImpl(
            name="deepep-ll",
            description="DeepEP low-latency kernels: one copy per (token, expert); NVLink in a domain, "
            "the NIC across",
            dedup="expert",
            links="both",
            default_for="decode",
        ),
        CommImpl(
            name="deepep-ll-rdma",
            description="DeepEP low-latency kernels as first released: one copy per (token, expert), "
            "every peer over RDMA",
            dedup="expert",
            links="nic",
        ),
        CommImpl(
            name="nvl-a2a",
            description="one-sided NVLink all-to-all (TensorRT-LLM / FlashInfer MoE all-to-all, GB200 "
            "NVL72): per-rank dedup, inside one scale-up domain only",
            dedup="rank",
            links="domain",
        ),
        CommImpl(
            name="nccl",
            description="NCCL all-to-all of the per-rank token matrix; NVLink in a domain, the NIC across",
            dedup="rank",
            links="both",
        ),
    )
}

#: Every implementation's name, in registry order.
COMM_IMPLS: tuple[str, ...] = tuple(COMM_IMPL_REGISTRY)


def comm_impl(name: str) -> CommImpl:
    """The registry entry of ``name``; an unknown name lists the valid ones."""
    if name not in COMM_IMPL_REGISTRY:
        raise UnknownNameError("communication implementation", name, COMM_IMPLS)
    return COMM_IMPL_REGISTRY[name]


def default_impl(phase: str) -> str:
    """The implementation a phase uses when the deployment names none."""
    for c in COMM_IMPL_REGISTRY.values():
        if c.default_for == phase:
            return c.name
    raise UnknownNameError(
        "phase", phase, [c.default_for for c in COMM_IMPL_REGISTRY.values() if c.default_for]
    )
