"""Find the MoE layers of a live model: where to hook, and how to read the routing there.

The built-in rule covers transformers (>= 5) MoE models: each MoE block calls its experts module as
``experts(hidden_states, top_k_index, top_k_weights)``, and the experts module has a router sibling
(``gate`` or ``router``). A forward *pre*-hook on the experts module therefore sees exactly the expert
ids and gate weights the model applies, after any group limiting, renormalisation and scaling.
Tested on Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3 (also Kimi K2, Mistral Large 3) and
gpt-oss. Other models are added with :func:`register_moe`.

Shape legend: T tokens of the step (batch rows x sequence, flattened), K top-k, D hidden.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tracekit.errors import CollectorError, ModelError, UsageError

#: ``extractor(module, args, kwargs, output)`` -> ``(expert_ids_TK, gate_weights_TK or None)``;
#: ``output`` is None for hooks that run before the module.
Extractor = Callable[
    [nn.Module, tuple[Any, ...], dict[str, Any], Any], tuple[torch.Tensor, torch.Tensor | None]
]
When = Literal["before", "after"]

_ROUTER_NAMES = ("gate", "router")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


@dataclass(frozen=True, kw_only=True)
class MoERegistration:
    """How to read routing from one module class (see :func:`register_moe`)."""

    #: Class name of the module to hook (matched against ``type(module).__name__``).
    class_name: str
    #: Hook before the module runs (its inputs) or after (its output).
    when: When
    #: Reads ``(expert_ids, gate_weights)`` from the hook's view of the call.
    extractor: Extractor
    #: What the trace manifest calls this hook.
    label: str


@dataclass(frozen=True, kw_only=True)
class MoESite:
    """One hooked MoE layer of a live model."""

    #: Decoder layer index (counting dense layers too).
    layer: int
    #: Qualified module name inside the model (``model.layers.3.mlp.experts``).
    module_name: str
    module: nn.Module
    registration: MoERegistration


_REGISTRY: dict[str, MoERegistration] = {}


def experts_inputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The transformers-5 convention: ``experts(hidden_states, top_k_index, top_k_weights)``."""
    ids = args[1] if len(args) > 1 else _first(kwargs, ("top_k_index", "router_indices", "selected_experts"))
    weights = (
        args[2] if len(args) > 2 else _first(kwargs, ("top_k_weights", "routing_weights", "router_scores"))
    )
    if ids is None or weights is None:
        raise CollectorError(
            f"{type(module).__name__} was called with {len(args)} positional arguments and keywords "
            f"{sorted(kwargs)}, not (hidden_states, top_k_index, top_k_weights): the router API of this "
            "transformers version differs; register the model's router with tracekit.collect.register_moe"
        )
    return ids, weights


def _first(kwargs: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return None


def router_outputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The transformers-5 router convention: ``router(x) -> (logits, top_k_weights, top_k_index)``."""
    if not isinstance(output, tuple | list) or len(output) < 3:
        raise CollectorError(
            f"{type(module).__name__} returned {type(output).__name__}, not (logits, weights, indices); "
            "give register_moe an extractor for this router"
        )
    return output[-1], output[-2]


def register_moe(
    module_class: type[nn.Module] | str,
    *,
    extractor: Extractor | None = None,
    when: When | None = None,
) -> MoERegistration:
    """Teach the collector a model's MoE layers.

    ``module_class`` is the class (or class name) of the module to hook in every MoE layer: a router
    or an experts module. Without ``extractor``, ``when="before"`` reads the transformers-5 experts
    call ``(hidden_states, top_k_index, top_k_weights)`` and ``when="after"`` reads a router's
    ``(logits, top_k_weights, top_k_index)`` output. An ``extractor(module, args, kwargs, output)``
    returns ``(expert_ids[T, K], gate_weights[T, K] or None)`` for anything else. Registered classes
    take precedence over the built-in rule. Returns the registration.
    """
    name = module_class if isinstance(module_class, str) else module_class.__name__
    if when is None:
        when = "before" if extractor is None or name.endswith("Experts") else "after"
    if when not in ("before", "after"):
        raise UsageError(f"register_moe: when must be 'before' or 'after', got {when!r}")
    if extractor is None:
        extractor = experts_inputs if when == "before" else router_outputs
    reg = MoERegistration(class_name=name, when=when, extractor=extractor, label=f"registered:{name}:{when}")
    _REGISTRY[name] = reg
    return reg


def unregister_moe(module_class: type[nn.Module] | str) -> None:
    """Forget a registration made with :func:`register_moe` (no error if absent)."""
    name = module_class if isinstance(module_class, str) else module_class.__name__
    _REGISTRY.pop(name, None)


def registered_moe() -> list[str]:
    """Class names registered with :func:`register_moe`."""
    return sorted(_REGISTRY)


_BUILTIN = MoERegistration(
    class_name="*Experts", when="before", extractor=experts_inputs, label="experts_inputs"
)


def _is_builtin_experts(name: str, module: nn.Module, parent: nn.Module | None) -> bool:
    if not type(module).__name__.endswith("Experts") or parent is None:
        return False
    if name.rsplit(".", 1)[-1] != "experts":
        return False
    return any(isinstance(getattr(parent, r, None), nn.Module) for r in _ROUTER_NAMES)


def layer_index(module_name: str) -> int | None:
    """Decoder layer index in a qualified module name (``model.layers.7.mlp.experts`` -> 7)."""
    m = _LAYER_INDEX.search(module_name)
    return int(m.group(1)) if m else None


def find_moe_sites(model: nn.Module, *, model_name: str = "model") -> list[MoESite]:
    """Every MoE layer of ``model`` the registry or the built-in rule recognises, by layer.

    Raises ModelError when there is none.
    """
    modules = dict(model.named_modules())
    sites: list[MoESite] = []
    for name, module in modules.items():
        reg = _REGISTRY.get(type(module).__name__)
        if reg is None:
            parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
            if _is_builtin_experts(name, module, parent):
                reg = _BUILTIN
        if reg is None:
            continue
        sites.append(MoESite(layer=-1, module_name=name, module=module, registration=reg))
    if not sites:
        raise ModelError(
            f"{model_name}: no MoE layer found ({type(model).__name__} has no experts module called with "
            "routing and no registered router); record needs a Mixture-of-Experts model. If it is one, "
            "register its router or experts class with tracekit.collect.register_moe"
        )
    found = [layer_index(s.module_name) for s in sites]
    indices = [i for i in found if i is not None]
    if len(indices) != len(sites) or len(set(indices)) != len(indices):
        indices = list(range(len(sites)))  # no (unique) layer number in the names: number in order
    out = [
        MoESite(layer=int(i), module_name=s.module_name, module=s.module, registration=s.registration)
        for i, s in zip(indices, sites, strict=True)
    ]
    return sorted(out, key=lambda s: s.layer)
