"""Scores: area scores, ROC, the bootstrap, and evaluate() against direct computation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_model

from circuitboard import metrics
from circuitboard.ablation import for_batch
from circuitboard.evaluate import budget_sizes, evaluate
from circuitboard.graph import Circuit
from circuitboard.task import Batch, Task


def test_area_scores_of_curves_with_known_areas():
    # f = 1 everywhere: CPR 1, CMD 0 on the log axis.
    assert metrics.area_scores([0.001, 1.0], [1.0, 1.0]) == {"cpr": 1.0, "cmd": 0.0}
    # f rises linearly in log10(x) from 0 at 0.1% to 1 at 100%: CPR = CMD = 1/2.
    xs = [0.001, 0.01, 0.1, 1.0]
    ys = [0.0, 1 / 3, 2 / 3, 1.0]
    log = metrics.area_scores(xs, ys)
    assert log["cpr"] == pytest.approx(0.5) and log["cmd"] == pytest.approx(0.5)
    # Linear axis (MIB): trapezoids over x itself, not normalised.
    linear = metrics.area_scores(xs, ys, log=False)
    expected = 0.009 * (1 / 6) + 0.09 * (1 / 2) + 0.9 * (5 / 6)
    assert linear["cpr"] == pytest.approx(expected)
    assert linear["cmd"] == pytest.approx(0.999 - expected)
    # A step: f = 2 up to 1%, then 1. CMD counts the overshoot: |1 - 2| over 1 of 3 decades,
    # plus half of the decade where the curve falls.
    step = metrics.area_scores([0.001, 0.01, 0.1, 1.0], [2.0, 2.0, 1.0, 1.0])
    assert step["cmd"] == pytest.approx((1 + 0.5) / 3)
    assert step["cpr"] == pytest.approx((2 + 1.5 + 1) / 3)


def test_area_scores_extend_the_curve_flat_to_the_ends():
    # One point at 10%: the curve is flat at its value over the whole axis.
    assert metrics.area_scores([0.1], [0.25])["cpr"] == pytest.approx(0.25)
    # Points below 0.1% (an empty circuit) are clamped onto the axis.
    assert metrics.area_scores([0.0, 1.0], [0.0, 1.0])["cpr"] == pytest.approx(0.5)


def test_roc_perfect_reversed_and_ties():
    truth = torch.tensor([True, True, False, False, False])
    assert metrics.roc_from_scores(torch.tensor([5.0, 4, 3, 2, 1]), truth)[2] == 1.0
    assert metrics.roc_from_scores(torch.tensor([1.0, 2, 3, 4, 5]), truth)[2] == 0.0
    assert metrics.roc_from_scores(torch.ones(5), truth)[2] == pytest.approx(0.5)
    # One true edge ties with one false edge at the top, the other true edge is last:
    # pairs (true > false): t0 beats f1, f2 (t0 ties f0: 1/2) -> 2.5; t1 beats none -> 0.
    scores = torch.tensor([3.0, 0.0, 3.0, 1.0, 2.0])
    fpr, tpr, auc = metrics.roc_from_scores(scores, truth)
    assert auc == pytest.approx(2.5 / 6)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0


def test_roc_from_circuits_and_f1():
    truth = torch.tensor([True, True, False, False])
    family = [torch.tensor([True, False, False, False]), torch.tensor([True, True, False, False])]
    fpr, tpr, auc = metrics.roc_from_circuits(family, truth)
    assert auc == 1.0
    prf = metrics.precision_recall_f1(torch.tensor([True, False, True, False]), truth)
    assert prf == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_bootstrap_interval_covers_the_true_value_in_a_seeded_simulation():
    gen = torch.Generator().manual_seed(0)
    hits, trials = 0, 200
    for t in range(trials):
        full = 2.0 + torch.randn(60, generator=gen)
        empty = torch.randn(60, generator=gen)
        circuit = 1.0 + torch.randn(60, generator=gen)  # true faithfulness 1 / 2
        _, low, high = metrics.bootstrap_faithfulness(circuit, empty, full, n_boot=400, seed=t)
        hits += low <= 0.5 <= high
    assert 0.88 <= hits / trials <= 0.99


def _task(seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)

    def batch(n):
        return Batch(
            torch.randint(0, 20, (n, 6), generator=gen),
            torch.randint(0, 20, (n, 6), generator=gen),
            torch.randint(0, 20, (n,), generator=gen),
            torch.randint(0, 20, (n,), generator=gen),
        )

    return Task("toy", [batch(8)], [batch(12), batch(5)], metric="logit_diff")


def test_evaluate_matches_a_direct_computation():
    model, task = random_model(), _task()
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(model.graph.n_edges, generator=gen)
    circuits = [Circuit.top_k(model.graph, scores, k) for k in (5, 20, 60)]
    result = evaluate(model, task, circuits, "counterfactual", n_boot=50)

    # By hand: mean metric of each circuit over both test batches, then the ratio.
    def mean_metric(mask):
        values = []
        for b in task.test:
            ablated = for_batch(model, "counterfactual", b)
            logits = model(b.clean) if mask is None else model(b.clean, mask, ablated)
            values.append(task.score(logits, b))
        return torch.cat(values).double().mean()

    with torch.no_grad():
        full = mean_metric(None)
        empty = mean_metric(torch.zeros(model.graph.n_edges))
        for circuit, point in zip(circuits, result.points, strict=True):
            direct = (mean_metric(circuit.pruned().mask()) - empty) / (full - empty)
            assert point.faithfulness == pytest.approx(float(direct), abs=1e-5)
            assert point.n_edges == circuit.size
    assert result.full_metric == pytest.approx(float(full), abs=1e-5)
    assert result.n_examples == 17


def test_batched_evaluation_equals_one_circuit_at_a_time():
    model, task = random_model(), _task(1)
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(model.graph.n_edges, generator=gen)
    circuits = [Circuit.top_k(model.graph, scores, k) for k in budget_sizes(model.graph.n_edges)]
    together = evaluate(model, task, circuits, "mean", n_boot=20)
    apart = [evaluate(model, task, [c], "mean", n_boot=20, max_batch=1).points[0] for c in circuits]
    for a, b in zip(together.points, apart, strict=True):
        assert a.faithfulness == pytest.approx(b.faithfulness, abs=1e-5)
        assert a.kl == pytest.approx(b.kl, abs=1e-5)
    full = evaluate(model, task, [Circuit.full(model.graph)], "resample", n_boot=20).points[0]
    assert full.faithfulness == pytest.approx(1.0, abs=1e-6) and full.kl == pytest.approx(
        0, abs=1e-6
    )
    assert math.isclose(full.top1, 1.0)


def test_accuracy_skips_positions_without_a_categorical_value():
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # BOS, a, b, none
    logits = torch.tensor([[[5.0, 0.0], [2.0, 1.0], [2.0, 1.0], [0.0, 3.0]]])
    batch = Batch(torch.zeros(1, 4, dtype=torch.long), target=target)
    assert metrics.accuracy(logits, batch, "after_bos").tolist() == [0.5]
