"""SQL over traces and replay results: a DuckDB catalog, canned reports and an HTML report.

from tracekit.reports import Catalog, run_report
cat = Catalog.from_paths(["traces/mixtral", "h200=results/h200"])
con = cat.connect(memory_limit="2GB")
rows = run_report(con, cat, "imbalance", {"ep": 8}).rows
"""

from tracekit.reports.catalog import Catalog, CatalogInput, ViewInfo, connect, describe_inputs
from tracekit.reports.registry import ReportParam, ReportResult, ReportSpec, get_report, report_names, reports
from tracekit.reports.run import QueryResult, query, run_report

__all__ = [
    "Catalog",
    "CatalogInput",
    "QueryResult",
    "ReportParam",
    "ReportResult",
    "ReportSpec",
    "ViewInfo",
    "connect",
    "describe_inputs",
    "get_report",
    "query",
    "report_names",
    "reports",
    "run_report",
]
