"""Gao-style node pruning: the node universe, its exact projection onto edges, the ablated
values, the losses and their gradients, budgets, and node-level ground truth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods_helpers import one_thread, random_model, random_task  # noqa: F401

from circuitboard.ablation import for_batch
from circuitboard.graph import Circuit
from circuitboard.methods.base import Cost
from circuitboard.methods.node_pruning import NodePruning, _gate, _per_example_loss, _Pruner
from circuitboard.model import ModelConfig, PatchableTransformer
from circuitboard.nodes import NodeGraph


def pruner(model, task, ablation, loss="task"):
    return _Pruner(model, task, ablation, Cost(), 0, loss)


# --------------------------------------------------------------------- gates and masks
def test_straight_through_gate():
    tau = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    gate = _gate(tau)
    assert gate.tolist() == [0.0, 1.0, 1.0]
    gate.sum().backward()
    s = torch.sigmoid(tau.detach())
    torch.testing.assert_close(tau.grad, s * (1 - s))


@pytest.mark.parametrize("ablation", ["mean", "zero", "counterfactual", "resample"])
@pytest.mark.parametrize("normalization", ["LN", None])
def test_all_nodes_kept_is_the_model(ablation, normalization):
    model = random_model(35, normalization=normalization)
    task = random_task(model, 36, lengths=(5,))
    p = pruner(model, task, ablation)
    ones = torch.ones(p.n_nodes, dtype=model.dtype)
    with torch.no_grad():
        torch.testing.assert_close(p.run(ones, 0), model(task.train[0].clean), rtol=0, atol=1e-12)


@pytest.mark.parametrize("normalization", ["LN", None])
def test_all_nodes_removed_under_counterfactual_is_the_counterfactual_run(normalization):
    # The unembedding's read channels are nodes too: with every node removed the logits read
    # the counterfactual run's final stream, so they are that run's logits exactly.
    model = random_model(37, normalization=normalization)
    task = random_task(model, 38, lengths=(5,))
    batch = task.train[0]
    p = pruner(model, task, "counterfactual")
    zeros = torch.zeros(p.n_nodes, dtype=model.dtype)
    with torch.no_grad():
        torch.testing.assert_close(
            p.run(zeros, 0), model(batch.counterfactual), rtol=1e-10, atol=1e-10
        )


def test_mean_ablation_is_the_engines_per_position_train_mean():
    # What a removed write node carries under "mean" is, channel by channel, the engine's
    # per-position train mean of the sources writing there (circuitboard.ablation.for_batch):
    # the embedding's for input.write, the sum of the heads' plus b_O for an attention write.
    model = random_model(39)
    task = random_task(model, 40, lengths=(5, 4), n_batches_per_length=2)
    p = pruner(model, task, "mean")
    reference = [b.clean for b in task.train]
    graph = model.graph
    for i, batch in enumerate(task.train):
        engine = for_batch(model, "mean", batch, reference=reference)[0]  # [pos, S, d]
        values = p.values[i]
        torch.testing.assert_close(values["blocks.0.hook_resid_pre"][0], engine[:, 0])
        for layer in range(model.cfg.n_layers):
            first = graph.attn_sources_before(layer)
            heads = engine[:, first : first + model.cfg.n_heads].sum(1)
            b_o = model.blocks[layer].attn.b_O
            torch.testing.assert_close(values[f"blocks.{layer}.hook_attn_out"][0], heads + b_o)
            mlp = engine[:, first + model.cfg.n_heads]
            torch.testing.assert_close(values[f"blocks.{layer}.hook_mlp_out"][0], mlp)


# ------------------------------------------------------------------------ projection
def tiny_sparse_model() -> PatchableTransformer:
    """One layer, two heads of one channel, two neurons, four residual channels, no LayerNorm;
    every weight zero but the ones below (all 1):

    - the token embedding writes channel 0, the position embedding channel 1;
    - head 0: q reads channel 0, k reads channel 1, v reads channel 0, writes channel 2;
    - head 1: v reads channel 1, writes channel 3 (no q or k weights);
    - neuron 0 reads channel 2 and writes channel 0; neuron 1 reads channel 3, writes 3;
    - the unembedding reads channels 0 and 3.
    """
    cfg = ModelConfig(
        n_layers=1, n_heads=2, d_model=4, d_head=1, d_mlp=2, d_vocab=3, n_ctx=4,
        normalization=None, act_fn="relu",
    )  # fmt: skip
    model = PatchableTransformer(cfg).double()
    with torch.no_grad():
        model.embed.W_E[:, 0] = 1
        model.pos_embed.W_pos[:, 1] = 1
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
        attn.W_Q[0, 0, 0] = attn.W_K[0, 1, 0] = attn.W_V[0, 0, 0] = attn.W_O[0, 0, 2] = 1
        attn.W_V[1, 1, 0] = attn.W_O[1, 0, 3] = 1
        mlp.W_in[2, 0] = mlp.W_out[0, 0] = mlp.W_in[3, 1] = mlp.W_out[1, 3] = 1
        model.unembed.W_U[0, :] = model.unembed.W_U[3, :] = 1
    return model


def test_projection_of_a_hand_built_node_circuit():
    model = tiny_sparse_model()
    nodes = NodeGraph(model)
    graph = model.graph

    def edges(names):
        keep = torch.zeros(nodes.n_nodes, dtype=torch.bool)
        keep[[nodes.name_index[n] for n in names]] = True
        return set(Circuit(graph, nodes.project(keep)).edges)

    # Every node kept: the edges some channel carries (derived by hand from the weights).
    everything = set(Circuit(graph, nodes.project(torch.ones(nodes.n_nodes, dtype=bool))).edges)
    assert everything == {
        "input->a0.h0<q>",  # channel 0
        "input->a0.h0<k>",  # channel 1
        "input->a0.h0<v>",  # channel 0
        "input->a0.h1<v>",  # channel 1
        "a0.h0->m0",  # channel 2, neuron 0
        "a0.h1->m0",  # channel 3, neuron 1
        "input->logits",  # channel 0
        "a0.h1->logits",  # channel 3
        "m0->logits",  # channels 0 (neuron 0) and 3 (neuron 1)
    }
    # The path token -> head 0 (query and value) -> neuron 0 -> logits, on channels 0 and 2.
    path = [
        "input.write[0]", "a0.read[0]", "a0.h0.q[0]", "a0.h0.v[0]", "a0.write[2]",
        "m0.read[2]", "m0.n[0]", "m0.write[0]", "logits.read[0]",
    ]  # fmt: skip
    assert edges(path) == {
        "input->a0.h0<q>",
        "input->a0.h0<v>",
        "a0.h0->m0",
        "m0->logits",
        "input->logits",  # channel 0 carries the embedding straight to the logits too
    }
    # Head 1 now writes channel 3 and m0 reads it, but no kept neuron reads channel 3 and the
    # logits do not read it: no edge is added (the old rule joined any kept source and reader).
    assert edges(path + ["m0.read[3]", "a0.write[3]", "a0.h1.v[0]"]) == edges(path)
    # Head 1's value channel, its read channel 1 and write channel 3 with neuron 1 reading it.
    extra = ["input.write[1]", "a0.read[1]", "a0.h1.v[0]", "a0.write[3]", "m0.read[3]", "m0.n[1]"]
    assert edges(path + extra) - edges(path) == {"input->a0.h1<v>", "a0.h1->m0"}
    # Without the write channel, head 0 writes nothing: no a0.h0 -> m0, so m0's edge from it
    # goes, while input->logits (channel 0) stays.
    no_write = [n for n in path if n != "a0.write[2]"]
    assert edges(no_write) == {"input->a0.h0<q>", "input->a0.h0<v>", "m0->logits", "input->logits"}
    # Without the logits' channel-0 read nothing reaches the logits.
    assert not {e for e in edges(path[:-1]) if e.endswith("->logits")}


def test_thresholds_are_the_projection_of_thresholded_tau():
    model = random_model(41)
    nodes = NodeGraph(model)
    tau = torch.randn(nodes.n_nodes, generator=torch.Generator().manual_seed(0))
    scores = nodes.thresholds(tau)
    for theta in torch.linspace(-2.5, 2.5, 21):
        assert torch.equal(nodes.project(tau > theta), scores > theta)
    # The full node set projects onto every edge of a dense model; the empty set onto none.
    assert nodes.project(torch.ones(nodes.n_nodes, dtype=bool)).all()
    assert not nodes.project(torch.zeros(nodes.n_nodes, dtype=bool)).any()
    assert len(set(nodes.names)) == nodes.n_nodes


# ----------------------------------------------------------------------------- losses
def test_loss_kinds():
    model = random_model(43)
    task = random_task(model, 44, lengths=(5,))
    batch = task.train[0]
    logits = model(batch.clean)
    last = logits[:, -1]
    idx = torch.arange(len(batch))
    diff = last[idx, batch.answer] - last[idx, batch.distractor]
    answer_ce = _per_example_loss("answer", task, logits, batch)
    torch.testing.assert_close(answer_ce, -F.logsigmoid(diff))  # softmax over the two tokens
    # Categorical targets: cross-entropy of the target's argmax where the target is defined.
    l2_task = random_task(model, 45, lengths=(5,), metric="l2")
    b = l2_task.train[0]
    onehot = F.one_hot(
        torch.randint(0, 10, (len(b), 5), generator=torch.Generator().manual_seed(1)), 10
    )
    b.target = onehot.double()
    b.target[0, 2] = 0  # one undefined position
    out = model(b.clean)
    ce = _per_example_loss("target_ce", l2_task, out, b)
    by_hand = F.cross_entropy(out[0, [1, 3, 4]], onehot[0, [1, 3, 4]].argmax(-1))
    torch.testing.assert_close(ce[0], by_hand)
    # The L2 contrast: mean[(y - t)^2 - (y - y_empty)^2].
    empty = torch.zeros_like(out)
    contrast = _per_example_loss("contrast", l2_task, out, b, empty)
    y, t = out[:, 1:], b.target[:, 1:]
    torch.testing.assert_close(contrast, ((y - t) ** 2 - y**2).flatten(1).mean(1))


def test_the_l2_objective_has_a_gradient_at_the_full_model():
    # frac_prevs is numerical: its L2 metric to the model's own outputs is at its minimum with
    # every node kept, so its gradient there is zero; the contrast's is not.
    groundtruth = pytest.importorskip("circuitboard.groundtruth")
    gt = groundtruth.load("frac_prevs")
    grads = {}
    for loss in ("l2", "task"):
        p = pruner(gt.model, gt.task, "mean", loss)
        tau = torch.ones(p.n_nodes, dtype=gt.model.dtype, requires_grad=True)
        with torch.enable_grad():
            p.loss_of_gate(_gate(tau)).backward()
        grads[p.kind] = tau.grad
    # (zero up to float32 rounding: the targets are the plain pass's own outputs)
    assert grads["l2"].abs().max() < 1e-6 * grads["contrast"].abs().max()
    assert grads["contrast"].abs().max() > 1e-2


# --------------------------------------------------------------------- method outputs
def test_node_pruning_circuits_respect_budgets_and_report_native_size():
    model = random_model(41)
    task = random_task(model, 42, lengths=(5, 4))
    method = NodePruning(steps=40)
    sizes = [3, 15, model.graph.n_edges]
    circuits = method.find_circuits(model, task, sizes, "mean", 0)
    for c, k in zip(circuits, sizes, strict=True):
        assert c.size == c.n_kept <= k
        assert c.native["n_nodes"] == c.info["native_size"] == len(c.native["nodes"])
        assert c.info["edge_size"] == c.size and not c.info["over_budget"]
        assert c.info["cost"]["backward"] == 40
    first, second, _ = circuits  # prefixes of one ranking: nested
    assert set(first.native["nodes"]) <= set(second.native["nodes"])
    assert circuits[-1].native["n_nodes"] == circuits[-1].native["n_nodes_total"]
    search = circuits[0].info["target_search"]
    assert search["reached"] and search["loss"] <= search["target_loss"]
    full, empty = search["full_loss"], search["empty_loss"]
    assert search["target_loss"] == pytest.approx(full + 0.05 * (empty - full))
    again = method.find_circuits(model, task, sizes, "mean", 0)
    assert [c.native["nodes"] for c in again] == [c.native["nodes"] for c in circuits]
    assert method.reads_labels is True
    with pytest.raises(ValueError, match="loss"):
        NodePruning(loss="kl")


@pytest.mark.parametrize("name", ["reverse", "frac_prevs"])
def test_node_pruning_recovers_tracr_ground_truths_at_their_size(name):
    groundtruth = pytest.importorskip("circuitboard.groundtruth")
    gt = groundtruth.load(name)
    graph = gt.model.graph
    truth = graph.prune(gt.circuit("resample").keep)
    k = int(truth.sum())
    (circuit,) = NodePruning().find_circuits(gt.model, gt.task, [k], "resample", 0)
    assert torch.equal(circuit.keep, truth), (circuit.edges, k)


# ------------------------------------------------------------------ node ground truth
def test_node_ground_truth_projects_back_onto_the_edge_ground_truth():
    groundtruth = pytest.importorskip("circuitboard.groundtruth")
    from circuitboard.groundtruth.nodes import native_scores, node_sets, node_truth

    for name, extra in (("frac_prevs", []), ("reverse", []), ("hist", ["input->a0.h0<v>"])):
        gt = groundtruth.load(name)
        truth = node_truth(gt.model, gt.circuit("resample"))
        assert truth["extra_edges"] == extra, name
        assert len(truth["names"]) == int(truth["keep"].sum()) > 0
    gt = groundtruth.load("frac_prevs")
    truth = node_truth(gt.model, gt.circuit("resample"))["keep"]
    (kept,) = node_sets(gt.model, [node_truth(gt.model, gt.circuit("resample"))["names"]])
    scores = native_scores(truth, [kept, torch.zeros_like(kept)], truth.double())
    assert scores["per_set"][0]["f1"] == 1.0 and scores["auc_sets"] == 1.0
    assert scores["auc_scores"] == 1.0
    with pytest.raises(KeyError, match="unknown node"):
        node_sets(gt.model, [["a9.read[0]"]])
