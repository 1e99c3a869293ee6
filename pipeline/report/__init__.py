"""The audit report: attribution rows aggregated into one offline HTML page, JSON and Parquet.

``build_report(results, output, settings, storage)`` reads an ``nibt-audit``
output through its manifest (streaming, part by part) and writes
``report.html``, ``report.json`` and ``aggregates/*.parquet``; ``nibt-report``
(``pipeline.cli.report``) is the same as a Hydra app. No Ray, no model code.
"""

from pipeline.report.build import build_report
from pipeline.report.settings import GroupFamily, ReportSettings

__all__ = ["GroupFamily", "ReportSettings", "build_report"]
