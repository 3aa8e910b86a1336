"""The diagnostics package is core code: it imports no methods, tasks, ground truths or boards."""

from __future__ import annotations

import subprocess
import sys


def test_diagnostics_import_only_the_core():
    code = (
        "import sys, circuitboard as cb; cb.diagnostics.token_density; "
        "outer = ('methods', 'tasks', 'groundtruth', 'leaderboard'); "
        "print(sorted(m for m in sys.modules if m.split('.')[:2][-1] in outer "
        "and m.startswith('circuitboard.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
