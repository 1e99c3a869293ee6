"""What `nibt-audit` and `nibt-report` share as Hydra applications.

Both compose a config from ``conf/``, build typed settings per group, map
errors to exit codes (2 for configuration, 1 for a crash) and keep stdout for
one JSON summary.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from pipeline.config import ConfigError

#: The Hydra configs: top-level conf/, reached through the pipeline/conf link (so a
#: wheel carries them); NIBT_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("NIBT_CONF_DIR", str(Path(__file__).resolve().parent.parent / "conf"))
EXIT_OK, EXIT_CRASH, EXIT_CONFIG = 0, 1, 2
NOISY = ("botocore", "s3fs", "aiobotocore", "urllib3", "fsspec", "werkzeug", "matplotlib", "PIL")


def instantiate_group(cfg: DictConfig, group: str) -> Any:
    """Build a group's settings object; ``ConfigError`` names the group and the problem."""
    try:
        return instantiate(cfg[group], _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{group}: {cause}") from None


def guarded(prog: str, cfg: DictConfig, body: Callable[[], int]) -> int:
    """Run ``body`` with logging set up; configuration errors -> 2, crashes -> 1."""
    log = logging.getLogger(prog)
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return body()
    except ConfigError as e:
        log.error("configuration error: %s", e)
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception:
        log.exception("%s crashed", prog)
        return EXIT_CRASH


#: ``key=value`` on the command line, key as Hydra spells one (``+``/``++``/``~`` prefixes).
OVERRIDE = re.compile(r"^([+~]{0,2}[A-Za-z_][\w./@-]*)=(.*)$", re.S)


def quote_override(arg: str) -> str:
    """``results=s3://x/dt=2026-12-01`` -> ``results='s3://x/dt=2026-12-01'``.

    Hydra's override grammar refuses a bare ``=`` inside a value, and every date-partitioned
    path has one. A value holding ``=`` is single-quoted for Hydra unless the user quoted it
    already or wrote a list or dict (``[``, ``{``) or a quote inside; anything else passes as is.
    """
    m = OVERRIDE.match(arg)
    if not m or "=" not in m.group(2):
        return arg
    value = m.group(2)
    if value[:1] in ("'", '"', "[", "{") or "'" in value or "\\" in value:
        return arg
    return f"{m.group(1)}='{value}'"


def run_app(config_name: str, run: Callable[[DictConfig], int]) -> NoReturn:
    """Compose ``conf/<config_name>.yaml`` with the command line, run, exit with its code.

    Hydra's own errors (an unknown key, a bad override) exit 1 inside Hydra,
    before ``run`` is entered; they are configuration errors, so exit 2. When Hydra
    answers by itself (``--help``, ``--cfg job``) and returns, that is exit 0.
    """
    sys.argv[1:] = [quote_override(a) for a in sys.argv[1:]]
    state = {"entered": False, "code": EXIT_OK}

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def _main(cfg: DictConfig) -> None:
        state["entered"] = True
        state["code"] = run(cfg)

    try:
        _main()
    except SystemExit as e:
        if not state["entered"] and e.code not in (0, None):
            sys.exit(EXIT_CONFIG)
        raise
    sys.exit(state["code"])
