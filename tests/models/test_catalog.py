"""The model catalog against the published parameter counts and config.json round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit.errors import ModelError, UnknownNameError
from tracekit.models import catalog_entry, from_hf_config, get_model, model_names, param_counts

EXPECTED = {
    "deepseek-v3",
    "deepseek-r1",
    "kimi-k2",
    "gpt-oss-120b",
    "gpt-oss-20b",
    "qwen3-235b-a22b",
    "qwen3-30b-a3b",
    "mixtral-8x7b",
    "olmoe-1b-7b",
}


def test_catalog_lists_the_models() -> None:
    assert set(model_names()) >= EXPECTED
    assert model_names() == sorted(model_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_match_published_counts(name: str) -> None:
    entry = catalog_entry(name)
    counts = param_counts(entry.arch)
    # "1T" (Kimi K2) is a rounded figure; the others are given to 2-3 digits.
    assert counts.total == pytest.approx(entry.reported_total_params, rel=0.03)
    # Vendors differ on whether the input embedding counts as active: one of the two conventions
    # must match within 5%.
    err = min(
        abs(counts.active - entry.reported_active_params),
        abs(counts.active + counts.embedding - entry.reported_active_params),
    )
    assert err / entry.reported_active_params < 0.05


def test_deepseek_v3_hand_count() -> None:
    """DeepSeek-V3 counted by hand from its config.json: 671B total, 37B active within 2%."""
    arch = get_model("deepseek-v3")
    h, f, fd, e = 7168, 2048, 18432, 256
    expert = 3 * h * f
    attn = h * 1536 + 1536 * 128 * 192 + h * (512 + 64) + 512 * 128 * (128 + 128) + 128 * 128 * h
    emb = 129280 * h
    total = 2 * emb + 61 * attn + 3 * 3 * h * fd + 58 * (e * expert + expert + h * e)
    counts = param_counts(arch)
    assert counts.total == total
    assert total == pytest.approx(671e9, rel=0.02)
    assert counts.active == pytest.approx(37e9, rel=0.02)
    assert arch.moe_layers == tuple(range(3, 61))
    assert (arch.num_expert_groups, arch.topk_groups, arch.scoring) == (8, 4, "sigmoid")
    assert arch.routed_scaling_factor == 2.5


def test_gpt_oss_windows_alternate() -> None:
    arch = get_model("gpt-oss-120b")
    assert arch.attention.sliding_window == 128
    assert arch.attention.sliding_window_layers == tuple(range(0, 36, 2))
    assert (arch.attention.num_heads, arch.attention.num_kv_heads, arch.attention.head_dim) == (64, 8, 64)


def test_lookup_by_hf_id_and_case() -> None:
    assert get_model("Qwen/Qwen3-30B-A3B") == get_model("qwen3-30b-a3b")
    assert get_model("MIXTRAL-8x7B") == get_model("mixtral-8x7b")


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="deepseek-v3"):
        get_model("no-such-model")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_json_round_trip(name: str, tmp_path: Path) -> None:
    """The stored config.json keys, written as a model directory, read back to the same architecture."""
    entry = catalog_entry(name)
    model_dir = tmp_path / name
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(entry.config))
    arch = get_model(model_dir)
    assert arch == entry.arch.__class__(**{**entry.arch.__dict__, "name": model_dir.name})
    assert get_model(str(model_dir / "config.json")) == arch


def test_qwen2_moe_shared_expert_and_sparse_step() -> None:
    config = {
        "model_type": "qwen2_moe",
        "num_hidden_layers": 6,
        "hidden_size": 64,
        "intermediate_size": 256,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 128,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 100,
    }
    arch = from_hf_config(config, "q2")
    assert arch.moe_layers == (1, 5)  # (i+1) % 2 == 0, minus layer 3
    assert arch.intermediate_size == 256
    assert (arch.num_shared_experts, arch.shared_expert_intermediate_size) == (1, 128)
    assert arch.attention.kind == "mha" and arch.attention.head_dim == 16
    assert arch.norm_topk_prob is False


def test_kimi_style_config_reads_as_deepseek() -> None:
    entry = catalog_entry("kimi-k2")
    assert entry.arch.architecture == "kimi_k2"
    assert entry.arch.attention.kind == "mla" and entry.arch.attention.num_heads == 64
    assert entry.arch.moe_layers == tuple(range(1, 61))


def test_bad_configs_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a supported"):
        from_hf_config({"model_type": "llama"}, "x")
    with pytest.raises(ModelError, match=r"has no .intermediate_size"):
        from_hf_config(
            {"model_type": "mixtral", "num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 4}, "x"
        )
    with pytest.raises(ModelError, match=r"no config\.json"):
        get_model(tmp_path)
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        get_model(bad)
