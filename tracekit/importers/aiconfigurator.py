"""Read NVIDIA AIConfigurator's measured kernel databases into tracekit's measured table.

AIConfigurator (Apache-2.0) ships its measurements in the ``aiconfigurator-core`` wheel, under
``aiconfigurator_core/systems/data/<system>/<op>/<framework or nccl>/<version>/<table>.parquet``:
one Parquet file per op table with a ``latency`` column in milliseconds. This module reads those
files (pyarrow/polars, nothing of AIConfigurator is imported) and converts each row into the
measured-table form (``schemas/measured/v1``), one kernel family per table:

================================  ============  ===================================================
file                              family        conversion
================================  ============  ===================================================
gemm_perf                         gemm          m, n, k as they are
moe_perf (balanced routing only)  grouped_gemm  the rank's active experts and mean tokens per expert
                                                from the collector's balanced assignment
generation_mla_perf               mla_decode    kv_len = step + 1; DeepSeek MLA dimensions
context_mla_perf                  mla_prefill   seq_len = isl
generation_attention_perf         gqa_decode    kv_len = step + 1; full attention (window 0) only
context_attention_perf            gqa_prefill   full attention; compute dtype = KV-cache dtype only
nccl_perf                         all_reduce,   message_bytes = message_size (elements) x element
                                  all_gather,   bytes
                                  reduce_scatter, all_to_all
custom_allreduce_perf             all_reduce    library <framework>_custom_allreduce
moe_a2a_perf                      ep_dispatch,  library = the comm backend (trtllm_deepep_ll, ...)
                                  ep_combine
================================  ============  ===================================================

Versions: each table is taken from the newest version directory that has it, or, with ``version``,
from the newest one not newer than it (AIConfigurator's own backward fill); NCCL tables from the
newest NCCL version. Every row keeps the version it came from (``library_version``) and its file
(``source_detail``). Rows of dtypes the measured table does not know, non-gated MoE, power-law
routing and windowed attention are left out and counted in :attr:`AicImport.dropped`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tracekit.errors import InputFormatError, MissingDependencyError, UsageError
from tracekit.schema.measured import conform, with_work

__all__ = [
    "AicImport",
    "aiconfigurator_data_dir",
    "import_aiconfigurator",
    "list_systems",
    "read_aiconfigurator",
]

#: AIConfigurator dtype names -> the measured table's (others are dropped).
_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp8": "fp8",
    "fp8_block": "fp8_block",
    "int8": "int8",
    "nvfp4": "nvfp4",
    "w4a16_mxfp4": "w4a16_mxfp4",
}
_ELEM_BYTES = {"fp16": 2, "bf16": 2, "int8": 1, "fp8": 1}
#: MLA dimensions of AIConfigurator's MLA collectors (DeepSeek-V3's), fixed in its collector code.
_MLA_DIMS = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
_NCCL_OPS = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "alltoall": "all_to_all",
}


@dataclass(frozen=True, kw_only=True)
class AicImport:
    """What an import produced."""

    #: Rows in the measured-table form.
    frame: pl.DataFrame
    system: str
    framework: str
    #: Files read, relative to the data directory, in reading order.
    files: tuple[str, ...]
    #: Rows left out per file, with the reason (dtype, routing, window, ...).
    dropped: dict[str, int] = field(default_factory=dict)


def aiconfigurator_data_dir() -> Path:
    """``systems/data`` of the installed aiconfigurator-core (its package is not imported)."""
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "aiconfigurator-core", "aiconfigurator", "reading AIConfigurator's measured databases"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "systems" / "data"
    if not root.is_dir():
        raise InputFormatError(
            f"{root}: aiconfigurator-core is installed but has no systems/data folder; reinstall it "
            "(pip install --force-reinstall 'tracekit[aiconfigurator]')"
        )
    return root


def _data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        return aiconfigurator_data_dir()
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"--data-dir {root}: no such directory; give AIConfigurator's systems/data folder")
    return root


def list_systems(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Systems that have measured data (h100_sxm, h200_sxm, b200_sxm, gb200, ...), sorted."""
    root = _data_dir(data_dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.iterdir()))


_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:\.?(rc|a|b|dev)(\d+))?(?:\.post(\d+))?")


def version_key(version: str) -> tuple[tuple[int, ...], int, int, int]:
    """Sort key of a version string (1.3.0rc3 < 1.3.0rc20 < 1.3.0 < 1.3.0.post1)."""
    m = _VERSION.match(version)
    if m is None:
        return ((-1,), 0, 0, 0)
    release = tuple(int(x) for x in m.group(1).split("."))
    release = release + (0,) * (4 - len(release))
    pre = 0 if m.group(2) else 1
    return release, pre, int(m.group(3) or 0), int(m.group(4) or 0)


def current_version(root: Path, system: str, framework: str) -> str | None:
    """AIConfigurator's own "current" version of ``framework`` on ``system`` (its
    ``systems/query_versions.yaml``), or None when that file (or PyYAML) is not there."""
    path = root.parent / "query_versions.yaml"
    if not path.is_file():
        return None
    try:
        import yaml
    except ImportError:
        return None
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict):
        return None
    for slot in ((doc.get("overrides") or {}).get(system) or {}, doc.get("defaults") or {}):
        entry = slot.get(framework) if isinstance(slot, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("current"), str):
            return str(entry["current"])
    return None


def _pick_version(folder: Path, filename: str, version: str | None) -> str | None:
    if not folder.is_dir():
        return None
    have = [p.name for p in folder.iterdir() if (p / filename).is_file()]
    if version is not None:
        limit = version_key(version)
        have = [v for v in have if version_key(v) <= limit]
    return max(have, key=version_key) if have else None


# -- converters: AIConfigurator table -> measured rows -------------------------------------------


def _need(df: pl.DataFrame, cols: list[str], where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputFormatError(
            f"{where}: missing column(s) {', '.join(missing)}; this AIConfigurator data layout is not "
            "one tracekit reads (written for aiconfigurator-core 0.12)"
        )


def _dtype(col: str) -> pl.Expr:
    return pl.col(col).replace_strict(_DTYPES, default=None)


def _gemm(df: pl.DataFrame, where: str) -> pl.DataFrame:
    _need(df, ["gemm_dtype", "m", "n", "k", "latency"], where)
    return df.select(
        pl.lit("gemm").alias("family"), _dtype("gemm_dtype").alias("dtype"), "m", "n", "k", "latency"
    )


def _balanced_rank0(num_tokens: int, num_experts: int, topk: int) -> np.ndarray:
    """Tokens per expert of the collector's balanced router logits (each token's top-k experts at a
    stride of ceil(E / topk), spread over the stride when there are fewer tokens than it)."""
    stride = -(-num_experts // topk)
    tok = np.arange(num_tokens, dtype=np.float64)[:, None]
    j = np.arange(topk, dtype=np.float64)[None, :]
    if num_tokens >= stride:
        experts = np.mod(tok + j * stride, num_experts)
    else:
        experts = np.mod(tok * stride / num_tokens + j * stride, num_experts)
    return np.bincount(np.floor(experts).astype(np.int64).reshape(-1), minlength=num_experts)


def _moe(df: pl.DataFrame, where: str) -> pl.DataFrame:
    cols = ["moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts"]
    _need(df, [*cols, "moe_tp_size", "moe_ep_size", "distribution", "kernel_source", "latency"], where)
    df = df.filter(
        (pl.col("distribution") == "balanced")
        & ~pl.col("kernel_source").str.contains("nongated")
        & (pl.col("num_experts") % pl.col("moe_ep_size") == 0)
        & (pl.col("inter_size") % pl.col("moe_tp_size") == 0)
    )
    combos = df.select("num_tokens", "num_experts", "topk", "moe_ep_size").unique()
    pairs, active = [], []
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    for t, e, k, ep in combos.iter_rows():
        counts = cache.get((t, e, k))
        if counts is None:
            counts = cache[(t, e, k)] = _balanced_rank0(t, e, k)
        local = counts[: e // ep]  # the measured rank (rank 0) holds the first E / ep experts
        pairs.append(int(local.sum()))
        active.append(int(np.count_nonzero(local)))
    combos = combos.with_columns(pl.Series("_pairs", pairs), pl.Series("_active", active))
    df = df.join(combos, on=["num_tokens", "num_experts", "topk", "moe_ep_size"]).filter(
        pl.col("_active") > 0
    )
    return df.select(
        pl.lit("grouped_gemm").alias("family"),
        _dtype("moe_dtype").alias("dtype"),
        "hidden_size",
        (pl.col("inter_size") // pl.col("moe_tp_size")).alias("ffn_size"),
        pl.col("_active").alias("num_experts"),
        (pl.col("_pairs") / pl.col("_active")).alias("tokens_per_expert"),
        "latency",
    )


def _mla_decode(df: pl.DataFrame, where: str) -> pl.DataFrame:
    _need(df, ["kv_cache_dtype", "num_heads", "batch_size", "step", "latency"], where)
    return df.select(
        pl.lit("mla_decode").alias("family"),
        _dtype("kv_cache_dtype").alias("dtype"),
        pl.lit(_MLA_DIMS["kv_lora_rank"]).alias("kv_lora_rank"),
        pl.lit(_MLA_DIMS["qk_rope_head_dim"]).alias("qk_rope_head_dim"),
        "num_heads",
        "batch_size",
        (pl.col("step") + 1).alias("kv_len"),
        "latency",
    )


def _mla_prefill(df: pl.DataFrame, where: str) -> pl.DataFrame:
    _need(df, ["mla_dtype", "kv_cache_dtype", "num_heads", "batch_size", "isl", "latency"], where)
    df = df.filter(pl.col("mla_dtype") == pl.col("kv_cache_dtype"))
    return df.select(
        pl.lit("mla_prefill").alias("family"),
        _dtype("mla_dtype").alias("dtype"),
        pl.lit(_MLA_DIMS["qk_nope_head_dim"]).alias("qk_nope_head_dim"),
        pl.lit(_MLA_DIMS["qk_rope_head_dim"]).alias("qk_rope_head_dim"),
        pl.lit(_MLA_DIMS["v_head_dim"]).alias("v_head_dim"),
        "num_heads",
        "batch_size",
        pl.col("isl").alias("seq_len"),
        "latency",
    )


def _attention_cols(df: pl.DataFrame, where: str) -> pl.DataFrame:
    cols = ["batch_size", "num_heads", "num_key_value_heads", "head_dim", "window_size", "kv_cache_dtype"]
    _need(df, [*cols, "latency"], where)
    if "beam_width" in df.columns:
        df = df.filter(pl.col("beam_width") == 1)
    return df.filter(pl.col("window_size") == 0)


def _gqa_decode(df: pl.DataFrame, where: str) -> pl.DataFrame:
    df = _attention_cols(df, where)
    _need(df, ["step"], where)
    return df.select(
        pl.lit("gqa_decode").alias("family"),
        _dtype("kv_cache_dtype").alias("dtype"),
        "head_dim",
        pl.col("num_key_value_heads").alias("num_kv_heads"),
        "num_heads",
        "batch_size",
        (pl.col("step") + 1).alias("kv_len"),
        "latency",
    )


def _gqa_prefill(df: pl.DataFrame, where: str) -> pl.DataFrame:
    df = _attention_cols(df, where)
    _need(df, ["attn_dtype", "isl"], where)
    df = df.filter(pl.col("attn_dtype") == pl.col("kv_cache_dtype"))
    return df.select(
        pl.lit("gqa_prefill").alias("family"),
        _dtype("attn_dtype").alias("dtype"),
        "head_dim",
        pl.col("num_key_value_heads").alias("num_kv_heads"),
        "num_heads",
        "batch_size",
        pl.col("isl").alias("seq_len"),
        "latency",
    )


def _message_bytes(dtype_col: str) -> pl.Expr:
    elem = pl.col(dtype_col).replace_strict(_DTYPES, default=None).replace_strict(_ELEM_BYTES, default=None)
    return (pl.col("message_size") * elem).cast(pl.Int64).alias("message_bytes")


def _nccl(df: pl.DataFrame, where: str) -> pl.DataFrame:
    _need(df, ["op_name", "nccl_dtype", "num_gpus", "message_size", "latency"], where)
    df = df.filter(pl.col("op_name").is_in(list(_NCCL_OPS)))
    return df.select(
        pl.col("op_name").replace_strict(_NCCL_OPS).alias("family"),
        _dtype("nccl_dtype").alias("dtype"),
        "num_gpus",
        _message_bytes("nccl_dtype"),
        "latency",
    )


def _custom_allreduce(df: pl.DataFrame, where: str) -> pl.DataFrame:
    _need(df, ["allreduce_dtype", "num_gpus", "message_size", "latency"], where)
    return df.select(
        pl.lit("all_reduce").alias("family"),
        _dtype("allreduce_dtype").alias("dtype"),
        "num_gpus",
        _message_bytes("allreduce_dtype"),
        "latency",
    )


def _moe_a2a(df: pl.DataFrame, where: str) -> pl.DataFrame:
    cols = [
        "comm_backend",
        "phase",
        "comm_dtype",
        "ep_size",
        "hidden_size",
        "topk",
        "num_experts",
        "num_tokens",
    ]
    _need(df, [*cols, "latency"], where)
    df = df.filter(pl.col("phase").is_in(["dispatch", "combine"]))
    return df.select(
        pl.format("ep_{}", pl.col("phase")).alias("family"),
        _dtype("comm_dtype").alias("dtype"),
        pl.col("comm_backend").alias("_library"),
        "ep_size",
        pl.col("topk").alias("top_k"),
        "num_experts",
        "hidden_size",
        "num_tokens",
        "latency",
    )


@dataclass(frozen=True)
class _Table:
    op: str
    #: "framework": under the framework's folder; "nccl": under comm/nccl.
    under: str
    filename: str
    convert: Callable[[pl.DataFrame, str], pl.DataFrame]
    library: str | None = None  # None: the framework name


_TABLES: tuple[_Table, ...] = (
    _Table("gemm", "framework", "gemm_perf.parquet", _gemm),
    _Table("moe", "framework", "moe_perf.parquet", _moe),
    _Table("mla", "framework", "generation_mla_perf.parquet", _mla_decode),
    _Table("mla", "framework", "context_mla_perf.parquet", _mla_prefill),
    _Table("attention", "framework", "generation_attention_perf.parquet", _gqa_decode),
    _Table("attention", "framework", "context_attention_perf.parquet", _gqa_prefill),
    _Table("comm", "nccl", "nccl_perf.parquet", _nccl, library="nccl"),
    _Table(
        "comm", "framework", "custom_allreduce_perf.parquet", _custom_allreduce, library="custom_allreduce"
    ),
    _Table("comm", "framework", "moe_a2a_perf.parquet", _moe_a2a),
)

FRAMEWORKS = ("trtllm", "sglang", "vllm")


def import_aiconfigurator(
    *,
    system: str = "h200_sxm",
    framework: str = "trtllm",
    version: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> AicImport:
    """Convert AIConfigurator's measured tables of ``system`` and ``framework`` (see the module doc)."""
    root = _data_dir(data_dir)
    systems = list_systems(root)
    if system not in systems:
        raise UsageError(
            f"--system {system!r}: AIConfigurator has no measured data for it; valid: {', '.join(systems)}"
        )
    if framework not in FRAMEWORKS:
        raise UsageError(f"--framework {framework!r}: valid: {', '.join(FRAMEWORKS)}")
    base = root / system
    if version is None:
        version = current_version(root, system, framework)
    if version is not None:
        known = sorted({p.name for p in base.glob(f"*/{framework}/*") if p.is_dir()}, key=version_key)
        if version not in known and not any(version_key(v) <= version_key(version) for v in known):
            raise UsageError(
                f"--version {version!r}: no {framework} data for {system} at or before it; "
                f"versions: {', '.join(known) or '(none)'}"
            )
    frames: list[pl.DataFrame] = []
    files: list[str] = []
    dropped: dict[str, int] = {}
    for tab in _TABLES:
        folder = base / tab.op / ("nccl" if tab.under == "nccl" else framework)
        ver = _pick_version(folder, tab.filename, None if tab.under == "nccl" else version)
        if ver is None:
            continue
        path = folder / ver / tab.filename
        rel = str(path.relative_to(root))
        try:
            raw = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InputFormatError(
                f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})"
            ) from None
        conv = tab.convert(raw, rel)
        kept = conv.filter(pl.col("dtype").is_not_null() & (pl.col("latency") > 0))
        if raw.height - kept.height:
            dropped[rel] = raw.height - kept.height
        if kept.is_empty():
            continue
        if "_library" in kept.columns:
            library = pl.col("_library")
        elif tab.library == "custom_allreduce":
            library = pl.lit(f"{framework}_custom_allreduce")
        else:
            library = pl.lit(tab.library or framework)
        device = str(raw["device"][0]) if "device" in raw.columns and raw.height else system
        kept = kept.with_columns(
            library.alias("library"),
            pl.lit(ver).alias("library_version"),
            (pl.col("latency") * 1e-3).alias("time_s"),
            pl.lit("imported").alias("timing_source"),
            pl.lit(device).alias("device"),
            pl.lit("aiconfigurator").alias("source"),
            pl.lit(f"aiconfigurator {_core_version()} {rel}").alias("source_detail"),
        ).drop("latency", "_library", strict=False)
        frames.append(kept)
        files.append(rel)
    if not frames:
        raise UsageError(f"AIConfigurator has no {framework} tables tracekit reads for {system}")
    frame = with_work(conform(pl.concat(frames, how="diagonal_relaxed"), where=f"aiconfigurator {system}"))
    return AicImport(frame=frame, system=system, framework=framework, files=tuple(files), dropped=dropped)


def read_aiconfigurator(
    *,
    system: str = "h200_sxm",
    framework: str = "trtllm",
    version: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """The measured-table rows of :func:`import_aiconfigurator`."""
    return import_aiconfigurator(system=system, framework=framework, version=version, data_dir=data_dir).frame


def _core_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"core {version('aiconfigurator-core')}"
    except PackageNotFoundError:
        return "core (not installed; data directory given)"
