"""CI catches hangs and style: a per-test timeout under the suite's settings, lint in .ci/run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_hanging_test_fails_instead_of_holding_ci(tmp_path):
    """The suite's pytest settings (pyproject) with the timeout cut to 2 s for speed."""
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n"
                                           "    time.sleep(3600)\n")
    r = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_hang.py"),
                        "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                        "-p", "no:cacheprovider", "-o", "timeout=2", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Timeout (>2.0s)" in r.stdout, r.stdout[-2000:]
    ini = (ROOT / "pyproject.toml").read_text().split("[tool.pytest.ini_options]")[1]
    timeout = re.search(r"^timeout = (\d+)$", ini.split("\n[")[0], re.M)
    assert timeout and 0 < int(timeout.group(1)) <= 1800  # well inside CI's 90 minutes


def test_ci_lints_before_it_tests():
    steps = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.startswith("make ")]
    assert steps.index("make lint") < steps.index("make test")
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:")[1].split("\n\n")[0]
    assert "ruff check pipeline tests benchmarks jobs" in lint and "lint-imports" in lint
