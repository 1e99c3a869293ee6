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


def subpackage_edges() -> set[tuple[str, str]]:
    """(a, b) for every import from subpackage (or top module) ``a`` into another ``b``."""
    import grimp

    graph = grimp.build_graph("pipeline")
    parts = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    parts = {p for p in parts if (PACKAGE / p).is_dir() or p == "config"}

    def part(module: str) -> str | None:
        bits = module.split(".")
        return bits[1] if len(bits) > 1 and bits[1] in parts else None

    edges = set()
    for m in graph.modules:
        a = part(m)
        for imported in graph.find_modules_directly_imported_by(m) if a else ():
            b = part(imported)
            if b and b != a:
                edges.add((a, b))
    return edges


def diagram_edges(text: str) -> set[tuple[str, str]]:
    """``a --> b`` lines of the mermaid block in docs/architecture.md."""
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for line in block.splitlines():
        if "-->" in line:
            a, b = (s.strip() for s in line.split("-->"))
            edges.add((a, b))
    return edges


def test_the_architecture_diagram_matches_the_imports():
    drawn = diagram_edges((ROOT / "docs" / "architecture.md").read_text())
    assert drawn, "no edges found in the diagram"
    assert drawn == subpackage_edges()
