"""The CLI is a thin shell over the public API: it imports taskdb only through the
subpackages' public names (what a user's code or the dashboard can use too)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import taskdb.cli

CLI = Path(taskdb.cli.__file__).parent
PUBLIC_MODULES = {"taskdb.errors", "taskdb.settings"}  # modules without an __all__ of names


def _imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("taskdb"):
            found += [(node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("taskdb")]
    return found


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_the_cli_uses_only_public_names(path: Path) -> None:
    for module, name in _imports(path):
        if module.startswith("taskdb.cli") or module in PUBLIC_MODULES:
            continue
        if module == "taskdb" and name in ("errors", "settings"):
            continue
        public = getattr(importlib.import_module(module), "__all__", None)
        assert public is not None, f"{path.name} imports from {module}, which has no public API"
        assert name in public, f"{path.name} imports {module}.{name}, which is not public"
