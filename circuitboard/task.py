"""Task: what a circuit must do, as data and a metric.

A task holds clean and counterfactual examples split into ``train`` (all a method may see) and
``test`` (where every score is computed). Each split is a list of ``Batch``es; examples within a
batch share one length, which is how Tracr data (grouped by length, no padding) and
fixed-template tasks both fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from circuitboard import metrics


@dataclass
class Batch:
    """Examples of one length.

    - ``clean``, ``counterfactual``: ``[n, pos]`` token ids.
    - ``answer``, ``distractor``: ``[n]`` token ids, or ``[n, k]`` sets padded with -1, read at
      the last position (logit and probability differences).
    - ``target``: ``[n, pos, d_out]`` float targets (L2 and argmax accuracy, as for Tracr).
    """

    clean: torch.Tensor
    counterfactual: torch.Tensor | None = None
    answer: torch.Tensor | None = None
    distractor: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.clean.dim() != 2 or self.clean.shape[0] == 0:
            raise ValueError(
                f"clean tokens must be a non-empty [n, pos] tensor, got {tuple(self.clean.shape)}"
            )
        n = self.clean.shape[0]
        if self.counterfactual is not None and self.counterfactual.shape != self.clean.shape:
            raise ValueError(
                f"clean and counterfactual tokens must have the same shape, got "
                f"{tuple(self.clean.shape)} and {tuple(self.counterfactual.shape)}"
            )
        for name in ("answer", "distractor", "target"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows but there are {n} examples")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def length(self) -> int:
        return self.clean.shape[1]

    def select(self, index: torch.Tensor | slice) -> Batch:
        def take(t):
            return None if t is None else t[index]

        return Batch(
            take(self.clean),
            take(self.counterfactual),
            take(self.answer),
            take(self.distractor),
            take(self.target),
        )

    def swap(self) -> Batch:
        """Clean and counterfactual exchanged (answers kept): a 'shuffled-label' style control."""
        return replace(self, clean=self.counterfactual, counterfactual=self.clean)


@dataclass
class Task:
    """A named task: splits, a metric with its direction, and where it is read.

    ``positions`` is ``"last"`` (the answer follows the prompt) or ``"after_bos"`` (every position
    but the first, as for Tracr programs).
    """

    name: str
    train: list[Batch]
    test: list[Batch]
    metric: str = "logit_diff"
    positions: str = "last"
    models: tuple[str, ...] = ()
    off_distribution: list[Batch] = field(default_factory=list)
    description: str = ""
    categorical: bool = True

    def __post_init__(self) -> None:
        if self.metric not in metrics.TASK_METRICS:
            raise ValueError(
                f"task {self.name!r}: unknown metric {self.metric!r}; "
                f"choose one of {sorted(metrics.TASK_METRICS)}"
            )
        if self.positions not in metrics.POSITIONS:
            raise ValueError(
                f"task {self.name!r}: positions must be one of {metrics.POSITIONS}, "
                f"got {self.positions!r}"
            )
        if not self.train or not self.test:
            raise ValueError(f"task {self.name!r}: train and test must each hold a batch")

    @property
    def higher_is_better(self) -> bool:
        return metrics.TASK_METRICS[self.metric].higher_is_better

    def metric_fn(self) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
        spec = metrics.TASK_METRICS[self.metric]
        return lambda logits, batch: spec.fn(logits, batch, self.positions)

    def score(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The task metric per example, ``[n]``."""
        return metrics.TASK_METRICS[self.metric].fn(logits, batch, self.positions)

    def n_examples(self, split: str = "test") -> int:
        return sum(len(b) for b in getattr(self, split))
