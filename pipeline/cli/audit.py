"""`nibt-audit` / `python -m pipeline`: the audit job as a Hydra application.

    nibt-audit input=s3://lake/cc3m/ output=s3://lake/audits/cc3m model=vit_b_32

``model=`` is required: no run falls back to the demo model. Exit codes:

    0    every task committed (and, with report.enabled=true, the report written)
    3    finished, but some tasks failed or some rows failed in the engine
         (``failures`` and ``tasks_with_error_rows`` in ``_summary.json``)
    4    every task committed, but the report (report.enabled=true) failed
    2    refused before any work started: a bad or missing setting (model= among
         them), a model the engine cannot cut or a layer out of its range, an input
         that cannot be listed (storage that does not answer included) or whose
         columns do not fit ``data.*``, an output that cannot be written
    143  stopped by SIGTERM, 130 by SIGINT (status ``stopped``; a rerun resumes)
    1    unexpected crash
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.cli.app import CONF_DIR, guarded, instantiate_group, run_app
from pipeline.config import ConfigError
from pipeline.job.driver import JobSettings, run_job

__all__ = ["CONF_DIR", "main", "model_options", "run_from_config", "settings_from_config"]
log = logging.getLogger("nibt-audit")


def model_options() -> list[str]:
    """The ``model=`` options: the files of ``conf/model/``."""
    return sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml"))


def settings_from_config(cfg: DictConfig) -> JobSettings:
    """Typed settings from a composed config; ``ConfigError`` names a bad setting."""
    if cfg.get("model") is None:
        raise ConfigError("model: no model chosen; pass model=<option>, one of: "
                          + ", ".join(model_options()) + f" ({Path(CONF_DIR, 'model')})")
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
        print(json.dumps(summary, sort_keys=True))  # one line: the last line of stdout
        return code

    return guarded("nibt-audit", cfg, body)


def main() -> None:
    """Console entry point (`nibt-audit`, `python -m pipeline`)."""
    run_app("audit", run_from_config)


if __name__ == "__main__":
    main()
