"""Ablation values: each one computed independently and compared."""

from __future__ import annotations

import pytest
import torch

from circuitboard.ablation import ablated_values, derangement


def test_zero_and_counterfactual(tiny, tokens, counterfactual):
    zero = ablated_values(tiny, "zero", tokens)
    assert zero.shape == (1, 1, tiny.graph.n_sources, 16) and not zero.any()
    cf = ablated_values(tiny, "counterfactual", tokens, counterfactual=counterfactual)
    _, cache = tiny.run_with_cache(counterfactual)
    # source 1 is a0.h0; the last source is m1.
    assert torch.allclose(cf[:, :, 1], cache["blocks.0.attn.hook_result"][:, :, 0])
    assert torch.allclose(cf[:, :, -1], cache["blocks.1.hook_mlp_out"])


def test_mean_per_position_and_pooled(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    mlp = cache["blocks.0.hook_mlp_out"]  # source index 1 + 3 = 4
    mean = ablated_values(tiny, "mean", tokens)
    assert mean.shape == (1, 7, tiny.graph.n_sources, 16)
    assert torch.allclose(mean[0, :, 4], mlp.mean(0), atol=1e-6)
    pooled = ablated_values(tiny, "mean-pooled", tokens)
    assert torch.allclose(pooled[0, 0, 4], mlp.mean((0, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="length 7"):
        ablated_values(tiny, "mean", tokens, reference=[tokens[:, :5]])


def test_resample_takes_another_example_of_the_same_length(tiny, tokens):
    index = derangement(len(tokens), seed=0)
    assert (index != torch.arange(len(tokens))).all()
    assert sorted(index.tolist()) == list(range(len(tokens)))
    resampled = ablated_values(tiny, "resample", tokens, seed=0)
    _, cache = tiny.run_with_cache(tokens[index])
    assert torch.allclose(resampled[:, :, -1], cache["blocks.1.hook_mlp_out"])
    again = ablated_values(tiny, "resample", tokens, seed=0)
    assert torch.equal(resampled, again)


def test_unknown_ablation_is_named(tiny, tokens):
    with pytest.raises(ValueError, match="unknown ablation 'gaussian'"):
        ablated_values(tiny, "gaussian", tokens)
    with pytest.raises(ValueError, match="needs the task's counterfactual"):
        ablated_values(tiny, "counterfactual", tokens)
