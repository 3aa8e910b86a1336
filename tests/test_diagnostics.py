"""The diagnostics package is core code: it imports no methods, tasks, ground truths or boards."""

from __future__ import annotations

import ast
from pathlib import Path

import circuitboard.diagnostics

OUTER = ("methods", "tasks", "groundtruth", "leaderboard")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_diagnostics_import_only_the_core():
    folder = Path(circuitboard.diagnostics.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert {f.stem for f in files} >= {"variance", "self_repair", "token_density"}
    for path in files:
        for name in _imports(path):
            parts = name.split(".")
            assert not (parts[0] == "circuitboard" and len(parts) > 1 and parts[1] in OUTER), (
                f"{path.name} imports {name}: core code must not import {OUTER}"
            )
