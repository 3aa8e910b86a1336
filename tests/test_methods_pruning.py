"""Edge Pruning and Gao-style node pruning: gate maths, hooks, projection, planted circuits."""

from __future__ import annotations

import math

import pytest
import torch
from test_methods_helpers import one_thread, random_model, random_task  # noqa: F401

from circuitboard.graph import Circuit
from circuitboard.methods.edge_pruning import EdgePruning
from circuitboard.methods.node_pruning import NodePruning, _gate, _Pruner, node_names


# ------------------------------------------------------------------------ hard concrete
def test_hard_concrete_expected_l0_matches_samples():
    ep = EdgePruning()
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 10.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    samples = ep.sample(log_alpha.expand(20000, -1), gen)
    assert samples.min() >= 0 and samples.max() <= 1
    open_freq = (samples > 0).double().mean(0)
    torch.testing.assert_close(open_freq, ep.open_probability(log_alpha), atol=0.015, rtol=0)
    # beta = 2/3, l = -0.1, r = 1.1: P(open) = sigmoid(log_alpha - beta log(-l / r))
    expected = 1 / (1 + math.exp(-(0.5 - 2 / 3 * math.log(0.1 / 1.1))))
    assert float(ep.open_probability(log_alpha)[3]) == pytest.approx(expected)
    assert float(ep.deterministic(torch.tensor(10.0))) == 1.0
    assert float(ep.deterministic(torch.tensor(-3.0))) == 0.0


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
    method = EdgePruning(steps=300)
    circuits = method.find_circuits(model, task, [5, 2, 0], "counterfactual", 0)
    assert set(circuits[0].edges) == planted
    assert circuits[0].info["budget_reached"]
    assert circuits[1].n_kept == 2 and set(circuits[1].edges) <= planted
    assert circuits[2].n_kept == 0 and not circuits[2].info["trained"]
    for c in circuits:
        assert {"open_gates", "budget_reached", "empty_mask", "cost"} <= set(c.info)
    assert circuits[0].scores is not None and circuits[0].info["trained"]


def test_edge_pruning_never_returns_an_empty_circuit_silently():
    model = random_model(33)
    task = random_task(model, 34, lengths=(4,))
    # A huge multiplier learning rate closes every gate; the circuit is still k edges, flagged.
    (c,) = EdgePruning(
        steps=30, reg_lr=50.0, lr=2.0, per_size=False, target_sparsity=1.0
    ).find_circuits(model, task, [6], "zero", 0)
    assert c.n_kept == 6
    assert c.info["empty_mask"] and c.info["padded_with_closed_gates"]


# ------------------------------------------------------------------------- node pruning
def test_straight_through_gate():
    tau = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    gate = _gate(tau)
    assert gate.tolist() == [0.0, 1.0, 1.0]
    gate.sum().backward()
    s = torch.sigmoid(tau.detach())
    torch.testing.assert_close(tau.grad, s * (1 - s))


@pytest.mark.parametrize("ablation", ["mean", "zero", "counterfactual"])
def test_node_masks_all_kept_is_the_model(ablation):
    model = random_model(35)
    task = random_task(model, 36, lengths=(5,))
    pruner = _Pruner(model, task, ablation, cost=__import__("circuitboard").methods.base.Cost())
    ones = torch.ones(pruner.n_nodes, dtype=model.dtype)
    with torch.no_grad():
        torch.testing.assert_close(
            pruner.run(ones, 0), model(task.train[0].clean), rtol=0, atol=1e-12
        )


def test_node_masks_all_pruned_patches_every_location():
    # Without LayerNorm and with counterfactual ablation, pruning every node replaces every
    # attention and MLP output by its counterfactual value; only the embedding stays clean, so
    # the logits differ from the counterfactual run's by exactly unembed(embed_clean - embed_cf).
    from circuitboard.methods.base import Cost

    model = random_model(37, normalization=None)
    task = random_task(model, 38, lengths=(5,))
    batch = task.train[0]
    pruner = _Pruner(model, task, "counterfactual", Cost())
    zeros = torch.zeros(pruner.n_nodes, dtype=model.dtype)
    with torch.no_grad():
        pruned = pruner.run(zeros, 0)
        embed = model.embed.W_E[batch.clean] - model.embed.W_E[batch.counterfactual]
        expected = model(batch.counterfactual) + embed @ model.unembed.W_U
    torch.testing.assert_close(pruned, expected, rtol=1e-10, atol=1e-10)


def test_projection_rules_and_scores():
    from circuitboard.methods.base import Cost

    model = random_model(39)
    task = random_task(model, 40, lengths=(4,))
    pruner = _Pruner(model, task, "zero", Cost())
    names = node_names(model)
    assert len(names) == pruner.n_nodes == len(set(names))
    index = {n: i for i, n in enumerate(names)}
    keep = torch.zeros(pruner.n_nodes, dtype=torch.bool)
    # MLP 0: one neuron, one read and one write channel; head a1.h1: a v channel, a write
    # channel and one read channel of layer 1 (its <v> reader then needs the v channel).
    for n in ["m0.n[3]", "m0.read[0]", "m0.write[5]", "a1.h1.v[2]", "a1.write[1]", "a1.read[4]"]:
        keep[index[n]] = True
    edges = set(Circuit(model.graph, pruner.project(keep)).edges)
    assert edges == {
        "input->m0",
        "input->logits",
        "m0->logits",
        "input->a1.h1<v>",
        "m0->a1.h1<v>",
        "a1.h1->logits",
    }
    # Without a1's write channel the head writes nothing: it is no longer a source.
    keep[index["a1.write[1]"]] = False
    assert "a1.h1->logits" not in Circuit(model.graph, pruner.project(keep)).edges
    # Scores: thresholding them gives the projection of thresholding tau, at every threshold.
    tau = torch.randn(pruner.n_nodes, generator=torch.Generator().manual_seed(0))
    scores = pruner.edge_scores(tau)
    for theta in torch.linspace(-2, 2, 9):
        projected = pruner.project(tau > theta)
        internal = scores > theta
        assert torch.equal(projected, internal)


def test_node_pruning_circuits_respect_budgets_and_report_native_size():
    model = random_model(41)
    task = random_task(model, 42, lengths=(5, 4))
    method = NodePruning(steps=60)
    sizes = [3, 15, model.graph.n_edges]
    circuits = method.find_circuits(model, task, sizes, "mean", 0)
    for c, k in zip(circuits, sizes, strict=True):
        assert c.size <= max(k, 1)
        assert c.native["n_nodes"] == c.info["native_size"] == len(c.native["nodes"])
        assert c.info["edge_size"] == c.size
        assert c.info["cost"]["backward"] == 60 * len(task.train)
    assert circuits[-1].native["n_nodes"] == circuits[-1].native["n_nodes_total"]
    search = circuits[0].info["target_search"]
    assert search["reached"] and search["loss"] <= search["target_loss"]
    full, empty = search["full_loss"], search["empty_loss"]
    assert search["target_loss"] == pytest.approx(full + 0.1 * (empty - full))
    again = method.find_circuits(model, task, sizes, "mean", 0)
    assert [c.native["nodes"] for c in again] == [c.native["nodes"] for c in circuits]


def test_node_pruning_loss_kinds():
    from circuitboard.methods.node_pruning import _per_example_loss

    model = random_model(43)
    task = random_task(model, 44, lengths=(5,))
    batch = task.train[0]
    logits = model(batch.clean)
    last = logits[:, -1]
    idx = torch.arange(len(batch))
    diff = last[idx, batch.answer] - last[idx, batch.distractor]
    torch.testing.assert_close(
        _per_example_loss(task, logits, batch), -torch.nn.functional.logsigmoid(diff)
    )
    l2_task = random_task(model, 45, lengths=(5,), metric="l2")
    b = l2_task.train[0]
    out = model(b.clean)
    torch.testing.assert_close(_per_example_loss(l2_task, out, b), l2_task.score(out, b))


def test_node_pruning_contrast_loss_option():
    from circuitboard.methods.node_pruning import _contrast_loss

    model = random_model(47)
    task = random_task(model, 48, lengths=(5,), metric="l2")
    batch = task.train[0]
    empty = torch.zeros_like(batch.target)
    value = _contrast_loss(task, batch.target, batch, empty)
    torch.testing.assert_close(value, -batch.target[:, 1:].pow(2).flatten(1).mean(1))
    with pytest.raises(ValueError, match="loss"):
        NodePruning(loss="kl")
    (c,) = NodePruning(steps=5, loss="contrast").find_circuits(model, task, [10], "zero", 0)
    assert c.info["params"]["loss"] == "contrast"
