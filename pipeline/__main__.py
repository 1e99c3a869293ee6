"""`nibt-audit` / `python -m pipeline`: the audit job as a Hydra application.

    nibt-audit input=s3://lake/cc3m/ output=s3://lake/audits/cc3m model=vit_b_32

Exit codes: 0 all tasks committed, 3 finished with failed tasks, 2 bad
configuration or unlistable input, 1 unexpected crash.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError
from pipeline.job import EXIT_CONFIG, EXIT_CRASH, JobSettings, run_job

log = logging.getLogger("nibt-audit")
#: The Hydra configs: top-level conf/, reached through the pipeline/conf link (so a
#: wheel carries them); NIBT_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("NIBT_CONF_DIR", str(Path(__file__).resolve().parent / "conf"))
_state = {"entered": False, "code": EXIT_CRASH}


def settings_from_config(cfg: DictConfig) -> JobSettings:
    """Typed settings from a composed config; ``ConfigError`` names a bad setting."""
    groups = {}
    for group in ("model", "data", "storage", "cluster", "run", "report"):
        if group not in cfg:
            continue
        try:
            groups[group] = instantiate(cfg[group], _convert_="all")
        except InstantiationException as e:
            cause = e.__cause__ or e
            if isinstance(cause, ConfigError):
                raise cause from None
            raise ConfigError(f"{group}: {cause}") from None
    inp = OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    return JobSettings(input=inp, output=cfg.output, **groups)


def run_from_config(cfg: DictConfig) -> int:
    """Run the audit for a composed config and return its exit code."""
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "fsspec", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if OmegaConf.is_missing(cfg, "input") or OmegaConf.is_missing(cfg, "output"):
            raise ConfigError("input and output are required: nibt-audit input=... output=...")
        code, summary = run_job(settings_from_config(cfg))
    except ConfigError as e:
        log.error("configuration error: %s", e)
        print(f"nibt-audit: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception:
        log.exception("nibt-audit crashed")
        return EXIT_CRASH
    brief = {k: summary[k] for k in ("status", "rows_in", "rows_out", "tasks_total", "tasks_run",
                                     "tasks_skipped", "tasks_failed", "tasks_retried",
                                     "status_counts", "seconds", "pairs_per_second")}
    log.info("run summary: %s", json.dumps(brief))
    print(json.dumps(summary, indent=2, sort_keys=True))
    return code


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="audit")
def _hydra_main(cfg: DictConfig) -> None:
    _state["entered"] = True
    _state["code"] = run_from_config(cfg)


def main() -> None:
    """Console entry point; maps Hydra's own errors (bad overrides) to exit code 2."""
    try:
        _hydra_main()
    except SystemExit as e:
        if not _state["entered"] and e.code not in (0, None):
            sys.exit(EXIT_CONFIG)
        raise
    sys.exit(_state["code"])


if __name__ == "__main__":
    main()
