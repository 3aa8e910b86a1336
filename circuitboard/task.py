"""Task: what a circuit must do, as data and a metric.

A task holds clean and counterfactual examples split into ``train`` (all a method may see) and
``test`` (where every score is computed). Each split is a list of ``Batch``es; examples within a
batch share one length, which is how Tracr data (grouped by length, no padding) and
fixed-template tasks both fit.

A task may declare **groupings** of its examples (IOI: ABBA vs BABA, and the template id), so
that a score can be broken down by group (``circuitboard.diagnostics.group_variance``). The
levels live once on the task (``Task.groupings``, name -> level names); each batch carries one
integer code per example and grouping (``Batch.groups``), a tensor so that it moves, tiles and
selects with the tokens it labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from circuitboard import metrics

SPLITS = ("train", "test", "off_distribution")


@dataclass
class Batch:
    """Examples of one length.

    - ``clean``, ``counterfactual``: ``[n, pos]`` token ids.
    - ``answer``, ``distractor``: ``[n]`` token ids, or ``[n, k]`` sets padded with -1, read at
      the last position (logit and probability differences).
    - ``target``: ``[n, pos, d_out]`` float targets (L2 and argmax accuracy, as for Tracr).
    - ``groups``: ``[n, n_groupings]`` integer codes, column ``j`` for the task's ``j``-th
      grouping, each code an index into that grouping's levels (see ``Task.groupings``).
    """

    clean: torch.Tensor
    counterfactual: torch.Tensor | None = None
    answer: torch.Tensor | None = None
    distractor: torch.Tensor | None = None
    target: torch.Tensor | None = None
    groups: torch.Tensor | None = None

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
        for name in ("answer", "distractor", "target", "groups"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows but there are {n} examples")
        if self.groups is not None and (
            self.groups.dim() != 2 or self.groups.dtype not in (torch.long, torch.int)
        ):
            raise ValueError(
                f"groups must be an integer [n, n_groupings] tensor of level codes, got "
                f"{self.groups.dtype} of shape {tuple(self.groups.shape)}"
            )

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
            take(self.groups),
        )

    def swap(self) -> Batch:
        """Clean and counterfactual exchanged (answers kept): a 'shuffled-label' style control."""
        return replace(self, clean=self.counterfactual, counterfactual=self.clean)


REGISTERED_PREFIXES = ("tracr", "zoo", "planted")


@dataclass
class Task:
    """A named task: splits, a metric with its direction, and where it is read.

    ``positions`` is ``"last"`` (the answer follows the prompt) or ``"after_bos"`` (every position
    but the first, as for Tracr programs).

    ``groupings`` declares how examples may be grouped: ``{"order": ("ABBA", "BABA"), ...}``,
    each grouping's level names in a fixed order. When it is non-empty every batch of every split
    carries ``groups`` codes for all of them, columns in this order; when it is empty no batch
    carries any.
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
    groupings: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
        self.groupings = {str(k): tuple(str(v) for v in vs) for k, vs in self.groupings.items()}
        self._check_groups()

    def _check_groups(self) -> None:
        for key, levels in self.groupings.items():
            if not levels or len(set(levels)) != len(levels):
                raise ValueError(
                    f"task {self.name!r}: grouping {key!r} must list distinct level names, got "
                    f"{levels!r}"
                )
        width = len(self.groupings)
        sizes = torch.tensor([len(v) for v in self.groupings.values()], dtype=torch.long)
        for split in SPLITS:
            for i, batch in enumerate(getattr(self, split)):
                where = f"task {self.name!r}: {split}[{i}]"
                if batch.groups is None:
                    if width:
                        raise ValueError(
                            f"{where} has no groups, but the task declares groupings "
                            f"{list(self.groupings)}; give every batch Batch(groups=...) codes"
                        )
                    continue
                if not width:
                    raise ValueError(
                        f"{where} carries groups but the task declares no groupings; pass "
                        f"Task(groupings={{name: levels}}) or drop Batch.groups"
                    )
                if batch.groups.shape[1] != width:
                    raise ValueError(
                        f"{where}: groups has {batch.groups.shape[1]} columns but the task "
                        f"declares {width} groupings {list(self.groupings)}"
                    )
                codes = batch.groups.cpu().long()
                bad = (codes < 0) | (codes >= sizes)
                if bool(bad.any()):
                    row, col = (int(v) for v in torch.nonzero(bad)[0])
                    key = list(self.groupings)[col]
                    raise ValueError(
                        f"{where}: example {row} has code {int(codes[row, col])} for grouping "
                        f"{key!r}, which has levels {list(self.groupings[key])} (codes 0.."
                        f"{len(self.groupings[key]) - 1})"
                    )

    @property
    def higher_is_better(self) -> bool:
        return metrics.TASK_METRICS[self.metric].higher_is_better

    def metric_fn(self) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
        spec = metrics.TASK_METRICS[self.metric]
        return lambda logits, batch: spec.fn(logits, batch, self.positions)

    def score(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The task metric per example, ``[n]``."""
        return metrics.TASK_METRICS[self.metric].fn(logits, batch, self.positions)

    def check_model(self, model) -> None:
        """Refuse a model this task cannot be scored on, naming what does not fit.

        A task built for registered models (``tracr/...``, ``zoo/...``, ``planted/...``) refuses
        another registered model; any task refuses a model whose vocabulary its tokens, answers
        or targets do not fit.
        """
        name = getattr(model.cfg, "name", "") or ""

        def registered(n: str) -> bool:
            return n.split("/", 1)[0] in REGISTERED_PREFIXES and "/" in n

        if (
            self.models
            and registered(name)
            and all(registered(m) for m in self.models)
            and name not in self.models
        ):
            raise ValueError(
                f"task {self.name!r} was made for {', '.join(self.models)}, not for {name!r}; "
                f"load the task for this model (cb.load_task(..., model={name!r}) or its own "
                f"program's task)"
            )
        d_in, d_out = model.cfg.d_vocab, model.cfg.d_vocab_out
        for split in ("train", "test", "off_distribution"):
            for i, b in enumerate(getattr(self, split)):
                where = f"task {self.name!r}, {split} batch {i}"
                for field_name in ("clean", "counterfactual"):
                    t = getattr(b, field_name)
                    if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= d_in):
                        raise ValueError(
                            f"{where}: {field_name} token ids span [{int(t.min())}, "
                            f"{int(t.max())}] but the model's vocabulary is [0, {d_in})"
                        )
                for field_name in ("answer", "distractor"):
                    t = getattr(b, field_name)
                    if t is not None and t.numel() and int(t.max()) >= d_out:
                        raise ValueError(
                            f"{where}: {field_name} ids reach {int(t.max())} but the model has "
                            f"{d_out} outputs"
                        )
                if b.target is not None and b.target.shape[-1] != d_out:
                    raise ValueError(
                        f"{where}: targets have {b.target.shape[-1]} outputs but the model has "
                        f"{d_out}"
                    )

    def batches(self, split: str | tuple[str, ...] = "test") -> list[Batch]:
        """The batches of one split, or of several (``("test", "off_distribution")``) in order."""
        out = self._batches(split)
        if not out:
            raise ValueError(f"task {self.name!r} has no examples in split {split!r}")
        return out

    def _batches(self, split: str | tuple[str, ...]) -> list[Batch]:
        names = (split,) if isinstance(split, str) else tuple(split)
        out = []
        for name in names:
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
            out += getattr(self, name)
        return out

    def n_examples(self, split: str | tuple[str, ...] = "test") -> int:
        return sum(len(b) for b in self._batches(split))

    def group_labels(self, split: str | tuple[str, ...] = "test") -> dict[str, list[str]]:
        """Each grouping's level name per example of ``split``, batch by batch in order."""
        labels: dict[str, list[str]] = {key: [] for key in self.groupings}
        for batch in self.batches(split):
            for col, (key, levels) in enumerate(self.groupings.items()):
                labels[key] += [levels[c] for c in batch.groups[:, col].tolist()]
        return labels
