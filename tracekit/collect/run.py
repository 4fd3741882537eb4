"""Run a real ``generate()`` over a prompt file and record it (what ``tracekit record`` does).

MODEL is a built-in tiny preset (random weights from ``seed``, byte-level tokenizer) or a local
transformers model directory (its own weights and tokenizer). Prompts are served in batches of
``batch_size``, left-padded; request ids are prompt indices (0-based line numbers of non-empty lines).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracekit.collect.presets import build_preset, get_preset, preset_names
from tracekit.collect.record import record
from tracekit.collect.sites import find_moe_sites
from tracekit.collect.tokenizer import ByteTokenizer
from tracekit.errors import ModelError, UnknownNameError, UsageError, first_line

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: ``progress(done_tokens, total_tokens)`` after each batch's generate, and once at the start.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class RecordResult:
    """What a recording produced."""

    out: Path
    num_prompts: int
    num_steps: int
    generated_tokens: int


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Non-empty lines of a prompt file (``\\n`` inside a line stands for a newline)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prompts {p}: no such file; give a text file with one prompt per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            f"--prompts {p}: not UTF-8 text; give a text file with one prompt per line"
        ) from None
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {p}: the file has no prompts (it is empty); write one prompt per line")
    return prompts


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UnknownNameError("dtype", name, DTYPES)
    return DTYPES[name]


def check_model_name(model: str) -> None:
    """Fail early (before reading prompts or loading anything) on a name that is neither a preset
    nor an existing path."""
    if model in preset_names():
        return
    if not Path(model).expanduser().exists():
        raise UnknownNameError(
            "model", model, preset_names(), hint="or give the path of a local transformers model directory"
        )


def check_local_model(path: Path) -> Any:
    """The transformers config of a local model directory; ModelError when it is not one, or has
    no MoE layer (checked on an empty, meta-device copy of the model, before loading weights)."""
    import transformers

    if not path.is_dir():
        raise UnknownNameError(
            "model",
            str(path),
            preset_names(),
            hint="or give the path of a local transformers model directory",
        )
    if not (path / "config.json").is_file():
        raise ModelError(
            f"--model {path}: not a transformers model directory (no config.json); give a directory "
            "saved with save_pretrained, or one of the presets: " + ", ".join(preset_names())
        )
    try:
        config = transformers.AutoConfig.from_pretrained(str(path))
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
        first = first_line(exc)
        raise ModelError(f"--model {path}: config.json cannot be read by transformers ({first})") from None
    try:
        with torch.device("meta"):
            skeleton = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        first = first_line(exc)
        raise ModelError(f"--model {path}: transformers cannot build a causal LM from it ({first})") from None
    find_moe_sites(skeleton, model_name=str(path))
    return config


def load_model(model: str, *, device: str, dtype: torch.dtype, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, source_detail) for a preset name or a local model directory."""
    import transformers

    presets = preset_names()
    if model in presets:
        preset = get_preset(model)
        m: Any = build_preset(model, seed=seed, dtype=dtype)
        detail = {"preset": model, "full_model": preset.full_model, "weights": f"random, seed {seed}"}
        return m.to(device), ByteTokenizer(), detail
    path = Path(model).expanduser()
    if not path.exists():
        raise UnknownNameError(
            "model", model, presets, hint="or give the path of a local transformers model directory"
        )
    check_local_model(path)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), padding_side="left")
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {path}: no usable tokenizer in the directory ({exc})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        m = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"--model {path}: weights cannot be loaded ({first})") from None
    m = m.to(device)
    m.eval()
    return m, tok, {"model_dir": path.name, "weights": "from the model directory"}


def _encode(tok: Any, prompts: list[str], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(tok, ByteTokenizer):
        b = tok.batch(prompts)
        return b.input_ids.to(device), b.attention_mask.to(device)
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _output_lengths(new_tokens: torch.Tensor, eos: int | list[int] | None) -> np.ndarray:
    """Generated tokens per row, up to and including the first EOS."""
    arr = new_tokens.cpu().numpy()
    n = arr.shape[1]
    if eos is None or n == 0:
        return np.full(arr.shape[0], n, dtype=np.int64)
    hit = np.isin(arr, np.atleast_1d(np.asarray(eos)))
    first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, n)
    return first.astype(np.int64)


def record_generate(
    *,
    model: str,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    out: str | os.PathLike[str],
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: Progress | None = None,
) -> RecordResult:
    """Generate ``max_new_tokens`` for every prompt with a real ``generate()`` and record the run."""
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if not prompts:
        raise UsageError("no prompts to run; give a prompt file with at least one line")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")
    torch_dtype = resolve_dtype(dtype)
    m, tok, detail = load_model(model, device=device, dtype=torch_dtype, seed=seed)
    eos = getattr(getattr(m, "generation_config", None), "eos_token_id", None)
    pad = tok.pad_token_id
    detail = {
        **detail,
        "driver": "tracekit record (transformers generate, greedy)",
        "prompts": len(prompts),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    is_preset = isinstance(tok, ByteTokenizer)
    total = len(prompts) * max_new_tokens
    done = 0
    if progress:
        progress(0, total)
    torch.manual_seed(seed)
    with (
        torch.inference_mode(),
        record(
            m,
            out,
            rank=rank,
            world_size=world_size,
            name=model if is_preset else Path(model).name,
            overwrite=overwrite,
            source_detail=detail,
        ) as rec,
    ):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = list(range(start, start + len(chunk)))
            input_ids, mask = _encode(tok, chunk, device)
            rec.set_request_ids(ids)
            gen_kwargs: dict[str, Any] = {
                "input_ids": input_ids,
                "attention_mask": mask,
                "max_new_tokens": max_new_tokens,
                "do_sample": False,
                "pad_token_id": pad,
            }
            if is_preset:  # random weights: run every request to max_new_tokens
                gen_kwargs["min_new_tokens"] = max_new_tokens
            seqs = m.generate(**gen_kwargs)
            new = seqs[:, input_ids.shape[1] :]
            rec.set_output_tokens(ids, _output_lengths(new, None if is_preset else eos).tolist())
            rec.collector.flush()  # each finished batch is on disk
            done += len(chunk) * max_new_tokens
            if progress:
                progress(done, total)
        steps = rec.steps
    return RecordResult(out=Path(out), num_prompts=len(prompts), num_steps=steps, generated_tokens=done)
