"""What ``circuitboard run`` runs when it is given no choice: the default board.

Kept apart from the runner (and free of heavy imports) so that ``circuitboard run --help`` can
name the defaults without loading torch.
"""

from __future__ import annotations

DEFAULT_METHODS = ("random", "eap", "eap-ig", "acdc")
# ``--methods all``: every circuit-finding method and the random baseline; never the oracle
# (``groundtruth``) or the full model (``full``), which are references, not methods.
ALL_METHODS = ("random", "eap", "eap-ig", "acdc", "edge-pruning", "node-pruning")
DEFAULT_SEEDS = 1
DEFAULT_THREADS = 1
