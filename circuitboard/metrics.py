"""Task metrics, each per example, with the direction that is better.

A metric takes ``(logits [n, pos, d_out], batch, positions)`` and returns ``[n]``. ``positions``
chooses where it is read: ``"last"`` or ``"after_bos"`` (every position but the first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

POSITIONS = ("last", "after_bos")


def _at(logits: torch.Tensor, positions: str) -> torch.Tensor:
    if positions == "last":
        return logits[:, -1:]
    if positions == "after_bos":
        return logits[:, 1:]
    raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


def _gather_sets(values: torch.Tensor, ids: torch.Tensor, fill: float) -> torch.Tensor:
    """``values [n, V]`` at ``ids [n]`` or ``[n, k]`` (padded with -1) -> ``[n, k]``."""
    ids = ids if ids.dim() == 2 else ids[:, None]
    out = values.gather(1, ids.clamp(min=0))
    return out.masked_fill(ids < 0, fill)


def _need(batch, name: str, metric: str) -> torch.Tensor:
    value = getattr(batch, name)
    if value is None:
        raise ValueError(f"metric {metric!r} needs batch.{name}, which this task does not give")
    return value.to(batch.clean.device)


def logit_diff(logits, batch, positions="last") -> torch.Tensor:
    """Answer logit minus distractor logit at the last position (sets: mean over each set)."""
    last = logits[:, -1]
    answer = _need(batch, "answer", "logit_diff").to(last.device)
    distractor = _need(batch, "distractor", "logit_diff").to(last.device)

    def set_mean(ids):
        vals = _gather_sets(last, ids, 0.0)
        count = (ids if ids.dim() == 2 else ids[:, None]).ge(0).sum(1).clamp(min=1)
        return vals.sum(1) / count

    return set_mean(answer) - set_mean(distractor)


def prob_diff(logits, batch, positions="last") -> torch.Tensor:
    """Probability mass on the answer set minus mass on the distractor set (greater-than)."""
    probs = torch.softmax(logits[:, -1].float(), dim=-1).to(logits.dtype)
    answer = _need(batch, "answer", "prob_diff").to(probs.device)
    distractor = _need(batch, "distractor", "prob_diff").to(probs.device)
    return _gather_sets(probs, answer, 0.0).sum(1) - _gather_sets(probs, distractor, 0.0).sum(1)


def l2(logits, batch, positions="after_bos") -> torch.Tensor:
    """Mean squared error to ``batch.target`` over the scored positions and outputs."""
    target = _need(batch, "target", "l2").to(logits.device, logits.dtype)
    diff = _at(logits, positions) - _at(target, positions)
    return diff.pow(2).flatten(1).mean(1)


def accuracy(logits, batch, positions="last") -> torch.Tensor:
    """Share of scored positions whose argmax is right (answer token, or argmax of target)."""
    pred = _at(logits, positions).argmax(-1)
    if batch.target is not None:
        truth = _at(batch.target.to(logits.device), positions).argmax(-1)
    else:
        answer = _need(batch, "answer", "accuracy")
        truth = (answer if answer.dim() == 1 else answer[:, 0])[:, None].to(pred.device)
    return (pred == truth).float().mean(1)


def kl_divergence(full_logits: torch.Tensor, logits: torch.Tensor, positions="last"):
    """KL(full || circuit) summed over the vocabulary, averaged over scored positions: ``[n]``."""
    p = torch.log_softmax(_at(full_logits, positions).double(), dim=-1)
    q = torch.log_softmax(_at(logits, positions).double(), dim=-1)
    return (p.exp() * (p - q)).sum(-1).mean(1).to(logits.dtype)


@dataclass(frozen=True)
class MetricSpec:
    fn: Callable[..., torch.Tensor]
    higher_is_better: bool


TASK_METRICS: dict[str, MetricSpec] = {
    "logit_diff": MetricSpec(logit_diff, True),
    "prob_diff": MetricSpec(prob_diff, True),
    "l2": MetricSpec(l2, False),
    "accuracy": MetricSpec(accuracy, True),
}
