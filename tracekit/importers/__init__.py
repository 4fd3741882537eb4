"""Importers: bring traces from profilers and serving engines into the tracekit schema.

``import_kineto`` reads PyTorch profiler (Kineto) Chrome-trace JSON into the ``kernels`` table;
``import_sglang`` reads SGLang's expert-distribution recorder dumps into ``expert_load`` (and
``routing``, ``tokens``, ``steps`` and ``placement`` where the dump has them).
"""

from tracekit.importers._arch import UNKNOWN_MODEL, is_unknown, unknown_arch
from tracekit.importers.categories import CATEGORIES, category_of, category_rules
from tracekit.importers.kineto import FileReport, ImportReport, KinetoOptions, import_kineto
from tracekit.importers.sglang import SglangReport, import_sglang

__all__ = [
    "CATEGORIES",
    "UNKNOWN_MODEL",
    "FileReport",
    "ImportReport",
    "KinetoOptions",
    "SglangReport",
    "category_of",
    "category_rules",
    "import_kineto",
    "import_sglang",
    "is_unknown",
    "unknown_arch",
]
