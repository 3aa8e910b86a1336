"""EAP-IG: Edge Attribution Patching with Integrated Gradients (Hanna, Pezzelle and Belinkov
2024, "Have Faith in Faithfulness: Going Beyond Circuit Overlap When Finding Model Mechanisms").

EAP's gradient is taken at the clean input only. EAP-IG averages it along a path from the
ablated input to the clean one:

    score(src -> reader) = (a~_src - a_src) . mean_k dL/d(reader input) at x(alpha_k)

``a~ - a`` is fixed (ablated minus clean source outputs), and the path interpolates the
``input`` node's output, ``x(alpha) = (1 - alpha) x~ + alpha x`` (``x~`` is the input node's
ablated value: the counterfactual embeddings, zeros, or the mean). Following hannamw/EAP-IG,
``alpha_k = k / steps`` for ``k = 0 .. steps - 1``: the path starts at the corrupted point and
never reaches the clean one. Evaluated at the single point ``alpha = 1`` EAP-IG is EAP.

``path="mask"`` is the variant that integrates over activations instead of inputs: every edge
mask is set to ``alpha`` at once, so every reader reads ``alpha a + (1 - alpha) a~``, and the
score is minus the mean gradient with respect to the edge mask. Its scores sum to the loss
difference between the empty circuit and the full model as the number of steps grows
(completeness of integrated gradients in mask coordinates). This is our formulation of "IG on
activations"; hannamw/EAP-IG's ``ig-activations`` interpolates node outputs instead.

Cost per training batch: one forward for the ablated values, one clean forward (no gradient)
for the source differences, then ``steps`` forward and backward passes.

Hyperparameters:
    steps (5): number of integration points.
    alphas (None): explicit interpolation points, overriding ``steps`` (``(1.0,)`` gives EAP).
    absolute (True): rank by |score|; False ranks by the signed score.
    path ("inputs"): "inputs" (EAP-IG) or "mask" (IG over all edge masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from circuitboard.methods.base import (
    Cost,
    ScoringMethod,
    check_choice,
    edge_scores,
    frozen,
    n_examples,
    objective,
    prepare,
    source_major_difference,
)

PATHS = ("inputs", "mask")


@dataclass
class EAPIG(ScoringMethod):
    """EAP with integrated gradients (Hanna et al. 2024); see the module docstring."""

    name: ClassVar[str] = "eap-ig"
    steps: int = 5
    alphas: Sequence[float] | None = None
    absolute: bool = True
    path: str = "inputs"

    def __post_init__(self) -> None:
        check_choice("EAP-IG path", self.path, PATHS)
        if self.alphas is None:
            if not isinstance(self.steps, int) or self.steps < 1:
                raise ValueError(f"EAP-IG steps must be a positive integer, got {self.steps!r}")
        else:
            self.alphas = tuple(float(a) for a in self.alphas)
            if not self.alphas:
                raise ValueError("EAP-IG alphas must hold at least one interpolation point")

    def interpolation_points(self) -> tuple[float, ...]:
        if self.alphas is not None:
            return tuple(self.alphas)
        return tuple(k / self.steps for k in range(self.steps))

    def attribute(self, model, task, ablation: str, seed: int, cost: Cost | None = None):
        """Signed EAP-IG scores ``[n_edges]`` (estimated loss increase on removal)."""
        cost = cost if cost is not None else Cost()
        prepared = prepare(model, task, ablation, seed, cost)
        total_n = n_examples(prepared)
        alphas = self.interpolation_points()
        scores = torch.zeros(model.graph.n_edges, dtype=torch.float64, device=model.device)
        with frozen(model), torch.enable_grad():
            for prep in prepared:
                obj = objective(model, task, prep, cost)
                run = _input_path if self.path == "inputs" else _mask_path
                scores += run(model, prep, obj, total_n, alphas, cost).double()
        return scores

    def _score_edges(self, model, task, ablation, seed, cost):
        scores = self.attribute(model, task, ablation, seed, cost)
        return scores.abs() if self.absolute else scores


def _input_path(model, prep, obj, total_n, alphas, cost: Cost) -> torch.Tensor:
    with torch.no_grad():
        # The per-reader path (return_reader_inputs) is the one EAP's clean pass takes, so at
        # alpha = 1 both compute bit-identical source outputs.
        out = model.run(prep.batch.clean, return_sources=True, return_reader_inputs=True)
        sources = out.sources
    cost.add_forward(prep.n)
    x_clean = sources[:, :, 0]
    x_ablated = prep.ablated[:, :, 0].expand_as(x_clean)
    grad_sum = None
    for alpha in alphas:
        x = ((1 - alpha) * x_ablated + alpha * x_clean).detach().requires_grad_(True)
        out = model.run(input_embeds=x, return_reader_inputs=True)
        loss = -obj(out.logits).sum() / total_n
        grads = torch.autograd.grad(loss, out.reader_inputs)
        cost.add_forward(prep.n)
        cost.backward += 1
        if grad_sum is None:
            grad_sum = list(grads)
        else:
            grad_sum = [a + g for a, g in zip(grad_sum, grads, strict=True)]
    mean_grads = [g / len(alphas) for g in grad_sum]
    return edge_scores(model, source_major_difference(prep.ablated, sources), mean_grads)


def _mask_path(model, prep, obj, total_n, alphas, cost: Cost) -> torch.Tensor:
    total = torch.zeros(model.graph.n_edges, dtype=model.dtype, device=model.device)
    for alpha in alphas:
        mask = torch.full((model.graph.n_edges,), alpha, dtype=model.dtype, device=model.device)
        mask.requires_grad_(True)
        logits = model.run(prep.batch.clean, mask, prep.ablated).logits
        loss = -obj(logits).sum() / total_n
        (grad,) = torch.autograd.grad(loss, mask)
        cost.add_forward(prep.n)
        cost.backward += 1
        total -= grad
    return total / len(alphas)
