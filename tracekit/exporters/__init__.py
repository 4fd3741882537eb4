"""Exporters: write replayed timelines and imported kernels in the formats viewers open."""

from tracekit.exporters.perfetto import ExportReport, export_perfetto

__all__ = ["ExportReport", "export_perfetto"]
