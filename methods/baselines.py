"""Baselines every method must be compared with: random, the ground-truth oracle, the full model.

- ``random``: seeded uniform scores; its top-k circuits are random circuits of each size, and
  its ROC against any ground truth sits near AUC 0.5.
- ``groundtruth``: the Tracr ground truth for the run's ablation
  (``circuitboard.groundtruth.load(name).circuit(ablation)``), as an oracle: for a budget at
  least its size it returns the ground truth itself, for a smaller budget the ground-truth
  edges with the largest recorded effects. ``counterfactual`` maps to the ``resample`` ground
  truth, because a Tracr task's counterfactual is another input of the same length.
- ``full``: every edge, whatever the budget: the reference point of faithfulness.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from circuitboard.ablation import check_ablation
from circuitboard.graph import Circuit
from circuitboard.methods.base import Cost, MethodBase, ScoringMethod, check_sizes

GROUNDTRUTH_ABLATION = {"counterfactual": "resample"}


@dataclass
class Random(ScoringMethod):
    """Seeded uniform random scores (no model passes): it reads neither labels nor weights."""

    name: ClassVar[str] = "random"
    reads_labels: ClassVar[bool] = False
    reads_model: ClassVar[bool] = False

    def _score_edges(self, model, task, ablation, seed, cost):
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(model.graph.n_edges, generator=gen, dtype=torch.float64)


@dataclass
class Full(MethodBase):
    """Every edge, at every budget."""

    name: ClassVar[str] = "full"

    def find_circuits(self, model, task, sizes, ablation: str = "counterfactual", seed: int = 0):
        sizes = check_sizes(model.graph, sizes)
        out = []
        for k in sizes:
            c = Circuit.full(model.graph)
            c.info = self._info(Cost(), 0.0, ablation=ablation, seed=seed, requested=k)
            out.append(c)
        return out


@dataclass
class GroundTruth(ScoringMethod):
    """The Tracr ground truth for the run's ablation, as an oracle (see the module docstring)."""

    name: ClassVar[str] = "groundtruth"

    def circuit(self, model, task, ablation: str) -> Circuit:
        check_ablation(ablation)
        program = task.name.split("/", 1)[1] if task.name.startswith("tracr/") else task.name
        try:
            groundtruth = importlib.import_module("circuitboard.groundtruth")
            loader = groundtruth.load
        except (ImportError, AttributeError) as err:
            raise RuntimeError(
                "the groundtruth baseline needs circuitboard.groundtruth.load, which is not "
                f"available: {err}"
            ) from err
        truth = loader(program).circuit(GROUNDTRUTH_ABLATION.get(ablation, ablation))
        if truth.graph != model.graph:
            raise ValueError(
                f"the ground truth of {program!r} belongs to a different graph "
                f"({truth.graph.describe()}) than the model ({model.graph.describe()}); the "
                f"groundtruth baseline only runs on the Tracr model of the same program"
            )
        return truth

    def _score_edges(self, model, task, ablation, seed, cost):
        truth = self.circuit(model, task, ablation)
        scores = truth.keep.double()
        if truth.scores is not None:  # order inside the ground truth by recorded effect size
            effect = truth.scores.abs().nan_to_num(0.0)
            scores = scores + truth.keep.double() * effect / (1 + float(effect.max()))
        return scores

    def find_circuits(self, model, task, sizes, ablation: str = "counterfactual", seed: int = 0):
        sizes = check_sizes(model.graph, sizes)
        start = time.perf_counter()
        truth = self.circuit(model, task, ablation)
        scores = self._score_edges(model, task, ablation, seed, Cost())
        seconds = time.perf_counter() - start
        used = GROUNDTRUTH_ABLATION.get(ablation, ablation)
        out = []
        for k in sizes:
            if k >= truth.n_kept:
                c = Circuit(model.graph, truth.keep.clone(), scores)
            else:
                c = Circuit.top_k(model.graph, scores, k, absolute=False)
            extra = {"requested": k, "truth_size": truth.n_kept, "truth_ablation": used}
            c.info = self._info(Cost(), seconds, ablation=ablation, seed=seed, **extra)
            out.append(c)
        return out
