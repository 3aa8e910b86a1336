"""``circuitboard leaderboard``: render LEADERBOARD.md, CSVs and Pareto plots from stored results.

Nothing is computed: only the result files are read. Files that cannot be read are named.
"""

from __future__ import annotations

import sys
import warnings

from circuitboard.leaderboard.cli_common import add_results, results_and_out


def add_arguments(parser) -> None:
    add_results(parser)


def main(args) -> int:
    from circuitboard.leaderboard import rendering

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = rendering.render(*results_and_out(args))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
