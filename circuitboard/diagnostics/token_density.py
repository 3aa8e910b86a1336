"""Token density: on how many tokens does each edge of a circuit matter?

Parameter-decomposition and pruning methods (Gao et al. 2025; Braun et al. 2025; Bushnaq et al.
2025) are asked whether they favour components that act on few tokens. The same question of an
edge circuit: for each edge ``e``, the **density** is the fraction of (example, scored position)
pairs at which ablating ``e`` alone moves the task metric by more than ``epsilon``:

    density(e) = #{(i, p) : |m_{i,p}(C - e) - m_{i,p}(C)| > threshold} / #(i, p)

- ``C`` is the circuit (after pruning) and ``C - e`` the circuit with ``e`` also removed, under
  the same ablation (``within="model"`` takes the full model and the model without ``e``).
- The scored positions are the task's: one per example for ``"last"`` tasks (IOI, greater-than:
  the density is the fraction of prompts whose answer depends on the edge), every position but
  BOS for ``"after_bos"`` tasks (Tracr programs), each scored on its own by the task's metric.
- ``threshold = epsilon * gap`` with ``gap`` the mean over all pairs of ``|m(M) - m(empty)|``, so
  ``epsilon`` is stated in units of the task's full-to-empty range (``relative=False``: in the
  metric's own units).

A circuit is summarised by its **median edge density** (with the mean and quartiles); run it on
each method's circuits at one budget to see whether a method favours edges that act on few
tokens. The cost is ``(n_edges + 3) x n_examples`` patched rows; on a large graph
``max_examples`` takes a seeded subset of the split (for a last-position task each density then
has a binomial standard error of at most ``0.5 / sqrt(max_examples)``). The rows run in
batched passes with one per-example edge mask per row (``[rows, n_edges]``, examples tiled),
never a Python loop over edges x examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from circuitboard.diagnostics._json import json_ready
from circuitboard.diagnostics._runs import (
    MAX_TOKENS,
    n_scored,
    per_pair,
    prepare,
    run_rows,
    subsample,
)
from circuitboard.graph import Circuit

WITHIN = ("circuit", "model")


@dataclass
class EdgeDensity:
    edge: str
    density: float
    moved: int  # pairs where the metric moved by more than the threshold


@dataclass
class DensityReport:
    task: str
    ablation: str
    split: str
    within: str
    epsilon: float
    relative: bool
    threshold: float  # in the metric's units
    n_pairs: int  # (example, scored position) pairs
    n_edges: int
    median: float
    mean: float
    q25: float
    q75: float
    edges: list[EdgeDensity]

    def to_dict(self, per_edge: bool = True) -> dict:
        """Plain JSON-ready data; ``per_edge=False`` drops the per-edge list."""
        out = json_ready(asdict(self))
        if not per_edge:
            out.pop("edges")
        return out

    def summary(self) -> dict:
        """The robustness-table cell: the circuit's median edge density."""
        return json_ready({"median_density": self.median, "mean_density": self.mean})

    def density(self, edge: str) -> float:
        for e in self.edges:
            if e.edge == edge:
                return e.density
        raise KeyError(f"edge {edge!r} is not in the circuit")


def token_density(
    model,
    task,
    circuit: Circuit,
    ablation: str = "counterfactual",
    *,
    epsilon: float = 0.05,
    relative: bool = True,
    within: str = "circuit",
    split: str | tuple[str, ...] = "test",
    seed: int = 0,
    max_examples: int | None = None,
    max_tokens: int = MAX_TOKENS,
    progress: bool = True,
) -> DensityReport:
    """The density of every edge of ``circuit`` (after pruning); see the module docstring."""
    if circuit.graph != model.graph:
        raise ValueError("the circuit belongs to a different graph than the model")
    if within not in WITHIN:
        raise ValueError(f"within must be one of {WITHIN}, got {within!r}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be a non-negative number, got {epsilon}")
    graph = model.graph
    pruned = circuit.pruned()
    edges = torch.nonzero(pruned.keep).flatten()
    base = pruned.keep.double() if within == "circuit" else torch.ones(graph.n_edges).double()
    prepared = subsample(prepare(model, task, ablation, split, seed), max_examples, seed)
    # The reference values: the base state, the full model and the empty circuit per pair.
    anchors = torch.stack(
        [base, torch.ones(graph.n_edges).double(), torch.zeros(graph.n_edges).double()]
    )
    refs = [per_pair(model, task, p, anchors, max_tokens=max_tokens) for p in prepared]
    n_pairs = sum(r.shape[1] * r.shape[2] for r in refs)
    gap = sum(float((r[1] - r[2]).abs().sum()) for r in refs) / n_pairs
    threshold = epsilon * gap if relative else epsilon
    # Masks: the base with one circuit edge removed, one per edge.
    masks = base.repeat(len(edges), 1)
    masks[torch.arange(len(edges)), edges] = 0
    moved = torch.zeros(len(edges), dtype=torch.long)
    total_rows = len(edges) * sum(p.n for p in prepared)
    bar = tqdm(total=total_rows, desc="token density", unit="row", disable=not progress)
    for prep, ref in zip(prepared, refs):
        n = prep.n
        # Rows edge-major in slabs, so one slab's values are counted and freed before the next.
        slab = max(1, (64 * max_tokens) // (n * prep.batch.length))
        for start in range(0, len(edges), slab):
            stop = min(start + slab, len(edges))
            mask_index = torch.arange(start, stop).repeat_interleave(n)
            example_index = torch.arange(n).repeat(stop - start)
            values = run_rows(
                model, task, prep, masks, mask_index, example_index, max_tokens=max_tokens
            ).view(stop - start, n, n_scored(task, prep.batch.length))
            moved[start:stop] += ((values - ref[0]).abs() > threshold).flatten(1).sum(1)
            bar.update(len(mask_index))
    bar.close()
    density = moved.double() / n_pairs
    names = graph.edge_names
    if len(edges):
        q = torch.quantile(density, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        q25, median, q75, mean = float(q[0]), float(q[1]), float(q[2]), float(density.mean())
    else:
        q25 = median = q75 = mean = float("nan")
    return DensityReport(
        task=task.name,
        ablation=ablation,
        split=split if isinstance(split, str) else "+".join(split),
        within=within,
        epsilon=epsilon,
        relative=relative,
        threshold=threshold,
        n_pairs=n_pairs,
        n_edges=len(edges),
        median=median,
        mean=mean,
        q25=q25,
        q75=q75,
        edges=[
            EdgeDensity(names[int(e)], float(d), int(c)) for e, d, c in zip(edges, density, moved)
        ],
    )
