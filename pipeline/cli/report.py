"""`nibt-report`: the audit report as a Hydra application.

    nibt-report results=s3://lake/audits/cc3m output=s3://lake/reports/cc3m storage=s3

Exit codes: 0 report written, 2 bad configuration or unreadable results,
1 unexpected crash. Logs go to stderr (and the Hydra run dir); stdout carries
only a short JSON summary.
"""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, OmegaConf

from pipeline.cli.app import CONF_DIR, EXIT_OK, guarded, instantiate_group, run_app
from pipeline.config import ConfigError, StorageSettings
from pipeline.job.procstats import peak_rss_mb
from pipeline.report.build import build_report
from pipeline.report.settings import ReportSettings

__all__ = ["CONF_DIR", "main", "run_from_config", "settings_from_config"]
log = logging.getLogger("nibt-report")


def settings_from_config(cfg: DictConfig) -> tuple[ReportSettings, StorageSettings]:
    """Typed settings from a composed config; ``ConfigError`` names a bad setting."""
    return instantiate_group(cfg, "report"), instantiate_group(cfg, "storage")


def run_from_config(cfg: DictConfig) -> int:
    """Build the report for a composed config and return its exit code."""

    def body() -> int:
        if OmegaConf.is_missing(cfg, "results") or OmegaConf.is_missing(cfg, "output"):
            raise ConfigError("results and output are required: nibt-report results=... output=...")
        settings, storage = settings_from_config(cfg)
        report = build_report(str(cfg.results), str(cfg.output), settings, storage)
        out = str(cfg.output).rstrip("/")
        peak = peak_rss_mb()
        log.info("report: peak RSS %.0f MiB", peak)
        print(json.dumps({
            "output": out, "files": [f"{out}/report.html", f"{out}/report.json", f"{out}/aggregates/"],
            "rows": report["overview"]["rows"], "rows_ok": report["overview"]["rows_ok"],
            "notice": report["overview"]["notice"],
            "findings": [f["text"] for f in report["findings"]], "peak_rss_mb": peak,
        }, indent=2, ensure_ascii=False))
        return EXIT_OK

    return guarded("nibt-report", cfg, body)


def main() -> None:
    """Console entry point (`nibt-report`)."""
    run_app("report", run_from_config)


if __name__ == "__main__":
    main()
