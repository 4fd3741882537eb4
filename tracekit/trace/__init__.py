"""The trace store: a streaming writer, a lazy reader (polars and DuckDB) and the validator."""

from tracekit.trace.reader import ShardStatus, Trace, open_trace
from tracekit.trace.validate import Problem, ValidationResult, validate
from tracekit.trace.writer import TraceWriter

__all__ = ["Problem", "ShardStatus", "Trace", "TraceWriter", "ValidationResult", "open_trace", "validate"]
