"""The house rules of docs/architecture.md, checked on the code as it is.

- the import contracts of pyproject.toml (``[tool.importlinter]``): the core imports neither side,
  captioner never imports t2v, t2v imports captioner only for expansion (and the demo), no cycles
  between sibling modules;
- no module imports itself back through others, lazy imports included (a package and its own
  submodules too: ``backends/__init__`` building ``backends.hf`` that imports the package back);
- small rooms: no module over 450 lines, no function over 80 lines unless it says why in a
  ``# long function:`` comment.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("densecap", "captioner", "t2v")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "_assets" not in path.parts:
                yield path


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), "import-linter is part of the dev extra (scripts/setup dev)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and "0 broken" in proc.stdout


def test_no_module_imports_itself_back():
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.add(tuple(sorted((module, imported))))
    assert not cycles, f"modules that import each other (directly or through others): {sorted(cycles)}"


def test_modules_and_functions_stay_small():
    too_long = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(lines)} lines (module)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                body = lines[node.lineno - 1:node.end_lineno]
                if n > MAX_FUNCTION_LINES and not any("# long function:" in line for line in body):
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize("contract", ["captioner never imports t2v", "no cycles between sibling modules"])
def test_contracts_are_configured(contract):
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'name = "{contract}"' in text
