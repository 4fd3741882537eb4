"""``tracekit models list`` / ``show``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.models import catalog_entry, model_names, param_counts


def test_models_list_json() -> None:
    out = CliRunner().invoke(cli, ["models", "list", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert set(rows) == set(model_names())
    ds = rows["deepseek-v3"]
    assert ds["total_params_billion"] == round(param_counts(catalog_entry("deepseek-v3").arch).total / 1e9, 1)
    assert ds["experts"] == 256 and ds["top_k"] == 8


def test_models_show_catalog_and_config(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["models", "show", "gpt-oss-120b", "--format", "json"])
    assert out.exit_code == 0, out.output
    fields = {r["field"]: r for r in json.loads(out.output)}
    assert fields["routed experts"]["value"] == 128
    assert fields["expert weights"]["note"] == "MB per expert at mxfp4"
    (tmp_path / "config.json").write_text(json.dumps(catalog_entry("olmoe-1b-7b").config))
    out = CliRunner().invoke(cli, ["models", "show", str(tmp_path), "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert "olmoe" in out.output
    out = CliRunner().invoke(cli, ["models", "show", "no-such"])
    assert out.exit_code == 2 and "valid names" in out.output
