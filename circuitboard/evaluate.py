"""Circuits -> faithfulness points -> the at-most-budget curve, with uncertainty.

``evaluate`` scores circuits on a task's test split under one ablation. Many circuits are scored
in one batched pass with per-example masks (the batch is tiled once per circuit), chunked to a
memory budget. Each circuit is scored after pruning, at the size it realises; the curve, its areas
and every other verdict follow the rules of ``circuitboard.scoring``, which this module only feeds.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import asdict, dataclass, field

import torch

from circuitboard import metrics, scoring
from circuitboard.ablation import check_ablation, for_batch
from circuitboard.graph import Circuit


@dataclass
class CurvePoint:
    """One returned circuit's scores. ``n_edges`` is its size after pruning; ``budget`` the edge
    budget it was returned for (None if it came without one)."""

    n_edges: int
    fraction: float
    budget: int | None
    faithfulness: float
    ci_low: float
    ci_high: float
    median: float
    p5: float
    metric: float
    kl: float | None
    top1: float | None
    fits: bool | None = None


@dataclass
class Evaluation:
    """The scores of a set of circuits: one point per circuit, and the at-most-budget curve.

    ``curve`` has one entry per budget of ``budgets`` (``scoring.BudgetPoint``); ``areas`` holds
    CPR and CMD of that curve on the log axis and MIB's linear values (``scoring.areas``).
    ``per_example`` is the data ranks are computed from (``scoring.PerExample``); it is kept out
    of ``to_dict`` and stored packed by the leaderboard.
    """

    task: str
    ablation: str
    split: str
    n_edges_total: int
    n_nodes: int
    n_examples: int
    full_metric: float
    empty_metric: float
    higher_is_better: bool
    budgets: list[int] = field(default_factory=list)
    points: list[CurvePoint] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    areas: dict = field(default_factory=dict)
    digest: str = ""
    seconds: float = 0.0
    per_example: scoring.PerExample | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("per_example")
        return out


SHARED_MASK_BATCH = 32


def _per_example(model, task, circuits, batch, ablated, max_batch: int):
    """Metric per (circuit, example), KL and top-1 agreement per (circuit, example)."""
    n = len(batch)
    clean = batch.clean.to(model.device)
    with torch.no_grad():
        full_logits = model(clean)
        # A batch of many examples: one pass per circuit with its mask shared by the batch,
        # which lets the engine give every reader of equal mask column one input (about 3x
        # faster than per-example masks on the zoo models). A small batch (Tracr's lengths of
        # a few inputs): circuits tiled along the batch with one mask per row, so that a pass
        # is not spent on a handful of examples.
        chunk = 1 if n >= SHARED_MASK_BATCH else max(1, max_batch // n)
        rows, kls, tops = [], [], []
        for start in range(0, len(circuits), chunk):
            group = circuits[start : start + chunk]
            k = len(group)
            if k == 1:
                logits = model(clean, group[0].mask(model.dtype).to(model.device), ablated)
            else:
                masks = torch.stack([c.mask(model.dtype) for c in group]).to(model.device)
                masks = masks.repeat_interleave(n, dim=0)
                abl = ablated if ablated.shape[0] == 1 else ablated.repeat(k, 1, 1, 1)
                logits = model(clean.repeat(k, 1), masks, abl)
            tiled = _tile(batch, k) if k > 1 else batch
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


def _distinct(circuits: list[Circuit]) -> tuple[list[Circuit], torch.Tensor]:
    """The distinct circuits (by edge set) and, for each circuit, its row among them."""
    seen: dict[bytes, int] = {}
    distinct, rows = [], []
    for c in circuits:
        key = c.keep.numpy().tobytes()
        if key not in seen:
            seen[key] = len(distinct)
            distinct.append(c)
        rows.append(seen[key])
    return distinct, torch.tensor(rows, dtype=torch.long)


def budgets_of(circuits: list[Circuit], budgets=None) -> tuple[list[int], list[int | None]]:
    """The budget grid of an evaluation and, per budget, the circuit returned for it.

    ``budgets`` (one per circuit) or each circuit's ``info["budget"]`` (else ``"requested"``)
    says what the circuit was returned for. Circuits without one are candidates at every budget
    they fit but are nobody's own circuit; the grid then also holds their sizes.
    """
    if budgets is not None and len(budgets) != len(circuits):
        raise ValueError(f"{len(budgets)} budgets for {len(circuits)} circuits: give one each")
    own: dict[int, int] = {}
    extra: set[int] = set()
    for i, c in enumerate(circuits):
        b = budgets[i] if budgets is not None else c.info.get("budget", c.info.get("requested"))
        if b is None:
            extra.add(c.size)
            continue
        if isinstance(b, bool) or not isinstance(b, int | float) or int(b) != b:
            raise ValueError(f"circuit {i}: its budget must be an edge count, got {b!r}")
        b = int(b)
        if b in own:
            raise ValueError(
                f"circuits {own[b]} and {i} were both returned for a budget of {b} edges; a "
                f"method returns one circuit per budget"
            )
        own[b] = i
    grid = sorted(set(own) | extra)
    return grid, [own.get(b) for b in grid]


def evaluate(
    model,
    task,
    circuits: list[Circuit],
    ablation: str = "counterfactual",
    *,
    budgets: list[int] | None = None,
    split: str = "test",
    seed: int = 0,
    n_boot: int = 1000,
    max_batch: int = 1024,
) -> Evaluation:
    """Score ``circuits`` (each after pruning) on ``task``'s ``split`` under ``ablation``.

    ``budgets`` gives the edge budget each circuit was returned for (default: the circuits'
    ``info["budget"]`` or ``info["requested"]``, which every built-in method sets). A circuit
    larger than its budget is scored as a point but never credited on the curve (see
    ``circuitboard.scoring``). A task whose full model and empty circuit score the same raises
    ``scoring.DegenerateTask``.
    """
    check_ablation(ablation)
    start = time.perf_counter()
    task.check_model(model)
    graph = model.graph
    for i, c in enumerate(circuits):
        if not isinstance(c, Circuit):
            raise TypeError(f"circuit {i} is a {type(c).__name__}, not a Circuit")
        if c.graph != graph:
            raise ValueError(
                f"circuit {i} belongs to another graph ({c.graph.describe()}) than the model "
                f"({graph.describe()})"
            )
    grid, own = budgets_of(circuits, budgets)
    pruned = [c.pruned() for c in circuits]
    # Identical circuits (a sweep's repeats, budgets that a method fills alike) run once.
    distinct, row_of = _distinct([Circuit.empty(graph)] + pruned)
    batches = getattr(task, split)
    if not batches:
        raise ValueError(f"task {task.name!r} has no {split!r} split to evaluate on")
    reference = [b.clean for b in task.train]
    per_metric, per_kl, per_top, full = [], [], [], []
    for i, batch in enumerate(batches):
        ablated = for_batch(model, ablation, batch, reference=reference, seed=seed + i)
        m, kl, top, f = _per_example(model, task, distinct, batch, ablated, max_batch)
        per_metric.append(m[row_of])
        per_kl.append(None if kl is None else kl[row_of])
        per_top.append(None if top is None else top[row_of])
        full.append(f)
    m = torch.cat(per_metric, dim=1).double().cpu()  # [1 + circuits, examples]
    full_m = torch.cat(full).double().cpu()
    empty_m = m[0]
    scoring.check_not_degenerate(full_m, empty_m, f"task {task.name!r} under {ablation} ablation")
    kl = torch.cat(per_kl, dim=1) if per_kl[0] is not None else None
    top = torch.cat(per_top, dim=1) if per_top[0] is not None else None

    denominator = full_m - empty_m
    usable = denominator.abs() > 1e-9 * max(float(denominator.abs().max()), 1e-30)
    sizes = [c.n_kept for c in pruned]
    own_budget = {i: b for b, i in zip(grid, own) if i is not None}
    points = []
    for j, circuit in enumerate(pruned, start=1):
        est, low, high = metrics.bootstrap_faithfulness(
            m[j], empty_m, full_m, n_boot=n_boot, seed=seed
        )
        per_ex = metrics.faithfulness(m[j], empty_m, full_m)[usable]
        budget = own_budget.get(j - 1)
        points.append(
            CurvePoint(
                n_edges=circuit.n_kept,
                fraction=circuit.n_kept / graph.n_edges,
                budget=budget,
                fits=None if budget is None else circuit.n_kept <= budget,
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
    digest = scoring.examples_digest(batches)
    data = None
    if grid:
        data = scoring.PerExample(m[1:], empty_m, full_m, sizes, grid, own, graph.n_edges, digest)
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
        budgets=grid,
        points=points,
        digest=digest,
        per_example=data,
    )
    if data is not None:
        result.curve = [p.to_dict() for p in scoring.curve(data)]
        result.areas = scoring.areas(data).to_dict()
    result.seconds = time.perf_counter() - start
    return result


class _CallableModule(types.ModuleType):
    """``cb.evaluate(model, task, circuits, ...)`` calls ``evaluate``: the package exposes this
    module under the function's name, since importing it makes it the package's attribute."""

    def __call__(self, *args, **kwargs) -> Evaluation:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
