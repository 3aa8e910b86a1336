"""What ``circuitboard run`` runs when it is given no choice: the default board.

Kept apart from the runner (and free of heavy imports) so that ``circuitboard run --help`` can
name the defaults without loading torch.
"""

from __future__ import annotations

# ``--methods all``: every circuit-finding method and the random baseline; never the oracle
# (``groundtruth``) or the full model (``full``), which are references, not methods. The default
# board runs all of them.
ALL_METHODS = ("random", "eap", "eap-ig", "acdc", "edge-pruning", "node-pruning")
DEFAULT_METHODS = ALL_METHODS
# The default board runs each standard task on this zoo model only (the dense one every task
# has); ``--tasks standard`` runs every model of every standard task.
DEFAULT_STANDARD_MODEL = "zoo/toy-lm"
DEFAULT_SEEDS = 1
DEFAULT_THREADS = 1
# The main job spreads its cells over a process pool (one per core); the cells are seeded and
# single-threaded, so the results do not depend on the executor.
DEFAULT_RUN_EXECUTOR = "process"
