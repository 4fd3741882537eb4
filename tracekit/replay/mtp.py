"""Multi-token prediction (speculative decoding with the model's MTP layers): the draft passes.

With ``Deployment.mtp = (drafts, acceptance)``, a decode step verifies ``1 + drafts`` tokens per
sequence in the target model (:func:`tracekit.replay.timing.time_window` multiplies the query tokens,
the expert pairs and the LM head rows) and, before it, runs the MTP module ``drafts`` times, one token
per sequence each (DeepSeek-V3's MTP module: two RMSNorms, a projection of the concatenated hidden
state and embedding, one MoE decoder layer, the shared LM head). A step then produces
``1 + a + ... + a^drafts`` tokens per sequence (:meth:`Deployment.accepted_tokens`).

A draft pass is priced as one decoder layer of the target model at the step's own batch (the last
MoE layer's routing, its attention window), attributed with the deployment's overlap schedule, plus
the projection GEMM, the norms and the LM head. Its per-rank time joins the step like the embedding
and LM head: the slowest rank sets it (every pass has an all-to-all).

To change what a draft pass costs: this module.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tracekit.cost import gemm
from tracekit.cost.kernels import elementwise_time
from tracekit.precision import bytes_per_param
from tracekit.replay.attribution import attribute, schedule_of
from tracekit.replay.counts import ExpertWindow
from tracekit.replay.layer import Priced
from tracekit.replay.schedule import AttentionLoad, WindowSequences
from tracekit.replay.setup import ReplaySetup
from tracekit.replay.timing import WindowCost, time_window


def with_draft(
    setup: ReplaySetup,
    cost: WindowCost,
    *,
    phase: str,
    counts: ExpertWindow,
    load: AttentionLoad,
    seqs: WindowSequences,
    lo: int,
    hi: int,
) -> WindowCost:
    """``cost`` with the step's MTP draft passes (unchanged without MTP or outside decode)."""
    dep = setup.dep
    if dep.mtp is None or phase != "decode" or not setup.moe_mask.any():
        return cost
    drafts = dep.mtp[0]
    last = int(np.flatnonzero(setup.moe_mask)[-1])
    one_layer = dataclasses.replace(
        setup,
        source_of=setup.source_of[last : last + 1],
        windows=setup.windows[last : last + 1],
        dep=dataclasses.replace(dep, mtp=None, aggregated=None),
    )
    layer_cost = time_window(one_layer, phase=phase, counts=counts, load=load, seqs=seqs, lo=lo, hi=hi)
    att = attribute(
        layer_cost,
        schedule=schedule_of(tbo=dep.tbo, sbo=dep.sbo, phase=phase),
        derate=setup.hw.comm_params(dep.impl_for(phase)).overlap_derate,
    )
    layer = att.ranks.total[:, 0, :]  # [W, R]
    rows = load.outputs[lo:hi].astype(np.float64)  # one draft token per sequence
    h = setup.arch.hidden_size
    dense = dep.precision.dense
    proj = gemm(setup.hw, m=rows, n=h, k=2 * h, precision=dense)
    norms = elementwise_time(setup.hw, hbm_bytes=rows * h * bytes_per_param("bf16") * 2.0 * 2.0, kernels=2.0)
    head = layer_cost.lm_head.time
    per_pass = layer + np.asarray(proj.time_s) + np.asarray(norms.time_s) + head
    live = rows > 0
    return dataclasses.replace(
        cost,
        draft=Priced(time=np.where(live, drafts * per_pass, 0.0), bound=np.asarray(layer_cost.lm_head.bound)),
    )
