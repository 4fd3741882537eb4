"""Import the expert loads vLLM's expert-parallel load balancer (EPLB) keeps.

vLLM (``vllm/distributed/eplb/eplb_state.py``, ``EplbState`` / ``EplbModelState``) holds, per
model, these tensors; a dump of them (``torch.save`` of a dict, ``safetensors``, or ``numpy.savez``)
under their vLLM names is what this importer reads, one file per EP rank:

- ``physical_to_logical_map`` ``[num_moe_layers, num_physical_experts]``: the logical expert each
  physical slot holds (slot ``s`` lives on EP rank ``s // (num_physical_experts / ep_size)``);
- ``expert_load_window`` ``[window_size, num_moe_layers, P]``: the tokens each physical expert
  processed in each of the last ``window_size`` forward passes (a ring buffer), with
  ``expert_load_window_step`` the slot written next (so the oldest pass); and/or
- ``expert_load_pass`` ``[num_moe_layers, P]``: the pass in progress.

``P`` is ``num_physical_experts`` (the rank counted its own tokens' choices of every physical expert)
or ``num_physical_experts / ep_size`` (the rank counted the tokens its local experts received; some
vLLM versions). Under the naive all-to-all every rank sees every token of its DP group, so the ranks'
counts are identical (vLLM divides their sum by the EP size); the importer detects that and writes
them once. Other keys (``logical_to_physical_map``, ``logical_replica_count``) are checked when
present. A dump of ``EplbState.model_states`` (one nested dict per model) is accepted when it holds
exactly one model.

Rows: ``expert_load`` (steps = the window's passes, oldest first, all-zero passes skipped) and
``placement`` (the map, one epoch from step 0). Layers are MoE-layer indices mapped to decoder layers
through ``--model`` (``moe_layers``); without it they stay MoE-layer indices.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.errors import InputFormatError, MissingDependencyError, UsageError
from tracekit.importers._arch import unknown_arch
from tracekit.importers.kineto import RANK_SOURCES, ranks_for
from tracekit.schema import Manifest, ModelArch, ParallelLayout
from tracekit.trace import TraceWriter

MAP_KEY = "physical_to_logical_map"
WINDOW_KEY = "expert_load_window"
PASS_KEY = "expert_load_pass"
WINDOW_STEP_KEY = "expert_load_window_step"
LOG2PHY_KEY = "logical_to_physical_map"
REPLICA_KEY = "logical_replica_count"
#: Largest expert id / layer id the trace schema stores (int16).
MAX_ID = 2**15 - 1


@dataclass(frozen=True, kw_only=True, eq=False)
class EplbDump:
    """One rank's EPLB state, as numpy arrays."""

    path: Path
    #: int64 [moe layers, physical experts].
    phy2log: np.ndarray
    #: int64 [passes, moe layers, P], oldest pass first (P: all physical experts, or the rank's own).
    loads: np.ndarray
    #: Whether ``loads`` came from the window in chronological order (False: stored order).
    ordered: bool


@dataclass(frozen=True, kw_only=True)
class VllmReport:
    """What a vLLM import wrote."""

    out: Path
    files: tuple[Path, ...]
    #: Table -> rows written.
    rows: dict[str, int]
    #: Passes kept (steps of expert_load).
    steps: int
    notes: tuple[str, ...]
    manifest: Manifest = field(repr=False)
    loads_csv: Path | None = None


def _numpy(value: Any, path: Path, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        arr = value
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        arr = value.detach().cpu().numpy()
    elif isinstance(value, int | float | list | tuple) and not isinstance(value, bool):
        try:
            arr = np.asarray(value)
        except ValueError:
            raise InputFormatError(f"{path}: {key} is a ragged list; expected a tensor") from None
    else:
        raise InputFormatError(f"{path}: {key} is {type(value).__name__}; expected a tensor")
    if arr.size == 0:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        whole = np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr))
        if not (whole and np.all(np.abs(arr) < 2**62)):
            raise InputFormatError(f"{path}: {key} holds values that are not integers (token counts, ids)")
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == object:
        raise InputFormatError(f"{path}: {key} has dtype {arr.dtype}; expected integers (token counts, ids)")
    if np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) >= 2**63:
        raise InputFormatError(f"{path}: {key} holds values too large for int64")
    return arr.astype(np.int64)


def _load(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(
            f"{path}: no such file; give the EPLB state dumped from vLLM (.pt, .safetensors, .npz)"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".safetensors":
            try:
                from safetensors.numpy import load_file
            except ModuleNotFoundError:
                raise MissingDependencyError(
                    "safetensors", "torch", "reading .safetensors EPLB dumps"
                ) from None
            return load_file(str(path))
    except (OSError, ValueError, EOFError) as exc:
        raise InputFormatError(f"{path}: cannot read it as {suffix[1:]} ({_first(exc)})") from None
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InputFormatError(f"{path}: cannot read it as {suffix[1:]} ({_first(exc)})") from None
    try:
        import torch
    except ModuleNotFoundError:
        raise MissingDependencyError(
            "torch", "torch", "reading torch.save EPLB dumps (or give .npz)"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise InputFormatError(
            f"{path}: not a torch.save file of plain tensors ({type(exc).__name__}: {_first(exc)}); "
            "give the EPLB state saved with torch.save, safetensors or numpy.savez"
        ) from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _state(obj: Any, path: Path) -> Mapping[str, Any]:
    """The dict holding the EPLB tensors: the object itself, or its one nested per-model state."""
    if not isinstance(obj, Mapping):
        raise InputFormatError(
            f"{path}: holds a {type(obj).__name__}; expected a dict of EPLB tensors ({MAP_KEY}, {WINDOW_KEY}, ...)"
        )
    if MAP_KEY in obj:
        return obj
    nested: list[Mapping[str, Any]] = []
    level: list[Mapping[str, Any]] = [obj]
    for _ in range(3):  # e.g. {"model_states": {config hash: state}}
        level = [v for m in level for v in m.values() if isinstance(v, Mapping)]
        nested = [m for m in level if MAP_KEY in m]
        if nested:
            break
    if len(nested) == 1:
        return nested[0]
    if len(nested) > 1:
        raise InputFormatError(
            f"{path}: holds the EPLB state of {len(nested)} models; dump one model's state per file"
        )
    keys = sorted(str(k) for k in obj)[:8]
    raise InputFormatError(
        f"{path}: no {MAP_KEY} (found {keys}); give vLLM's EplbState tensors by their names"
    )


def parse_dump(obj: Any, path: Path) -> EplbDump:
    """Check one loaded dump and put its loads in chronological order."""
    state = _state(obj, path)
    phy2log = _numpy(state[MAP_KEY], path, MAP_KEY)
    if phy2log.ndim != 2 or phy2log.shape[0] < 1 or phy2log.shape[1] < 1:
        raise InputFormatError(
            f"{path}: {MAP_KEY} has shape {phy2log.shape}; expected [moe layers, physical experts]"
        )
    if phy2log.min() < 0:
        raise InputFormatError(f"{path}: {MAP_KEY} holds negative expert ids")
    if phy2log.max() > MAX_ID or phy2log.shape[0] > MAX_ID:
        raise InputFormatError(
            f"{path}: expert ids up to {int(phy2log.max())} or {phy2log.shape[0]} layers do not fit the trace "
            f"schema's int16 ids (at most {MAX_ID}); such a model cannot be imported"
        )
    num_layers = phy2log.shape[0]
    ordered = True
    if WINDOW_KEY in state:
        loads = _numpy(state[WINDOW_KEY], path, WINDOW_KEY)
        if loads.ndim != 3 or loads.shape[1] != num_layers:
            raise InputFormatError(
                f"{path}: {WINDOW_KEY} has shape {loads.shape}; expected [window, {num_layers} layers, experts]"
            )
        raw_step = state.get(WINDOW_STEP_KEY)
        if raw_step is None:
            ordered = False
        else:
            step_arr = _numpy(raw_step, path, WINDOW_STEP_KEY)
            if step_arr.size != 1 or not 0 <= int(step_arr.reshape(-1)[0]) < max(loads.shape[0], 1):
                raise InputFormatError(
                    f"{path}: {WINDOW_STEP_KEY} must be one integer in 0..{loads.shape[0] - 1}"
                )
            k = int(step_arr.reshape(-1)[0])
            loads = np.concatenate([loads[k:], loads[:k]])  # slot k is the oldest pass
    elif PASS_KEY in state:
        one = _numpy(state[PASS_KEY], path, PASS_KEY)
        if one.ndim != 2 or one.shape[0] != num_layers:
            raise InputFormatError(
                f"{path}: {PASS_KEY} has shape {one.shape}; expected [{num_layers} layers, experts]"
            )
        loads = one[None]
    else:
        raise InputFormatError(f"{path}: neither {WINDOW_KEY} nor {PASS_KEY}; the dump holds no loads")
    if loads.size and loads.min() < 0:
        raise InputFormatError(f"{path}: the loads hold negative token counts")
    if loads.shape[2] < 1 or (phy2log.shape[1] % loads.shape[2]) != 0:
        raise InputFormatError(
            f"{path}: loads cover {loads.shape[2]} experts but the map has {phy2log.shape[1]} physical "
            "experts; expected all of them or an equal share per rank"
        )
    _check_inverse(state, phy2log, path)
    return EplbDump(path=path, phy2log=phy2log, loads=loads, ordered=ordered)


def _check_inverse(state: Mapping[str, Any], phy2log: np.ndarray, path: Path) -> None:
    """logical_replica_count (when present) must count each expert's slots in the map."""
    if REPLICA_KEY not in state:
        return
    replicas = _numpy(state[REPLICA_KEY], path, REPLICA_KEY)
    if replicas.ndim != 2 or replicas.shape[0] != phy2log.shape[0]:
        raise InputFormatError(
            f"{path}: {REPLICA_KEY} has shape {replicas.shape}; expected [layers, experts]"
        )
    num = max(replicas.shape[1], int(phy2log.max()) + 1)
    counted = np.stack([np.bincount(row, minlength=num) for row in phy2log])
    padded = np.zeros_like(counted)
    padded[:, : replicas.shape[1]] = replicas
    if not np.array_equal(counted, padded):
        raise InputFormatError(
            f"{path}: {REPLICA_KEY} disagrees with {MAP_KEY}; the tensors were dumped at different times"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class Combined:
    """Logical loads of all files and how they were combined."""

    #: int64 [ranks written, passes kept, moe layers, logical experts].
    logical: np.ndarray
    #: Ranks of the rows of ``logical``.
    ranks: tuple[int, ...]
    #: Window positions (0 = oldest) of the passes kept.
    kept: np.ndarray
    notes: tuple[str, ...]


def combine(dumps: Sequence[EplbDump], ranks: Sequence[int], world: int, num_experts: int) -> Combined:
    """The files' loads as logical loads per rank, pass, layer and expert."""
    first = dumps[0]
    for d in dumps[1:]:
        if d.phy2log.shape != first.phy2log.shape or not np.array_equal(d.phy2log, first.phy2log):
            raise InputFormatError(
                f"{d.path}: its {MAP_KEY} differs from {first.path}'s; dump every rank at the same pass"
            )
        if d.loads.shape != first.loads.shape:
            raise InputFormatError(
                f"{d.path}: loads of shape {d.loads.shape}, {first.path} {first.loads.shape}"
            )
    phy2log = first.phy2log
    num_layers, num_slots = phy2log.shape
    width = first.loads.shape[2]
    notes: list[str] = []
    if not all(d.ordered for d in dumps):
        notes.append(
            f"no {WINDOW_STEP_KEY} in the dump: window slots taken in stored order, not oldest first"
        )
    stack = np.stack([d.loads for d in dumps])  # [files, passes, layers, width]
    if width != num_slots:
        per = num_slots // width
        if per != world:
            raise UsageError(
                f"{first.path}: each rank's loads cover {width} of {num_slots} physical experts, so the run "
                f"had {per} EP ranks; give all {per} files or --world-size {per}"
            )
        full = np.zeros((stack.shape[1], num_layers, num_slots), dtype=np.int64)
        for r, loads in zip(ranks, stack, strict=True):
            full[:, :, r * width : (r + 1) * width] += loads
        per_rank = full[None]
        out_ranks: tuple[int, ...] = (0,)
        notes.append(
            "each rank counted the tokens its own experts received: counts summed over ranks, written as rank 0"
        )
    elif len(dumps) > 1 and all(np.array_equal(stack[0], s) for s in stack[1:]):
        per_rank = stack[:1]
        out_ranks = (0,)
        notes.append(
            f"all {len(dumps)} ranks counted the same tokens (naive all-to-all: every rank sees its DP "
            "group's tokens): written once as rank 0, not multiplied by the rank count"
        )
    else:
        per_rank = stack
        out_ranks = tuple(ranks)
    used = per_rank.reshape(per_rank.shape[0], per_rank.shape[1], -1).sum(axis=(0, 2)) > 0
    if not used.any():
        raise InputFormatError(
            f"{first.path}: every pass of the window is all zeros; record traffic with EPLB enabled before dumping"
        )
    if (~used).any():
        notes.append(f"{int((~used).sum())} all-zero (unused) window slots skipped")
    kept = np.flatnonzero(used)
    sel = per_rank[:, kept]  # [ranks, passes, layers, slots]
    idx = (np.arange(num_layers)[:, None] * num_experts + phy2log)[None, None]
    base = (np.arange(sel.shape[0] * sel.shape[1]) * num_layers * num_experts).reshape(
        sel.shape[0], sel.shape[1], 1, 1
    )
    flat = np.bincount(
        (idx + base).reshape(-1),
        weights=sel.reshape(-1).astype(np.float64),
        minlength=sel.shape[0] * sel.shape[1] * num_layers * num_experts,
    )
    logical = np.rint(flat).astype(np.int64).reshape(sel.shape[0], sel.shape[1], num_layers, num_experts)
    return Combined(logical=logical, ranks=out_ranks, kept=kept, notes=tuple(notes))


def _layer_ids(model: ModelArch | None, num_layers: int, path: Path) -> tuple[tuple[int, ...], str | None]:
    if model is None:
        return tuple(range(num_layers)), (
            f"layers are vLLM's MoE-layer indices 0..{num_layers - 1}; pass --model to map them to decoder layers"
        )
    if len(model.moe_layers) != num_layers:
        raise UsageError(
            f"{path}: the dump has {num_layers} MoE layers but --model {model.name} has "
            f"{len(model.moe_layers)}; give the model that ran"
        )
    return tuple(model.moe_layers), None


def import_vllm(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    model: ModelArch | None = None,
    world_size: int | None = None,
    rank_from: str = "filename",
    loads_csv: str | Path | None = None,
    overwrite: bool = False,
) -> VllmReport:
    """Import vLLM EPLB state dumps (one per EP rank) into a trace at ``out``."""
    paths = [Path(f) for f in files]
    if not paths:
        raise UsageError("no input files; give the EPLB state dumped from vLLM, one file per EP rank")
    if rank_from not in RANK_SOURCES:
        raise UsageError(f"--rank-from {rank_from!r}: valid values are {', '.join(RANK_SOURCES)}")
    if world_size is not None and world_size < 1:
        raise UsageError(f"--world-size {world_size}: must be at least 1")
    csv_path = Path(loads_csv) if loads_csv is not None else None
    if csv_path is not None and csv_path.exists() and not overwrite:
        raise UsageError(f"--loads-csv {csv_path}: exists; choose another file or pass --force")
    dumps = [parse_dump(_load(p), p) for p in paths]
    ranks = ranks_for(paths, rank_from)
    world = world_size or (max(ranks) + 1)
    if max(ranks) >= world:
        raise UsageError(f"--world-size {world}: the files include rank {max(ranks)}; give the run's EP size")
    phy2log = dumps[0].phy2log
    num_layers, num_slots = phy2log.shape
    num_experts = model.num_experts if model else int(phy2log.max()) + 1
    if int(phy2log.max()) >= num_experts:
        raise UsageError(
            f"{paths[0]}: the map names expert {int(phy2log.max())} but --model {model.name if model else ''} "
            f"has {num_experts} experts; give the model that ran"
        )
    layers, layer_note = _layer_ids(model, num_layers, paths[0])
    combined = combine(dumps, ranks, world, num_experts)
    notes = list(combined.notes)
    if layer_note:
        notes.append(layer_note)
    missing = [
        (layers[i], e)
        for i in range(num_layers)
        for e in np.setdiff1d(np.arange(num_experts), phy2log[i])[:1]
    ]
    write_placement = num_slots % world == 0 and not missing
    if num_slots % world:
        notes.append(f"{num_slots} physical experts do not divide over {world} ranks: no placement written")
    elif missing:
        layer, expert = missing[0]
        notes.append(f"the map gives logical expert {expert} of layer {layer} no slot: no placement written")
    if world == 1 and len(paths) == 1 and world_size is None:
        notes.append("one file and no --world-size: the placement puts every slot on rank 0")
    notes.append(
        "the map is the one held at dump time; passes recorded before an EPLB rearrangement used another"
    )
    fallback = unknown_arch(num_layers=max(layers) + 1, moe_layers=layers, num_experts=num_experts)
    detail: dict[str, Any] = {
        "importer": "vllm",
        "files": [str(p) for p in paths],
        "ranks": list(ranks),
        "window_passes_kept": combined.kept.tolist(),
        "model_given": model is not None,
    }
    text = "; ".join(notes)
    if model is None:
        text = "model unknown: imported without --model (layer and expert counts from the dump); " + text
    manifest = Manifest(
        model=model or fallback,
        source="imported",
        source_detail=detail,
        parallel=ParallelLayout(world_size=world, ep_size=world, placement="vllm-eplb"),
        clock="no times: vLLM's EPLB state carries none",
        notes=text,
    )
    logical = combined.logical
    steps_n, experts_n = logical.shape[1], logical.shape[3]
    rows = {"expert_load": 0, "placement": 0}
    writers: dict[int, TraceWriter] = {}
    try:
        writers[0] = TraceWriter(out, manifest, rank=0, overwrite=overwrite)
        if write_placement:
            spr = num_slots // world
            writers[0].append(
                "placement",
                {
                    "from_step": np.zeros(num_layers * num_slots, dtype=np.int32),
                    "layer": np.repeat(np.asarray(layers, dtype=np.int16), num_slots),
                    "slot": np.tile(np.arange(num_slots, dtype=np.int32), num_layers),
                    "rank": np.tile(np.arange(num_slots) // spr, num_layers).astype(np.int32),
                    "expert": phy2log.reshape(-1).astype(np.int16),
                },
            )
            rows["placement"] = num_layers * num_slots
        for i, rank in enumerate(combined.ranks):
            w = writers.get(rank) or TraceWriter(out, manifest, rank=rank)
            writers[rank] = w
            w.append(
                "expert_load",
                {
                    "step": np.repeat(np.arange(steps_n, dtype=np.int32), num_layers * experts_n),
                    "layer": np.tile(np.repeat(np.asarray(layers, dtype=np.int16), experts_n), steps_n),
                    "expert": np.tile(np.arange(experts_n, dtype=np.int16), steps_n * num_layers),
                    "num_tokens": logical[i].reshape(-1),
                },
            )
            rows["expert_load"] += logical[i].size
        for _, w in sorted(writers.items(), reverse=True):
            w.close()
    except BaseException:
        for w in writers.values():
            w.close(error="import failed")
        raise
    if csv_path is not None:
        _write_loads_csv(csv_path, layers, logical.sum(axis=(0, 1)))
    return VllmReport(
        out=Path(out),
        files=tuple(paths),
        rows=rows,
        steps=steps_n,
        notes=tuple(notes),
        manifest=manifest,
        loads_csv=csv_path,
    )


def _write_loads_csv(path: Path, layers: Sequence[int], totals: np.ndarray) -> None:
    """One row per layer: ``layer`` and one column per logical expert (``tracekit place --loads``)."""
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", *(f"expert_{e}" for e in range(totals.shape[1]))])
        for layer, row in zip(layers, totals.tolist(), strict=True):
            w.writerow([layer, *row])
