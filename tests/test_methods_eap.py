"""EAP and EAP-IG against exact references: finite differences, exact effects, each other."""

from __future__ import annotations

import pytest
import torch
from test_methods_helpers import batch_loss, one_thread, random_model, random_task  # noqa: F401

from circuitboard.methods.base import Cost, objective, prepare
from circuitboard.methods.eap import EAP
from circuitboard.methods.eap_ig import EAPIG

EPS = 1e-5


def finite_difference_scores(model, task, ablation, seed=0):
    """Central differences of the loss along (ablated - clean) of each edge, one edge at a time.

    A float mask of ``1 - e`` on one edge moves its reader's input by exactly
    ``e * (ablated - clean)`` of that edge's source, so ``-(L(1 + e) - L(1 - e)) / 2e`` is the
    directional derivative EAP estimates, computed from forward passes only.
    """
    cost = Cost()
    prepared = prepare(model, task, ablation, seed, cost)
    total = sum(p.n for p in prepared)
    n_edges = model.graph.n_edges
    out = torch.zeros(n_edges, dtype=torch.float64)
    with torch.no_grad():
        for prep in prepared:
            obj = objective(model, task, prep, cost)
            for e in range(n_edges):
                up = torch.ones(n_edges, dtype=model.dtype)
                down = up.clone()
                up[e], down[e] = 1 + EPS, 1 - EPS
                diff = batch_loss(model, task, prep, obj, up) - batch_loss(
                    model, task, prep, obj, down
                )
                out[e] -= diff / (2 * EPS) / total
    return out


def assert_agree(scores, reference):
    cosine = torch.nn.functional.cosine_similarity(scores, reference, dim=0)
    assert cosine >= 0.999, cosine
    scale = float(reference.abs().max())
    torch.testing.assert_close(scores, reference, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    "ablation,metric,normalization",
    [
        ("counterfactual", "logit_diff", "LN"),
        ("mean", "logit_diff", "LN"),
        ("zero", "l2", None),
        ("counterfactual", "l2", "LN"),
    ],
)
def test_eap_equals_finite_differences(ablation, metric, normalization):
    model = random_model(1, normalization=normalization)
    task = random_task(model, 2, lengths=(5, 4), metric=metric)
    eap = EAP().attribute(model, task, ablation, seed=0)
    assert_agree(eap, finite_difference_scores(model, task, ablation))


def test_eap_routes_agree_and_absolute_option():
    model = random_model(3)
    task = random_task(model, 4, lengths=(6,))
    readers = EAP(route="readers").attribute(model, task, "counterfactual", 0)
    mask = EAP().attribute(model, task, "counterfactual", 0)
    torch.testing.assert_close(readers, mask, rtol=1e-10, atol=1e-12)
    assert torch.equal(EAP().score_edges(model, task, "counterfactual", 0), readers.abs().cpu())
    signed = EAP(absolute=False).score_edges(model, task, "counterfactual", 0)
    assert torch.equal(signed, readers.cpu())
    circuit = EAP(absolute=False).find_circuits(model, task, [5], "counterfactual", 0)[0]
    assert set(circuit.keep.nonzero().flatten().tolist()) == set(
        torch.topk(readers, 5).indices.tolist()
    )


def test_eap_is_exact_on_edges_into_logits_when_the_metric_is_linear():
    # No final LayerNorm and a logit difference: the metric is linear in the logits reader's
    # input, so the first-order estimate is the exact effect of removing the edge alone.
    model = random_model(5, normalization=None, n_layers=2)
    task = random_task(model, 6, lengths=(5, 3))
    eap = EAP().attribute(model, task, "counterfactual", 0)
    cost = Cost()
    prepared = prepare(model, task, "counterfactual", 0, cost)
    total = sum(p.n for p in prepared)
    graph = model.graph
    into_logits = torch.nonzero(graph.edge_reader == graph.n_readers - 1).flatten().tolist()
    assert len(into_logits) == graph.n_sources
    for e in into_logits:
        exact = 0.0
        with torch.no_grad():
            for prep in prepared:
                obj = objective(model, task, prep, cost)
                keep = torch.ones(graph.n_edges, dtype=model.dtype)
                removed = keep.clone()
                removed[e] = 0
                exact += (
                    float(
                        batch_loss(model, task, prep, obj, removed)
                        - batch_loss(model, task, prep, obj, keep)
                    )
                    / total
                )
        assert abs(float(eap[e]) - exact) <= 1e-5 * max(1.0, abs(exact)), graph.edge_names[e]
    # ... and not merely because every effect is zero:
    assert eap[into_logits].abs().max() > 1e-2


@pytest.mark.parametrize("path", ["inputs", "mask"])
def test_eap_ig_at_alpha_one_is_eap(path):
    model = random_model(7)
    task = random_task(model, 8, lengths=(5, 4))
    eap = EAP().attribute(model, task, "counterfactual", 0)
    ig = EAPIG(alphas=[1.0], path=path).attribute(model, task, "counterfactual", 0)
    torch.testing.assert_close(ig, eap, rtol=1e-12, atol=1e-12)


def test_eap_ig_default_points_follow_hannamw():
    assert EAPIG().interpolation_points() == (0.0, 0.2, 0.4, 0.6, 0.8)
    assert EAPIG(steps=2).interpolation_points() == (0.0, 0.5)
    assert EAPIG(alphas=[1]).interpolation_points() == (1.0,)
    with pytest.raises(ValueError, match="steps"):
        EAPIG(steps=0)
    with pytest.raises(ValueError, match="path"):
        EAPIG(path="weights")


def test_eap_ig_equals_finite_differences_along_the_input_path():
    # Reference: at each point x(alpha), the directional derivative of the loss along each
    # edge's fixed (ablated - clean) difference, by central differences. The trick: ablated
    # values a~' = a(alpha) - (a - a~) make a mask of 1 - e move the reader's input by exactly
    # e * (a~ - a), with a the clean outputs.
    model = random_model(9)
    task = random_task(model, 10, lengths=(5,))
    steps = 2
    ig = EAPIG(steps=steps).attribute(model, task, "counterfactual", 0)
    cost = Cost()
    (prep,) = prepare(model, task, "counterfactual", 0, cost)
    obj = objective(model, task, prep, cost)
    graph = model.graph
    reference = torch.zeros(graph.n_edges, dtype=torch.float64)
    with torch.no_grad():
        clean = model.run(prep.batch.clean, return_sources=True).sources
        fixed = clean - prep.ablated
        for alpha in (0.0, 0.5):
            x = (1 - alpha) * prep.ablated[:, :, 0] + alpha * clean[:, :, 0]
            at_alpha = model.run(input_embeds=x, return_sources=True).sources
            shifted = at_alpha - fixed
            for e in range(graph.n_edges):
                losses = []
                for m in (1 + EPS, 1 - EPS):
                    mask = torch.ones(graph.n_edges, dtype=model.dtype)
                    mask[e] = m
                    logits = model.run(input_embeds=x, mask=mask, ablated=shifted).logits
                    losses.append(-obj(logits).sum())
                reference[e] -= (losses[0] - losses[1]) / (2 * EPS) / prep.n / steps
    assert_agree(ig, reference)


def test_eap_ig_mask_path_is_complete():
    # Integrated gradients over the edge masks: the scores sum to L(empty) - L(full), up to
    # the midpoint rule's O(1 / steps^2) error (measured: 1.6e-4 at 40 steps, 4e-5 at 80).
    model = random_model(11)
    task = random_task(model, 12, lengths=(5,))
    steps = 100
    midpoints = [(k + 0.5) / steps for k in range(steps)]
    ig = EAPIG(alphas=midpoints, path="mask").attribute(model, task, "counterfactual", 0)
    cost = Cost()
    (prep,) = prepare(model, task, "counterfactual", 0, cost)
    obj = objective(model, task, prep, cost)
    with torch.no_grad():
        n = model.graph.n_edges
        empty = batch_loss(model, task, prep, obj, torch.zeros(n, dtype=model.dtype))
        full = batch_loss(model, task, prep, obj, torch.ones(n, dtype=model.dtype))
    total = float(empty - full) / prep.n
    assert abs(total) > 1e-2
    assert abs(float(ig.sum()) - total) < 2e-3 * abs(total)


def test_eap_cost_counts_passes():
    model = random_model(13)
    task = random_task(model, 14, lengths=(5, 4, 3))
    (c,) = EAP().find_circuits(model, task, [4], "counterfactual", 0)
    # per batch: counterfactual forward, clean forward, backward
    assert c.info["cost"]["forward"] == 6 and c.info["cost"]["backward"] == 3
    (c,) = EAPIG(steps=3).find_circuits(model, task, [4], "zero", 0)
    # per batch: clean forward, then 3 forward + backward; zero ablation costs nothing
    assert c.info["cost"]["forward"] == 12 and c.info["cost"]["backward"] == 9
    assert c.info["method"] == "eap-ig" and c.info["params"]["steps"] == 3


@pytest.mark.parametrize("attn_only", [False, True])
def test_fast_edge_contraction_equals_the_engine(attn_only):
    """``edge_scores`` against the definition, summed edge by edge in a Python loop."""
    from circuitboard.methods.base import edge_scores

    model = random_model(15, n_layers=3, n_heads=3, attn_only=attn_only)
    task = random_task(model, 16, lengths=(5,))
    batch = task.train[0]
    x = model.embed.W_E[batch.clean] + model.pos_embed.W_pos[:5]
    out = model.run(
        input_embeds=x.detach().requires_grad_(True), return_sources=True, return_reader_inputs=True
    )
    grads = torch.autograd.grad(out.logits.pow(2).sum(), out.reader_inputs)
    diff = model.source_outputs(batch.counterfactual) - out.sources.detach()
    per_reader = torch.cat(grads)  # [n_readers, batch, pos, d]
    graph = model.graph
    reference = torch.stack(
        [
            (diff[:, :, s] * per_reader[r]).sum()
            for s, r in zip(graph.edge_src.tolist(), graph.edge_reader.tolist())
        ]
    )
    torch.testing.assert_close(edge_scores(model, diff, grads), reference, rtol=1e-4, atol=1e-5)
