"""`nibt-report`: the audit report as a Hydra application.

    nibt-report results=s3://lake/audits/cc3m output=s3://lake/reports/cc3m storage=s3

Exit codes: 0 report written, 2 bad configuration or unreadable results,
1 unexpected crash. Logs go to stderr (and the Hydra run dir); stdout carries
only a short JSON summary.
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

from pipeline.config import ConfigError, StorageSettings
from pipeline.report.build import build_report
from pipeline.report.settings import ReportSettings

log = logging.getLogger("nibt-report")
EXIT_OK, EXIT_CRASH, EXIT_CONFIG = 0, 1, 2
#: The project's Hydra configs (top-level conf/), as for nibt-audit; NIBT_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("NIBT_CONF_DIR", str(Path(__file__).resolve().parents[2] / "conf"))
_state = {"entered": False, "code": EXIT_CRASH}


def settings_from_config(cfg: DictConfig) -> tuple[ReportSettings, StorageSettings]:
    """Typed settings from a composed config; ``ConfigError`` names a bad setting."""
    out = []
    for group in ("report", "storage"):
        try:
            out.append(instantiate(cfg[group], _convert_="all"))
        except InstantiationException as e:
            cause = e.__cause__ or e
            if isinstance(cause, ConfigError):
                raise cause from None
            raise ConfigError(f"{group}: {cause}") from None
    return out[0], out[1]


def run_from_config(cfg: DictConfig) -> int:
    """Build the report for a composed config and return its exit code."""
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if OmegaConf.is_missing(cfg, "results") or OmegaConf.is_missing(cfg, "output"):
            raise ConfigError("results and output are required: nibt-report results=... output=...")
        settings, storage = settings_from_config(cfg)
        report = build_report(str(cfg.results), str(cfg.output), settings, storage)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        print(f"nibt-report: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception:
        log.exception("nibt-report crashed")
        return EXIT_CRASH
    out = str(cfg.output).rstrip("/")
    print(json.dumps({
        "output": out, "files": [f"{out}/report.html", f"{out}/report.json", f"{out}/aggregates/"],
        "rows": report["overview"]["rows"], "rows_ok": report["overview"]["rows_ok"],
        "findings": [f["text"] for f in report["findings"]],
    }, indent=2, ensure_ascii=False))
    return EXIT_OK


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
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
