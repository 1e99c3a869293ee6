"""Numbers as the report writes them, on the page and in findings: 'n/a' for a missing value."""

from __future__ import annotations

from typing import Any


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for display ('n/a' for None; anything not a number as ``str``)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return format(x, spec)


def pct(x: Any, spec: str = ".1%") -> str:
    """A share as a percentage ('n/a' for None)."""
    return "n/a" if x is None else format(x, spec)


def pts(x: Any, spec: str = "+.1f") -> str:
    """A change of shares in percentage points ('n/a' for None)."""
    return "n/a" if x is None else format(100 * x, spec)


__all__ = ["fmt", "pct", "pts"]
