"""circuitboard.leaderboard.studies: commands that run many cells and report a distribution.

    circuitboard study seeds                   # the seed population on and off distribution
    circuitboard study sparse-vs-dense         # circuit sizes at equal faithfulness, two models
    circuitboard study edges-for-faithfulness  # edges each method needs for a level

Each study writes, under one directory, its raw records (``cells/``, resumable), ``NAME.json``
with every number of its report, ``REPORT.md`` and PNG figures. Studies live in the leaderboard
package because they are made of the board's own parts: its cells, executors, claims, stores and
the scoring rules; nothing in the core imports them.
"""

from __future__ import annotations

STUDIES = {
    "seeds": "circuitboard.leaderboard.studies.seeds",
    "sparse-vs-dense": "circuitboard.leaderboard.studies.sparse_dense",
    "edges-for-faithfulness": "circuitboard.leaderboard.studies.edges",
}


def names() -> list[str]:
    return list(STUDIES)
