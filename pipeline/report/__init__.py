"""The audit report: attribution rows aggregated into one offline HTML page, JSON and Parquet.

``build_report(results, output, settings, storage)`` reads an ``nibt-audit``
output through its manifest (streaming, part by part, the parts spread over
worker processes) and writes ``report.html``, ``report.json``, ``flags.parquet``
and ``aggregates/*.parquet``; ``nibt-report`` (``pipeline.cli.report``) is the same
as a Hydra app. No Ray, no model code. ``build_report`` is imported on first use,
so a worker process that only aggregates parts does not load the page's plotting.
"""

from typing import Any

from pipeline.report.settings import GroupFamily, ReportSettings

__all__ = ["GroupFamily", "ReportSettings", "build_report"]


def __getattr__(name: str) -> Any:
    if name == "build_report":
        from pipeline.report.build import build_report

        return build_report
    raise AttributeError(f"module 'pipeline.report' has no attribute {name!r}")
