"""Step and layer markers for profiles: one call puts a named range around every decoder layer.

The importers read ``record_function`` ranges (PyTorch profiler / Kineto) and NVTX ranges (Nsight
Systems) whose names match their step and layer patterns. A plain ``torch.profiler`` run of a
transformers model has neither; :func:`add_markers` adds both::

    from tracekit.collect.markers import add_markers

    markers = add_markers(model)                # model.layers.<i> around each decoder layer
    with torch.profiler.profile(...) as prof:
        for i, batch in enumerate(batches):
            with markers.step(i):               # ProfilerStep#<i> (torch.profiler's prof.step() does it too)
                model(**batch)
    markers.remove()

Ranges are opened by forward pre-hooks and closed by forward hooks, so they nest exactly like the
layers' forward calls; a forward that raises closes the ranges it opened.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tracekit.errors import ModelError

#: Range names the importers' default patterns read.
LAYER_NAME = "model.layers.{index}"
STEP_NAME = "ProfilerStep#{index}"

_LIST_NAME = re.compile(r"(?:^|\.)(layers|h|blocks|decoder_layers)$")


def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder layers of a transformers model: the items of its ``layers`` ModuleList
    (``model.layers``, ``transformer.h``, ...), as (qualified name, module)."""
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) and _LIST_NAME.search(name)
    ]
    if not candidates:
        raise ModelError(
            f"{type(model).__name__}: no ModuleList of decoder layers (named layers, h or blocks) found; "
            "pass the layer modules to add_markers(model, layers=[...])"
        )
    name, layers = max(candidates, key=lambda c: len(c[1]))  # the decoder, not a vision tower's few
    return [(f"{name}.{i}", m) for i, m in enumerate(layers)]


@dataclass
class Markers:
    """Hooks that put a named range around each decoder layer; ``remove()`` takes them off."""

    #: (range name, module) per decoder layer, in order.
    layers: list[tuple[str, nn.Module]]
    nvtx: bool
    _handles: list[Any] = field(default_factory=list)
    _open: list[list[Any]] = field(default_factory=list)

    def _enter(self, name: str) -> list[Any]:
        scopes: list[Any] = []
        rf = torch.profiler.record_function(name)
        rf.__enter__()
        scopes.append(rf)
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)
            scopes.append(None)
        return scopes

    def _exit(self, scopes: list[Any]) -> None:
        for scope in reversed(scopes):
            if scope is None:
                torch.cuda.nvtx.range_pop()
            else:
                scope.__exit__(None, None, None)

    def _install(self) -> None:
        for name, module in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(), always_call=True))

    def _pre(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self._open.append(self._enter(name))

        return hook

    def _post(self) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._open:
                self._exit(self._open.pop())

        return hook

    @contextlib.contextmanager
    def step(self, index: int) -> Iterator[None]:
        """A step range (``ProfilerStep#<index>``) around the block."""
        scopes = self._enter(STEP_NAME.format(index=index))
        try:
            yield
        finally:
            self._exit(scopes)

    def remove(self) -> None:
        """Take the hooks off (and close any range a failed forward left open)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        while self._open:
            self._exit(self._open.pop())


def add_markers(
    model: nn.Module, *, layers: list[nn.Module] | None = None, nvtx: bool | None = None
) -> Markers:
    """Put a ``model.layers.<i>`` range (record_function, and NVTX on CUDA) around each decoder layer
    of ``model``; returns the handle whose ``step(i)`` marks steps and ``remove()`` undoes it.

    ``layers``: the decoder layer modules, when they are not a ``layers`` ModuleList. ``nvtx``: emit
    NVTX ranges too (default: when CUDA is available), for Nsight Systems.
    """
    if layers is not None:
        named = [(LAYER_NAME.format(index=i), m) for i, m in enumerate(layers)]
    else:
        named = [(LAYER_NAME.format(index=i), m) for i, (_, m) in enumerate(decoder_layers(model))]
    use_nvtx = torch.cuda.is_available() if nvtx is None else nvtx
    markers = Markers(layers=named, nvtx=use_nvtx)
    markers._install()
    return markers
