"""Diagnostics of a circuit beyond its mean faithfulness; each a function of (model, task,
circuit, ablation) returning a report with ``to_dict()`` (JSON-ready) and ``summary()`` (the
robustness-table cells).

    group_variance(model, task, circuit, ablation)   per-example and per-group faithfulness, eta^2
    self_repair(model, task, circuit, ablation)      knock out the top-k heads: compensation,
                                                     backup and negative heads
    token_density(model, task, circuit, ablation)    per edge, the share of (example, position)
                                                     pairs its ablation moves; median per circuit

Core code: these modules import only the core (graph, ablation, metrics, task).
"""

from __future__ import annotations

from circuitboard.diagnostics.self_repair import (
    Knockout,
    NodeEffect,
    SelfRepairReport,
    rank_heads,
    self_repair,
)
from circuitboard.diagnostics.token_density import DensityReport, EdgeDensity, token_density
from circuitboard.diagnostics.variance import (
    GroupingVariance,
    GroupStats,
    VarianceReport,
    eta_squared,
    group_variance,
    variance_from_metrics,
)

__all__ = [
    "DensityReport",
    "EdgeDensity",
    "GroupStats",
    "GroupingVariance",
    "Knockout",
    "NodeEffect",
    "SelfRepairReport",
    "VarianceReport",
    "eta_squared",
    "group_variance",
    "rank_heads",
    "self_repair",
    "token_density",
    "variance_from_metrics",
]
