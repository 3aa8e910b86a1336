"""Self-repair and backup heads, on a hand-built model with a planted backup head."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

import circuitboard as cb
from circuitboard.diagnostics import self_repair
from circuitboard.model import ModelConfig, PatchableTransformer

torch.set_num_threads(1)

BOS, END, A, B, F = 0, 1, 2, 3, 4
BACKUP, NEGATIVE, SHARP = 0.8, -0.3, 40.0


def planted_model() -> PatchableTransformer:
    """Two attention-only layers, no LayerNorm; residual dims:

    0 BOS, 1 END, 2-3 the name (A, B) in the input, 4-5 the name as the heads write it (read by
    the unembedding), 6 a "name already written" signal, 7 filler.

    - a0.h0 (the name mover): from END it attends to the name, writes it to 4-5 with weight 1,
      and writes the signal.
    - a1.h0 (the backup): its query is END minus the signal, so it attends to the name only when
      a0.h0's signal is missing, and to BOS (value 0) otherwise; it writes the name with weight
      BACKUP.
    - a1.h1 (a negative head): always attends to the name and writes it with weight NEGATIVE.
    - a0.h1: all zeros.
    """
    cfg = ModelConfig(
        n_layers=2, n_heads=2, d_model=8, d_head=3, d_vocab=5, n_ctx=8, attn_only=True,
        normalization=None, name="planted-backup",
    )  # fmt: skip
    model = PatchableTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[BOS, 0] = model.embed.W_E[END, 1] = 1
        model.embed.W_E[A, 2] = model.embed.W_E[B, 3] = model.embed.W_E[F, 7] = 1
        model.unembed.W_U[4, A] = model.unembed.W_U[5, B] = 1
        mover = model.blocks[0].attn
        mover.W_Q[0, 1, 0] = SHARP
        mover.W_K[0, 2, 0] = mover.W_K[0, 3, 0] = 1
        mover.W_V[0, 2, 0] = mover.W_V[0, 3, 1] = 1
        mover.W_V[0, 2, 2] = mover.W_V[0, 3, 2] = 1
        mover.W_O[0, 0, 4] = mover.W_O[0, 1, 5] = mover.W_O[0, 2, 6] = 1
        late = model.blocks[1].attn
        late.W_Q[0, 1, 0], late.W_Q[0, 6, 0], late.W_Q[0, 6, 1] = SHARP, -SHARP, SHARP
        late.W_K[0, 2, 0] = late.W_K[0, 3, 0] = late.W_K[0, 0, 1] = 1
        late.W_V[0, 2, 0] = late.W_V[0, 3, 1] = 1
        late.W_O[0, 0, 4] = late.W_O[0, 1, 5] = BACKUP
        late.W_Q[1, 1, 0] = SHARP
        late.W_K[1, 2, 0] = late.W_K[1, 3, 0] = 1
        late.W_V[1, 2, 0] = late.W_V[1, 3, 1] = 1
        late.W_O[1, 0, 4] = late.W_O[1, 1, 5] = NEGATIVE
    return model.eval()


def planted_task() -> cb.Task:
    clean = torch.tensor([[BOS, A, F, END], [BOS, F, A, END], [BOS, B, F, END], [BOS, F, B, END]])
    counterfactual = clean.clone()
    counterfactual[clean == A], counterfactual[clean == B] = B, A
    answer = torch.tensor([A, A, B, B])
    batch = cb.Batch(clean, counterfactual, answer, (A + B) - answer)
    return cb.Task("planted", train=[batch], test=[batch])


def test_planted_model_behaves_as_designed():
    model, task = planted_model(), planted_task()
    batch = task.test[0]
    full = task.score(model(batch.clean), batch)
    assert torch.allclose(full, torch.full((4,), 1 + NEGATIVE), atol=1e-5)


@pytest.mark.parametrize("ranking", ["ablation", "direct"])
def test_finds_the_planted_backup_head(ranking):
    model, task = planted_model(), planted_task()
    full = cb.Circuit.full(model.graph)
    report = self_repair(model, task, full, "zero", ks=(1,), ranking=ranking, n_boot=200)
    assert report.ranking == ranking
    assert report.head_ranking[0].node == "a0.h0"
    ko = report.knockout(1)
    assert ko.heads == ["a0.h0"]
    assert ko.direct_effect == pytest.approx(1.0, abs=1e-4)
    assert ko.total_drop == pytest.approx(1.0 - BACKUP, abs=1e-4)
    assert ko.compensation == pytest.approx(BACKUP, abs=1e-4)
    assert ko.self_repair_fraction == pytest.approx(BACKUP, abs=1e-3)
    assert ko.ci_low == pytest.approx(BACKUP, abs=1e-3)  # every example repairs alike
    assert [h.node for h in ko.backup_heads] == ["a1.h0"]
    assert ko.backup_heads[0].value == pytest.approx(BACKUP, abs=1e-4)
    # No final LayerNorm and a logit difference: the heads' gains are the whole compensation.
    assert ko.compensation_heads == pytest.approx(ko.compensation, abs=1e-5)
    assert ko.remainder == pytest.approx(0.0, abs=1e-5)
    assert report.has_backup_heads and report.has_negative_heads
    assert [(h.node, round(h.value, 4)) for h in report.negative_heads] == [("a1.h1", NEGATIVE)]
    assert report.gap == pytest.approx(1 + NEGATIVE, abs=1e-5)


def test_without_the_backup_head_there_is_no_repair():
    model, task = planted_model(), planted_task()
    with torch.no_grad():
        model.blocks[1].attn.W_O[0].zero_()
    report = self_repair(model, task, cb.Circuit.full(model.graph), "zero", ks=(1,), n_boot=50)
    ko = report.knockout(1)
    assert ko.heads == ["a0.h0"]
    assert ko.self_repair_fraction == pytest.approx(0.0, abs=1e-4)
    assert ko.backup_heads == [] and not report.has_backup_heads


def test_scores_ranking_sums_the_heads_outgoing_edge_scores():
    model, task = planted_model(), planted_task()
    graph = model.graph
    scores = torch.zeros(graph.n_edges)
    scores[graph.index_of(["a1.h1->logits"])] = -5.0  # |score| ranks it first
    scores[graph.index_of(["a0.h0->logits", "a0.h0->a1.h0<q>"])] = torch.tensor([2.0, 1.5])
    circuit = cb.Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool), scores)
    report = self_repair(model, task, circuit, "zero", ks=(1, 2), n_boot=50)
    assert report.ranking == "scores"
    assert [(h.node, h.value) for h in report.head_ranking[:2]] == [("a1.h1", 5.0), ("a0.h0", 3.5)]
    assert report.knockout(2).heads == ["a1.h1", "a0.h0"]
    with pytest.raises(ValueError, match="needs a circuit with edge scores"):
        self_repair(model, task, cb.Circuit.full(graph), "zero", ranking="scores")


def test_compensation_decomposes_exactly_without_final_layernorm():
    """With logits linear in the residual stream, drop = DE(H) - sum of the others' DE gains."""
    model = random_model(seed=3, dtype=torch.float64, normalization=None)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 20, (6, 5), generator=gen)
    counter = torch.randint(0, 20, (6, 5), generator=gen)
    answer = torch.randint(0, 10, (6,), generator=gen)
    batch = cb.Batch(clean, counter, answer, answer + 10)
    task = cb.Task("random", train=[batch], test=[batch])
    report = self_repair(model, task, cb.Circuit.full(model.graph), ks=(1, 2), n_boot=50)
    for ko in report.knockouts:
        parts = ko.compensation_heads + ko.compensation_mlps
        assert parts == pytest.approx(ko.compensation, abs=1e-9)
        assert ko.direct_effect - ko.total_drop == pytest.approx(ko.compensation, abs=1e-12)


def test_report_is_plain_json():
    import json

    model, task = planted_model(), planted_task()
    report = self_repair(model, task, cb.Circuit.full(model.graph), "zero", ks=(1,), n_boot=50)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["knockouts"][0]["backup_heads"][0]["node"] == "a1.h0"
    assert data["has_backup_heads"] is True
    assert set(report.summary()) == {"self_repair_k1", "backup_heads", "negative_heads"}


def test_bad_arguments():
    model, task = planted_model(), planted_task()
    full = cb.Circuit.full(model.graph)
    with pytest.raises(ValueError, match="ranking must be one of"):
        self_repair(model, task, full, "zero", ranking="best")
    with pytest.raises(ValueError, match="ks must be positive"):
        self_repair(model, task, full, "zero", ks=(0,))
    other = cb.Circuit.full(random_model().graph)
    with pytest.raises(ValueError, match="different graph"):
        self_repair(model, task, other, "zero")
