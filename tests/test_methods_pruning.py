"""Edge Pruning: gate maths, budgets batched into one run, stopping, never over budget."""

from __future__ import annotations

import math

import pytest
import torch
from test_methods_helpers import one_thread, random_model, random_task  # noqa: F401

from circuitboard.graph import Circuit
from circuitboard.methods.edge_pruning import EdgePruning


# ------------------------------------------------------------------------ hard concrete
def test_hard_concrete_expected_l0_and_the_deterministic_mask():
    ep = EdgePruning()
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 10.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    samples = ep.sample(log_alpha.expand(20000, -1), gen)
    assert samples.min() >= 0 and samples.max() <= 1
    open_freq = (samples > 0).double().mean(0)
    torch.testing.assert_close(open_freq, ep.open_probability(log_alpha), atol=0.015, rtol=0)
    # beta = 2/3, l = -0.1, r = 1.1: P(open) = sigmoid(log_alpha - beta log(-l / r))
    p = [1 / (1 + math.exp(-(a - 2 / 3 * math.log(0.1 / 1.1)))) for a in log_alpha.tolist()]
    assert float(ep.open_probability(log_alpha)[3]) == pytest.approx(p[3])
    # The reference code's test-time mask keeps the round(E[L0]) largest log alphas:
    # E[L0] = 0.199 + 0.647 + 0.832 + 0.891 + 0.973 + 1.000 = 4.54 -> 5 gates, all but -3.
    assert round(sum(p)) == 5
    assert ep.deterministic(log_alpha).tolist() == [False, True, True, True, True, True]
    two = torch.stack([log_alpha, log_alpha.flip(0) - 20])  # second row: E[L0] ~ 0
    assert ep.deterministic(two).sum(1).tolist() == [5, 0]


def test_parameters_are_checked():
    assert EdgePruning().reads_labels is False
    for bad in ({"mode": "joint"}, {"samples": "batch"}, {"steps": 0}, {"stop_after": 0}):
        with pytest.raises(ValueError):
            EdgePruning(**bad)


# ------------------------------------------------------------------------- one run, all
@pytest.mark.parametrize("samples", ["example", "step"])
def test_batched_budgets_train_the_gates_of_their_single_runs(samples):
    # Three budgets in one batched run: each budget's gates equal those of its own single
    # run with the same seed (its own generator, the shared minibatch stream), although the
    # batched pass runs them as per-example masks and the single run as a plain mask.
    model = random_model(71)
    task = random_task(model, 72, lengths=(5, 4))
    params = dict(steps=30, samples=samples, stop_after=3, batch_size=4)
    budgets = [3, 9, 20]
    batched = EdgePruning(mode="batched", **params).train(model, task, budgets, "resample", 4)
    single = EdgePruning(mode="single", **params).train(model, task, budgets, "resample", 4)
    for k in budgets:
        torch.testing.assert_close(batched[k].log_alpha, single[k].log_alpha, rtol=0, atol=1e-9)
        assert batched[k].stats["steps_trained"] == single[k].stats["steps_trained"]
        assert batched[k].stats["stopped_at"] == single[k].stats["stopped_at"]
    # ... and one budget batched alone is its single run too.
    (alone,) = EdgePruning(mode="batched", **params).train(model, task, [9], "resample", 4).values()
    torch.testing.assert_close(alone.log_alpha, single[9].log_alpha, rtol=0, atol=1e-9)
    # The budgets do differ: a different seed gives different gates.
    other = EdgePruning(mode="batched", **params).train(model, task, [9], "resample", 5)
    assert not torch.allclose(other[9].log_alpha, single[9].log_alpha)


def test_a_budget_stops_once_its_mask_has_met_its_target():
    # The rule counts from the end of the warm-up (step 100 of 200): a budget within its
    # target for 4 steps from then stops at step 103 exactly; before the warm-up ends a mask
    # under its budget does not count (the near-full budget is under it from the first steps).
    model = random_model(73)
    task = random_task(model, 74, lengths=(5,))
    n = model.graph.n_edges
    method = EdgePruning(steps=200, stop_after=4, warmup=0.5)
    runs = method.train(model, task, [n // 2, n - 1], "zero", 0)
    for k, run in runs.items():
        assert run.stats["stopped_at"] == run.stats["steps_trained"] == 103, k
        assert int(method.deterministic(run.log_alpha).sum()) <= k
    # Without the rule every budget trains every step.
    fixed = EdgePruning(steps=12, stop_after=None).train(model, task, [n // 2], "zero", 0)
    assert fixed[n // 2].stats["steps_trained"] == 12 and fixed[n // 2].stats["stopped_at"] is None


# ------------------------------------------------------------------ circuits and budgets
def test_edge_pruning_finds_a_planted_circuit_and_reports_budgets():
    # One attention-only layer; head 1 writes nothing (W_O = 0), so only input->logits,
    # a0.h0->logits and the three input->a0.h0 reader edges can matter.
    model = random_model(31, n_layers=1, attn_only=True, scale=1.0)
    with torch.no_grad():
        model.blocks[0].attn.W_O[1].zero_()
    task = random_task(model, 32, lengths=(5, 4))
    planted = {
        "input->logits",
        "a0.h0->logits",
        "input->a0.h0<q>",
        "input->a0.h0<k>",
        "input->a0.h0<v>",
    }
    n = model.graph.n_edges
    circuits = EdgePruning().find_circuits(model, task, [5, 2, 0, 8, n], "counterfactual", 0)
    five, two, zero, eight, full = circuits
    assert set(five.edges) == planted and five.info["met_budget"]
    assert set(two.edges) <= planted and 0 < two.size <= 2
    assert set(eight.edges) >= planted and eight.size <= 8
    assert zero.n_kept == 0 and not zero.info["trained"]
    assert full.n_kept == n and not full.info["trained"]
    for c, k in zip(circuits, [5, 2, 0, 8, n], strict=True):
        assert c.size == c.n_kept <= k  # returned pruned, never over budget
        assert {"met_budget", "truncated", "padded", "open_gates", "cost"} <= set(c.info)
        assert c.info["padded"] is False
    assert five.scores is not None and five.info["circuit_fit"] <= five.info["own_fit"]


def test_circuits_are_never_over_budget_even_when_training_ends_early():
    # Three steps cannot close a gate that starts at log alpha 3: every mask is over its
    # budget, so each circuit is its budget's k largest log alphas, pruned, and says so.
    model = random_model(75)
    task = random_task(model, 76, lengths=(4,))
    sizes = [1, 4, 11]
    circuits = EdgePruning(steps=3, select=False).find_circuits(model, task, sizes, "zero", 0)
    graph = model.graph
    for c, k in zip(circuits, sizes, strict=True):
        assert c.size <= k and not c.info["met_budget"] and c.info["truncated"]
        expected = graph.prune(Circuit.top_k(graph, c.scores, k, absolute=False).keep)
        assert torch.equal(c.keep, expected)
        assert c.info["selected_from"] == k and c.info["circuit_fit"] == c.info["own_fit"]


def test_selection_returns_the_most_faithful_trained_mask_that_fits():
    model = random_model(77)
    task = random_task(model, 78, lengths=(5, 4))
    sizes = [2, 4, 8, 16, 30]
    own = EdgePruning(select=False).find_circuits(model, task, sizes, "mean", 1)
    picked = EdgePruning().find_circuits(model, task, sizes, "mean", 1)
    by_size = {c.info["requested"]: c for c in own}
    # Budget 8's own mask is less faithful than budget 16's thresholded at 8 (0.081 vs 0.046).
    eight = picked[2]
    assert eight.info["selected_from"] == 16 and eight.info["circuit_fit"] < eight.info["own_fit"]
    for c, k in zip(picked, sizes, strict=True):
        assert c.size <= k and c.info["circuit_fit"] <= c.info["own_fit"]
        source = c.info["selected_from"]
        assert c.info["own_fit"] == pytest.approx(by_size[k].info["circuit_fit"])
        if source == k:
            assert torch.equal(c.keep, by_size[k].keep)
        elif source < k:  # another budget's own circuit, as it was
            assert torch.equal(c.keep, by_size[source].keep)
        else:  # a larger budget's mask thresholded at k
            graph = model.graph
            top = Circuit.top_k(graph, by_size[source].scores, k, absolute=False).keep
            assert torch.equal(c.keep, graph.prune(top))
