"""Circuits -> faithfulness points -> a Pareto curve with uncertainty.

``evaluate`` scores circuits on a task's test split under one ablation. Many circuits are scored
in one batched pass with per-example masks (the batch is tiled once per circuit), chunked to a
memory budget. Each circuit is scored after pruning, at the size it realises.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from circuitboard import metrics
from circuitboard.ablation import check_ablation, for_batch
from circuitboard.graph import Circuit

# MIB's edge budgets, as fractions of the edge count.
BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def budget_sizes(n_edges: int, budgets=BUDGETS) -> list[int]:
    """Edge counts for each budget (at least one edge each)."""
    return [max(1, round(b * n_edges)) for b in budgets]


@dataclass
class CurvePoint:
    """One circuit's scores. ``n_edges`` is its size after pruning."""

    n_edges: int
    fraction: float
    budget: float | None
    faithfulness: float
    ci_low: float
    ci_high: float
    median: float
    p5: float
    metric: float
    kl: float | None
    top1: float | None
    n_requested: int | None = None


@dataclass
class Evaluation:
    task: str
    ablation: str
    split: str
    n_edges_total: int
    n_nodes: int
    n_examples: int
    full_metric: float
    empty_metric: float
    higher_is_better: bool
    points: list[CurvePoint] = field(default_factory=list)
    areas: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def faithfulness_at(self, n_edges: int) -> float:
        point = min(self.points, key=lambda p: abs(p.n_edges - n_edges))
        return point.faithfulness


def _per_example(model, task, circuits, batch, ablated, max_batch: int):
    """Metric per (circuit, example), KL and top-1 agreement per (circuit, example)."""
    n = len(batch)
    clean = batch.clean.to(model.device)
    with torch.no_grad():
        full_logits = model(clean)
        chunk = max(1, max_batch // n)
        rows, kls, tops = [], [], []
        for start in range(0, len(circuits), chunk):
            group = circuits[start : start + chunk]
            k = len(group)
            masks = torch.stack([c.mask(model.dtype) for c in group]).to(model.device)
            masks = masks.repeat_interleave(n, dim=0)
            abl = ablated if ablated.shape[0] == 1 else ablated.repeat(k, 1, 1, 1)
            logits = model(clean.repeat(k, 1), masks, abl)
            tiled = _tile(batch, k)
            rows.append(task.score(logits, tiled).view(k, n))
            full = full_logits.repeat(k, 1, 1)
            if task.metric != "l2":  # no softmax KL on Tracr's one-hot outputs
                kls.append(metrics.kl_divergence(full, logits, task.positions).view(k, n))
            if logits.shape[-1] > 1:
                agree = metrics._at(logits, task.positions).argmax(-1) == metrics._at(
                    full, task.positions
                ).argmax(-1)
                tops.append(agree.float().mean(1).view(k, n))
        full_metric = task.score(full_logits, batch)
    cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
    return cat(rows), cat(kls), cat(tops), full_metric


def _tile(batch, k: int):
    from circuitboard.task import Batch

    def rep(t):
        if t is None:
            return None
        return t.repeat(k, *([1] * (t.dim() - 1)))

    return Batch(
        rep(batch.clean),
        rep(batch.counterfactual),
        rep(batch.answer),
        rep(batch.distractor),
        rep(batch.target),
    )


def evaluate(
    model,
    task,
    circuits: list[Circuit],
    ablation: str = "counterfactual",
    *,
    split: str = "test",
    seed: int = 0,
    n_boot: int = 1000,
    max_batch: int = 1024,
) -> Evaluation:
    """Score ``circuits`` (each after pruning) on ``task``'s ``split`` under ``ablation``."""
    check_ablation(ablation)
    start = time.perf_counter()
    graph = model.graph
    for c in circuits:
        if c.graph != graph:
            raise ValueError("every circuit must belong to the model's graph")
    pruned = [c.pruned() for c in circuits]
    everything = [Circuit.empty(graph)] + pruned
    batches = getattr(task, split)
    reference = [b.clean for b in task.train]
    per_metric, per_kl, per_top, full = [], [], [], []
    for i, batch in enumerate(batches):
        ablated = for_batch(model, ablation, batch, reference=reference, seed=seed + i)
        m, kl, top, f = _per_example(model, task, everything, batch, ablated, max_batch)
        per_metric.append(m)
        per_kl.append(kl)
        per_top.append(top)
        full.append(f)
    m = torch.cat(per_metric, dim=1).double().cpu()  # [1 + circuits, examples]
    full_m = torch.cat(full).double().cpu()
    empty_m = m[0]
    kl = torch.cat(per_kl, dim=1) if per_kl[0] is not None else None
    top = torch.cat(per_top, dim=1) if per_top[0] is not None else None

    denominator = full_m - empty_m
    usable = denominator.abs() > 1e-9 * max(float(denominator.abs().max()), 1e-30)
    points = []
    for j, circuit in enumerate(pruned, start=1):
        est, low, high = metrics.bootstrap_faithfulness(
            m[j], empty_m, full_m, n_boot=n_boot, seed=seed
        )
        per_ex = metrics.faithfulness(m[j], empty_m, full_m)[usable]
        original = circuits[j - 1]
        points.append(
            CurvePoint(
                n_edges=circuit.n_kept,
                fraction=circuit.n_kept / graph.n_edges,
                budget=original.info.get("budget"),
                n_requested=original.info.get("n_requested"),
                faithfulness=est,
                ci_low=low,
                ci_high=high,
                median=float(per_ex.median()) if len(per_ex) else float("nan"),
                p5=float(torch.quantile(per_ex, 0.05)) if len(per_ex) else float("nan"),
                metric=float(m[j].mean()),
                kl=None if kl is None else float(kl[j].mean()),
                top1=None if top is None else float(top[j].mean()),
            )
        )
    result = Evaluation(
        task=task.name,
        ablation=ablation,
        split=split,
        n_edges_total=graph.n_edges,
        n_nodes=graph.n_nodes,
        n_examples=int(full_m.numel()),
        full_metric=float(full_m.mean()),
        empty_metric=float(empty_m.mean()),
        higher_is_better=task.higher_is_better,
        points=points,
    )
    if points:
        result.areas = curve_areas(points)
    result.seconds = time.perf_counter() - start
    return result


def curve_areas(points: list[CurvePoint]) -> dict:
    """CPR and CMD on our log axis, and MIB's linear-axis values over nominal budgets."""
    fractions = [p.fraction for p in points]
    values = [p.faithfulness for p in points]
    out = {"log": metrics.area_scores(fractions, values, log=True)}
    nominal = [p.budget if p.budget is not None else p.fraction for p in points]
    out["linear_mib"] = metrics.area_scores(nominal, values, log=False)
    return out
