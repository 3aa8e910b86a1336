"""Tiny tasks and methods for the leaderboard tests (import paths resolve them in any worker).

- ``tiny_bundle``: a random 2-layer model, a logit-difference task on random tokens with a
  counterfactual, an off-distribution split, and a hand-made ground truth (the four edges
  ``input -> a0.h0 <q,k,v>`` and ``a0.h0 -> logits``, connected as is; 4 is no MIB budget size
  of this 46-edge graph, so cells request it as an extra size).
- ``EdgeEffects``: a real (if brute-force) scoring method: the drop of the training metric when
  one edge alone is ablated, for every edge in one batched pass, plus seeded noise of 1e-6 so that
  seeds differ where effects tie.
- ``Oracle`` / ``AntiOracle``: score the ground truth's edges 1 (or -1) and the rest 0;
  ``OracleTwin`` is ``Oracle`` under another name, and ``Circuits`` returns the oracle's circuits
  without ranking edges (no ``score_edges``).
- ``OverBudget``: returns the full circuit whatever the budget.
- ``LabelBlind``: ``EdgeEffects`` that declares it never reads labels.
- ``Recorder``: returns empty circuits and records the sizes it was asked for.
- ``Flaky``: ``EdgeEffects`` that raises inside the cell when a flag file names its seed.
- ``Slow``: ``EdgeEffects`` that takes a second and leaves a marker file per computation in
  ``$CIRCUITBOARD_TEST_MARKS`` (to count how often each cell was computed).
- ``DiesOnce``: ``EdgeEffects`` whose first attempt at each seed kills its own process (a lost
  worker), marked in ``$CIRCUITBOARD_TEST_MARKS``.
- ``empty_truth_bundle``: the tiny task with an empty ground truth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from conftest import random_model

from circuitboard.ablation import ablated_values
from circuitboard.graph import Circuit
from circuitboard.task import Batch, Task

GT_EDGES = ("input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "a0.h0->logits")
SHAPE = dict(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=10, n_ctx=6)


def _batch(seed: int, n: int = 8, pos: int = 5) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 10, (n, pos), generator=gen)
    counterfactual = torch.randint(0, 10, (n, pos), generator=gen)
    answer = torch.randint(0, 10, (n,), generator=gen)
    distractor = (answer + 1 + torch.randint(0, 9, (n,), generator=gen)) % 10
    return Batch(clean, counterfactual, answer, distractor)


class TinyGroundTruth:
    """The object shape of ``circuitboard.groundtruth.load(name)``: model, task, circuit()."""

    model_name = "tiny-model"

    def __init__(self) -> None:
        self.model = random_model(seed=3, **SHAPE)
        self.task = Task(
            "tiny",
            train=[_batch(1), _batch(2, pos=4)],
            test=[_batch(3), _batch(4, pos=4)],
            metric="logit_diff",
            off_distribution=[_batch(5, pos=6)],
        )

    def circuit(self, ablation: str) -> Circuit:
        if ablation not in ("zero", "resample", "mean"):
            raise KeyError(f"no ground truth for {ablation!r}")
        return Circuit.from_edges(self.model.graph, GT_EDGES)


def tiny_bundle():
    return TinyGroundTruth()


def plain_bundle():
    """The same model and task without a ground truth."""
    gt = TinyGroundTruth()
    return SimpleNamespace(model=gt.model, task=gt.task, model_name="tiny-model")


@dataclass
class EdgeEffects:
    name = "edge-effects"
    noise: float = 1e-6

    def params(self) -> dict:
        return {"noise": self.noise}

    def score_edges(self, model, task, ablation, seed):
        n_edges = model.graph.n_edges
        total = torch.zeros(n_edges, dtype=torch.float64)
        with torch.no_grad():
            for i, batch in enumerate(task.train):
                ablated = ablated_values(
                    model,
                    "counterfactual" if ablation == "resample" else ablation,
                    batch.clean,
                    counterfactual=batch.counterfactual,
                    reference=batch.clean,
                    seed=seed + i,
                )
                n = len(batch)
                masks = 1 - torch.eye(n_edges).repeat_interleave(n, dim=0)
                tiled = Batch(
                    batch.clean.repeat(n_edges, 1),
                    None,
                    batch.answer.repeat(n_edges),
                    batch.distractor.repeat(n_edges),
                )
                abl = ablated if ablated.shape[0] == 1 else ablated.repeat(n_edges, 1, 1, 1)
                logits = model(tiled.clean, masks, abl)
                full = task.score(model(batch.clean), batch).double().mean()
                drop = full - task.score(logits, tiled).double().view(n_edges, n).mean(1)
                total += drop.abs()
        gen = torch.Generator().manual_seed(seed)
        return total + self.noise * torch.rand(n_edges, generator=gen, dtype=torch.float64)

    def find_circuits(self, model, task, sizes, ablation, seed):
        scores = self.score_edges(model, task, ablation, seed)
        cost = {"forward": 2 * len(task.train), "backward": 0}
        out = []
        for k in sizes:
            c = Circuit.top_k(model.graph, scores, k)
            c.info = {"cost": cost, "requested": k}
            out.append(c)
        return out


class Oracle:
    name = "oracle"
    sign = 1.0

    def score_edges(self, model, task, ablation, seed):
        truth = Circuit.from_edges(model.graph, GT_EDGES).keep
        return self.sign * truth.double()

    def find_circuits(self, model, task, sizes, ablation, seed):
        scores = self.score_edges(model, task, ablation, seed)
        return [Circuit.top_k(model.graph, scores, k, absolute=False) for k in sizes]


class AntiOracle(Oracle):
    name = "anti-oracle"
    sign = -1.0


class OracleTwin(Oracle):
    name = "oracle-twin"


class Circuits:
    """The oracle's circuits, from a method that ranks nothing."""

    name = "circuits"

    def find_circuits(self, model, task, sizes, ablation, seed):
        return Oracle().find_circuits(model, task, sizes, ablation, seed)


class OverBudget:
    name = "over-budget"

    def find_circuits(self, model, task, sizes, ablation, seed):
        return [Circuit.full(model.graph) for _ in sizes]


class LabelBlind(EdgeEffects):
    name = "label-blind"
    reads_labels = False


ASKED: list = []


class Recorder:
    name = "recorder"

    def find_circuits(self, model, task, sizes, ablation, seed):
        ASKED.append(list(sizes))
        return [Circuit.empty(model.graph) for _ in sizes]


class EmptyTruth(TinyGroundTruth):
    def circuit(self, ablation: str) -> Circuit:
        return Circuit.empty(self.model.graph)


def empty_truth_bundle():
    return EmptyTruth()


FLAG_ENV = "CIRCUITBOARD_TEST_FLAKY"


class Flaky(EdgeEffects):
    """Raises (``KeyboardInterrupt`` or ``RuntimeError``, per the flag) on the flagged seed."""

    def find_circuits(self, model, task, sizes, ablation, seed):
        flag = os.environ.get(FLAG_ENV, "")
        if flag:
            kind, _, when = flag.partition(":")
            if int(when) == seed:
                raise KeyboardInterrupt if kind == "interrupt" else RuntimeError("flaky failure")
        return super().find_circuits(model, task, sizes, ablation, seed)


class NotAMethod:
    """Has no find_circuits: a code submission of it must be refused."""


MARKS_ENV = "CIRCUITBOARD_TEST_MARKS"


class Slow(EdgeEffects):
    name = "slow"

    def find_circuits(self, model, task, sizes, ablation, seed):
        import time
        import uuid

        time.sleep(1.0)
        marks = os.environ[MARKS_ENV]
        open(os.path.join(marks, f"seed{seed}-{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
        return super().find_circuits(model, task, sizes, ablation, seed)


class DiesOnce(EdgeEffects):
    name = "dies-once"

    def find_circuits(self, model, task, sizes, ablation, seed):
        mark = os.path.join(os.environ[MARKS_ENV], f"died-seed{seed}")
        try:
            fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().find_circuits(model, task, sizes, ablation, seed)
        os.close(fd)
        os._exit(17)  # the worker process is lost mid-sweep
