"""The recorded routing is the model's own routing, for every supported architecture.

For each tiny preset, a real ``generate()`` runs under ``tracekit.record`` while the test hooks the
router's *input* itself; a second, independent implementation of each architecture's router (numpy,
float64, written from the published routing rules) recomputes ids and weights from those hidden
states. Also checked: token counts per step, prefill/decode labels, positions, request ids,
expert_load, the requests table, and that the trace validates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tracekit  # noqa: E402
from tests.collect._trace_arrays import read_trace  # noqa: E402
from tracekit.collect.presets import build_preset, preset_names  # noqa: E402
from tracekit.collect.tokenizer import ByteTokenizer  # noqa: E402

PROMPTS = ["Why is the sea salty?", "def f(x):", "Bonjour, comment allez-vous aujourd'hui ?"]
NEW_TOKENS = 3


# -- independent reference routers (numpy, float64) ------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _topk(score: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-score, axis=-1, kind="stable")[:, :k]


def ref_softmax_topk(logits: np.ndarray, k: int, renorm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE: softmax over all experts, top-k, optional renorm."""
    p = _softmax(logits)
    ids = _topk(p, k)
    w = np.take_along_axis(p, ids, axis=-1)
    if renorm:
        w = w / w.sum(axis=-1, keepdims=True)
    return ids, w, p


def ref_gpt_oss(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gpt-oss: top-k of the logits, then softmax over the k chosen logits."""
    ids = _topk(logits, k)
    return ids, _softmax(np.take_along_axis(logits, ids, axis=-1)), logits


def ref_deepseek_v3(
    logits: np.ndarray, bias: np.ndarray, k: int, groups: int, topk_groups: int, scale: float, renorm: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeepSeek-V3: sigmoid scores; choice = score + bias, limited to the top groups (group score =
    sum of its two best choice scores); weights are the chosen *scores*, renormalised and scaled."""
    s = 1.0 / (1.0 + np.exp(-logits))
    choice = s + bias
    t, e = choice.shape
    g = np.sort(choice.reshape(t, groups, e // groups), axis=-1)[:, :, -2:].sum(-1)
    keep_groups = _topk(g, topk_groups)
    allowed = np.zeros((t, groups), dtype=bool)
    np.put_along_axis(allowed, keep_groups, True, axis=-1)
    masked = np.where(np.repeat(allowed, e // groups, axis=1), choice, -np.inf)
    ids = _topk(masked, k)
    w = np.take_along_axis(s, ids, axis=-1)
    if renorm:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    return ids, w * scale, masked


def reference_routing(
    model: Any, layer: int, hidden: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = model.config
    mlp = model.model.layers[layer].mlp
    router = mlp.router if hasattr(mlp, "router") else mlp.gate
    W = router.weight.detach().double().numpy()
    logits = hidden @ W.T
    k = cfg.num_experts_per_tok
    if cfg.model_type == "gpt_oss":
        return ref_gpt_oss(logits + router.bias.detach().double().numpy(), k)
    if cfg.model_type == "deepseek_v3":
        bias = router.e_score_correction_bias.detach().double().numpy()
        return ref_deepseek_v3(
            logits, bias, k, cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor, cfg.norm_topk_prob
        )
    renorm = True if cfg.model_type == "mixtral" else bool(cfg.norm_topk_prob)
    return ref_softmax_topk(logits, k, renorm)


def _router_module(model: Any, layer: int) -> Any:
    mlp = model.model.layers[layer].mlp
    return mlp.router if hasattr(mlp, "router") else mlp.gate


# -- the test ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", preset_names())
def test_recorded_routing_equals_the_models_routing(preset: str, tmp_path: Path) -> None:
    model = build_preset(preset, seed=3)
    cfg = model.config
    if cfg.model_type == "deepseek_v3":  # exercise the correction bias of the choice scores
        gen = torch.Generator().manual_seed(7)
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and hasattr(gate, "e_score_correction_bias"):
                gate.e_score_correction_bias.copy_(
                    torch.rand(gate.e_score_correction_bias.shape, generator=gen) * 0.05
                )
    moe_layers = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    captured: dict[int, list[np.ndarray]] = {i: [] for i in moe_layers}
    handles = []
    for i in moe_layers:

        def grab(mod: Any, args: Any, _i: int = i) -> None:
            h = args[0]
            captured[_i].append(h.detach().reshape(-1, h.shape[-1]).double().numpy().copy())

        handles.append(_router_module(model, i).register_forward_pre_hook(grab))

    batch = ByteTokenizer().batch(PROMPTS)
    out = tmp_path / "trace"
    with torch.inference_mode(), tracekit.record(model, out, request_ids=[10, 11, 12]) as rec:
        model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
        assert rec.steps == NEW_TOKENS
    for h in handles:
        h.remove()

    result = tracekit.validate(out)
    assert result.ok, result.problems
    tr = read_trace(out)
    lens = np.array(batch.prompt_tokens)
    rows, width = batch.input_ids.shape

    # steps: one prefill over the real prompt tokens, then one decode token per request per step
    assert tr.steps["phase"].to_list() == ["prefill"] + ["decode"] * (NEW_TOKENS - 1)
    assert tr.steps["num_tokens"].to_list() == [int(lens.sum())] + [rows] * (NEW_TOKENS - 1)
    assert tr.steps["num_requests"].to_list() == [rows] * NEW_TOKENS
    assert tr.steps["num_prefill_tokens"].to_list() == [int(lens.sum())] + [0] * (NEW_TOKENS - 1)
    assert (tr.steps["duration_ns"].to_numpy() > 0).all()
    assert set(tr.steps["timing_source"].to_list()) == {"host_timer"}

    # tokens: request ids and positions from the left-padded prompt lengths
    t0 = tr.tokens.filter(tracekit_step(0))
    assert t0["request_id"].to_list() == [
        r for r, n in zip([10, 11, 12], lens, strict=True) for _ in range(n)
    ]
    assert t0["position"].to_list() == [p for n in lens for p in range(n)]
    assert t0["is_prefill"].all()
    for s in range(1, NEW_TOKENS):
        ts = tr.tokens.filter(tracekit_step(s))
        assert ts["request_id"].to_list() == [10, 11, 12]
        assert ts["position"].to_list() == (lens + s - 1).tolist()
        assert not ts["is_prefill"].any()

    # routing: equal to the independent recomputation on the very hidden states the router saw
    k = cfg.num_experts_per_tok
    near_ties = 0
    compared = 0
    for li, layer in enumerate(moe_layers):
        assert len(captured[layer]) == NEW_TOKENS
        for s in range(NEW_TOKENS):
            hidden = captured[layer][s]
            if s == 0:  # drop the left padding, as the trace does
                keep = batch.attention_mask.numpy().reshape(-1).astype(bool)
                hidden = hidden[keep]
            ref_ids, ref_w, score = reference_routing(model, layer, hidden)
            ids, w = tr.routing_of(s, layer)
            assert ids.shape == (hidden.shape[0], k)
            order = np.argsort(ids, axis=1)
            ids_s, w_s = np.take_along_axis(ids, order, 1), np.take_along_axis(w, order, 1)
            rorder = np.argsort(ref_ids, axis=1)
            rids_s, rw_s = np.take_along_axis(ref_ids, rorder, 1), np.take_along_axis(ref_w, rorder, 1)
            same = (ids_s == rids_s).all(axis=1)
            if not same.all():  # only a float32-vs-float64 near-tie at the k-th place may differ
                srt = -np.sort(-score[~same], axis=1)
                assert np.all(np.abs(srt[:, k - 1] - srt[:, k]) < 1e-5), f"layer {layer} step {s}"
                near_ties += int((~same).sum())
            np.testing.assert_allclose(w_s[same], rw_s[same], rtol=2e-5, atol=1e-6)
            compared += hidden.shape[0]
            # expert_load: counts of the same routing
            load = tr.expert_load.filter(tracekit_step(s) & tracekit_layer(layer)).sort("expert")
            assert load.height == tr_num_experts(cfg)
            np.testing.assert_array_equal(
                load["num_tokens"].to_numpy(), np.bincount(ids.reshape(-1), minlength=load.height)
            )
        del li
    assert near_ties <= max(1, compared // 100)

    # requests: prompt and output lengths, times in step order
    req = tr.requests
    assert req is not None
    assert req["request_id"].to_list() == [10, 11, 12]
    assert req["prompt_tokens"].to_list() == lens.tolist()
    assert req["output_tokens"].to_list() == [NEW_TOKENS] * rows
    assert (req["first_token_ns"] > req["arrival_ns"]).all()
    assert (req["finish_ns"] >= req["first_token_ns"]).all()
    del width


def tracekit_step(s: int) -> Any:
    import polars as pl

    return pl.col("step") == s


def tracekit_layer(layer: int) -> Any:
    import polars as pl

    return pl.col("layer") == layer


def tr_num_experts(cfg: Any) -> int:
    for n in ("num_local_experts", "num_experts", "n_routed_experts"):
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    raise AssertionError("no expert count in config")
