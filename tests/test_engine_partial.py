"""Partial passes (ACDC's engine mode): many masks from a stage on equal full patched passes."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model
from test_engine_modern import VARIANTS

from circuitboard.ablation import ablated_values
from circuitboard.partial import StageCache

ALL = {"gpt2": {}, "attn_only": {"attn_only": True, "d_mlp": None}, **VARIANTS}


def masks_from(model, stage, gen, w=5):
    """``w`` random masks that keep every edge into readers before ``stage``; two are equal
    and one keeps everything, as happens between ACDC's states."""
    first = model.stage_readers(stage).start
    masks = torch.rand(w, model.graph.n_edges, generator=gen) > 0.3
    masks[1] = masks[0]
    masks[2] = True
    masks[:, model.graph.edge_reader < first] = True
    return masks


@pytest.mark.parametrize("variant", list(ALL))
def test_states_from_every_stage_equal_full_patched_passes(variant, tokens, counterfactual):
    model = random_model(dtype=torch.float64, **ALL[variant])
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    cache = model.stage_cache(tokens, ablated)
    gen = torch.Generator().manual_seed(7)
    assert len(model.stages) == len({model.reader_stage[r] for r in range(model.graph.n_readers)})
    for stage in range(len(model.stages)):
        masks = masks_from(model, stage, gen)
        with torch.no_grad():
            full = torch.stack([model(tokens, m.double(), ablated) for m in masks])
        for last_only in (False, True):
            logits, index = model.run_states(cache, stage, masks, last_only)
            expected = full[:, :, -1:] if last_only else full
            assert (logits[index] - expected).abs().max() <= 1e-10, (stage, last_only)
            assert index[0] == index[1]  # equal masks share one output row
        assert (full[2] - model(tokens)).abs().max() == 0


def test_packed_batches_of_different_lengths(tokens, counterfactual):
    """Two batches padded into one pass: padded keys are ignored, each row's last real position
    is the one kept."""
    model = random_model(dtype=torch.float64, **VARIANTS["llama"])
    short, short_cf = tokens[:3, :5], counterfactual[:3, :5]
    caches, full = [], []
    gen = torch.Generator().manual_seed(8)
    stage = 2
    masks = masks_from(model, stage, gen)
    for toks, cf in ((tokens, counterfactual), (short, short_cf)):
        ablated = ablated_values(model, "counterfactual", toks, counterfactual=cf)
        caches.append(model.stage_cache(toks, ablated))
        with torch.no_grad():
            full.append(torch.stack([model(toks, m.double(), ablated) for m in masks]))
    packed = StageCache.pack(caches)
    assert packed.n == 7 and packed.last.tolist() == [6] * 4 + [4] * 3
    logits, index = model.run_states(packed, stage, masks, last_only=True)
    out = logits[index]  # [w, 7, 1, V]
    assert (out[:, :4] - full[0][:, :, -1:]).abs().max() <= 1e-10
    assert (out[:, 4:] - full[1][:, :, -1:]).abs().max() <= 1e-10
    logits, index = model.run_states(packed, stage, masks)
    assert (logits[index][:, 4:, :5] - full[1]).abs().max() <= 1e-10


def test_states_share_what_they_compute_alike(tokens, counterfactual):
    model = random_model(dtype=torch.float64)
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    cache = model.stage_cache(tokens, ablated)
    same = torch.ones(6, model.graph.n_edges, dtype=torch.bool)
    logits, index = model.run_states(cache, 0, same)
    assert len(logits) == 1 and index.tolist() == [0] * 6
    with torch.no_grad():
        assert (logits[0] - model(tokens)).abs().max() == 0
    other = same.clone()
    other[3, model.graph.edge_index["a1.h0->logits"]] = False
    logits, index = model.run_states(cache, 0, other)
    assert len(logits) == 2 and index.tolist() == [0, 0, 0, 1, 0, 0]


def test_a_mask_that_removes_edges_before_the_stage_is_refused(tiny, tokens):
    ablated = ablated_values(tiny, "zero", tokens)
    cache = tiny.stage_cache(tokens, ablated)
    mask = torch.ones(1, tiny.graph.n_edges)
    mask[0, tiny.graph.edge_index["input->a0.h0<q>"]] = 0
    with pytest.raises(ValueError, match="removes an edge into a reader before the start stage"):
        tiny.run_states(cache, 1, mask)
    with pytest.raises(ValueError, match=r"masks must be \[w, "):
        tiny.run_states(cache, 1, torch.ones(tiny.graph.n_edges))
