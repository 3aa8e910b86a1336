"""How well a model does a task: top-1 accuracy and the task metric, per split.

A model that cannot do a task is still reported (its accuracy and metric are on its zoo card)
but is left off the leaderboard for that task: circuits of a behaviour the model does not have
say nothing. ``LEADERBOARD_MIN_ACCURACY`` is the bar. Only ``evaluate`` imports torch, so that
the task catalog (``circuitboard tasks``) reads the bar without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from circuitboard.task import Batch, Task

LEADERBOARD_MIN_ACCURACY = 0.9


def top1_correct(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Whether the last position's argmax is an answer token (any of a set), ``[n]`` bool."""
    pred = logits[:, -1].argmax(-1)
    answer = batch.answer.to(pred.device)
    answer = answer if answer.dim() == 2 else answer[:, None]
    return (answer == pred[:, None]).any(1)


def evaluate(model, task: Task, split: str = "test", batch_size: int = 512) -> dict:
    """``{"accuracy", "metric", "metric_name", "higher_is_better", "n"}`` on one split.

    ``split`` is ``"train"``, ``"test"`` or ``"off_distribution"``. Accuracy counts the
    examples whose top-1 prediction at the last position is an answer token; ``metric`` is the
    task metric (e.g. the logit difference) averaged over the examples.
    """
    import torch

    if split not in ("train", "test", "off_distribution"):
        raise ValueError(f"split must be 'train', 'test' or 'off_distribution', got {split!r}")
    batches = getattr(task, split)
    if not batches:
        raise ValueError(f"task {task.name!r} has no {split} split")
    correct, scores = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                for start in range(0, len(batch), batch_size):
                    part = batch.select(slice(start, start + batch_size))
                    logits = model(part.clean.to(model.device)).float()
                    correct.append(top1_correct(logits, part).cpu())
                    scores.append(task.score(logits, part).float().cpu())
    finally:
        model.train(was_training)
    correct, scores = torch.cat(correct), torch.cat(scores)
    return {
        "accuracy": float(correct.float().mean()),
        "metric": float(scores.mean()),
        "metric_name": task.metric,
        "higher_is_better": task.higher_is_better,
        "n": int(correct.numel()),
    }


def on_leaderboard(accuracy: float | None) -> bool:
    return accuracy is not None and accuracy >= LEADERBOARD_MIN_ACCURACY


def measure_all(model, seed: int = 0, n_test: int = 256) -> dict:
    """Accuracy and metric of a toy-vocabulary model on every standard task's test split.

    This is what a zoo card stores under ``"metrics"``; tasks with an off-distribution split
    also get ``"off_distribution"``.
    """
    from circuitboard import tasks

    out = {}
    for name in tasks.names():
        task = tasks.load(name, tokenizer=_toy(), seed=seed, n_test=n_test, n_train=1)
        entry = evaluate(model, task)
        if task.off_distribution:
            entry["off_distribution"] = evaluate(model, task, "off_distribution")
        out[name] = entry
    return out


def _toy():
    from circuitboard.tasks.vocab import ToyTokenizer

    return ToyTokenizer()
