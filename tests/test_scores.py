"""Scores: area scores, ROC, the bootstrap, and evaluate() against direct computation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_model

from circuitboard import metrics, scoring
from circuitboard.ablation import for_batch
from circuitboard.evaluate import evaluate
from circuitboard.graph import Circuit
from circuitboard.task import Batch, Task


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


def test_f1():
    truth = torch.tensor([True, True, False, False])
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
    sizes = scoring.budget_grid(model.graph.n_edges)
    circuits = [Circuit.top_k(model.graph, scores, k) for k in sizes]
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


def test_evaluate_builds_the_at_most_budget_curve_from_its_per_example_metrics():
    model, task = random_model(), _task(2)
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(model.graph.n_edges, generator=gen)
    n = model.graph.n_edges
    circuits = [Circuit.top_k(model.graph, scores, k) for k in (20, 40, 60, n)]
    sizes = [c.size for c in circuits]
    assert sizes[0] < sizes[1] - 1 < sizes[1] < sizes[2] < n
    # The circuit for the second budget is one edge over it: a point, never credited there.
    budgets = [sizes[0], sizes[1] - 1, sizes[2], n]
    result = evaluate(model, task, circuits, "counterfactual", budgets=budgets, n_boot=20)
    data = result.per_example
    assert data.budgets == budgets and data.own == [0, 1, 2, 3]
    assert data.sizes == [c.size for c in circuits] and data.n_examples == 17
    # The stored per-example metrics reproduce each point's faithfulness (ratio of means).
    for point, f in zip(result.points, data.faithfulness(), strict=True):
        assert point.faithfulness == pytest.approx(float(f), abs=1e-12)
    assert [p.fits for p in result.points] == [c.size <= b for c, b in zip(circuits, budgets)]
    assert result.points[1].fits is False
    assert result.curve == [p.to_dict() for p in scoring.curve(data)]
    assert result.curve[1]["credited"] != 1 and result.curve[1]["size"] <= budgets[1]
    assert result.areas == scoring.areas(data).to_dict()
    # Budgets come from the circuits' info when not given.
    for c, b in zip(circuits, budgets):
        c.info["requested"] = b
    again = evaluate(model, task, circuits, "counterfactual", n_boot=20)
    assert again.curve == result.curve and again.areas == result.areas


def test_a_degenerate_task_is_an_error_not_a_number():
    model, task = random_model(), _task(3)
    for b in task.test:
        b.counterfactual = b.clean.clone()  # the counterfactual equals the clean input
    circuit = Circuit.top_k(model.graph, torch.arange(model.graph.n_edges) * 1.0, 5)
    with pytest.raises(scoring.DegenerateTask, match="counterfactual inputs differ"):
        evaluate(model, task, [circuit], "counterfactual", n_boot=10)


def test_accuracy_skips_positions_without_a_categorical_value():
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # BOS, a, b, none
    logits = torch.tensor([[[5.0, 0.0], [2.0, 1.0], [2.0, 1.0], [0.0, 3.0]]])
    batch = Batch(torch.zeros(1, 4, dtype=torch.long), target=target)
    assert metrics.accuracy(logits, batch, "after_bos").tolist() == [0.5]


def test_a_task_for_another_model_is_refused():
    import circuitboard as cb

    model = cb.load_model("tracr/reverse")
    other = cb.load_task("tracr/sort")
    with pytest.raises(ValueError, match="made for tracr/sort, not for 'tracr/reverse'"):
        evaluate(model, other, [Circuit.full(model.graph)], "resample")
    # A task whose answers lie beyond the model's outputs is refused before any pass.
    small = random_model()
    task = _task()
    task.test[0].answer[0] = small.cfg.d_vocab_out + 3
    with pytest.raises(ValueError, match="answer ids reach 23 but the model has 20 outputs"):
        evaluate(small, task, [Circuit.full(small.graph)], "counterfactual")


def test_shared_mask_passes_equal_tiled_per_example_masks(monkeypatch):
    from circuitboard import evaluate as evaluation

    model = random_model()
    gen = torch.Generator().manual_seed(8)
    n = 40  # at least SHARED_MASK_BATCH: one pass per circuit, the mask shared by the batch
    batch = Batch(*(torch.randint(0, 20, (n, 6), generator=gen) for _ in range(2)),
                  torch.randint(0, 20, (n,), generator=gen),
                  torch.randint(0, 20, (n,), generator=gen))  # fmt: skip
    task = Task("wide", [batch], [batch], metric="logit_diff")
    scores = torch.randn(model.graph.n_edges, generator=gen)
    circuits = [Circuit.top_k(model.graph, scores, k) for k in (5, 20, 60)]
    assert n >= evaluation.SHARED_MASK_BATCH
    shared = evaluate(model, task, circuits, "counterfactual", n_boot=20)
    monkeypatch.setattr(evaluation, "SHARED_MASK_BATCH", 10**9)
    tiled = evaluate(model, task, circuits, "counterfactual", n_boot=20)
    for a, b in zip(shared.points, tiled.points, strict=True):
        assert a.faithfulness == pytest.approx(b.faithfulness, abs=1e-5)
        assert a.kl == pytest.approx(b.kl, abs=1e-5)
