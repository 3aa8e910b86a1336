"""The engine's modern-decoder features: invariants, hand-built patches, and mask gradients.

The HF comparisons live in test_loaders_hf_families.py; those hold every edge kept or every edge
removed, where each node reads either its clean or its counterfactual input. The tests here
check what happens in between, against references that do not share the code under test.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from circuitboard.ablation import ablated_values
from circuitboard.model import ModelConfig

LLAMA_LIKE = dict(
    n_heads=4,
    n_kv_heads=2,
    normalization="RMS",
    positional="rotary",
    rotary_base=100.0,
    gated_mlp=True,
    act_fn="silu",
)
GEMMA_LIKE = dict(
    LLAMA_LIKE,
    act_fn="gelu_new",
    post_norms=True,
    attn_softcap=3.0,
    final_softcap=4.0,
    sliding_window=3,
    sliding_layers=[0],
)
PYTHIA_LIKE = dict(n_heads=4, positional="rotary", rotary_dim=2, parallel_attn_mlp=True)
VARIANTS = {"llama": LLAMA_LIKE, "gemma": GEMMA_LIKE, "pythia": PYTHIA_LIKE}


def one_edge_removed(model, name):
    mask = torch.ones(model.graph.n_edges)
    mask[model.graph.edge_index[name]] = 0
    return mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_invariants_and_per_example_masks(variant, tokens, counterfactual):
    model = random_model(**VARIANTS[variant])
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    n = model.graph.n_edges
    gen = torch.Generator().manual_seed(3)
    masks = (torch.rand(len(tokens), n, generator=gen) > 0.5).float()
    with torch.no_grad():
        plain = model(tokens)
        assert torch.equal(model(tokens, torch.ones(n), ablated), plain)
        target = model(counterfactual)
        assert (model(tokens, torch.zeros(n), ablated) - target).abs().max() <= 1e-5
        together = model(tokens, masks, ablated)
        for i in range(len(tokens)):
            alone = model(tokens[i : i + 1], masks[i], ablated[i : i + 1])
            assert (together[i] - alone[0]).abs().max() <= 1e-5
        assert (together - plain).abs().max() > 1e-2  # the masks change the output


def ungrouped(model):
    """The same model with grouped-query attention written out: one key/value head per query
    head, each a copy of its group's (TransformerLens's ungroup_grouped_query_attention)."""
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "n_kv_heads": model.cfg.n_heads})
    out = type(model)(cfg).to(model.dtype)
    state = model.state_dict()
    group = model.cfg.kv_group
    for key, value in list(state.items()):
        if key.endswith(("attn.W_K", "attn.W_V", "attn.b_K", "attn.b_V")):
            state[key] = value.repeat_interleave(group, dim=0)
    out.load_state_dict(state)
    return out.eval()


@pytest.mark.parametrize("variant", ["llama", "gemma"])
def test_grouped_attention_equals_its_ungrouped_copy_under_any_mask(
    variant, tokens, counterfactual
):
    """Each query head's <k> and <v> reader projects its own input with its group's weights."""
    model = random_model(**VARIANTS[variant])
    flat = ungrouped(model)
    assert model.graph == flat.graph
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    gen = torch.Generator().manual_seed(5)
    masks = (torch.rand(len(tokens), model.graph.n_edges, generator=gen) > 0.3).float()
    with torch.no_grad():
        grouped_out = model(tokens, masks, ablated)
        flat_out = flat(tokens, masks, ablated)
        # one mask for the batch: readers with equal columns share one computed input
        circuit = masks[0] * (torch.rand(model.graph.n_edges, generator=gen) > 0.5)
        assert (
            model(tokens, circuit, ablated) - flat(tokens, circuit, ablated)
        ).abs().max() <= 1e-5
        # two query heads of one group read different keys when one of their <k> edges goes
        _, cache = model.run_with_cache(tokens, one_edge_removed(model, "input->a1.h1<k>"), ablated)
    assert (grouped_out - flat_out).abs().max() <= 1e-5
    k = cache["blocks.1.attn.hook_k"]  # [batch, pos, n_heads, d_head], heads 0 and 1 share W_K
    assert (k[:, :, 0] - k[:, :, 1]).abs().max() > 1e-3


def test_post_norm_share_of_a_head_by_hand(tokens, counterfactual):
    """With Gemma's post-attention norm a head's output is w * r_h / rms(sum_h r_h): removing
    a0.h1 -> a1.h0<q> makes that query read resid_pre1 minus the change in that share."""
    model = random_model(**GEMMA_LIKE)
    _, clean = model.run_with_cache(tokens)
    _, corrupt = model.run_with_cache(counterfactual)

    def share(cache, head):
        raw = cache["blocks.0.attn.hook_result"]  # [batch, pos, head, d], before the norm
        total = raw.sum(2)  # with a post-norm b_O is a fixed zero
        scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + model.cfg.ln_eps)
        return model.blocks[0].ln1_post.w * raw[:, :, head] * scale

    reader_input = clean["blocks.1.hook_resid_pre"] - (share(clean, 1) - share(corrupt, 1))

    def patch_query(q_input, hook):
        q_input = q_input.clone()
        q_input[:, :, 0] = reader_input
        return q_input

    reference = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_q_input", patch_query)])
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    patched = model(tokens, one_edge_removed(model, "a0.h1->a1.h0<q>"), ablated)
    assert (patched - reference).abs().max() <= 1e-5
    assert (patched - model(tokens)).abs().max() > 1e-3
    # the shares add up to what enters the stream
    total = sum(share(clean, h) for h in range(4))
    assert (total - clean["blocks.0.hook_attn_out"]).abs().max() <= 1e-5


def test_parallel_block_mlp_reads_the_layer_input(tokens, counterfactual):
    model = random_model(**PYTHIA_LIKE)
    names = set(model.graph.edge_names)
    assert "a0.h1->m0" not in names and "a0.h1->m1" in names and "m0->a1.h2<v>" in names
    _, clean = model.run_with_cache(tokens)
    _, corrupt = model.run_with_cache(counterfactual)
    # input -> m1: the MLP of layer 1 reads resid_pre1 - (embed - embed~), not resid_mid1
    assert "blocks.1.hook_resid_mid" not in clean
    mlp_input = clean["blocks.1.hook_resid_pre"] - (clean["hook_embed"] - corrupt["hook_embed"])
    reference = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_in", lambda x, hook: mlp_input)]
    )
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    patched = model(tokens, one_edge_removed(model, "input->m1"), ablated)
    assert (patched - reference).abs().max() <= 1e-5
    assert (patched - model(tokens)).abs().max() > 1e-3


def test_sliding_window_hides_keys_beyond_the_window(tokens):
    model = random_model(**GEMMA_LIKE)
    _, cache = model.run_with_cache(tokens)
    window = cache["blocks.0.attn.hook_pattern"]  # layer 0 slides (window 3)
    full = cache["blocks.1.attn.hook_pattern"]
    q, k = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    assert window[..., (q - k) >= 3].abs().max() == 0
    assert window[..., (q - k) == 2].min() > 0
    assert full[..., (q - k) >= 3].min() > 0


@pytest.mark.parametrize("variant", ["llama", "gemma", "pythia"])
def test_mask_gradient_matches_finite_differences(variant, tokens, counterfactual):
    """Central differences on a float64 model: RoPE, RMSNorm, GQA and a gated MLP (llama);
    Gemma's extras on top (gemma); partial rotary with a parallel block (pythia)."""
    model = random_model(dtype=torch.float64, **VARIANTS[variant])
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    n = model.graph.n_edges
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(n, generator=gen, dtype=torch.float64)
    weights = torch.randn(model.cfg.d_vocab_out, generator=gen, dtype=torch.float64)

    def metric(m):
        return (model(tokens, m, ablated)[:, -1] @ weights).sum()

    m = mask.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric(m), m)
    assert grad.abs().max() > 1e-3
    eps = 1e-6
    for i in torch.randperm(n, generator=gen)[:24].tolist():
        up, down = mask.clone(), mask.clone()
        up[i] += eps
        down[i] -= eps
        with torch.no_grad():
            fd = (metric(up) - metric(down)) / (2 * eps)
        assert abs(fd - grad[i]) <= 1e-6 * max(1.0, abs(fd))


def test_bad_modern_configs_are_refused():
    base = dict(n_layers=1, n_heads=4, d_model=8, d_head=2, d_vocab=5, n_ctx=4, d_mlp=8)
    with pytest.raises(ValueError, match="n_kv_heads must divide"):
        ModelConfig(**base, n_kv_heads=3)
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        ModelConfig(**base, positional="rotary", rotary_dim=3)
    with pytest.raises(ValueError, match="post_norms needs normalization='RMS'"):
        ModelConfig(**base, post_norms=True)
    with pytest.raises(ValueError, match="sliding_layers .* are not layers"):
        ModelConfig(**base, sliding_window=2, sliding_layers=[3])
    with pytest.raises(ValueError, match="positional must be one of"):
        ModelConfig(**base, positional="alibi")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_modern_checkpoint_round_trip_is_exact(variant, tmp_path, tokens):
    from circuitboard.loaders import checkpoint

    model = random_model(**VARIANTS[variant])
    checkpoint.save(model, tmp_path / "ckpt")
    loaded = checkpoint.load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
