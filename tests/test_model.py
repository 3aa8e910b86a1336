"""PatchableTransformer: the invariants, single-edge patches by hand, and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from circuitboard.ablation import ablated_values
from circuitboard.graph import Circuit

VARIANTS = [
    {},
    {"attn_only": True, "d_mlp": None},
    {"normalization": None, "act_fn": "relu", "causal": False},
    {"d_vocab_out": 5, "act_fn": "gelu"},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_all_edges_kept_reproduces_the_model(overrides, tokens):
    model = random_model(**overrides)
    ablated = ablated_values(model, "zero", tokens)
    with torch.no_grad():
        plain = model(tokens)
        ones = model(tokens, torch.ones(model.graph.n_edges), ablated)
        per_example = model(tokens, torch.ones(len(tokens), model.graph.n_edges), ablated)
    assert plain.shape[-1] == model.cfg.d_vocab_out
    assert torch.equal(ones, plain)  # bit for bit
    assert (per_example - plain).abs().max() <= 1e-6


@pytest.mark.parametrize("overrides", VARIANTS)
def test_all_edges_removed_gives_the_counterfactual_run(overrides, tokens, counterfactual):
    model = random_model(**overrides)
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    with torch.no_grad():
        target = model(counterfactual)
        none = model(tokens, torch.zeros(model.graph.n_edges), ablated)
        per_example = model(tokens, torch.zeros(len(tokens), model.graph.n_edges), ablated)
    assert (none - target).abs().max() <= 1e-5
    assert (per_example - target).abs().max() <= 1e-5


def _one_edge_removed(model, name):
    mask = torch.ones(model.graph.n_edges)
    mask[model.graph.edge_index[name]] = 0
    return mask


def test_removed_edge_into_a_key_matches_a_hand_built_reader_input(tiny, tokens, counterfactual):
    """a0.h1 -> a1.h2<k>: that key reads resid_pre1 - (a0.h1 - a0.h1~); nothing else changes."""
    model = tiny
    _, clean = model.run_with_cache(tokens)
    _, corrupt = model.run_with_cache(counterfactual)
    h_src, h_dst = 1, 2
    delta = (
        clean["blocks.0.attn.hook_result"][:, :, h_src]
        - corrupt["blocks.0.attn.hook_result"][:, :, h_src]
    )
    reader_input = clean["blocks.1.hook_resid_pre"] - delta

    def patch_key(k_input, hook):
        k_input = k_input.clone()
        k_input[:, :, h_dst] = reader_input
        return k_input

    reference = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_k_input", patch_key)])
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    patched = model(tokens, _one_edge_removed(model, "a0.h1->a1.h2<k>"), ablated)
    assert (patched - reference).abs().max() <= 1e-5
    assert (patched - model(tokens)).abs().max() > 1e-3  # the patch changed something


def test_removed_edge_into_an_mlp_and_into_logits_by_hand(tiny, tokens, counterfactual):
    model = tiny
    _, clean = model.run_with_cache(tokens)
    _, corrupt = model.run_with_cache(counterfactual)
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)

    # input -> m1: the MLP of layer 1 reads resid_mid1 - (embed - embed~).
    def embed(cache):
        return cache["hook_embed"] + cache["hook_pos_embed"]

    mlp_input = clean["blocks.1.hook_resid_mid"] - (embed(clean) - embed(corrupt))
    reference = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_in", lambda x, hook: mlp_input)]
    )
    patched = model(tokens, _one_edge_removed(model, "input->m1"), ablated)
    assert (patched - reference).abs().max() <= 1e-5

    # m0 -> logits: the unembedding reads the final stream minus (m0 - m0~).
    final = clean["blocks.1.hook_resid_post"] - (
        clean["blocks.0.hook_mlp_out"] - corrupt["blocks.0.hook_mlp_out"]
    )
    ln = model.ln_final
    normed = torch.nn.functional.layer_norm(final, (final.shape[-1],), ln.w, ln.b, 1e-5)
    by_hand = normed @ model.unembed.W_U + model.unembed.b_U
    patched = model(tokens, _one_edge_removed(model, "m0->logits"), ablated)
    assert (patched - by_hand).abs().max() <= 1e-5


def test_per_example_masks_equal_separate_runs(tiny, tokens, counterfactual):
    model = tiny
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    gen = torch.Generator().manual_seed(3)
    masks = (torch.rand(len(tokens), model.graph.n_edges, generator=gen) > 0.5).float()
    with torch.no_grad():
        together = model(tokens, masks, ablated)
        for i in range(len(tokens)):
            alone = model(tokens[i : i + 1], masks[i], ablated[i : i + 1])
            assert (together[i] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("at_ones", [False, True])
@pytest.mark.parametrize("per_example", [False, True])
def test_mask_gradient_matches_finite_differences(per_example, at_ones, tokens, counterfactual):
    """At a random mask (Edge Pruning) and at all ones (EAP), where nothing is removed."""
    model = random_model(dtype=torch.float64)
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    n = model.graph.n_edges
    gen = torch.Generator().manual_seed(4)
    shape = (len(tokens), n) if per_example else (n,)
    mask = torch.rand(shape, generator=gen, dtype=torch.float64)
    if at_ones:
        mask = torch.ones_like(mask)
    weights = torch.randn(model.cfg.d_vocab_out, generator=gen, dtype=torch.float64)

    def metric(m):
        return (model(tokens, m, ablated)[:, -1] @ weights).sum()

    m = mask.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric(m), m)
    eps = 1e-6
    flat = mask.view(-1)
    check = torch.randperm(flat.numel(), generator=gen)[:16]
    for i in check.tolist():
        up, down = flat.clone(), flat.clone()
        up[i] += eps
        down[i] -= eps
        with torch.no_grad():
            fd = (metric(up.view(shape)) - metric(down.view(shape))) / (2 * eps)
        assert abs(fd - grad.view(-1)[i]) <= 1e-6 * max(1.0, abs(fd))


def test_reader_input_gradients_give_the_mask_gradient(tokens, counterfactual):
    """At m = 1, d metric / d m_e = (a - a~)_src . d metric / d x_reader.

    So EAP's score, (a~ - a) . grad, is minus the mask gradient: one backward gives either.
    """
    model = random_model(dtype=torch.float64)
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    ones = torch.ones(model.graph.n_edges, dtype=torch.float64, requires_grad=True)
    out = model.run(tokens, ones, ablated, return_sources=True, return_reader_inputs=True)
    metric = out.logits[:, -1, :3].sum()
    grads = torch.autograd.grad(metric, [ones, *out.reader_inputs])
    from_readers = model.edge_scores(out.sources.detach() - ablated, list(grads[1:]))
    assert torch.allclose(grads[0], from_readers, atol=1e-10, rtol=1e-8)
    assert grads[0].abs().max() > 1e-3


def test_hooks_use_transformer_lens_names(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    for name in [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_result",
        "blocks.0.attn.hook_pattern",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_q_input",
        "blocks.1.hook_resid_post",
    ]:
        assert name in cache
    assert cache["blocks.0.attn.hook_result"].shape == (4, 7, 3, 16)
    assert cache["blocks.0.attn.hook_pattern"].shape == (4, 3, 7, 7)
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(4, 3, 7))


def test_zeroing_a_head_by_hook_equals_removing_its_edges_under_zero_ablation(tiny, tokens):
    model = tiny

    def kill(result, hook):
        result = result.clone()
        result[:, :, 1] = 0
        return result

    hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", kill)])
    keep = torch.tensor([not name.startswith("a0.h1->") for name in model.graph.edge_names])
    masked = model(tokens, keep.float(), ablated_values(model, "zero", tokens))
    assert (hooked - masked).abs().max() <= 1e-5


def test_bad_inputs_get_clear_errors(tiny, tokens):
    n = tiny.graph.n_edges
    zeros = ablated_values(tiny, "zero", tokens)
    with pytest.raises(ValueError, match=rf"edge mask must have shape \({n},\)"):
        tiny(tokens, torch.ones(n + 1), zeros)
    with pytest.raises(ValueError, match="no ablated values"):
        tiny(tokens, torch.ones(n))
    with pytest.raises(ValueError, match="ablated values must have shape"):
        tiny(tokens, torch.ones(n), torch.zeros(1, 1, 3, 16))
    with pytest.raises(ValueError, match="token ids must lie"):
        tiny(torch.full((1, 3), 99))
    with pytest.raises(ValueError, match="exceeds the model's n_ctx"):
        tiny(torch.zeros(1, 40, dtype=torch.long))
    other = random_model(n_layers=1)
    with pytest.raises(ValueError, match="belongs to another graph"):
        tiny(tokens, Circuit.full(other.graph), zeros)
    # Another model of the very same shape: its circuits are not this model's.
    twin = random_model(name="twin")
    assert twin.graph.n_edges == n and twin.graph != tiny.graph
    with pytest.raises(ValueError, match=r"another graph \(twin: "):
        tiny(tokens, Circuit.full(twin.graph), zeros)
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny(tokens, torch.full((n,), float("nan")), zeros)
