"""The functional ground truth of a trained model: single-edge ablation effects, and the checks.

On Tracr's compiled weights an edge either carries nothing (its effect is below 1e-5) or a whole
RASP value (at least 0.5), so any tolerance in between gives the same circuit. On trained
weights every edge moves the outputs a little, so the effect is measured on the scale that the
task scores, and the gap between the smallest effect kept and the largest left out is
reported with the circuit.

**Effect of an edge** under an ablation (zero, resample, mean, as in ``circuitboard.ablation``
and ``groundtruth.derive``): the mean squared change of the outputs after BOS when that edge
alone is ablated, divided by the same for the empty circuit (every edge ablated), on every input
of the program; for resample, averaged over the three seeded same-length derangements that
``derive`` uses. That is the task's own L2 metric, as a share of the damage of removing the
whole model. An edge is in the functional circuit iff its effect exceeds ``TOL``.

All single-edge ablations run batched, one row per (edge, input), each with its own mask row.
"""

from __future__ import annotations

import torch

from circuitboard.ablation import ablated_values
from circuitboard.groundtruth import derive

TOL = 0.05  # an edge is functional iff ablating it alone costs more than 5% of the empty L2
ABLATIONS = derive.ABLATIONS
MAX_ROWS = 8192


def _draws(model, ablation: str, tokens: torch.Tensor) -> list[torch.Tensor]:
    if ablation == "resample":
        return [ablated_values(model, "resample", tokens, seed=s) for s in derive.RESAMPLE_SEEDS]
    return [ablated_values(model, ablation, tokens)]


def _chunks(model, tokens, masks, ablated):
    """``(first row, outputs [c, n, pos, out])`` for chunks of the mask rows ``[k, n_edges]``,
    each row run on every example of ``tokens`` in one per-example-mask pass."""
    k, n = masks.shape[0], len(tokens)
    per = max(1, MAX_ROWS // n)
    for lo in range(0, k, per):
        rows = masks[lo : lo + per]
        c = len(rows)
        abl = ablated if ablated.shape[0] == 1 else ablated.repeat(c, 1, 1, 1)
        out = model(tokens.repeat(c, 1), rows.repeat_interleave(n, 0), abl)
        yield lo, out.view(c, n, *out.shape[1:])


@torch.no_grad()
def masked_outputs(model, tokens, masks, ablated) -> torch.Tensor:
    """Outputs ``[k, n, pos, out]`` for every mask row of ``[k, n_edges]`` on every example."""
    return torch.cat([out for _, out in _chunks(model, tokens, masks, ablated)])


@torch.no_grad()
def squared_change(model, groups, ablation: str, masks: torch.Tensor) -> torch.Tensor:
    """``[k]``: for each mask row, the mean squared output change after BOS (mean over draws)."""
    with derive.single_thread():
        total = torch.zeros(masks.shape[0], dtype=torch.float64)
        count = 0
        for tokens in groups:
            clean = model(tokens)[None, :, 1:]
            draws = _draws(model, ablation, tokens)
            for ablated in draws:
                for lo, out in _chunks(model, tokens, masks, ablated):
                    diff = (out[:, :, 1:] - clean).double().pow(2)
                    total[lo : lo + len(out)] += diff.flatten(1).sum(1) / len(draws)
            count += clean.numel()
        return total / max(count, 1)


@torch.no_grad()
def masked_accuracy(
    model, hl_model, masks: torch.Tensor, groups, readout, ablation: str = "resample"
) -> torch.Tensor:
    """``[k]``: accuracy against the HL model's clean outputs with each mask row's removed edges
    ablated; for resample, the worst over the three seeds."""
    with derive.single_thread():
        n_draws = len(derive.RESAMPLE_SEEDS) if ablation == "resample" else 1
        hits = torch.zeros(n_draws, masks.shape[0], dtype=torch.float64)
        total = 0
        for tokens in groups:
            target = hl_model(tokens)[None]
            for d, ablated in enumerate(_draws(model, ablation, tokens)):
                for lo, out in _chunks(model, tokens, masks, ablated):
                    agree = readout.agree(out, target)
                    hits[d, lo : lo + len(out)] += agree.flatten(1).double().sum(1)
            total += target[0, :, 1:, 0].numel()
        return (hits / total).min(0).values


def single_edge_effects(model, groups, ablation: str) -> torch.Tensor:
    """``[n_edges]``: each edge's effect (see the module docstring); float64."""
    n = model.graph.n_edges
    masks = torch.ones(n + 1, n)
    masks[torch.arange(n), torch.arange(n)] = 0
    masks[n] = 0  # the empty circuit
    change = squared_change(model, groups, ablation, masks)
    empty = float(change[n])
    if empty <= 0:
        raise ValueError(
            f"ablating every edge ({ablation}) changes no output: the model is constant on "
            f"this data and has no functional circuit"
        )
    return change[:n] / empty


def functional(model, groups, ablation: str, tol: float = TOL) -> tuple[torch.Tensor, dict]:
    """The functional circuit's keep vector and its effects, with the gap around ``tol``."""
    effects = single_edge_effects(model, groups, ablation)
    keep = effects > tol
    keep = model.graph.prune(keep)  # an edge off every input-to-logits path carries nothing
    inside, outside = effects[keep], effects[~keep]
    return keep, {
        "effects": effects,
        "smallest_effect_in": float(inside.min()) if len(inside) else None,
        "largest_effect_out": float(outside.max()) if len(outside) else None,
    }
