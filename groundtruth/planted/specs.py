"""The planted programs: which Tracr program, the trained model's shape, and its training run.

Every model has 4 heads per layer and the compiled model's layers (at least 2), so each layer
holds components with no role; ``d_model`` is 32 throughout. Programs whose outputs read only
prefixes (running shares, squares) get causal attention, as InterpBench gives it wherever a
program allows; the others attend both ways, as compiled. Step counts are what each program
needs to pass every check of ``truth`` within a few CPU minutes on one thread.

Not planted: ``sort`` and ``sort_unique`` (within this budget SIIT does not reach the IIA bar:
the model sorts by counting tokens with unaligned layer-0 heads instead of comparing keys),
``dup_frac`` (accuracy stays near 0.7), ``pattern_abc`` (most outputs hold no value, so most
positions are untrained), ``length`` (nothing varies within a length: its resample ground truth
is empty), ``shuffle_dyck`` (eight layers: beyond the CPU budget).

``PlantedSpec`` is declared here rather than in ``train`` so that the names and their order
(``circuitboard models``) are known without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedSpec:
    """How one planted model is built and trained. ``program`` names the Tracr program."""

    program: str
    d_model: int
    n_heads: int = 4
    n_layers: int | None = None  # default: the compiled model's layers, at least 2
    d_head: int | None = None  # default: d_model // n_heads
    d_mlp: int | None = None  # default: 4 * d_model
    causal: bool | None = None  # default: as compiled; True needs outputs that read only prefixes
    steps: int = 2000
    batch_size: int = 64  # inputs per length per step (all of a length if it has fewer)
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.0
    clip: float = 1.0
    behaviour_weight: float = 1.0  # InterpBench's defaults are 1, 1 and 0.4; strictness here
    iit_weight: float = 1.0  # also covers edges (see ``siit``), and 0.4 left the joint
    strict_weight: float = 1.0  # ablation of every edge outside the circuit short of its bar
    edge_share: float = 0.5  # strictness rows that ablate edges outside the planted circuit
    all_share: float = 0.5  # of those, rows that ablate every such edge (else a random half)
    seed: int = 0

    @property
    def name(self) -> str:
        return self.program


SPECS: dict[str, PlantedSpec] = {
    s.name: s
    for s in [
        PlantedSpec("reverse", d_model=32, steps=1000),
        PlantedSpec("frac_prevs", d_model=32, causal=True, steps=2500),
        PlantedSpec("frac_prevs_causal", d_model=32, steps=2500),
        PlantedSpec("hist", d_model=32, steps=1500),
        PlantedSpec("pair_balance", d_model=32, causal=True, steps=1500),
        PlantedSpec("numerical_map", d_model=32, causal=True, steps=1500),
    ]
}
