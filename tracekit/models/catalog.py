"""The model catalog: one TOML data file per model under ``tracekit/data/models/``.

Each file holds the model's ``config.json`` keys in a ``[config]`` table (read by
:func:`~tracekit.models.hf.from_hf_config`, like any user config), the published parameter counts
in ``[reported]`` and the sources of both.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tracekit.errors import ModelError, UnknownNameError
from tracekit.models.hf import from_hf_config
from tracekit.schema import ModelArch

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "models"


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """A catalog model: its architecture plus what the architecture spec does not hold."""

    name: str
    hf_id: str
    arch: ModelArch
    native_expert_precision: str  # precision the released expert weights use (bf16, fp8, mxfp4, ...)
    mtp_layers: int  # extra multi-token-prediction layers (not part of arch, not in param counts)
    reported_total_params: float
    reported_active_params: float
    reported_source: str
    source: str
    config: dict[str, Any]  # the config.json keys, as stored


@cache
def _entries() -> dict[str, CatalogEntry]:
    out: dict[str, CatalogEntry] = {}
    for path in sorted(DATA_DIR.glob("*.toml")):
        out[path.stem] = _load_entry(path)
    return out


def _load_entry(path: Path) -> CatalogEntry:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"model catalog file {path.name} cannot be read: {exc}; fix or remove it") from None
    name = str(raw.get("name", path.stem))
    config = dict(raw.get("config", {}))
    reported = raw.get("reported", {})
    return CatalogEntry(
        name=name,
        hf_id=str(raw.get("hf_id", "")),
        arch=from_hf_config(config, name),
        native_expert_precision=str(raw.get("native_expert_precision", "bf16")),
        mtp_layers=int(raw.get("mtp_layers", 0)),
        reported_total_params=float(reported.get("total_params", float("nan"))),
        reported_active_params=float(reported.get("active_params", float("nan"))),
        reported_source=str(reported.get("source", "")),
        source=str(raw.get("source", "")),
        config=config,
    )


def model_names() -> list[str]:
    """Names of the catalog models, sorted."""
    return sorted(_entries())


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog record of ``name`` (architecture, reported parameter counts, sources)."""
    entries = _entries()
    key = name.strip().lower()
    for entry in entries.values():
        if key in (entry.name, entry.hf_id.lower()):
            return entry
    raise UnknownNameError(
        "model", name, entries, hint="or pass a path to a transformers config.json or a model directory"
    )


def get_model(name_or_path: str | Path) -> ModelArch:
    """A catalog model by name (or Hugging Face id), or the model of a ``config.json`` / model directory.

    Catalog names win over a local directory of the same name.
    """
    text = str(name_or_path)
    if not isinstance(name_or_path, Path):
        key = text.strip().lower()
        for entry in _entries().values():
            if key in (entry.name, entry.hf_id.lower()):
                return entry.arch
    path = Path(text).expanduser()
    if path.exists() or text.endswith(".json") or "/" in text or "\\" in text:
        return _from_path(path)
    return catalog_entry(text).arch


def _from_path(path: Path) -> ModelArch:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(
            f"model {path}: no config.json there; pass a catalog name or a transformers model directory"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"model config {file} cannot be read as JSON ({exc}); pass a valid config.json"
        ) from None
    name = (file.parent.name if file.name == "config.json" else file.stem) or str(file)
    return from_hf_config(config, name)
