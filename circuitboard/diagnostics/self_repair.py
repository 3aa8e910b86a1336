"""Self-repair and backup heads: what the rest of the model does when a circuit's heads go.

IOI's lesson (Wang et al. 2022; McGrath et al. 2023, "the Hydra effect"): knock out the name
movers and other heads start to copy the name, so the metric falls far less than the knocked-out
heads' own contribution. A circuit that omits those backup heads looks complete under
one-edge-at-a-time tests and misleads under knockouts. ``self_repair`` measures it in the full
model, for the circuit's ``k`` most important heads (``k = 1, 2, 4``):

- **direct effect** ``DE(H)``: the metric lost when only the paths ``h -> logits`` of the heads
  ``H`` are ablated (path patching into the logits reader; everything else, including what later
  layers read from ``H``, stays clean);
- **total drop**: the metric lost when every edge leaving ``H`` is ablated (the heads knocked out);
- **compensation** ``= DE(H) - total drop``, and the **self-repair fraction** = compensation /
  ``DE(H)`` (1: the loss is fully made up; 0: none of it; negative: the knockout hurts more than
  the heads' direct effect), with a bootstrap interval over examples;
- per other head ``j``, its direct effect ``DE_j`` (``j -> logits`` ablated) in the clean model
  and ``DE'_j`` after the knockout; **backup heads** are the heads whose direct effect grew most
  (``DE'_j - DE_j``, ranked), those above ``threshold * DE(H)`` counted as backup heads;
- **negative heads**: heads whose clean direct effect is below ``-threshold`` times the task's
  full-minus-empty gap, ranked most negative first.

The compensation is split into what other heads' and MLPs' direct effects gained; when the
logits are linear in the final residual stream (no final LayerNorm) and the metric is linear in
the logits (logit difference), these two parts add up to the compensation exactly, and the
``remainder`` is 0 up to rounding. Effects are in the metric's units, signed so that positive
means "helps the task" (a lower-is-better metric is negated).

Heads are ranked by the method's own scores (the sum of ``|score|`` over the circuit's edges
leaving the head), or, for circuits without scores, by single-head ablation (the metric lost when
the head alone is knocked out); ``ranking="direct"`` ranks them by their clean direct effect,
which picks the heads that write the answer (IOI's name movers), the classic self-repair
experiment. Ablated values are built as ``cb.evaluate`` builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from circuitboard.diagnostics._json import json_ready
from circuitboard.diagnostics._runs import (
    MAX_TOKENS,
    edges_from,
    edges_into_logits,
    per_example,
    prepare,
)
from circuitboard.graph import Circuit

RANKINGS = ("auto", "scores", "ablation", "direct")


@dataclass
class NodeEffect:
    """A head's or an MLP's effect, in the metric's helps-the-task units."""

    node: str
    value: float


@dataclass
class Knockout:
    """The knockout of the circuit's top ``k`` heads."""

    k: int
    heads: list[str]
    direct_effect: float
    total_drop: float
    compensation: float
    self_repair_fraction: float
    ci_low: float
    ci_high: float
    compensation_heads: float  # what other heads' direct effects gained
    compensation_mlps: float  # what the MLPs' direct effects gained
    remainder: float  # compensation not carried by a direct-effect gain (nonlinear readout)
    backup_heads: list[NodeEffect]  # growth of direct effect above threshold * DE(H), ranked
    direct_effect_growth: list[NodeEffect]  # every other head's DE'_j - DE_j, ranked


@dataclass
class SelfRepairReport:
    task: str
    ablation: str
    split: str
    ranking: str  # "scores", "ablation" or "direct": what ordered the heads
    head_ranking: list[NodeEffect]  # the circuit's heads, most important first
    full_metric: float
    empty_metric: float
    gap: float  # full minus empty, in the helps-the-task direction
    threshold: float
    direct_effects: list[NodeEffect]  # every head's clean direct effect, in graph order
    mlp_direct_effects: list[NodeEffect]  # every MLP's, in graph order
    negative_heads: list[NodeEffect]  # below -threshold * gap, most negative first
    knockouts: list[Knockout] = field(default_factory=list)

    @property
    def has_backup_heads(self) -> bool:
        return any(k.backup_heads for k in self.knockouts)

    @property
    def has_negative_heads(self) -> bool:
        return bool(self.negative_heads)

    def knockout(self, k: int) -> Knockout:
        for ko in self.knockouts:
            if ko.k == k:
                return ko
        raise KeyError(f"no knockout of k={k}; have {[ko.k for ko in self.knockouts]}")

    def to_dict(self) -> dict:
        out = json_ready(asdict(self))
        out["has_backup_heads"] = self.has_backup_heads
        out["has_negative_heads"] = self.has_negative_heads
        return out

    def summary(self) -> dict:
        """The robustness-table cells: self-repair fraction per k, and the two yes/no answers."""
        row = {f"self_repair_k{ko.k}": ko.self_repair_fraction for ko in self.knockouts}
        row["backup_heads"] = self.has_backup_heads
        row["negative_heads"] = self.has_negative_heads
        return json_ready(row)


def _heads(graph) -> list[int]:
    """Source indices of the live heads."""
    return [i for i, s in enumerate(graph.sources) if s.startswith("a") and s not in graph.dead]


def _mlps(graph) -> list[int]:
    return [i for i, s in enumerate(graph.sources) if s.startswith("m") and s not in graph.dead]


def _ratio_ci(num: torch.Tensor, den: torch.Tensor, n_boot: int, seed: int, level: float):
    """Percentile bootstrap of ``mean(num) / mean(den)`` over examples."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(num), (n_boot, len(num)), generator=gen)
    draws = num[idx].mean(1) / den[idx].mean(1)
    draws = draws[torch.isfinite(draws)]
    if len(draws) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    q = torch.quantile(draws, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


def rank_heads(
    model, circuit: Circuit, ranking: str, measured: dict[int, float] | None = None
) -> list[tuple[int, float]]:
    """The circuit's heads (source indices) with their importance, most important first.

    ``"scores"``: the sum of ``|score|`` over the circuit's edges leaving the head. ``"ablation"``
    and ``"direct"``: ``measured[h]``, the metric lost when head ``h`` alone is knocked out, or
    its direct effect. Ties keep graph order.
    """
    graph = model.graph
    kept = circuit.pruned().keep
    in_circuit = [h for h in _heads(graph) if bool((kept & edges_from(graph, [h])).any())]
    if ranking == "scores":
        if circuit.scores is None:
            raise ValueError("ranking='scores' needs a circuit with edge scores; use 'ablation'")
        score = circuit.scores.abs()
        value = {h: float(score[kept & edges_from(graph, [h])].sum()) for h in in_circuit}
    else:
        value = {h: measured[h] for h in in_circuit}
    return sorted(((h, value[h]) for h in in_circuit), key=lambda hv: -hv[1])


def self_repair(
    model,
    task,
    circuit: Circuit,
    ablation: str = "counterfactual",
    *,
    ks: Sequence[int] = (1, 2, 4),
    ranking: str = "auto",
    split: str | tuple[str, ...] = "test",
    threshold: float = 0.1,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
    max_tokens: int = MAX_TOKENS,
) -> SelfRepairReport:
    """Knock out the circuit's top-``k`` heads in the full model; see the module docstring.

    ``ranking``: ``"scores"`` (the method's edge scores summed per head), ``"ablation"``
    (single-head knockouts), ``"direct"`` (clean direct effects) or ``"auto"`` (scores when the
    circuit has them, else single-head knockouts). A ``k`` larger than the number of heads in the
    circuit is dropped. The masks run in two rounds of batched passes: the clean direct effects
    (and single-head knockouts), then every knockout with its direct paths.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if circuit.graph != model.graph:
        raise ValueError("the circuit belongs to a different graph than the model")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive head counts, got {list(ks)}")
    graph = model.graph
    used = ranking
    if ranking == "auto":
        used = "scores" if circuit.scores is not None else "ablation"
    heads, mlps = _heads(graph), _mlps(graph)
    readers = heads + mlps  # sources whose direct effect is tracked
    sign = 1.0 if task.higher_is_better else -1.0
    ones = torch.ones(graph.n_edges, dtype=torch.bool)
    prepared = prepare(model, task, ablation, split, seed)

    def run(masks: list[torch.Tensor]) -> torch.Tensor:
        return per_example(
            model, task, prepared, torch.stack(masks).double(), max_tokens=max_tokens
        )

    # Stage 1: the full model, the empty circuit, each source's direct path, and (to rank by
    # single-head ablation) each head's knockout.
    base = [ones, ~ones] + [ones & ~edges_into_logits(graph, [s]) for s in readers]
    if used == "ablation":
        base += [ones & ~edges_from(graph, [h]) for h in heads]
    m = run(base)
    full, empty = m[0], m[1]
    direct = {s: sign * (full - m[2 + i]) for i, s in enumerate(readers)}  # per example
    measured = None
    if used == "ablation":
        knocked_alone = m[2 + len(readers) :]
        measured = {
            h: float((sign * (full - knocked_alone[i])).mean()) for i, h in enumerate(heads)
        }
    elif used == "direct":
        measured = {h: float(direct[h].mean()) for h in heads}
    order = rank_heads(model, circuit, used, measured)
    gap = float(sign * (full - empty).mean())

    # Stage 2: per k, the knockout, the removed heads' direct path, and every other source's
    # direct path in the knocked-out model.
    ks = sorted({int(k) for k in ks if int(k) <= len(order)})
    plans, masks = [], []
    for k in ks:
        removed = [h for h, _ in order[:k]]
        knocked = ones & ~edges_from(graph, removed)
        others = [s for s in readers if s not in removed]
        start = len(masks)
        masks += [knocked, ones & ~edges_into_logits(graph, removed)]
        masks += [knocked & ~edges_into_logits(graph, [s]) for s in others]
        plans.append((k, removed, others, start))
    m2 = run(masks) if masks else None
    name = graph.sources
    knockouts = []
    for k, removed, others, start in plans:
        knocked_m = m2[start]
        drop = sign * (full - knocked_m)
        de = sign * (full - m2[start + 1])
        growth = {}
        for i, s in enumerate(others):
            after = sign * (knocked_m - m2[start + 2 + i])
            growth[s] = float((after - direct[s]).mean())
        de_mean, drop_mean = float(de.mean()), float(drop.mean())
        comp = de_mean - drop_mean
        comp_heads = sum(v for s, v in growth.items() if s in heads)
        comp_mlps = sum(v for s, v in growth.items() if s in mlps)
        ranked = sorted(((s, v) for s, v in growth.items() if s in heads), key=lambda sv: -sv[1])
        low, high = _ratio_ci(de - drop, de, n_boot, seed, level)
        knockouts.append(
            Knockout(
                k=k,
                heads=[name[h] for h in removed],
                direct_effect=de_mean,
                total_drop=drop_mean,
                compensation=comp,
                self_repair_fraction=comp / de_mean if de_mean != 0 else float("nan"),
                ci_low=low,
                ci_high=high,
                compensation_heads=comp_heads,
                compensation_mlps=comp_mlps,
                remainder=comp - comp_heads - comp_mlps,
                backup_heads=[
                    NodeEffect(name[s], v) for s, v in ranked if v > threshold * abs(de_mean)
                ],
                direct_effect_growth=[NodeEffect(name[s], v) for s, v in ranked],
            )
        )
    clean_de = [(h, float(direct[h].mean())) for h in heads]
    negative = sorted(
        ((h, v) for h, v in clean_de if v < -threshold * abs(gap)), key=lambda hv: hv[1]
    )
    return SelfRepairReport(
        task=task.name,
        ablation=ablation,
        split=split if isinstance(split, str) else "+".join(split),
        ranking=used,
        head_ranking=[NodeEffect(name[h], v) for h, v in order],
        full_metric=float(full.mean()),
        empty_metric=float(empty.mean()),
        gap=gap,
        threshold=threshold,
        direct_effects=[NodeEffect(name[h], v) for h, v in clean_de],
        mlp_direct_effects=[NodeEffect(name[s], float(direct[s].mean())) for s in mlps],
        negative_heads=[NodeEffect(name[h], v) for h, v in negative],
        knockouts=knockouts,
    )
