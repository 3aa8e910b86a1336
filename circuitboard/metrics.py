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
    """Share of scored positions whose argmax is right: in the answer set, or the target's argmax.

    With targets, a position whose target has no entry of at least 0.5 holds no categorical
    value (a Tracr output that RASP leaves undefined) and is not scored; an example with no such
    position has nothing to get wrong and scores 1.
    """
    pred = _at(logits, positions).argmax(-1)
    if batch.target is None:  # right when the top-1 token is in the answer set
        answer = _need(batch, "answer", "accuracy").to(pred.device)
        answer = answer if answer.dim() == 2 else answer[:, None]
        return (pred[:, -1:] == answer).any(1).float()
    target = _at(batch.target.to(logits.device), positions)
    defined = target.max(-1).values >= 0.5
    wrong = (pred != target.argmax(-1)) & defined
    return 1 - wrong.float().sum(1) / defined.sum(1).clamp(min=1)


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


# ----------------------------------------------------------------------------- faithfulness


def faithfulness(circuit_metric, empty_metric, full_metric) -> torch.Tensor:
    """``(m(C) - m(empty)) / (m(M) - m(empty))``: 0 for the empty circuit, 1 for the model."""
    return (circuit_metric - empty_metric) / (full_metric - empty_metric)


def bootstrap_faithfulness(
    circuit: torch.Tensor,
    empty: torch.Tensor,
    full: torch.Tensor,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Faithfulness of the mean metrics, with a percentile bootstrap interval over examples.

    ``circuit``, ``empty`` and ``full`` are per-example metrics of the same examples; each
    bootstrap draw resamples examples and recomputes the ratio of means, the way the point
    estimate is computed. Returns ``(estimate, low, high)``.
    """
    circuit, empty, full = (t.double().flatten().cpu() for t in (circuit, empty, full))
    n = len(circuit)
    estimate = float(faithfulness(circuit.mean(), empty.mean(), full.mean()))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    draws = faithfulness(circuit[idx].mean(1), empty[idx].mean(1), full[idx].mean(1))
    draws = draws[torch.isfinite(draws)]
    if len(draws) == 0:
        return estimate, float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = torch.quantile(draws, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return estimate, float(low), float(high)


def trapezoid(x: list[float], y: list[float]) -> float:
    """The trapezoid rule through the points ``(x[i], y[i])`` in the order given."""
    return sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))


# -------------------------------------------------------------------- against ground truth


def roc_from_scores(scores: torch.Tensor, truth: torch.Tensor) -> tuple[list, list, float]:
    """ROC of ranking edges by ``scores`` against boolean ``truth``; ties form one step.

    Returns ``(fpr, tpr, auc)``. The AUC equals the probability that a true edge outscores a
    false one, counting ties as one half.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    truth = torch.as_tensor(truth).bool().flatten()
    if scores.shape != truth.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and truth {tuple(truth.shape)} differ")
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an ROC needs at least one true and one false edge")
    order = torch.argsort(scores, descending=True, stable=True)
    s, t = scores[order], truth[order]
    boundaries = torch.nonzero(s[1:] != s[:-1]).flatten().tolist() + [len(s) - 1]
    tp = torch.cumsum(t.double(), 0)
    fp = torch.cumsum((~t).double(), 0)
    fpr, tpr = [0.0], [0.0]
    for b in boundaries:
        fpr.append(float(fp[b]) / n_neg)
        tpr.append(float(tp[b]) / n_pos)
    return fpr, tpr, trapezoid(fpr, tpr)


def precision_recall_f1(keep: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    keep, truth = torch.as_tensor(keep).bool(), torch.as_tensor(truth).bool()
    tp = int((keep & truth).sum())
    precision = tp / max(int(keep.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}
