"""circuitboard.leaderboard: results, the run harness, tables and plots (see ARCHITECTURE.md).

    from circuitboard.leaderboard import load_results, plan, run, render
    cells = plan(["eap", "random"], ["tracr/reverse"], seeds=2)
    run(cells)                      # one JSON per cell under leaderboard/results/, resumable
    render()                        # LEADERBOARD.md, leaderboard.csv, pareto.csv, plots/
    df = load_results()             # a pandas DataFrame, one row per stored result

Commands: ``circuitboard run``, ``leaderboard``, ``validate``, ``submit`` (modules ``cli_*``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_results": "circuitboard.leaderboard.tables",
    "plan": "circuitboard.leaderboard.runner",
    "run": "circuitboard.leaderboard.runner",
    "render": "circuitboard.leaderboard.rendering",
    "run_cell": "circuitboard.leaderboard.cell",
    "Cell": "circuitboard.leaderboard.cell",
    "MethodSpec": "circuitboard.leaderboard.catalog",
    "SCHEMA_VERSION": "circuitboard.leaderboard.store",
    "results_dir": "circuitboard.leaderboard.store",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'circuitboard.leaderboard' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
