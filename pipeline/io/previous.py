"""Dated audit outputs in storage: the run date of ``<root>/dt=YYYY-MM-DD``, whether an
output committed every task (``_SUCCESS``), and the latest earlier date that did (the
baseline of a nightly comparison)."""

from __future__ import annotations

import re

from pipeline.config import StorageSettings
from pipeline.io.storage import filesystem, join

_DATE = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})$")


def dated(results: str) -> str | None:
    """The run date of a dated output (``.../dt=YYYY-MM-DD``), else None."""
    m = _DATE.search(str(results).rstrip("/"))
    return m.group(1) if m else None


def previous_success(results: str, storage: StorageSettings) -> str | None:
    """The latest dated sibling of ``results`` (``<root>/dt=<date>``) earlier than its own
    date whose audit committed every task (``_SUCCESS``); None when there is none.

    Raises ``ValueError`` when ``results`` is not a dated output.
    """
    results = str(results).rstrip("/")
    date = dated(results)
    if date is None:
        raise ValueError(f"{results} is not a dated output (<root>/dt=YYYY-MM-DD)")
    root = results[: -len(f"dt={date}")].rstrip("/")
    fs, path = filesystem(root or ".", storage)
    try:
        names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return None
    earlier = sorted((n[3:] for n in names if _DATE.search(n) and n[3:] < date), reverse=True)
    for d in earlier:
        if fs.exists(join(path, f"dt={d}", "_SUCCESS")):
            return f"{root}/dt={d}"
    return None


def has_success(results: str, storage: StorageSettings) -> bool | None:
    """Whether an audit output holds ``_SUCCESS`` (None when that cannot be checked)."""
    try:
        fs, path = filesystem(results, storage)
        return bool(fs.exists(join(path, "_SUCCESS")))
    except Exception:
        return None


__all__ = ["dated", "has_success", "previous_success"]
