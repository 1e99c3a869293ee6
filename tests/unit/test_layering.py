"""The package's layering (pyproject ``[tool.importlinter]``) holds, and the check can fail.

Entry points and the demo sit on top, then the job, the report, storage and the engine side
by side, settings at the bottom; the engine imports no Ray, fsspec or pyarrow, the report and
``pipeline.io`` no torch or Ray. No module uses another module's private (``_``) names.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``where`` with the project's contracts."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = dict(os.environ, PYTHONPATH=str(where))
    return subprocess.run([*cmd, "--config", str(where / "pyproject.toml"), "--no-cache"],
                          cwd=where, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "broken" in run.stdout and "0 broken" in run.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The package's Python files and pyproject.toml in a scratch folder."""
    where = tmp_path_factory.mktemp("layering")
    shutil.copytree(PACKAGE, where / "pipeline", symlinks=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "__pycache__", "conf"))
    shutil.copy(ROOT / "pyproject.toml", where / "pyproject.toml")
    return where


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("engine/nibt.py", "import ray", "The engine is pure torch"),
    ("engine/towers.py", "import pyarrow", "The engine is pure torch"),
    ("report/stats.py", "import torch", "The report needs no torch"),
    ("io/storage.py", "import torch", "Storage and formats need no torch"),
    ("io/parts.py", "from pipeline.job import plan", "Layers"),
    ("engine/words.py", "from pipeline.io import storage", "Layers"),
])
def test_a_forbidden_import_breaks_a_contract(copy, module, line, contract):
    target = copy / "pipeline" / module
    original = target.read_text()
    target.write_text(original + f"\n{line}  # added by the test\n")
    try:
        run = lint_imports(copy)
    finally:
        target.write_text(original)
    assert run.returncode != 0, run.stdout
    broken = run.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, run.stdout


def _imported_modules(tree: ast.Module) -> dict[str, str]:
    """Local name -> module, for ``import pipeline.x as y`` / ``from pipeline.a import b``."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("pipeline"):
                    names[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def private_uses(path: Path) -> list[str]:
    """``from pipeline.x import _y`` and ``module._y`` on an imported pipeline module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found += [f"{node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    modules = _imported_modules(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module(tmp_path):
    uses = {str(p.relative_to(ROOT)): private_uses(p) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in uses.items() if v} == {}
    # the check itself finds both forms
    probe = tmp_path / "probe.py"
    probe.write_text("from pipeline.io.storage import _x\nfrom pipeline.report import summary\n"
                     "summary._num(1)\n")
    assert private_uses(probe) == ["pipeline.io.storage._x", "pipeline.report.summary._num"]
