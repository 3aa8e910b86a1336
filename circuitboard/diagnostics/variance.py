"""Variance, not only the mean: a circuit's faithfulness per example, and what explains its spread.

A mean faithfulness of 0.8 may be 0.8 on every example, or 1.0 on ABBA prompts and 0.6 on BABA
ones. For a task whose examples carry groupings (``Task.groupings``: IOI's ``order`` and
``template``, the gendered-pronoun task's ``pairing`` and ``gender``, a custom task's
``group``), ``group_variance`` reports:

- **per example**: ``f_i = (m_i(C) - m_i(empty)) / (m_i(M) - m_i(empty))``, the faithfulness rule
  of ``circuitboard.metrics`` applied to one example, with its spread (std, median, 5th and 95th
  percentile). Examples whose full-minus-empty gap is 0 have no per-example value (the same
  rule as ``cb.evaluate``'s median and p5);
- **per group**: the faithfulness of the group's mean metrics with a percentile-bootstrap
  interval over the group's examples (``metrics.bootstrap_faithfulness``, as for the whole
  split);
- **eta squared** per grouping: the share of the per-example variance that the grouping explains,
  ``SS_between / SS_total`` with ``SS_between = sum_g n_g (mean_g - mean)^2`` and ``SS_total =
  sum_i (f_i - mean)^2``. It is 0 when every group has the same mean and 1 when every example
  equals its group's mean; with no spread at all (``SS_total = 0``) there is nothing to explain
  and it is 0;
- **a flag** per grouping: ``differs`` is true when two groups' intervals do not overlap (the
  lower end of one lies above the upper end of the other) and their estimates differ by at least
  ``min_difference`` (0.01 of faithfulness by default, so that a circuit near 0 everywhere, whose
  intervals are tiny, is not flagged for differences of 1e-6); the pairs are listed. Groups of
  fewer than two examples have no interval and never raise the flag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from circuitboard import metrics
from circuitboard.diagnostics._json import json_ready
from circuitboard.diagnostics._runs import MAX_TOKENS, per_example, prepare
from circuitboard.graph import Circuit


def eta_squared(values: Sequence[float] | torch.Tensor, labels: Sequence[str]) -> float:
    """``SS_between / SS_total`` of ``values`` grouped by ``labels`` (0 when SS_total is 0)."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} values but {len(labels)} labels; give one label per value")
    if len(x) == 0:
        raise ValueError("eta squared needs at least one value")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("eta squared needs finite values; drop examples without a value first")
    mean = x.mean()
    total = float(((x - mean) ** 2).sum())
    if total == 0.0:
        return 0.0
    between = 0.0
    for level in dict.fromkeys(labels):
        part = x[torch.tensor([lab == level for lab in labels])]
        between += len(part) * float((part.mean() - mean) ** 2)
    return min(1.0, between / total)


@dataclass
class GroupStats:
    """One group: its faithfulness (ratio of mean metrics) with a bootstrap interval."""

    level: str
    n: int
    faithfulness: float
    ci_low: float
    ci_high: float
    per_example_mean: float  # mean of the group's per-example values
    per_example_median: float


@dataclass
class GroupingVariance:
    """One grouping's breakdown: groups, eta squared, and whether groups differ."""

    grouping: str
    groups: list[GroupStats]
    eta_squared: float
    differs: bool
    separated: list[tuple[str, str]] = field(default_factory=list)  # (higher, lower) pairs

    def group(self, level: str) -> GroupStats:
        for g in self.groups:
            if g.level == level:
                return g
        raise KeyError(f"grouping {self.grouping!r} has no level {level!r}")


@dataclass
class VarianceReport:
    """Per-example faithfulness of one circuit, its spread, and its breakdown by grouping."""

    task: str
    ablation: str
    split: str
    n_edges: int
    n_examples: int
    n_with_value: int  # examples whose full-minus-empty gap is not 0
    faithfulness: float
    ci_low: float
    ci_high: float
    std: float
    median: float
    p5: float
    p95: float
    groupings: list[GroupingVariance]
    per_example: list[float | None]
    level: float = 0.95

    @property
    def flagged(self) -> bool:
        """Whether any grouping's groups differ beyond their intervals."""
        return any(g.differs for g in self.groupings)

    def grouping(self, name: str) -> GroupingVariance:
        for g in self.groupings:
            if g.grouping == name:
                return g
        raise KeyError(f"no grouping {name!r}; have {[g.grouping for g in self.groupings]}")

    def to_dict(self, per_example: bool = True) -> dict:
        """Plain JSON-ready data (NaN becomes None); ``per_example=False`` drops the list."""
        out = json_ready(asdict(self))
        out["flagged"] = self.flagged
        if not per_example:
            out.pop("per_example")
        return out

    def summary(self) -> dict:
        """The robustness-table cells: overall spread, and eta squared and flag per grouping."""
        row = {"faithfulness": self.faithfulness, "std": self.std, "flagged": self.flagged}
        for g in self.groupings:
            row[f"eta2_{g.grouping}"] = g.eta_squared
        return json_ready(row)


def variance_from_metrics(
    circuit: torch.Tensor,
    empty: torch.Tensor,
    full: torch.Tensor,
    labels: dict[str, Sequence[str]] | None = None,
    levels: dict[str, Sequence[str]] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_difference: float = 0.01,
    **meta,
) -> VarianceReport:
    """The report from per-example metrics of the circuit, the empty circuit and the model.

    ``labels`` maps each grouping to one label per example; ``levels`` gives each grouping's
    level order (default: the labels in order of appearance). ``meta`` fills the report's
    descriptive fields (task, ablation, split, n_edges).
    """
    circuit, empty, full = (
        torch.as_tensor(t, dtype=torch.float64).flatten() for t in (circuit, empty, full)
    )
    n = len(full)
    if not (len(circuit) == len(empty) == n) or n == 0:
        raise ValueError(
            f"circuit, empty and full metrics must be non-empty and one per example; got "
            f"{len(circuit)}, {len(empty)}, {n}"
        )
    labels = dict(labels or {})
    for key, values in labels.items():
        if len(values) != n:
            raise ValueError(f"grouping {key!r} has {len(values)} labels for {n} examples")
    est, low, high = metrics.bootstrap_faithfulness(
        circuit, empty, full, n_boot=n_boot, seed=seed, level=level
    )
    denominator = full - empty
    usable = denominator.abs() > 1e-9 * max(float(denominator.abs().max()), 1e-30)
    f = metrics.faithfulness(circuit, empty, full)
    values = f[usable]
    groupings = []
    for key, raw in labels.items():
        order = list(levels[key]) if levels and key in levels else list(dict.fromkeys(raw))
        groups = []
        for lv in order:
            member = torch.tensor([x == lv for x in raw])
            if not bool(member.any()):
                continue
            g_est, g_low, g_high = metrics.bootstrap_faithfulness(
                circuit[member], empty[member], full[member], n_boot=n_boot, seed=seed, level=level
            )
            if int(member.sum()) < 2:
                g_low = g_high = float("nan")
            inside = f[member & usable]
            groups.append(
                GroupStats(
                    level=lv,
                    n=int(member.sum()),
                    faithfulness=g_est,
                    ci_low=g_low,
                    ci_high=g_high,
                    per_example_mean=float(inside.mean()) if len(inside) else float("nan"),
                    per_example_median=float(inside.median()) if len(inside) else float("nan"),
                )
            )
        kept = [x for x, u in zip(raw, usable.tolist()) if u]
        eta = eta_squared(values, kept) if len(values) else float("nan")
        separated = _separated(groups, min_difference)
        groupings.append(GroupingVariance(key, groups, eta, bool(separated), separated))
    quantile = (
        (lambda q: float(torch.quantile(values, q))) if len(values) else (lambda q: float("nan"))
    )
    return VarianceReport(
        task=meta.get("task", ""),
        ablation=meta.get("ablation", ""),
        split=meta.get("split", ""),
        n_edges=int(meta.get("n_edges", 0)),
        n_examples=n,
        n_with_value=int(usable.sum()),
        faithfulness=est,
        ci_low=low,
        ci_high=high,
        std=float(values.std(correction=0)) if len(values) else float("nan"),
        median=float(values.median()) if len(values) else float("nan"),
        p5=quantile(0.05),
        p95=quantile(0.95),
        groupings=groupings,
        per_example=[float(v) if u else None for v, u in zip(f.tolist(), usable.tolist())],
        level=level,
    )


def _separated(groups: list[GroupStats], min_difference: float) -> list[tuple[str, str]]:
    """Pairs ``(higher, lower)`` whose intervals do not overlap and whose estimates differ by at
    least ``min_difference``."""
    out = []
    with_ci = [g for g in groups if math.isfinite(g.ci_low) and math.isfinite(g.ci_high)]
    for a in with_ci:
        for b in with_ci:
            apart = a.faithfulness - b.faithfulness >= min_difference
            if a is not b and a.ci_low > b.ci_high and apart:
                out.append((a.level, b.level))
    return out


def group_variance(
    model,
    task,
    circuit: Circuit,
    ablation: str = "counterfactual",
    *,
    split: str | tuple[str, ...] = "test",
    groupings: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
    min_difference: float = 0.01,
    max_tokens: int = MAX_TOKENS,
) -> VarianceReport:
    """Per-example and per-group faithfulness of ``circuit`` (after pruning) on ``split``.

    - ``split``: a split name, or several (``("test", "off_distribution")``: the
      gendered-pronoun task's ``pairing`` grouping has one level in each).
    - ``groupings``: which of the task's groupings to break down by (default: all it declares;
      a task with none gets the per-example spread only).
    - ``ablation``, ``seed``: as for ``cb.evaluate``, whose faithfulness this reproduces on the
      same split.
    """
    if circuit.graph != model.graph:
        raise ValueError("the circuit belongs to a different graph than the model")
    names = list(task.groupings) if groupings is None else list(groupings)
    unknown = [g for g in names if g not in task.groupings]
    if unknown:
        raise ValueError(
            f"task {task.name!r} has no grouping {unknown[0]!r}; it declares "
            f"{list(task.groupings) or 'none'}"
        )
    pruned = circuit.pruned()
    graph = model.graph
    masks = torch.stack(
        [torch.ones(graph.n_edges), torch.zeros(graph.n_edges), pruned.mask(torch.float64)]
    )
    prepared = prepare(model, task, ablation, split, seed)
    full, empty, kept = per_example(model, task, prepared, masks, max_tokens=max_tokens)
    all_labels = task.group_labels(split) if names else {}
    return variance_from_metrics(
        kept,
        empty,
        full,
        {g: all_labels[g] for g in names},
        {g: task.groupings[g] for g in names},
        n_boot=n_boot,
        seed=seed,
        level=level,
        min_difference=min_difference,
        task=task.name,
        ablation=ablation,
        split=split if isinstance(split, str) else "+".join(split),
        n_edges=pruned.n_kept,
    )
