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
"""

from __future__ import annotations

from circuitboard.groundtruth.planted.train import PlantedSpec

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
