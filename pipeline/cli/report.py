"""`nibt-report`: the audit report as a Hydra application.

    nibt-report results=s3://lake/audits/cc3m output=s3://lake/reports/cc3m storage=s3
    nibt-report results=<audit> baseline=<earlier audit> output=<dir>   # and what changed
    nibt-report results=<root>/dt=2026-11-29 baseline=previous output=<dir>

    nibt-report results=... output=... cluster=existing               # passes on a Ray cluster

``baseline=previous`` compares with the latest earlier ``dt=`` sibling of
``results`` that has ``_SUCCESS`` (none: a plain report, and the log says so).
The passes run in a worker process per core (``report.workers``), or with
``cluster=existing`` (``cluster=local``: an embedded Ray) as Ray tasks.

Exit codes: 0 report written, 2 bad configuration or no manifest, 4 a part that
cannot be read (named; nothing published), 1 unexpected crash. Logs go to stderr
(and the Hydra run dir); stdout carries only a short JSON summary.
"""

from __future__ import annotations

import json
import logging
import sys

from omegaconf import DictConfig, OmegaConf

from pipeline.cli.app import CONF_DIR, EXIT_OK, guarded, instantiate_group, run_app
from pipeline.config import ConfigError, StorageSettings
from pipeline.job.procstats import peak_rss_mb
from pipeline.report.pool import start_fork_server
from pipeline.report.settings import ReportSettings

__all__ = ["CONF_DIR", "EXIT_UNREADABLE", "main", "run_from_config", "settings_from_config"]
log = logging.getLogger("nibt-report")
#: A part of the results (or of the baseline) could not be read: no report was published.
EXIT_UNREADABLE = 4


def settings_from_config(cfg: DictConfig) -> tuple[ReportSettings, StorageSettings]:
    """Typed settings from a composed config; ``ConfigError`` names a bad setting."""
    return instantiate_group(cfg, "report"), instantiate_group(cfg, "storage")


def resolve_baseline(cfg: DictConfig, storage: StorageSettings) -> str | None:
    """The baseline audit to compare with: the setting as given, or for ``previous`` the
    latest earlier dated output with ``_SUCCESS`` (None when there is none)."""
    value = cfg.get("baseline")
    if value is None or str(value).strip() in ("", "null", "None"):
        return None
    if str(value).strip() != "previous":
        return str(value)
    from pipeline.io.previous import previous_success

    try:
        found = previous_success(str(cfg.results), storage)
    except ValueError as e:
        raise ConfigError(f"baseline=previous: {e}") from None
    if found is None:
        log.info("report: no earlier dated output with _SUCCESS beside %s: no comparison",
                 cfg.results)
    else:
        log.info("report: comparing with the previous successful date %s", found)
    return found


def run_from_config(cfg: DictConfig) -> int:
    """Build the report for a composed config and return its exit code."""

    def body() -> int:
        if OmegaConf.is_missing(cfg, "results") or OmegaConf.is_missing(cfg, "output"):
            raise ConfigError("results and output are required: nibt-report results=... output=...")
        settings, storage = settings_from_config(cfg)
        if cfg.get("cluster") is None and settings.workers != 1:
            start_fork_server()  # it loads the workers' modules while this process loads its own
        # imported here, not at the top: they take most of a second, which the fork server
        # (its own process) spends meanwhile
        from pipeline.io.results import PartUnreadable
        from pipeline.report.build import build_report

        baseline = resolve_baseline(cfg, storage)
        executor = None
        if cfg.get("cluster") is not None:
            from pipeline.cli.report_ray import RayPool

            executor = RayPool(instantiate_group(cfg, "cluster"))
        stats: dict = {}
        try:
            report = build_report(str(cfg.results), str(cfg.output), settings, storage, baseline,
                                  executor, stats)
        except PartUnreadable as e:
            log.error("report not published: %s", e)
            print(f"nibt-report: {e}; no report was published", file=sys.stderr)
            return EXIT_UNREADABLE
        finally:
            if executor is not None:
                executor.close()
        out = str(cfg.output).rstrip("/")
        peak = peak_rss_mb()
        log.info("report: peak RSS %.0f MiB here, %.0f MiB in %d worker(s)", peak,
                 stats.get("workers_peak_rss_mb", 0.0), stats.get("workers", 1))
        comparison = report.get("comparison")
        print(json.dumps({
            "output": out, "files": [f"{out}/report.html", f"{out}/report.json",
                                     f"{out}/flags.parquet", f"{out}/aggregates/"],
            "rows": report["overview"]["rows"], "rows_ok": report["overview"]["rows_ok"],
            "notice": report["overview"]["notice"],
            "findings": [f["text"] for f in report["findings"]],
            "baseline": baseline,
            "changes": [f["text"] for f in comparison["findings"]] if comparison else None,
            "flagged": report["flags"]["rows"], "peak_rss_mb": peak,
            "workers": stats.get("workers", 1),
            "workers_peak_rss_mb": stats.get("workers_peak_rss_mb", 0.0),
            "seconds": stats.get("seconds", {}),
            "cpu_seconds": stats.get("cpu_seconds", {}),
            "tasks_a_pass": stats.get("tasks_a_pass"),
        }, indent=2, ensure_ascii=False))
        return EXIT_OK

    return guarded("nibt-report", cfg, body)


def main() -> None:
    """Console entry point (`nibt-report`)."""
    run_app("report", run_from_config)


if __name__ == "__main__":
    main()
