"""Token density: the share of (example, position) pairs at which one edge's ablation matters."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

import circuitboard as cb
from circuitboard.ablation import for_batch
from circuitboard.diagnostics import token_density
from circuitboard.model import ModelConfig, PatchableTransformer

torch.set_num_threads(1)

BOS, TOK_A, TOK_B, MARK = 0, 1, 2, 3
N_POS = 4  # scored positions: every one after BOS


def marker_model() -> PatchableTransformer:
    """One layer, no LayerNorm, ReLU MLP, two outputs; residual dims 0 MLP out, 1-2 a/b, 3 mark.

    - ``input -> m0`` and ``m0 -> logits``: the MLP fires only on the MARK token and writes output
      0, so these edges matter only at the one position holding MARK.
    - ``input -> logits``: output 1 reads the a/b token, so it matters at every other position.
    - the head is all zeros: its edges matter nowhere.
    """
    cfg = ModelConfig(
        n_layers=1, n_heads=1, d_model=4, d_head=2, d_mlp=1, d_vocab=4, d_vocab_out=2, n_ctx=8,
        normalization=None, act_fn="relu", name="marker",
    )  # fmt: skip
    model = PatchableTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[TOK_A, 1] = model.embed.W_E[TOK_B, 2] = model.embed.W_E[MARK, 3] = 1
        mlp = model.blocks[0].mlp
        mlp.W_in[3, 0] = mlp.W_out[0, 0] = 1
        model.unembed.W_U[0, 0] = 1
        model.unembed.W_U[1, 1] = model.unembed.W_U[2, 1] = 1
    return model.eval()


def marker_task() -> cb.Task:
    """Each prompt holds MARK at one position (some positions more often than others); the
    target is the model's own output (L2)."""
    rows = []
    for mark_at in (1, 2, 2, 3, 4, 4):
        for filler in (TOK_A, TOK_B):
            row = [BOS] + [filler] * N_POS
            row[mark_at] = MARK
            rows.append(row)
    clean = torch.tensor(rows)
    target = torch.zeros(len(rows), N_POS + 1, 2)
    target[..., 0] = (clean == MARK).float()
    target[..., 1] = ((clean == TOK_A) | (clean == TOK_B)).float()
    batch = cb.Batch(clean, target=target)
    return cb.Task("marker", [batch], [batch], metric="l2", positions="after_bos")


def test_edge_that_matters_at_one_position_has_density_one_over_positions():
    model, task = marker_model(), marker_task()
    batch = task.test[0]
    assert task.score(model(batch.clean), batch).abs().max() < 1e-7  # the target is the model
    report = token_density(model, task, cb.Circuit.full(model.graph), "zero", progress=False)
    assert report.n_pairs == len(batch) * N_POS
    assert report.density("input->m0") == pytest.approx(1 / N_POS)
    assert report.density("m0->logits") == pytest.approx(1 / N_POS)
    assert report.density("input->logits") == pytest.approx((N_POS - 1) / N_POS)
    assert report.density("a0.h0->logits") == 0.0
    assert report.density("input->a0.h0<v>") == 0.0
    heads = [e.density for e in report.edges if e.edge.startswith("a0.h0") or "a0.h0<" in e.edge]
    assert len(heads) == report.n_edges - 3 and max(heads) == 0.0
    assert report.median == 0.0  # most edges of this circuit are the dead-weight head's


def test_threshold_is_stated_in_units_of_the_full_to_empty_gap():
    model, task = marker_model(), marker_task()
    full = cb.Circuit.full(model.graph)
    # Every pair moves by exactly 0.5 (one of two outputs off by 1): the gap is 0.5.
    report = token_density(model, task, full, "zero", epsilon=0.99, progress=False)
    assert report.threshold == pytest.approx(0.5 * 0.99)
    assert report.density("input->m0") == pytest.approx(1 / N_POS)
    report = token_density(model, task, full, "zero", epsilon=1.0, progress=False)
    assert report.density("input->m0") == 0.0  # moving by 0.5 is not more than 0.5
    absolute = token_density(model, task, full, "zero", epsilon=0.4, relative=False, progress=False)
    assert absolute.threshold == 0.4 and absolute.density("input->logits") == 0.75


def test_within_circuit_reads_the_edge_in_the_circuit_context():
    model, task = marker_model(), marker_task()
    circuit = cb.Circuit.from_edges(model.graph, ["input->m0", "m0->logits"])
    inside = token_density(model, task, circuit, "zero", progress=False)
    assert [e.edge for e in inside.edges] == ["input->m0", "m0->logits"]
    assert inside.density("input->m0") == pytest.approx(1 / N_POS)


def _brute_force(model, task, circuit, ablation, threshold):
    """One patched pass per edge, every example at once: the reference for the batched rows."""
    graph = model.graph
    keep = circuit.pruned().keep
    counts, pairs = torch.zeros(graph.n_edges), 0
    reference = [b.clean for b in task.train]
    for i, batch in enumerate(task.test):
        ablated = for_batch(model, ablation, batch, reference=reference, seed=i)
        with torch.no_grad():
            base = task.score(model(batch.clean, keep.double(), ablated), batch)
            for e in torch.nonzero(keep).flatten().tolist():
                mask = keep.clone()
                mask[e] = False
                value = task.score(model(batch.clean, mask.double(), ablated), batch)
                counts[e] += int(((value - base).abs() > threshold).sum())
        pairs += len(batch)
    return {graph.edge_names[e]: counts[e].item() / pairs for e in torch.nonzero(keep).flatten()}


@pytest.mark.parametrize("ablation", ["counterfactual", "resample"])
def test_batched_rows_match_one_pass_per_edge(ablation):
    model = random_model(seed=5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    batches = []
    for length in (5, 7):
        clean = torch.randint(0, 20, (6, length), generator=gen)
        counter = torch.randint(0, 20, (6, length), generator=gen)
        answer = torch.randint(0, 10, (6,), generator=gen)
        batches.append(cb.Batch(clean, counter, answer, answer + 10))
    task = cb.Task("random", train=batches, test=batches)
    scores = torch.randn(model.graph.n_edges, generator=gen)
    circuit = cb.Circuit.top_k(model.graph, scores, 40)
    report = token_density(
        model,
        task,
        circuit,
        ablation,
        max_tokens=37,
        progress=False,  # passes span edges
    )
    expected = _brute_force(model, task, circuit, ablation, report.threshold)
    got = {e.edge: e.density for e in report.edges}
    assert got == pytest.approx(expected)
    assert 0 < report.median < 1  # the random circuit is neither inert nor everywhere
    values = torch.tensor(list(got.values()), dtype=torch.float64)
    assert report.median == pytest.approx(float(torch.quantile(values, 0.5)))


def test_max_examples_takes_a_seeded_subset():
    model, task = marker_model(), marker_task()
    full = cb.Circuit.full(model.graph)
    part = token_density(model, task, full, "zero", max_examples=5, progress=False)
    assert part.n_pairs == 5 * N_POS
    again = token_density(model, task, full, "zero", max_examples=5, progress=False)
    assert [e.density for e in part.edges] == [e.density for e in again.edges]
    # Every prompt still holds one MARK: the edge that reads it moves 1 of 4 positions.
    assert part.density("input->m0") == pytest.approx(1 / N_POS)
    assert token_density(model, task, full, "zero", max_examples=99, progress=False).n_pairs == 48
    with pytest.raises(ValueError, match="max_examples must be a positive integer"):
        token_density(model, task, full, "zero", max_examples=0, progress=False)


def test_bad_arguments():
    model, task = marker_model(), marker_task()
    full = cb.Circuit.full(model.graph)
    with pytest.raises(ValueError, match="within must be one of"):
        token_density(model, task, full, "zero", within="everywhere", progress=False)
    with pytest.raises(ValueError, match="epsilon must be"):
        token_density(model, task, full, "zero", epsilon=-1, progress=False)
