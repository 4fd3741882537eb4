"""Importers: bring traces from profilers and serving engines into the tracekit schema.

``import_kineto`` reads PyTorch profiler (Kineto) Chrome-trace JSON and ``import_nsys`` Nsight Systems
SQLite exports into the ``kernels`` table (categories from :mod:`.categories`, layers from ranges or
inferred); ``import_sglang`` reads SGLang's expert-distribution recorder dumps and ``import_vllm``
vLLM's EPLB expert-load state into ``expert_load`` (and ``routing``, ``tokens``, ``steps`` and
``placement`` where the source has them).
"""

from tracekit.importers._arch import UNKNOWN_MODEL, is_unknown, unknown_arch
from tracekit.importers._summary import KernelSummary, NameTime
from tracekit.importers.categories import (
    CATEGORIES,
    KernelClass,
    KernelRules,
    category_of,
    category_rules,
    classify,
    load_rules,
)
from tracekit.importers.kineto import FileReport, ImportReport, KinetoOptions, import_kineto
from tracekit.importers.nsys import NsysFileReport, NsysOptions, NsysReport, import_nsys
from tracekit.importers.sglang import SglangReport, import_sglang
from tracekit.importers.vllm import VllmReport, import_vllm

__all__ = [
    "CATEGORIES",
    "UNKNOWN_MODEL",
    "FileReport",
    "ImportReport",
    "KernelClass",
    "KernelRules",
    "KernelSummary",
    "KinetoOptions",
    "NameTime",
    "NsysFileReport",
    "NsysOptions",
    "NsysReport",
    "SglangReport",
    "VllmReport",
    "category_of",
    "category_rules",
    "classify",
    "import_kineto",
    "import_nsys",
    "import_sglang",
    "import_vllm",
    "is_unknown",
    "load_rules",
    "unknown_arch",
]
