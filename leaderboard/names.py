"""Check method and task names before anything runs, and suggest the nearest known name.

A typo in ``--methods`` or ``--tasks`` used to surface inside every cell, as one traceback per
cell and then empty tables; now the command stops at once with one line per unknown name.
"""

from __future__ import annotations

import difflib
import importlib

from circuitboard.leaderboard import catalog
from circuitboard.registry import import_object


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "known: " + ", ".join(known) if known else "none are available"


def method_problems(names: list[str]) -> list[str]:
    """One line per method name that is neither registered nor an importable ``pkg.mod:Class``."""
    import circuitboard as cb

    known = cb.method_names()
    problems = []
    for name in names:
        if name in known:
            continue
        if ":" in name:
            try:
                target = import_object(name)
            except (ImportError, ValueError) as err:
                problems.append(f"method {name!r}: {err}")
                continue
            if not callable(target):
                problems.append(f"method {name!r} is not a class or factory")
            continue
        problems.append(f"unknown method {name!r}; {_suggest(name, known)}")
    return problems


def known_tasks() -> list[str]:
    """Every task name ``circuitboard run --tasks`` accepts (groups aside)."""
    from circuitboard.leaderboard import catalog

    return catalog.standard_names() + catalog.groundtruth_names()


def task_problems(names: list[str]) -> list[str]:
    """One line per task name that is not a known task, a group, or an importable factory."""
    known = known_tasks()
    problems = []
    for name in names:
        if name in known or name in catalog.TASK_GROUPS:
            continue
        if ":" in name:
            module = name.partition(":")[0]
            try:
                importlib.import_module(module)
            except ImportError as err:
                problems.append(f"task {name!r}: cannot import {module!r} ({err})")
            continue
        groups = list(catalog.TASK_GROUPS)
        problems.append(f"unknown task {name!r}; {_suggest(name, known + groups)}")
    return problems
