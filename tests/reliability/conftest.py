"""Each fault test records its figures; the session prints them and saves JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIGURES: dict[str, dict] = {}
OUT = Path(__file__).resolve().parents[2] / "bench-results" / "reliability.json"


@pytest.fixture
def figure(request):
    """Call ``figure(**values)`` to publish this test's figures."""
    name = request.node.name.removeprefix("test_")

    def record(**values) -> None:
        FIGURES.setdefault(name, {}).update(values)

    return record


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("reliability figures")
    for name, values in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{name}: {json.dumps(values, sort_keys=True)}")
    terminalreporter.write_line(f"(saved to {OUT})")
