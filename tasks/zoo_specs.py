"""The zoo models: each one's shape, data, optimiser and schedule (trained by ``train``).

Declared apart from ``train`` so that the zoo's names and their order (``circuitboard models``)
are known without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ZooSpec:
    """How one zoo model is built: shape, data, optimiser, schedule."""

    name: str
    description: str
    shape: dict
    data: str  # "mixture" (tasks + filler) or "repeats" (random words, segments repeated)
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    answer_weight: float = 4.0  # extra loss weight on a task prompt's answer token
    final_density: float | None = None  # weight sparsity: share of each matrix kept
    seed: int = 0
    mixture: dict = field(default_factory=dict)


# share of batches per source; induction forms last, so it gets the most
MIXTURE = {
    "ioi": 2.0,
    "greater-than": 1.0,
    "docstring": 1.5,
    "induction": 3.0,
    "gendered-pronoun": 2.0,
    "filler": 2.0,
}
TOY_LM_SHAPE = dict(
    n_layers=4, n_heads=4, d_model=128, d_head=32, d_mlp=512, n_ctx=64, act_fn="gelu"
)
SPECS = {
    "toy-lm": ZooSpec(
        name="toy-lm",
        description="4-layer LayerNorm/GELU transformer trained on the five standard tasks and "
        "filler text (toy vocabulary)",
        shape=TOY_LM_SHAPE,
        data="mixture",
        steps=4000,
        mixture=MIXTURE,
    ),
    "toy-lm-sparse": ZooSpec(
        name="toy-lm-sparse",
        description="toy-lm's shape and data, trained weight-sparse (top-k magnitude per matrix "
        "after every step, k annealed over the first half; Gao et al. 2025)",
        shape=TOY_LM_SHAPE,
        data="mixture",
        steps=4000,
        final_density=0.15,
        mixture=MIXTURE,
    ),
    "attn-only-2l": ZooSpec(
        name="attn-only-2l",
        description="2-layer attention-only transformer trained on repeated random sequences "
        "(an induction circuit)",
        shape=dict(n_layers=2, n_heads=4, d_model=128, d_head=32, n_ctx=64, attn_only=True),
        data="repeats",
        steps=1500,
        batch_size=64,
        lr=1e-3,
    ),
}
