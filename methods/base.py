"""What every method shares: the interface, cost counting, ablated values and objectives.

A method turns ``(model, task)`` into circuits of the model's edge universe. It sees only
``task.train``. Everything here exists so that no two methods disagree on what "the ablated value
of a source", "the metric" or "a forward pass" means:

- ``prepare`` builds, for every training batch, the ablated source outputs that a removed edge
  carries, through ``circuitboard.ablation.for_batch`` (the definition ground truths and scores
  share), with the train split as the reference set for ``mean``.
- ``Cost`` counts forward passes, backward passes and example-passes, so results can report cost
  in passes as well as seconds.
- ``divergence`` is the faithfulness loss to the full model (KL for categorical outputs, mean
  squared error for numerical ones), used by ACDC and Edge Pruning.
- ``Objective`` is the differentiable task objective that attribution methods take gradients
  of: the task metric where it has a useful gradient, and a linear L2 *contrast* for L2 tasks,
  whose own metric has zero gradient at an exact model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, Protocol, runtime_checkable

import torch

from circuitboard import metrics
from circuitboard.ablation import Prepared, check_ablation, derangement, for_batch
from circuitboard.graph import Circuit
from circuitboard.task import Batch, Task

DIVERGENCES = ("kl", "l2")


# ---------------------------------------------------------------------------- interface
@runtime_checkable
class Method(Protocol):
    """A circuit-finding method: ``find_circuits`` returns one circuit per requested size."""

    name: str

    def find_circuits(
        self, model, task: Task, sizes, ablation: str, seed: int
    ) -> list[Circuit]: ...


@dataclass
class Cost:
    """Passes a method spent.

    ``forward`` counts model calls (a partial pass that starts mid-model, as ACDC's cached-prefix
    pass does, counts as one), ``backward`` counts backward passes, and ``examples`` counts
    example-passes (a forward over a batch of 16 adds 16), which is what batching changes.
    """

    forward: int = 0
    backward: int = 0
    examples: int = 0

    def add_forward(self, n_examples: int, calls: int = 1) -> None:
        self.forward += calls
        self.examples += n_examples

    def as_dict(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "examples": self.examples}


class MethodBase:
    """Hyperparameters as dataclass fields, with ``params()`` for the results file."""

    name: ClassVar[str] = ""

    def params(self) -> dict:
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}

    def _info(self, cost: Cost, seconds: float, **extra) -> dict:
        return {
            "method": self.name,
            "params": self.params(),
            "cost": cost.as_dict(),
            "seconds": seconds,
            **extra,
        }


class ScoringMethod(MethodBase):
    """A method that ranks edges: one score per edge, higher meaning more important.

    ``find_circuits`` keeps the top ``k`` edges for each size, and the same scores feed ROC.
    Subclasses implement ``_score_edges(model, task, ablation, seed, cost)``.
    """

    def score_edges(self, model, task: Task, ablation: str, seed: int) -> torch.Tensor:
        """One float per edge (``model.graph.edge_names`` order, float64 on the CPU); higher is
        more important. The passes it cost are left in ``self.last_cost``."""
        cost = Cost()
        scores = self._score_edges(model, task, check_ablation(ablation), seed, cost)
        self.last_cost = cost.as_dict()
        return scores.detach().to("cpu", torch.float64)

    def _score_edges(self, model, task, ablation, seed, cost: Cost) -> torch.Tensor:
        raise NotImplementedError

    def find_circuits(
        self, model, task: Task, sizes, ablation: str = "counterfactual", seed: int = 0
    ) -> list[Circuit]:
        graph = model.graph
        sizes = check_sizes(graph, sizes)
        start = time.perf_counter()
        cost = Cost()
        scores = self._score_edges(model, task, check_ablation(ablation), seed, cost)
        scores = scores.detach().to("cpu", torch.float64)
        seconds = time.perf_counter() - start
        out = []
        for k in sizes:
            circuit = Circuit.top_k(graph, scores, k, absolute=False)
            circuit.info = self._info(cost, seconds, ablation=ablation, seed=seed, requested=k)
            out.append(circuit)
        return out


# --------------------------------------------------------------------------- validation
def check_sizes(graph, sizes) -> list[int]:
    """Requested circuit sizes as edge counts; the error says what a valid size is."""
    if isinstance(sizes, int | float):
        sizes = [sizes]
    out = []
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int):
            if isinstance(k, float) and k.is_integer():
                k = int(k)
            else:
                raise TypeError(
                    f"sizes must be edge counts (integers between 0 and {graph.n_edges}); got "
                    f"{k!r}. For a fraction f of the edges pass round(f * model.graph.n_edges)."
                )
        if not 0 <= k <= graph.n_edges:
            raise ValueError(f"size {k} is outside [0, {graph.n_edges}], this graph's edge count")
        out.append(k)
    return out


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# ----------------------------------------------------------------------- ablated values


def ablation_tokens(batch: Batch, ablation: str, seed: int = 0) -> torch.Tensor | None:
    """Tokens whose activations a removed unit carries, where the ablation has such tokens.

    ``counterfactual``: the batch's corrupted input; ``resample``: the seeded derangement of the
    batch that ``circuitboard.ablation.for_batch`` uses; otherwise ``None``.
    """
    if ablation == "counterfactual":
        if batch.counterfactual is None:
            raise ValueError(
                "counterfactual ablation needs Batch(counterfactual=...); this training batch "
                "has none. Use 'zero', 'mean' or 'resample' instead."
            )
        return batch.counterfactual
    if ablation == "resample":
        return batch.clean[derangement(len(batch), seed).to(batch.clean.device)]
    return None


def prepare(model, task: Task, ablation: str, seed: int, cost: Cost) -> list[Prepared]:
    """Ablated values for every training batch, as ``circuitboard.ablation.for_batch`` defines
    them (the one definition that ground truths and scores use too); the train split is the
    ``mean`` reference."""
    check_ablation(ablation)
    train = [_to_device(b, model.device) for b in task.train]
    reference = [b.clean for b in train]
    out, cache = [], {}
    for batch in train:
        if ablation in ("mean", "mean-pooled"):
            key = batch.length if ablation == "mean" else None
            if key not in cache:
                cache[key] = for_batch(model, ablation, batch, reference=reference)
                used = [r for r in reference if key is None or r.shape[1] == key]
                cost.add_forward(sum(len(r) for r in used), calls=len(used))
            ablated = cache[key]
        else:
            if ablation == "counterfactual":
                ablation_tokens(batch, ablation)  # a clear error where there is none
            ablated = for_batch(model, ablation, batch, seed=seed)
            if ablation != "zero":
                cost.add_forward(len(batch))
        out.append(Prepared(batch, ablated.detach()))
    return out


def _to_device(batch: Batch, device) -> Batch:
    def move(t):
        return None if t is None else t.to(device)

    return Batch(*(move(getattr(batch, f.name)) for f in fields(Batch)))


def n_examples(prepared: Sequence[Prepared]) -> int:
    return sum(p.n for p in prepared)


# --------------------------------------------------------------------------- objectives
def scored(x: torch.Tensor, positions: str) -> torch.Tensor:
    """The positions a task reads: the last, or every one after the first."""
    if positions == "last":
        return x[:, -1:]
    if positions == "after_bos":
        return x[:, 1:]
    raise ValueError(f"positions must be one of {metrics.POSITIONS}, got {positions!r}")


def default_divergence(model, task: Task) -> str:
    """KL for categorical outputs; mean squared error when there is one numerical output."""
    return "kl" if task.categorical and model.cfg.d_vocab_out > 1 else "l2"


def divergence(kind: str, full: torch.Tensor, logits: torch.Tensor, positions: str):
    """Per-example distance from the full model's output, ``[n]`` (0 for the full model)."""
    if kind == "kl":
        return metrics.kl_divergence(full, logits, positions)
    if kind == "l2":
        return (scored(logits, positions) - scored(full, positions)).pow(2).flatten(1).mean(1)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {kind!r}")


@dataclass
class Objective:
    """A per-example objective on logits, higher is better, with a useful gradient.

    - ``logit_diff`` and ``prob_diff`` tasks: the task metric itself.
    - ``accuracy`` tasks with answer and distractor: the logit difference.
    - ``l2`` tasks (and ``accuracy`` with targets): the contrast
      ``mean[(y - y_empty)^2 - (y - y_target)^2]`` over scored positions and outputs, where
      ``y_empty`` is the model's output with every edge ablated. It is linear in ``y`` (so EAP is
      exact on edges into the logits of a model without final LayerNorm), is highest at the
      target, and unlike the L2 metric itself its gradient is not zero at an exact model.
    """

    kind: str
    task: Task
    batch: Batch
    y_empty: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "task":
            return self.task.score(logits, self.batch)
        if self.kind == "logit_diff":
            return metrics.logit_diff(logits, self.batch, self.task.positions)
        pos = self.task.positions
        y = scored(logits, pos)
        target = scored(self.batch.target.to(logits.device, logits.dtype), pos)
        empty = scored(self.y_empty.to(logits.dtype), pos)
        return ((y - empty).pow(2) - (y - target).pow(2)).flatten(1).mean(1)


def objective(model, task: Task, prep: Prepared, cost: Cost) -> Objective:
    """The attribution objective for one prepared batch (see ``Objective``)."""
    batch = prep.batch
    if task.metric in ("logit_diff", "prob_diff"):
        return Objective("task", task, batch)
    if batch.answer is not None and batch.distractor is not None and task.metric == "accuracy":
        return Objective("logit_diff", task, batch)
    if batch.target is None:
        raise ValueError(
            f"task {task.name!r} (metric {task.metric!r}) gives neither answer and distractor "
            f"nor targets, so there is no differentiable objective to attribute"
        )
    with torch.no_grad():
        empty = torch.zeros(model.graph.n_edges, device=model.device, dtype=model.dtype)
        y_empty = model.run(batch.clean, empty, prep.ablated).logits
    cost.add_forward(prep.n)
    return Objective("contrast", task, batch, y_empty.detach())


def loss_sign(higher_is_better: bool) -> float:
    return -1.0 if higher_is_better else 1.0


class frozen:
    """Context manager: the model's parameters stop requiring gradients, then are restored.

    Attribution and mask training need gradients with respect to activations or masks only;
    freezing the weights keeps autograd from saving what weight gradients would need.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.saved: list[tuple[torch.nn.Parameter, bool]] = []

    def __enter__(self):
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.saved:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> None:
        for p, flag in self.saved:
            p.requires_grad_(flag)


def input_embeddings(model, tokens: torch.Tensor) -> torch.Tensor:
    """The ``input`` node's output (token plus position embeddings), as ``run`` computes it."""
    return model.input_embeddings(tokens)


def source_major_difference(ablated: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """``ablated - sources`` (``[batch, pos, n_sources, d]``, broadcasting ``ablated``), stored
    source-major so that ``edge_scores`` reads it without another copy."""
    shape = sources.shape
    out = sources.new_empty(shape[2], shape[0], shape[1], shape[3])
    torch.sub(ablated.expand(shape).permute(2, 0, 1, 3), sources.permute(2, 0, 1, 3), out=out)
    return out.permute(1, 2, 0, 3)


def edge_scores(model, diff: torch.Tensor, reader_grads) -> torch.Tensor:
    """EAP's contraction of differences with reader gradients: ``model.edge_scores``."""
    return model.edge_scores(diff, reader_grads)
