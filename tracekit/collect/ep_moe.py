"""Expert parallelism for a live transformers MoE model, by replacing its experts' forward.

Each rank keeps the experts it owns (contiguous placement: rank r holds experts
``[r*E/N, (r+1)*E/N)``) and replaces the ``forward`` of every MoE layer's experts module *instance*
(the transformers classes are not touched) by an expert-parallel one. Attention, routers, shared
experts and everything else run data-parallel: each rank on its own batch. Per MoE layer, every
rank issues the same four ``all_to_all_single`` calls, labelled for the comm collector:

1. ``dispatch_layout``: rows each rank will send to each other rank (one int64 per peer).
2. ``dispatch``: the hidden state of each token, sent *once per destination rank* that holds at
   least one of its top-k experts (as DeepEP does), rows grouped by destination.
3. ``dispatch_meta``: for the same rows, the top-k expert ids and gate weights (float32 [rows, 2K]).
4. ``combine``: each destination rank sends back, per received row, the gate-weighted sum of its
   local experts' outputs; the source rank adds the partial sums of all destinations.

Padding tokens (attention mask 0) are not dispatched: their expert output is zero. They never
reach a real token (attention masks them), and the routing collector does not record them either,
so dispatch bytes are exactly what the recorded routing implies.

Shape legend: T tokens of the rank's step, H hidden, K top-k, E experts, N ranks, S rows sent,
R rows received, M local (row, expert) pairs on the receiving rank.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tracekit.collect import comm
from tracekit.collect.sites import MoESite, find_moe_sites
from tracekit.errors import CollectorError, ModelError, UsageError

__all__ = ["ExpertParallel", "contiguous_owner", "placement_columns"]

#: Purposes of the four calls of every MoE layer, in issue order.
PURPOSES = ("dispatch_layout", "dispatch", "dispatch_meta", "combine")


def contiguous_owner(num_experts: int, num_ranks: int) -> np.ndarray:
    """Rank owning each expert under contiguous placement: ``owner[e] = e // (E / N)``."""
    if num_ranks < 1 or num_experts % num_ranks:
        raise UsageError(
            f"expert parallelism over {num_ranks} ranks needs the expert count ({num_experts}) to be a "
            "multiple of it; choose --ep among its divisors"
        )
    return np.arange(num_experts, dtype=np.int64) // (num_experts // num_ranks)


def placement_columns(layers: Sequence[int], num_experts: int, num_ranks: int) -> dict[str, np.ndarray]:
    """The ``placement`` table of contiguous placement (one epoch from step 0), as columns."""
    owner = contiguous_owner(num_experts, num_ranks)
    n = len(layers)
    return {
        "from_step": np.zeros(n * num_experts, np.int32),
        "layer": np.repeat(np.asarray(layers, dtype=np.int16), num_experts),
        "slot": np.tile(np.arange(num_experts, dtype=np.int32), n),
        "rank": np.tile(owner.astype(np.int32), n),
        "expert": np.tile(np.arange(num_experts, dtype=np.int16), n),
    }


def _expert_tensors(module: nn.Module, num_experts: int) -> list[str]:
    """Names of the module's own parameters and buffers that hold one slice per expert."""
    names = [
        n for n, p in module.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[0] == num_experts
    ]
    names += [n for n, b in module.named_buffers(recurse=False) if b.dim() >= 1 and b.shape[0] == num_experts]
    return names


class ExpertParallel:
    """Makes ``model`` (the same weights on every rank) run its MoE layers expert-parallel.

    Must be created on every rank of the default process group (or ``group``) at the same point.
    ``step`` returns the current forward step for the comm records (None when unknown). Call
    :meth:`remove` to restore the experts' forward (the dropped experts are not restored).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_experts: int,
        group: Any = None,
        step: Callable[[], int | None] | None = None,
        model_name: str = "model",
        sites: Sequence[MoESite] | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise UsageError("expert parallelism needs torch.distributed initialised (init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.num_ranks = dist.get_world_size(group)
        self.num_experts = num_experts
        self.owner_E = contiguous_owner(num_experts, self.num_ranks)
        self.local_experts = num_experts // self.num_ranks
        self.first_local = self.rank * self.local_experts
        self.step = step or (lambda: None)
        self.sites = list(sites) if sites is not None else find_moe_sites(model, model_name=model_name)
        self.layers = tuple(s.layer for s in self.sites)
        self._keep_T: torch.Tensor | None = None
        self._owner_cache: dict[torch.device, torch.Tensor] = {}
        self._handles = [model.register_forward_pre_hook(self._read_mask, with_kwargs=True)]
        self._patched: list[nn.Module] = []
        for site in self.sites:
            self._shard(site, model_name)

    # -- set-up ---------------------------------------------------------------------------------
    def _shard(self, site: MoESite, model_name: str) -> None:
        module = site.module
        names = _expert_tensors(module, self.num_experts)
        if not names:
            raise ModelError(
                f"{model_name}: {site.module_name} ({type(module).__name__}) holds no per-expert weight "
                f"tensors with {self.num_experts} rows; expert parallelism needs the transformers-5 experts "
                "module (3-D expert weights, called with hidden_states, top_k_index, top_k_weights)"
            )
        lo, hi = self.first_local, self.first_local + self.local_experts
        for name in names:
            full = getattr(module, name)
            part = full.detach()[lo:hi].clone()
            if isinstance(full, nn.Parameter):
                setattr(module, name, nn.Parameter(part, requires_grad=False))
            else:
                module.register_buffer(name, part)
        if hasattr(module, "num_experts"):
            setattr(module, "num_experts", self.local_experts)  # noqa: B010 (a plain attribute of the module)
        layer = site.layer
        compute_local = type(module).forward  # the class's forward (its experts implementation)

        def forward(
            mod: nn.Module,
            hidden_states: torch.Tensor,
            top_k_index: torch.Tensor,
            top_k_weights: torch.Tensor,
        ) -> torch.Tensor:
            return self._moe(layer, mod, compute_local, hidden_states, top_k_index, top_k_weights)

        module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
        self._patched.append(module)

    def _read_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Which of the step's tokens are real (not padding), from the forward's attention mask."""
        tokens = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        self._keep_T = None
        if tokens is None or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            return
        seq = int(tokens.shape[1]) if tokens.dim() >= 2 else int(tokens.shape[-1])
        if mask.shape[1] >= seq:
            self._keep_T = mask[:, -seq:].reshape(-1) != 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module in self._patched:
            del module.forward
        self._patched.clear()

    def _owner(self, device: torch.device) -> torch.Tensor:
        t = self._owner_cache.get(device)
        if t is None:
            t = self._owner_cache[device] = torch.as_tensor(self.owner_E, device=device)
        return t

    # -- one MoE layer --------------------------------------------------------------------------
    def _a2a(
        self,
        purpose: str,
        layer: int,
        out: torch.Tensor,
        inp: torch.Tensor,
        out_splits: list[int] | None,
        in_splits: list[int] | None,
    ) -> None:
        with comm.context(step=self.step(), layer=layer, purpose=purpose):
            dist.all_to_all_single(out, inp, out_splits, in_splits, group=self.group)

    def _moe(
        self,
        layer: int,
        module: nn.Module,
        compute_local: Callable[..., torch.Tensor],
        x_TH: torch.Tensor,
        ids_TK: torch.Tensor,
        w_TK: torch.Tensor,
    ) -> torch.Tensor:
        T, H = x_TH.shape
        K = ids_TK.shape[-1]
        N = self.num_ranks
        device = x_TH.device
        keep_T = self._keep_T
        if keep_T is not None and keep_T.numel() != T:
            raise CollectorError(
                f"layer {layer}: the experts got {T} tokens but the forward's attention mask covers "
                f"{keep_T.numel()}; expert parallelism expects the MoE block to route every token of the step"
            )
        # which ranks each token goes to: once per rank holding any of its experts
        dest_TK = self._owner(device)[ids_TK.long()]
        to_rank_TN = torch.zeros((T, N), dtype=torch.bool, device=device)
        to_rank_TN.scatter_(1, dest_TK, True)
        if keep_T is not None:
            to_rank_TN &= keep_T[:, None]
        _dest_S, tok_S = to_rank_TN.T.nonzero(as_tuple=True)  # grouped by destination, tokens in order
        send_N = to_rank_TN.sum(0)
        recv_N = torch.empty_like(send_N)
        self._a2a("dispatch_layout", layer, recv_N, send_N, None, None)
        send_counts = send_N.tolist()
        recv_counts = recv_N.tolist()
        R = int(sum(recv_counts))
        # dispatch: hidden states, then ids and weights of the same rows
        x_RH = x_TH.new_empty((R, H))
        self._a2a("dispatch", layer, x_RH, x_TH[tok_S].contiguous(), recv_counts, send_counts)
        meta_S2K = torch.cat([ids_TK[tok_S].to(torch.float32), w_TK[tok_S].to(torch.float32)], dim=1)
        meta_R2K = meta_S2K.new_empty((R, 2 * K))
        self._a2a("dispatch_meta", layer, meta_R2K, meta_S2K.contiguous(), recv_counts, send_counts)
        # local experts: one (row, expert) pair per chosen local expert, in expert order
        ids_RK = meta_R2K[:, :K].round().long()
        w_RK = meta_R2K[:, K:].to(w_TK.dtype)
        local_RK = self._owner(device)[ids_RK] == self.rank
        row_M, slot_M = local_RK.nonzero(as_tuple=True)
        expert_M = ids_RK[row_M, slot_M]
        order = torch.argsort(expert_M, stable=True)
        row_M, slot_M, expert_M = row_M[order], slot_M[order], expert_M[order]
        y_RH = torch.zeros((R, H), dtype=x_TH.dtype, device=device)
        if row_M.numel():
            y_MH = compute_local(
                module,
                x_RH[row_M],
                (expert_M - self.first_local)[:, None],
                w_RK[row_M, slot_M][:, None],
            )
            y_RH.index_add_(0, row_M, y_MH.to(y_RH.dtype))
        # combine: partial sums back to their source rank, added up there
        back_SH = x_TH.new_empty((len(tok_S), H))
        self._a2a("combine", layer, back_SH, y_RH, send_counts, recv_counts)
        out_TH = torch.zeros_like(x_TH)
        out_TH.index_add_(0, tok_S, back_SH)
        return out_TH
