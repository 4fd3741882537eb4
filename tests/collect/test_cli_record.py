"""``tracekit record``: a real generate() run into a valid trace, bad inputs as one-line errors
(exit 2), and a run killed mid-generation that leaves a readable, incomplete trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tracekit
from tests.collect._trace_arrays import read_trace
from tracekit.cli.main import cli

PROMPTS = ["The history of tea in China.", "def add(a, b):", "Écris un haiku sur la pluie."]


def _prompt_file(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _one_line_error(r: object, exit_code: int = 2) -> str:
    assert r.exit_code == exit_code, r.output  # type: ignore[attr-defined]
    err = r.stderr.strip()  # type: ignore[attr-defined]
    assert err.startswith("tracekit: error:") and "\n" not in err, err
    assert "Traceback" not in r.output  # type: ignore[attr-defined]
    return err


def test_record_a_preset_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    args = ["record", "--model", "tiny-mixtral", "--prompts", str(_prompt_file(tmp_path, PROMPTS))]
    args += ["--max-new-tokens", "3", "--batch-size", "2", "--out", str(out), "--seed", "1"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "recorded 3 prompts, 6 steps" in r.stdout
    assert tracekit.validate(out).ok
    tr = read_trace(out)
    # byte tokenizer: one BOS + one token per UTF-8 byte; two batches (2 + 1 prompts), 3 steps each
    lens = [len(p.encode("utf-8")) + 1 for p in PROMPTS]
    assert tr.steps["phase"].to_list() == ["prefill", "decode", "decode"] * 2
    assert tr.steps["num_tokens"].to_list() == [lens[0] + lens[1], 2, 2, lens[2], 1, 1]
    assert tr.requests is not None
    assert tr.requests["request_id"].to_list() == [0, 1, 2]
    assert tr.requests["prompt_tokens"].to_list() == lens
    assert tr.requests["output_tokens"].to_list() == [3, 3, 3]
    m = tracekit.open_trace(out).manifest
    assert (m.model.num_experts, m.model.top_k, m.model.moe_layers) == (8, 2, (0, 1))
    assert m.source_detail["full_model"] == "mixtral-8x7b"
    # the same seed gives the same routing
    out2 = tmp_path / "again"
    r = CliRunner().invoke(cli, [*args[:-4], "--out", str(out2), "--seed", "1"])
    assert r.exit_code == 0, r.output
    a, b = (
        read_trace(out).routing.sort("step", "layer", "token_index"),
        read_trace(out2).routing.sort("step", "layer", "token_index"),
    )
    np.testing.assert_array_equal(np.stack(a["expert_ids"].to_list()), np.stack(b["expert_ids"].to_list()))


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    base = [
        "record",
        "--model",
        "tiny-mixtral",
        "--num-prompts",
        "1",
        "--max-new-tokens",
        "1",
        "--out",
        str(out),
    ]
    assert CliRunner().invoke(cli, base).exit_code == 0  # the shipped prompt file by default
    err = _one_line_error(CliRunner().invoke(cli, base))
    assert "--force" in err
    assert CliRunner().invoke(cli, [*base, "--force"]).exit_code == 0


def test_unknown_model_lists_the_presets(tmp_path: Path) -> None:
    err = _one_line_error(
        CliRunner().invoke(cli, ["record", "--model", "tiny-nope", "--out", str(tmp_path / "t")])
    )
    assert "tiny-nope" in err and "tiny-deepseek-v3" in err and "tiny-gpt-oss" in err


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    d = tmp_path / "empty_dir"
    d.mkdir()
    err = _one_line_error(
        CliRunner().invoke(cli, ["record", "--model", str(d), "--out", str(tmp_path / "t")])
    )
    assert "config.json" in err and str(d) in err


def test_model_without_moe_layer(tmp_path: Path) -> None:
    from transformers import Qwen2Config

    d = tmp_path / "dense"
    Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    ).save_pretrained(d)
    err = _one_line_error(
        CliRunner().invoke(cli, ["record", "--model", str(d), "--out", str(tmp_path / "t")])
    )
    assert "no MoE layer" in err
    assert not (tmp_path / "t").exists()  # nothing written for a refused model


@pytest.mark.parametrize("content", ["", "\n   \n\n"])
def test_empty_prompt_file(tmp_path: Path, content: str) -> None:
    p = tmp_path / "prompts.txt"
    p.write_text(content)
    err = _one_line_error(
        CliRunner().invoke(
            cli, ["record", "--model", "tiny-olmoe", "--prompts", str(p), "--out", str(tmp_path / "t")]
        )
    )
    assert str(p) in err and "no prompts" in err


def test_missing_prompt_file_and_bad_numbers(tmp_path: Path) -> None:
    base = ["record", "--model", "tiny-olmoe", "--out", str(tmp_path / "t")]
    assert "no such file" in _one_line_error(
        CliRunner().invoke(cli, [*base, "--prompts", str(tmp_path / "x.txt")])
    )
    assert "--max-new-tokens" in _one_line_error(CliRunner().invoke(cli, [*base, "--max-new-tokens", "0"]))
    assert "dtype" in _one_line_error(CliRunner().invoke(cli, [*base, "--dtype", "float8"]))
    import torch

    if not torch.cuda.is_available():
        assert "--device cpu" in _one_line_error(CliRunner().invoke(cli, [*base, "--device", "cuda"]))


def test_killed_mid_generation_leaves_a_readable_incomplete_trace(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    prompts = _prompt_file(tmp_path, [f"Prompt number {i} about the weather in town {i}." for i in range(40)])
    cmd = [sys.executable, "-m", "tracekit.cli.main", "record", "--model", "tiny-mixtral"]
    cmd += ["--prompts", str(prompts), "--max-new-tokens", "16", "--batch-size", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((out / "routing").glob("*.parquet")):
            assert proc.poll() is None, "the recording ended before it could be killed"
            time.sleep(0.05)
        assert list((out / "routing").glob("*.parquet")), "no part file written in time"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    result = tracekit.validate(out)
    assert result.incomplete and all(p.kind == "incomplete" for p in result.problems), result.problems
    t = tracekit.open_trace(out)
    assert not t.complete
    tr = read_trace(out)
    assert tr.steps.height >= 16  # at least the first batch (16 steps)
    # whatever was written is consistent: each written step's routing rows = its tokens x MoE layers
    written = tr.routing.group_by("step").len().sort("step")
    steps = tr.steps.filter(tr.steps["step"].is_in(written["step"].to_list())).sort("step")
    assert (written["len"].to_numpy() == steps["num_tokens"].to_numpy() * 2).all()


def test_record_a_local_model_directory_with_its_own_tokenizer(tmp_path: Path) -> None:
    """A model directory saved with save_pretrained (weights + tokenizer) records like a preset;
    prompt lengths are the directory tokenizer's own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tracekit.collect.presets import build_preset

    d = tmp_path / "my-olmoe"
    build_preset("tiny-olmoe", seed=5).save_pretrained(d)
    chars = [chr(c) for c in range(32, 127)]
    vocab = {
        "<pad>": 0,
        "<s>": 1,
        "</s>": 2,
        **{c: i + 3 for i, c in enumerate(chars)},
        "<unk>": 3 + len(chars),
    }
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(d)
    prompts = ["short one", "a somewhat longer prompt here"]
    out = tmp_path / "t"
    args = ["record", "--model", str(d), "--prompts", str(_prompt_file(tmp_path, prompts))]
    r = CliRunner().invoke(cli, [*args, "--max-new-tokens", "4", "--batch-size", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert tracekit.validate(out).ok
    tr = read_trace(out)
    lens = [len(x) for x in AutoTokenizer.from_pretrained(str(d))(prompts)["input_ids"]]
    assert tr.requests is not None
    assert tr.requests["prompt_tokens"].to_list() == lens
    assert tr.steps["num_tokens"][0] == sum(lens)
    assert all(1 <= n <= 4 for n in tr.requests["output_tokens"].to_list())
    m = tracekit.open_trace(out).manifest
    assert m.model.name == "my-olmoe" and (m.model.num_experts, m.model.top_k) == (64, 8)
