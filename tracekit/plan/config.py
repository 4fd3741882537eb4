"""Plan grids and SLAs from a TOML file (``tracekit plan --config FILE``; docs/plan.md)::

    systems = ["h200-sxm", "gb200-nvl72"]
    total_gpus = [16, 32]
    [sla]
    isl = 2000
    osl = 1000
    ttft_s = 2.0
    tpot_s = 0.05            # or tokens_per_s_per_user = 20
    [grid]
    eps = [8, 16]
    tps = [1, 8]
    moe_tp = [false, true]
    batches = [4, 16, 64]
    precisions = ["experts=fp8", "experts=fp4"]
    impls = ["deepep-ll"]
    tbos = [false, true]
    redundant = [0, 32]
    prefill_chunks = [0]     # 0: a whole prompt at once
    prefill_eps = [8]
    prefill_tokens = [4096]
    prefill_precisions = ["experts=fp8"]

Flags given on the command line replace the file's values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tracekit.errors import UsageError
from tracekit.replay.deployment import Precision

TOP_KEYS = ("systems", "total_gpus", "model", "sla", "grid")
SLA_KEYS = ("isl", "osl", "ttft_s", "tpot_s", "tokens_per_s_per_user")
INT_GRID = ("eps", "tps", "batches", "redundant", "prefill_chunks", "prefill_eps", "prefill_tokens")
GRID_KEYS = (*INT_GRID, "moe_tp", "precisions", "impls", "tbos", "prefill_precisions")


def load_plan_toml(path: str | Path) -> dict[str, Any]:
    """The plan file's settings as keyword values (``systems``, ``total_gpus``, ``model``, ``sla`` and
    ``grid`` dicts), checked key by key."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"{p}: no such plan file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: not a TOML plan file ({exc})") from None
    _keys(p, "", doc, TOP_KEYS)
    out: dict[str, Any] = {}
    if "systems" in doc:
        out["systems"] = tuple(_list(p, "systems", doc["systems"], str))
    if "total_gpus" in doc:
        out["total_gpus"] = tuple(_list(p, "total_gpus", doc["total_gpus"], int))
    if "model" in doc:
        out["model"] = str(doc["model"])
    sla = doc.get("sla", {})
    _keys(p, "sla.", sla, SLA_KEYS)
    out["sla"] = {k: v for k, v in sla.items()}
    grid = doc.get("grid", {})
    _keys(p, "grid.", grid, GRID_KEYS)
    g: dict[str, Any] = {}
    for k, v in grid.items():
        if k in INT_GRID:
            vals: list[Any] = _list(p, f"grid.{k}", v, int)
            g[k] = tuple((None if x == 0 else x) for x in vals) if k == "prefill_chunks" else tuple(vals)
        elif k in ("moe_tp", "tbos"):
            g[k] = tuple(_list(p, f"grid.{k}", v, bool))
        elif k == "impls":
            g[k] = tuple((None if x == "auto" else x) for x in _list(p, f"grid.{k}", v, str))
        else:
            try:
                g[k] = tuple(Precision.parse(x) for x in _list(p, f"grid.{k}", v, str))
            except UsageError as exc:
                raise UsageError(f"{p}: grid.{k}: {exc}") from None
    out["grid"] = g
    return out


def _keys(p: Path, prefix: str, table: Any, valid: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise UsageError(f"{p}: {prefix.rstrip('.') or 'the file'} must be a table")
    for k in table:
        if k not in valid:
            raise UsageError(f"{p}: unknown key {prefix}{k}; valid: {', '.join(prefix + v for v in valid)}")


def _list(p: Path, key: str, value: Any, kind: type) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    for x in items:
        if kind is int and (isinstance(x, bool) or not isinstance(x, int)):
            raise UsageError(f"{p}: {key} takes integers, got {x!r}")
        if kind is not int and not isinstance(x, kind):
            raise UsageError(f"{p}: {key} takes {kind.__name__} values, got {x!r}")
    if not items:
        raise UsageError(f"{p}: {key} is empty")
    return list(items)
