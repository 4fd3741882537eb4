"""Kernel categories from the structure of kernel names: ordered rules kept as data.

A name is taken apart (:func:`~tracekit.importers.kernel_names.parse_kernel_name`) into its
function, namespace, template arguments and parameters; each rule of ``data/kernel_rules.json``
names regular expressions over some of those parts and a category; the first rule whose every
matcher matches wins. Rules look at function names, not namespaces: a DeepEP fork built under
``acme::ep`` has ``dispatch``/``combine``/``notify_dispatch`` kernels like DeepEP's. Variant rules
then say which kind of a category's kernel it is (an all-to-all step's intranode / internode /
low_latency). A user's own rules (``--rules FILE``, :func:`load_rules`) are tried before the shipped
ones. Classification runs once per distinct name.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from tracekit.errors import InputFormatError, UsageError
from tracekit.importers.kernel_names import KernelName, parse_kernel_name

CATEGORIES: tuple[str, ...] = (
    "dense_gemm",
    "expert_gemm",
    "attention",
    "moe_dispatch",
    "moe_combine",
    "moe_layout",
    "collective",
    "quantization",
    "utility",
    "elementwise",
    "memcpy",
    "other",
)
#: The category of a name no rule matches.
UNCLASSIFIED = "other"
#: Profiler event categories whose events are copies or fills whatever their name.
MEMCPY_EVENT_CATS = frozenset({"gpu_memcpy", "gpu_memset"})
#: Parts of a name a rule may match, in the order they are documented.
MATCHERS: tuple[str, ...] = ("function", "namespace", "path", "template", "args", "name")
SHIPPED_RULES = "data/kernel_rules.json"


def _part(parsed: KernelName, key: str) -> str:
    if key == "path":
        return f"{parsed.namespace}::{parsed.function}" if parsed.namespace else parsed.function
    if key == "name":
        return parsed.raw
    value: str = getattr(parsed, key)
    return value


@dataclass(frozen=True, kw_only=True)
class CategoryRule:
    """One rule: a kernel whose name parts match every given matcher gets ``category``."""

    #: Whose kernels the rule is written for (documentation; shown by ``classify``).
    library: str
    #: Category given on a match; one of CATEGORIES.
    category: str
    #: Part of the name (one of MATCHERS) -> compiled regular expression, searched in that part.
    matchers: tuple[tuple[str, re.Pattern[str]], ...]
    #: Variant given on a match (overrides the variant rules), or None.
    variant: str | None = None
    #: Where the rule comes from (the shipped file, or the user's, with its index).
    origin: str = ""

    def matches(self, parsed: KernelName) -> bool:
        return all(rx.search(_part(parsed, key)) for key, rx in self.matchers)


@dataclass(frozen=True, kw_only=True)
class VariantRule:
    """A variant for kernels of some categories whose name parts match."""

    categories: frozenset[str]
    variant: str
    matchers: tuple[tuple[str, re.Pattern[str]], ...]
    origin: str = ""

    def matches(self, category: str, parsed: KernelName) -> bool:
        return category in self.categories and all(rx.search(_part(parsed, key)) for key, rx in self.matchers)


@dataclass(frozen=True, kw_only=True)
class KernelClass:
    """What a kernel is."""

    category: str
    #: intranode / internode / low_latency for all-to-all steps; None where no rule says.
    variant: str | None
    #: The library of the rule that matched ('' when none did).
    library: str
    #: Which rule matched (``shipped rule 12``, ``rules.toml rule 0``), '' when none did.
    rule: str


def _compile(raw: Mapping[str, Any], where: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for key in MATCHERS:
        if key not in raw:
            continue
        pattern = raw[key]
        if not isinstance(pattern, str) or not pattern:
            raise InputFormatError(f"{where}: '{key}' must be a non-empty regular expression")
        try:
            out.append((key, re.compile(pattern)))
        except re.error as exc:
            raise InputFormatError(
                f"{where}: '{key}' {pattern!r} is not a valid regular expression: {exc}"
            ) from None
    if not out:
        raise InputFormatError(f"{where}: give at least one of {', '.join(MATCHERS)} (a regular expression)")
    return tuple(out)


def _parse_rules(doc: Any, source: str) -> tuple[tuple[CategoryRule, ...], tuple[VariantRule, ...]]:
    if not isinstance(doc, Mapping):
        raise InputFormatError(f"{source}: expected a table with a 'rules' list (and optionally 'variants')")
    unknown = sorted(set(doc) - {"rules", "variants", "description", "categories"})
    if unknown:
        raise InputFormatError(f"{source}: unknown top-level key {unknown[0]!r}; use 'rules' and 'variants'")
    rules_raw = doc.get("rules", [])
    variants_raw = doc.get("variants", [])
    if not isinstance(rules_raw, list) or not isinstance(variants_raw, list):
        raise InputFormatError(f"{source}: 'rules' and 'variants' must be lists of tables")
    rules = []
    allowed = {"library", "category", "variant", *MATCHERS}
    for i, raw in enumerate(rules_raw):
        where = f"{source} rule {i}"
        if not isinstance(raw, Mapping):
            raise InputFormatError(f"{where}: expected a table, got {type(raw).__name__}")
        extra = sorted(set(raw) - allowed)
        if extra:
            raise InputFormatError(
                f"{where}: unknown key {extra[0]!r}; a rule has category, library, variant and "
                f"matchers {', '.join(MATCHERS)}"
            )
        category = raw.get("category")
        if category not in CATEGORIES:
            raise InputFormatError(f"{where}: category {category!r} is not one of {', '.join(CATEGORIES)}")
        variant = raw.get("variant")
        if variant is not None and (not isinstance(variant, str) or not variant):
            raise InputFormatError(f"{where}: 'variant' must be a non-empty string")
        rules.append(
            CategoryRule(
                library=str(raw.get("library", "")),
                category=category,
                matchers=_compile(raw, where),
                variant=variant,
                origin=where,
            )
        )
    variants = []
    for i, raw in enumerate(variants_raw):
        where = f"{source} variant {i}"
        if not isinstance(raw, Mapping):
            raise InputFormatError(f"{where}: expected a table, got {type(raw).__name__}")
        applies = raw.get("applies_to")
        if not isinstance(applies, list) or not applies or any(c not in CATEGORIES for c in applies):
            raise InputFormatError(f"{where}: 'applies_to' must list categories of {', '.join(CATEGORIES)}")
        variant = raw.get("variant")
        if not isinstance(variant, str) or not variant:
            raise InputFormatError(f"{where}: 'variant' must be a non-empty string")
        extra = sorted(set(raw) - {"applies_to", "variant", *MATCHERS})
        if extra:
            raise InputFormatError(f"{where}: unknown key {extra[0]!r}")
        variants.append(
            VariantRule(
                categories=frozenset(applies), variant=variant, matchers=_compile(raw, where), origin=where
            )
        )
    return tuple(rules), tuple(variants)


class KernelRules:
    """An ordered rule set: the user's rules (if any) before the shipped ones."""

    def __init__(self, rules: Sequence[CategoryRule], variants: Sequence[VariantRule]) -> None:
        self.rules = tuple(rules)
        self.variants = tuple(variants)
        self._cache: dict[str, KernelClass] = {}

    def classify(self, name: str) -> KernelClass:
        """The category (and variant) of one kernel name; cached per name."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        parsed = parse_kernel_name(name)
        out = KernelClass(category=UNCLASSIFIED, variant=None, library="", rule="")
        for rule in self.rules:
            if rule.matches(parsed):
                variant = rule.variant or next(
                    (v.variant for v in self.variants if v.matches(rule.category, parsed)), None
                )
                out = KernelClass(
                    category=rule.category, variant=variant, library=rule.library, rule=rule.origin
                )
                break
        if len(self._cache) < 1_000_000:
            self._cache[name] = out
        return out

    def category_of(self, name: str) -> str:
        return self.classify(name).category

    def with_user_rules(self, path: str | Path) -> KernelRules:
        """These rules with the rules of a user's file tried first."""
        user_rules, user_variants = read_rules_file(path)
        return KernelRules((*user_rules, *self.rules), (*user_variants, *self.variants))


def read_rules_file(path: str | Path) -> tuple[tuple[CategoryRule, ...], tuple[VariantRule, ...]]:
    """Rules from a user's TOML or JSON file (``rules = [...]``, ``variants = [...]``)."""
    src = Path(path)
    if not src.is_file():
        raise UsageError(f"--rules {src}: no such file; give a TOML or JSON rules file (docs/importers.md)")
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{src}: cannot read the rules file ({exc})") from None
    try:
        doc = json.loads(text) if src.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if src.suffix.lower() == ".json" else "TOML (name it .json for JSON)"
        raise InputFormatError(f"{src}: not valid {kind}: {str(exc).splitlines()[0]}") from None
    rules, variants = _parse_rules(doc, src.name)
    if not rules and not variants:
        raise InputFormatError(f"{src}: no rules; add [[rules]] tables (docs/importers.md)")
    return rules, variants


@cache
def shipped_rules() -> KernelRules:
    """The rules shipped with tracekit."""
    text = resources.files("tracekit.importers").joinpath(SHIPPED_RULES).read_text(encoding="utf-8")
    rules, variants = _parse_rules(json.loads(text), "shipped")
    return KernelRules(rules, variants)


def load_rules(user_file: str | Path | None = None) -> KernelRules:
    """The shipped rules, with ``user_file``'s rules first when given."""
    base = shipped_rules()
    return base.with_user_rules(user_file) if user_file is not None else base


def category_rules() -> tuple[CategoryRule, ...]:
    """The shipped category rules, in order."""
    return shipped_rules().rules


def category_of(name: str) -> str:
    """The category of one kernel name under the shipped rules."""
    return shipped_rules().category_of(name)


def classify(name: str) -> KernelClass:
    """Category, variant and matching rule of one kernel name under the shipped rules."""
    return shipped_rules().classify(name)


_NCCL_OP = re.compile(r"nccl(?:Dev)?Kernel_([A-Za-z]+?)(?:_|\(|$)")
_NCCL_NAMES = {
    "AllReduce": "allreduce",
    "AllGather": "allgather",
    "ReduceScatter": "reduce_scatter",
    "Broadcast": "broadcast",
    "Reduce": "reduce",
    "SendRecv": "send_recv",
    "AllToAll": "all_to_all",
}


def nccl_collective_from_name(name: str) -> str | None:
    """The collective an NCCL kernel's name spells (``ncclDevKernel_AllReduce_Sum_bf16_RING_LL``)."""
    m = _NCCL_OP.search(name)
    if not m:
        return None
    return _NCCL_NAMES.get(m.group(1))
