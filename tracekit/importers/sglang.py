"""Import SGLang's expert-distribution recorder dumps (``torch.save`` files).

SGLang (``--expert-distribution-recorder-mode``, ``python/sglang/srt/eplb/expert_distribution.py``)
dumps one of two layouts:

- **stat / stat_approx**: ``{"rank": int, "logical_count": Tensor[passes, layers, logical_experts],
  "average_utilization_rate_over_window": float | None}``, written by rank 0 only, the counts already
  summed over all ranks (an all-reduce precedes the dump); ``passes`` are the slots of the recorder's
  buffer (all-zero slots are unused and skipped).
- **per_pass / per_token**: one file per rank, ``{"records": [...], "last_physical_to_logical_map":
  Tensor[layers, physical_experts]}``; each record has ``forward_pass_id``, ``rank``,
  ``gatherer_key`` and ``global_physical_count`` (Tensor[layers, physical_experts]: this rank's
  token-expert choices per physical slot). per_token records also have ``input_ids``, ``positions``,
  ``extend_seq_lens``, ``forward_mode`` (an int of SGLang's ForwardMode) and ``topk_ids_of_layer``
  (Tensor[layers, tokens, 8] of physical expert ids, -1 where unused).

Physical slots map to logical experts through the last physical-to-logical map (SGLang keeps only the
last one: if EPLB rebalanced while recording, earlier passes used another map; the import says so).
Rows: ``expert_load`` always; ``steps``, ``tokens`` and ``routing`` (no gate weights: SGLang does not
record them) in per_token mode; ``placement`` (one epoch, from step 0) in per_pass/per_token modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.errors import InputFormatError, MissingDependencyError, UsageError
from tracekit.importers._arch import unknown_arch
from tracekit.schema import Manifest, ModelArch, ParallelLayout
from tracekit.trace import TraceWriter

#: Largest expert or layer id the trace schema stores (its id columns are int16).
MAX_ID = 2**15 - 1
#: SGLang ForwardMode values (IntEnum from 1) -> phase; 4 (IDLE) has no tokens.
FORWARD_MODES: dict[int, str] = {1: "prefill", 2: "decode", 3: "mixed"}
IDLE_MODE = 4


@dataclass(frozen=True, kw_only=True)
class SglangReport:
    """What an SGLang import wrote."""

    out: Path
    #: stat, per_pass or per_token.
    mode: str
    files: tuple[Path, ...]
    #: Table -> rows written.
    rows: dict[str, int]
    #: Facts the user should know (aggregated ranks, map caveats, skipped rows).
    notes: tuple[str, ...]
    manifest: Manifest


def _torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise MissingDependencyError("torch", "torch", "importing SGLang expert-distribution dumps") from None
    return torch


def _load(path: Path) -> Any:
    torch = _torch()
    if not path.is_file():
        raise UsageError(
            f"{path}: no such file; give the .pt files SGLang's expert distribution recorder dumped"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise InputFormatError(
            f"{path}: not a torch.save file of plain tensors and lists ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); give an SGLang expert distribution dump"
        ) from None


def _array(value: Any, path: Path, key: str, ndim: int) -> np.ndarray:
    torch = _torch()
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
    elif isinstance(value, list | tuple):
        try:
            arr = np.asarray(value)
        except ValueError:
            raise InputFormatError(f"{path}: {key} is a ragged list; expected {ndim}-D numbers") from None
    else:
        raise InputFormatError(f"{path}: {key} is {type(value).__name__}; expected a {ndim}-D tensor")
    if arr.ndim != ndim or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputFormatError(
            f"{path}: {key} has shape {arr.shape} and dtype {arr.dtype}; expected {ndim}-D integers"
        )
    return arr.astype(np.int64)


def _mode(obj: Any, path: Path) -> str:
    if isinstance(obj, dict) and "logical_count" in obj:
        return "stat"
    if isinstance(obj, dict) and isinstance(obj.get("records"), list):
        recs = obj["records"]
        if recs and isinstance(recs[0], dict) and "topk_ids_of_layer" in recs[0]:
            return "per_token"
        return "per_pass"
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise InputFormatError(
        f"{path}: not an SGLang expert distribution dump (found {keys}); expected 'logical_count' "
        "(stat mode) or 'records' (per_pass / per_token mode)"
    )


def _check_ids(num_layers: int, num_experts: int, path: Path) -> None:
    """Refuse ids the schema's int16 columns cannot hold (they would wrap around silently)."""
    if num_experts - 1 > MAX_ID:
        raise InputFormatError(
            f"{path}: expert ids up to {num_experts - 1} do not fit the trace schema's int16 expert ids "
            f"(at most {MAX_ID}); such a model cannot be imported"
        )
    if num_layers - 1 > MAX_ID:
        raise InputFormatError(
            f"{path}: {num_layers} layers do not fit the trace schema's int16 layer ids (at most {MAX_ID})"
        )


def _check_model(model: ModelArch, num_layers: int, num_experts: int, path: Path) -> None:
    if num_layers != model.num_layers:
        raise UsageError(
            f"{path}: the dump has {num_layers} layers but --model {model.name} has {model.num_layers}; "
            "give the model that ran"
        )
    if num_experts != model.num_experts:
        raise UsageError(
            f"{path}: the dump has {num_experts} logical experts but --model {model.name} has "
            f"{model.num_experts}; give the model that ran"
        )


def _load_rows(counts: np.ndarray, layers: Sequence[int], steps: np.ndarray) -> dict[str, np.ndarray]:
    """expert_load columns from counts[steps, all layers, experts], keeping ``layers``."""
    sel = counts[:, list(layers), :]
    s, n_layers, e = sel.shape
    return {
        "step": np.repeat(steps.astype(np.int32), n_layers * e),
        "layer": np.tile(np.repeat(np.asarray(layers, dtype=np.int16), e), s),
        "expert": np.tile(np.arange(e, dtype=np.int16), s * n_layers),
        "num_tokens": sel.reshape(-1).astype(np.int64),
    }


def import_sglang(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    model: ModelArch | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
) -> SglangReport:
    """Import SGLang expert-distribution dumps into a trace at ``out``."""
    paths = [Path(f) for f in files]
    if not paths:
        raise UsageError("no input files; give the .pt files SGLang's expert distribution recorder dumped")
    if world_size is not None and world_size < 1:
        raise UsageError(f"--world-size {world_size}: must be at least 1")
    loaded = [(p, _load(p)) for p in paths]
    modes = {_mode(obj, p) for p, obj in loaded}
    if len(modes) > 1:
        raise UsageError(
            f"the files mix recorder modes ({', '.join(sorted(modes))}); import each mode separately"
        )
    mode = modes.pop()
    if mode == "stat":
        return _import_stat(loaded, Path(out), model, overwrite)
    return _import_records(loaded, Path(out), model, world_size, overwrite, per_token=mode == "per_token")


def _manifest(
    model: ModelArch | None, fallback: ModelArch, detail: dict[str, Any], world: int, notes: list[str]
) -> Manifest:
    text = "; ".join(notes)
    if model is None:
        text = "model unknown: imported without --model (layer and expert counts from the dump); " + text
    return Manifest(
        model=model or fallback,
        source="imported",
        source_detail=detail,
        parallel=ParallelLayout(world_size=world, ep_size=world),
        clock="no times: SGLang's expert distribution dumps carry none",
        notes=text.strip("; "),
    )


def _moe_layers(model: ModelArch | None, counts_by_layer: np.ndarray) -> tuple[int, ...]:
    if model is not None:
        return model.moe_layers
    return tuple(int(i) for i in np.flatnonzero(counts_by_layer > 0))


def _import_stat(
    loaded: list[tuple[Path, Any]], out: Path, model: ModelArch | None, overwrite: bool
) -> SglangReport:
    blocks: list[tuple[Path, np.ndarray]] = []
    for path, obj in loaded:
        counts = _array(obj["logical_count"], path, "logical_count", 3)
        _check_ids(counts.shape[1], counts.shape[2], path)
        if blocks and counts.shape[1:] != blocks[0][1].shape[1:]:
            raise InputFormatError(
                f"{path}: logical_count shape {counts.shape} differs from the other files'"
            )
        if model is not None:
            _check_model(model, counts.shape[1], counts.shape[2], path)
        blocks.append((path, counts))
    allc = np.concatenate([c for _, c in blocks])
    used = allc.reshape(allc.shape[0], -1).sum(axis=1) > 0
    notes = [
        "stat mode: counts are summed over all ranks (SGLang all-reduces them before dumping); rows carry rank 0",
        f"steps are the recorder's buffer slots in file order; {int((~used).sum())} all-zero (unused) slots skipped",
    ]
    layers = _moe_layers(model, allc.sum(axis=(0, 2)))
    num_layers, num_experts = allc.shape[1], allc.shape[2]
    fallback = unknown_arch(num_layers=num_layers, moe_layers=layers, num_experts=num_experts)
    detail = {
        "importer": "sglang",
        "mode": "stat",
        "files": [str(p) for p, _ in loaded],
        "ranks_summed": True,
    }
    manifest = _manifest(model, fallback, detail, 1, notes)
    steps = np.flatnonzero(used)
    rows = _load_rows(allc[used], layers, np.arange(steps.size))
    with TraceWriter(out, manifest, rank=0, overwrite=overwrite) as w:
        w.append("expert_load", rows)
    return SglangReport(
        out=out,
        mode="stat",
        files=tuple(paths for paths, _ in loaded),
        rows={"expert_load": len(rows["step"])},
        notes=tuple(notes),
        manifest=manifest,
    )


@dataclass
class _Pass:
    path: Path
    rank: int
    pass_id: int
    physical: np.ndarray  # [layers, physical slots]
    record: dict[str, Any]


def _records(loaded: list[tuple[Path, Any]]) -> tuple[list[_Pass], np.ndarray]:
    passes: list[_Pass] = []
    phy2log: np.ndarray | None = None
    for path, obj in loaded:
        raw_map = obj.get("last_physical_to_logical_map")
        if raw_map is None:
            raise InputFormatError(f"{path}: no last_physical_to_logical_map; the dump is incomplete")
        m = _array(raw_map, path, "last_physical_to_logical_map", 2)
        if phy2log is None:
            phy2log = m
        elif m.shape != phy2log.shape or not np.array_equal(m, phy2log):
            raise InputFormatError(
                f"{path}: its physical-to-logical map differs from the other files'; import dumps of one run"
            )
        for i, rec in enumerate(obj["records"]):
            if not isinstance(rec, dict):
                raise InputFormatError(f"{path}: record {i} is {type(rec).__name__}, expected a dict")
            try:
                rank, pid = int(rec["rank"]), int(rec["forward_pass_id"])
                phys = _array(rec["global_physical_count"], path, f"record {i} global_physical_count", 2)
            except KeyError as exc:
                raise InputFormatError(f"{path}: record {i} has no {exc.args[0]!r}") from None
            except (TypeError, ValueError):
                raise InputFormatError(
                    f"{path}: record {i} has a non-integer rank or forward_pass_id"
                ) from None
            if phys.shape != m.shape:
                raise InputFormatError(
                    f"{path}: record {i} global_physical_count has shape {phys.shape}, the map {m.shape}"
                )
            passes.append(_Pass(path=path, rank=rank, pass_id=pid, physical=phys, record=rec))
    assert phy2log is not None
    if (phy2log < 0).any():
        raise InputFormatError(f"{loaded[0][0]}: the physical-to-logical map has negative expert ids")
    return passes, phy2log


def _logical(physical: np.ndarray, phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """counts[passes, layers, physical] -> counts[passes, layers, logical], summing replicas."""
    p, n_layers, _ = physical.shape
    idx = (np.arange(n_layers)[:, None] * num_experts + phy2log)[None] + (
        np.arange(p) * n_layers * num_experts
    )[:, None, None]
    out = np.bincount(idx.reshape(-1), weights=physical.reshape(-1), minlength=p * n_layers * num_experts)
    return np.rint(out).astype(np.int64).reshape(p, n_layers, num_experts)


def _import_records(
    loaded: list[tuple[Path, Any]],
    out: Path,
    model: ModelArch | None,
    world_size: int | None,
    overwrite: bool,
    *,
    per_token: bool,
) -> SglangReport:
    passes, phy2log = _records(loaded)
    if not passes:
        raise InputFormatError(f"{loaded[0][0]}: the dump has no records; record some traffic before dumping")
    num_layers, num_slots = phy2log.shape
    num_experts = model.num_experts if model else int(phy2log.max()) + 1
    _check_ids(num_layers, max(num_experts, int(phy2log.max()) + 1), loaded[0][0])
    if model is not None:
        _check_model(model, num_layers, max(num_experts, int(phy2log.max()) + 1), loaded[0][0])
    ranks = sorted({p.rank for p in passes})
    world = world_size or (max(ranks) + 1)
    if max(ranks) >= world:
        raise UsageError(f"--world-size {world}: the dumps have rank {max(ranks)}; give the run's world size")
    pass_ids = np.array(sorted({p.pass_id for p in passes}))
    notes = [
        "the physical-to-logical map is the last one SGLang held; passes recorded before an EPLB "
        "rebalance used another map"
    ]
    physical = np.stack([p.physical for p in passes])
    logical = _logical(physical, phy2log, num_experts)
    rank_arr = np.array([p.rank for p in passes])
    step_arr = np.searchsorted(pass_ids, np.array([p.pass_id for p in passes]))
    slots_per_rank = num_slots // world if num_slots % world == 0 else 0
    by_destination = False
    if world > 1 and slots_per_rank and physical.any():
        owner = np.arange(num_slots) // slots_per_rank
        outside = physical * (owner[None, None, :] != rank_arr[:, None, None])
        by_destination = not outside.any()
    if by_destination:
        notes.append(
            "each rank counted only its own slots (tokens received, DeepEP low-latency recorder): "
            "counts summed over ranks per pass and written as rank 0"
        )
        summed = np.zeros((pass_ids.size, num_layers, num_experts), dtype=np.int64)
        np.add.at(summed, step_arr, logical)
        logical, rank_arr, step_arr = (
            summed,
            np.zeros(pass_ids.size, dtype=np.int64),
            np.arange(pass_ids.size),
        )

    layers = _moe_layers(model, logical.sum(axis=(0, 2)))
    top_k = model.top_k if model else 1
    routing_parts: dict[int, list[dict[str, Any]]] = {}
    skipped_rows = 0
    if per_token:
        top_k, parts, skipped_rows = _per_token(passes, phy2log, layers, step_arr, model)
        for rank, part in parts:
            routing_parts.setdefault(rank, []).append(part)
        if skipped_rows:
            notes.append(
                f"{skipped_rows} (token, layer) rows with fewer than top-{top_k} expert ids (padding) "
                "not written to routing"
            )
    if not slots_per_rank:
        notes.append(f"{num_slots} physical slots do not divide over {world} ranks: no placement written")
    fallback = unknown_arch(num_layers=num_layers, moe_layers=layers, num_experts=num_experts, top_k=top_k)
    mode = "per_token" if per_token else "per_pass"
    detail: dict[str, Any] = {
        "importer": "sglang",
        "mode": mode,
        "files": [str(p) for p, _ in loaded],
        "first_forward_pass_id": int(pass_ids[0]),
        "forward_pass_ids": int(pass_ids.size),
        "ranks_summed": by_destination,
    }
    manifest = _manifest(model, fallback, detail, world, notes)
    rows = {"expert_load": 0, "placement": 0, "steps": 0, "tokens": 0, "routing": 0}
    writers: dict[int, TraceWriter] = {}
    try:
        writers[0] = TraceWriter(out, manifest, rank=0, overwrite=overwrite)
        if slots_per_rank:
            sel = np.asarray(layers, dtype=np.int64)
            writers[0].append(
                "placement",
                {
                    "from_step": np.zeros(sel.size * num_slots, dtype=np.int32),
                    "layer": np.repeat(sel, num_slots).astype(np.int16),
                    "slot": np.tile(np.arange(num_slots, dtype=np.int32), sel.size),
                    "rank": np.tile(np.arange(num_slots) // slots_per_rank, sel.size).astype(np.int32),
                    "expert": phy2log[sel].reshape(-1).astype(np.int16),
                },
            )
            rows["placement"] = sel.size * num_slots
        for rank in sorted(set(rank_arr.tolist()) | set(routing_parts)):
            w = writers.get(rank) or TraceWriter(out, manifest, rank=rank)
            writers[rank] = w
            sel_r = rank_arr == rank
            load = _load_rows(logical[sel_r], layers, step_arr[sel_r])
            w.append("expert_load", load)
            rows["expert_load"] += len(load["step"])
            for part in routing_parts.get(rank, []):
                for table in ("steps", "tokens", "routing"):
                    if len(part[table]["step"]):
                        w.append(table, part[table])
                        rows[table] += len(part[table]["step"])
        for _, w in sorted(writers.items(), reverse=True):
            w.close()
    except BaseException:
        for w in writers.values():
            w.close(error="import failed")
        raise
    return SglangReport(
        out=out,
        mode=mode,
        files=tuple(p for p, _ in loaded),
        rows=rows,
        notes=tuple(notes),
        manifest=manifest,
    )


def _per_token(
    passes: list[_Pass],
    phy2log: np.ndarray,
    layers: tuple[int, ...],
    step_arr: np.ndarray,
    model: ModelArch | None,
) -> tuple[int, list[tuple[int, dict[str, dict[str, Any]]]], int]:
    """steps, tokens and routing columns of each per_token record; (top_k, [(rank, tables)], skipped)."""
    topks = []
    for p in passes:
        ids = _array(p.record["topk_ids_of_layer"], p.path, "topk_ids_of_layer", 3)
        if ids.shape[0] != phy2log.shape[0]:
            raise InputFormatError(
                f"{p.path}: topk_ids_of_layer has {ids.shape[0]} layers, the map {phy2log.shape[0]}"
            )
        if ids.size and (ids.max() >= phy2log.shape[1] or ids.min() < -1):
            raise InputFormatError(
                f"{p.path}: topk_ids_of_layer holds ids outside 0..{phy2log.shape[1] - 1} and -1"
            )
        topks.append(ids)
    sel = list(layers)
    observed = max((int((t[sel] >= 0).sum(axis=2).max()) for t in topks if t.size and sel), default=1)
    top_k = model.top_k if model else max(1, observed)
    if observed > top_k:
        raise UsageError(
            f"the dump routes tokens to {observed} experts but --model has top_k {top_k}; give the model that ran"
        )
    out: list[tuple[int, dict[str, dict[str, Any]]]] = []
    skipped = 0
    for p, ids, step in zip(passes, topks, step_arr.tolist(), strict=True):
        rec = p.record
        try:
            mode = int(rec.get("forward_mode", 0))
        except (TypeError, ValueError):
            raise InputFormatError(
                f"{p.path}: forward pass {p.pass_id} has a non-integer forward_mode"
            ) from None
        n_tok = ids.shape[1]
        raw_pos = rec.get("positions")
        positions = np.zeros(0, np.int64) if raw_pos is None else _array(raw_pos, p.path, "positions", 1)
        if positions.size and not (positions.min() >= 0 and positions.max() < 2**31):
            raise InputFormatError(f"{p.path}: forward pass {p.pass_id} has positions outside 0..2^31-1")
        if mode == IDLE_MODE or n_tok == 0:
            continue
        if positions.size != n_tok:
            raise InputFormatError(
                f"{p.path}: forward pass {p.pass_id} has {positions.size} positions for {n_tok} tokens"
            )
        phase = FORWARD_MODES.get(mode, "mixed")
        ext = rec.get("extend_seq_lens")
        num_requests = len(ext) if isinstance(ext, list | tuple) and phase != "decode" else n_tok
        steps = {
            "step": np.array([step], np.int32),
            "phase": [phase],
            "num_tokens": np.array([n_tok], np.int32),
            "num_requests": np.array([num_requests], np.int32),
            "num_prefill_tokens": [n_tok if phase == "prefill" else (0 if phase == "decode" else None)],
            "num_decode_tokens": [n_tok if phase == "decode" else (0 if phase == "prefill" else None)],
        }
        tokens = {
            "step": np.full(n_tok, step, np.int32),
            "token_index": np.arange(n_tok, dtype=np.int32),
            "position": positions.astype(np.int32),
            "is_prefill": np.full(n_tok, phase == "prefill")
            if phase in ("prefill", "decode")
            else [None] * n_tok,
        }
        lay = ids[sel, :, :top_k]  # [moe layers, tokens, top_k]
        valid = (lay >= 0).all(axis=2)
        skipped += int((~valid).sum())
        li, ti = np.nonzero(valid)
        phys = lay[li, ti]
        layer_ids = np.asarray(sel, dtype=np.int64)[li]
        logical = phy2log[layer_ids[:, None], phys]
        routing = {
            "step": np.full(li.size, step, np.int32),
            "layer": layer_ids.astype(np.int16),
            "token_index": ti.astype(np.int32),
            "expert_ids": logical.astype(np.int16),
        }
        out.append((p.rank, {"steps": steps, "tokens": tokens, "routing": routing}))
    return top_k, out, skipped
