"""`nibt-audit` / `python -m pipeline`: the audit job as a Hydra application.

    nibt-audit input=s3://lake/cc3m/ output=s3://lake/audits/cc3m model=vit_b_32

Exit codes: 0 all tasks committed, 3 finished with failed tasks or rows that
failed in the engine, 2 bad configuration or unlistable input (storage that does
not answer included), 1 unexpected crash, 143 / 130 stopped by SIGTERM / SIGINT
(docs/reliability.md).
"""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, OmegaConf

from pipeline.cli.app import CONF_DIR, guarded, instantiate_group, run_app
from pipeline.config import ConfigError
from pipeline.job.driver import JobSettings, run_job

__all__ = ["CONF_DIR", "main", "run_from_config", "settings_from_config"]
log = logging.getLogger("nibt-audit")


def settings_from_config(cfg: DictConfig) -> JobSettings:
    """Typed settings from a composed config; ``ConfigError`` names a bad setting."""
    groups = {g: instantiate_group(cfg, g)
              for g in ("model", "data", "storage", "cluster", "run", "report") if g in cfg}
    inp = OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    return JobSettings(input=inp, output=cfg.output, **groups)


def run_from_config(cfg: DictConfig) -> int:
    """Run the audit for a composed config and return its exit code."""

    def body() -> int:
        if OmegaConf.is_missing(cfg, "input") or OmegaConf.is_missing(cfg, "output"):
            raise ConfigError("input and output are required: nibt-audit input=... output=...")
        code, summary = run_job(settings_from_config(cfg))
        brief = {k: summary.get(k) for k in (
            "status", "rows_in", "rows_out", "tasks_total", "tasks_run", "tasks_skipped",
            "tasks_failed", "tasks_retried", "status_counts", "seconds", "pairs_per_second")}
        log.info("run summary: %s", json.dumps(brief))
        print(json.dumps(summary, indent=2, sort_keys=True))
        return code

    return guarded("nibt-audit", cfg, body)


def main() -> None:
    """Console entry point (`nibt-audit`, `python -m pipeline`)."""
    run_app("audit", run_from_config)


if __name__ == "__main__":
    main()
