"""Each study's name and defaults, free of heavy imports so that ``circuitboard study --help``
answers at once; the study modules take their defaults from here."""

from __future__ import annotations

# seeds: the seed population (Drori)
SEEDS_NAME = "seeds"
SEEDS_DESCRIPTION = (
    "``seeds``: the seed population of a circuit-finding method, on and off distribution (Drori)."
)
SEEDS_METHODS = ("node-pruning", "edge-pruning")
SEEDS_TASK = "gendered-pronoun"
SEEDS_MODELS = ("zoo/toy-lm-sparse", "zoo/toy-lm")
SEEDS_ABLATIONS = ("zero", "mean")
SEEDS_COUNT = 20
SEEDS_TARGET = 0.9
# The training data each seed sees (a seeded subsample), sized so that a 20-seed study of one
# method on one model, both ablations, fits the speed target on a 2-core CPU (see
# benchmarks/studies.py). ``--train-fraction 1`` gives a method the full data.
SEEDS_TRAIN_FRACTION = 0.25

# sparse-vs-dense (Gao et al.)
SPARSE_DENSE_NAME = "sparse-vs-dense"
SPARSE_DENSE_DESCRIPTION = (
    "``sparse-vs-dense``: circuit sizes at equal faithfulness in a weight-sparse and a dense model."
)
SPARSE_DENSE_DENSE = "zoo/toy-lm"
SPARSE_DENSE_SPARSE = "zoo/toy-lm-sparse"
SPARSE_DENSE_LEVELS = (0.8, 0.9)

# edges-for-faithfulness (Bhaskar et al.)
EDGES_NAME = "edges-for-faithfulness"
EDGES_DESCRIPTION = (
    "``edges-for-faithfulness``: the edges each method needs to reach a faithfulness level."
)
EDGES_LEVELS = (0.8, 0.9, 0.95)
