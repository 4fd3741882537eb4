"""A real expert-parallel run, recorded: ``tracekit record --ep N``.

N local processes (gloo on CPU, NCCL on GPU, one GPU per rank) each load the same model (a tiny
preset from the same seed, or a local model directory), keep only their own experts (contiguous
placement) and run attention data-parallel: each rank generates for its own share of the prompts.
The MoE layers dispatch tokens to the ranks that hold their experts and combine the results back
with ``all_to_all_single`` (see :mod:`tracekit.collect.ep_moe`). Each rank records its routing (the
routing collector) and its communication (the comm collector) into its own shard of one trace;
rank 0 writes the manifest and the ``placement`` table.

Prompts are dealt in rounds: each round gives every rank one batch of consecutive prompts, at most
``batch_size`` long, and every rank generates exactly ``max_new_tokens`` tokens per batch (no
early stop), so that all ranks issue the same collectives in every layer of every step. Rounds are
balanced so that no rank is ever idle; request ids are prompt indices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.collect.ep_launch import RankFailureError, RankGroup, launch
from tracekit.errors import UsageError
from tracekit.trace.outputs import TOKEN_ENV, Output

__all__ = ["EPJob", "EPRun", "launch_ep", "plan_batches", "prepare_ep", "record_ep", "run_rank"]


def plan_batches(num_prompts: int, num_ranks: int, batch_size: int) -> list[list[range]]:
    """Prompt indices of each rank's batches: ``plan[rank][round]``, consecutive prompts per batch.

    Uses ``ceil(P / (N * B))`` rounds when that leaves no rank without a prompt, else ``P // N``
    rounds (then a batch may exceed ``batch_size``); the P prompts are spread as evenly as possible
    over the ``rounds * N`` batches, in prompt order (round by round, rank by rank).
    """
    if num_ranks < 1 or batch_size < 1:
        raise UsageError(
            f"need at least one rank and a batch size of at least 1 (got {num_ranks}, {batch_size})"
        )
    if num_prompts < num_ranks:
        raise UsageError(
            f"{num_prompts} prompts for {num_ranks} expert-parallel ranks: every rank needs at least one "
            f"prompt (attention is data-parallel); give at least {num_ranks} prompts or a smaller --ep"
        )
    rounds = -(-num_prompts // (num_ranks * batch_size))
    if rounds * num_ranks > num_prompts:
        rounds = num_prompts // num_ranks
    slots = rounds * num_ranks
    base, extra = divmod(num_prompts, slots)
    plan: list[list[range]] = [[] for _ in range(num_ranks)]
    start = 0
    for slot in range(slots):
        size = base + (1 if slot < extra else 0)
        plan[slot % num_ranks].append(range(start, start + size))
        start += size
    return plan


@dataclass(frozen=True, kw_only=True)
class EPJob:
    """Everything a rank needs (pickled to each process)."""

    ep: int
    #: gloo (CPU) or nccl (GPU).
    backend: str
    model: str
    prompts: tuple[str, ...]
    plan: tuple[tuple[tuple[int, int], ...], ...]  # per rank, per round: (first prompt, end)
    max_new_tokens: int
    out: str
    device: str
    dtype: str
    seed: int
    overwrite: bool
    trace_id: str
    num_experts: int
    rows_per_part: int | None = None


class EPRun:
    """A started expert-parallel recording; :meth:`wait` returns the trace path or raises.

    The launcher holds the output's lock for the whole run (the ranks join it); a trace that
    replaces an existing one is written to a staging sibling and moved into place only when every
    rank finished.
    """

    def __init__(self, group: RankGroup, out: Path, output: Output | None = None) -> None:
        self.group = group
        self.out = out
        self._output = output

    @property
    def pids(self) -> list[int]:
        """Process id of each rank, by rank."""
        return self.group.pids

    def wait(self, timeout_s: float | None = None) -> Path:
        staged = self._output is not None and self._output.staged
        try:
            self.group.join(timeout_s)
        except RankFailureError as exc:
            if self._output is not None:
                self._output.close(ok=False)
            hint = (
                f"the existing trace at {self.out} is unchanged (the new one was dropped)"
                if staged
                else f"the shards written so far in {self.out} stay readable; "
                f"tracekit validate {self.out} lists the incomplete ranks"
            )
            raise RankFailureError(exc.failures, hint=hint) from None
        except BaseException:
            if self._output is not None:
                self._output.close(ok=False)
            raise
        if self._output is not None:
            self._output.close(ok=True)
        return self.out


def prepare_ep(
    *,
    model: str,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    out: str | os.PathLike[str],
    ep: int,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    rows_per_part: int | None = None,
) -> EPJob:
    """Check the arguments (before any process starts) and plan the run (see :func:`record_ep`)."""
    import torch

    from tracekit.collect.run import check_model_name, resolve_dtype

    if ep < 1:
        raise UsageError(f"--ep must be at least 1, got {ep}")
    check_ranks(ep, device)
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        raise UsageError("no prompts to run; give a prompt file with at least one line")
    check_model_name(model)
    resolve_dtype(dtype)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if torch.cuda.device_count() < ep:
            raise UsageError(
                f"--ep {ep} on --device cuda needs {ep} GPUs (one per rank), this machine has "
                f"{torch.cuda.device_count()}; lower --ep or use --device cpu"
            )
        backend = "nccl"
    elif device == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"--device {device!r}: give cpu or cuda")
    num_experts = _num_experts(model)
    from tracekit.collect.ep_moe import contiguous_owner

    contiguous_owner(num_experts, ep)  # refuses an expert count that ep does not divide
    plan = plan_batches(len(prompts), ep, batch_size)
    out = Path(out)
    _check_out(out, overwrite)
    return EPJob(
        ep=ep,
        backend=backend,
        model=model,
        prompts=tuple(prompts),
        plan=tuple(tuple((r.start, r.stop) for r in batches) for batches in plan),
        max_new_tokens=max_new_tokens,
        out=str(out),
        device=device,
        dtype=dtype,
        seed=seed,
        overwrite=overwrite,
        trace_id=uuid.uuid4().hex,
        num_experts=num_experts,
        rows_per_part=rows_per_part,
    )


#: Ranks per CPU core a CPU recording may start (each rank is a process running the model).
RANKS_PER_CPU = 4
#: Memory one CPU rank needs: the interpreter with torch and transformers, a tiny model, gloo buffers.
RANK_BYTES = 600 * 1024**2


def check_ranks(ep: int, device: str) -> None:
    """Refuse more ranks than this machine can run (before any process starts)."""
    import tracekit.limits as limits

    if device.startswith("cuda"):
        return  # one GPU per rank, checked against the devices
    cpus = limits.cpu_count()
    limits.at_most(
        "--ep",
        ep,
        RANKS_PER_CPU * cpus,
        f"each rank is a process running the model, and this machine has {cpus} CPU core(s) "
        f"({RANKS_PER_CPU} ranks per core at most)",
    )
    limits.fits_memory(
        "--ep", ep, RANK_BYTES, f"{ep} rank processes (about {RANK_BYTES // 1024**2} MiB each)"
    )


def launch_ep(job: EPJob, *, grace_s: float = 20.0) -> EPRun:
    """Lock the job's output, start its ranks and return at once; :meth:`EPRun.wait` waits for them."""
    output = Output(
        job.out, kind="dir", force=job.overwrite, what="trace", is_ours=_is_trace, stage_new=False
    ).open()
    previous = os.environ.get(TOKEN_ENV)
    try:
        os.environ[TOKEN_ENV] = output.lock.token  # the ranks join this lock
        staged = dataclasses.replace(job, out=str(output.target))
        group = launch(run_rank, job.ep, (staged,), backend=job.backend, grace_s=grace_s)
    except BaseException:
        output.close(ok=False)
        raise
    finally:
        if previous is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous
    return EPRun(group, Path(job.out), output)


def _is_trace(path: Path) -> bool:
    return (path / "manifest.json").exists()


def record_ep(
    *,
    model: str,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    out: Path,
    ep: int,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Record a real expert-parallel run of ``model`` on ``ep`` local ranks into the trace ``out``.

    Raises CollectorError (a :class:`~tracekit.collect.ep_launch.RankFailureError`) naming each
    rank that did not finish; the shards written before stay readable.
    """
    job = prepare_ep(
        model=model,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        out=out,
        ep=ep,
        device=device,
        dtype=dtype,
        seed=seed,
        overwrite=overwrite,
    )
    return launch_ep(job).wait()


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output the trace writer would refuse, before starting any process."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(
                f"--out {out}: directory exists and is not empty; choose another --out or pass --force"
            )
        if not (out / "manifest.json").exists():
            raise UsageError(f"--out {out}: not empty and not a tracekit trace; refusing to delete it")


def _num_experts(model: str) -> int:
    """Routed experts of a preset or a local model directory, from its config alone."""
    import transformers

    from tracekit.collect.presets import get_preset, preset_names
    from tracekit.collect.run import check_local_model

    if model in preset_names():
        preset = get_preset(model)
        config = getattr(transformers, preset.config_class)(**preset.config)
    else:
        config = check_local_model(Path(model).expanduser())
    return _config_experts(config, model)


def _config_experts(config: Any, model: str) -> int:
    get = getattr(config, "get_text_config", None)
    config = get() if callable(get) else config
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        v = getattr(config, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    raise UsageError(
        f"--model {model}: its config names no routed-expert count; expert parallelism needs one"
    )


# -- one rank -----------------------------------------------------------------------------------


def _encode(tok: Any, prompts: list[str], device: str) -> tuple[Any, Any]:
    from tracekit.collect.tokenizer import ByteTokenizer

    if isinstance(tok, ByteTokenizer):
        b = tok.batch(prompts)
        return b.input_ids.to(device), b.attention_mask.to(device)
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def run_rank(rank: int, world_size: int, job: EPJob) -> None:
    """One rank of the run (torch.distributed already initialised): load, shard, generate, record."""
    import torch

    from tracekit.collect.comm import CommCollector
    from tracekit.collect.ep_launch import rank0_first
    from tracekit.collect.ep_moe import ExpertParallel, placement_columns
    from tracekit.collect.record import record
    from tracekit.collect.run import load_model, resolve_dtype
    from tracekit.collect.tokenizer import ByteTokenizer

    device = f"cuda:{torch.cuda.current_device()}" if job.device.startswith("cuda") else "cpu"
    model, tok, detail = load_model(job.model, device=device, dtype=resolve_dtype(job.dtype), seed=job.seed)
    is_preset = isinstance(tok, ByteTokenizer)
    name = job.model if is_preset else Path(job.model).name
    detail = {
        **detail,
        "driver": "tracekit record --ep (transformers generate, greedy, fixed new tokens)",
        "prompts": len(job.prompts),
        "batches_per_rank": [len(b) for b in job.plan],
        "max_new_tokens": job.max_new_tokens,
        "seed": job.seed,
        "expert_parallel": {
            "ep_size": world_size,
            "backend": "nccl" if device.startswith("cuda") else "gloo",
            "placement": "contiguous",
            "attention": "data-parallel (each rank its own batch)",
            "dispatch": "all_to_all_single per MoE layer: each token once per destination rank",
            "comm_purposes": ["dispatch_layout", "dispatch", "dispatch_meta", "combine"],
        },
    }
    with contextlib.ExitStack() as stack:
        rec = rank0_first(
            rank,
            lambda: stack.enter_context(
                record(
                    model,
                    job.out,
                    rank=rank,
                    world_size=world_size,
                    name=name,
                    overwrite=job.overwrite if rank == 0 else False,
                    source_detail=detail,
                    trace_id=job.trace_id,
                    rows_per_part=job.rows_per_part,
                )
            ),
            job.out,
        )
        collector = rec.collector
        writer = collector.writer
        ep = ExpertParallel(
            model,
            num_experts=job.num_experts,
            step=lambda: collector.step,
            model_name=name,
            sites=collector.sites,
        )
        stack.callback(ep.remove)
        origin = collector.clock_origin
        comm_kwargs: dict[str, Any] = (
            {"cuda_origin": origin} if device.startswith("cuda") else {"clock_origin_ns": origin}
        )
        cc = stack.enter_context(CommCollector(writer, **comm_kwargs))

        # hand each step's calls to the writer when the step ends (bounded memory, and a run killed
        # later keeps them once the writer has flushed)
        def flush_comm(*_: Any) -> None:
            cc.flush()

        handle = model.register_forward_hook(flush_comm)
        stack.callback(handle.remove)
        if rank == 0:
            writer.append("placement", placement_columns(ep.layers, job.num_experts, world_size))
        pad = tok.pad_token_id
        torch.manual_seed(job.seed)
        with torch.inference_mode():
            for first, end in job.plan[rank]:
                ids = list(range(first, end))
                input_ids, mask = _encode(tok, [job.prompts[i] for i in ids], device)
                rec.set_request_ids(ids)
                model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=job.max_new_tokens,
                    min_new_tokens=job.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
                rec.set_output_tokens(ids, [job.max_new_tokens] * len(ids))
                cc.flush()
