"""ACDC: the fast path makes the reference loop's decisions, and the loop follows ACDC's rule."""

from __future__ import annotations

import pytest
import torch
from test_methods_helpers import one_thread, random_model, random_task  # noqa: F401

from circuitboard.methods.acdc import ACDC

CASES = [
    # (model kwargs, task kwargs, ablation, divergence, abs_value, taus)
    ({}, {"lengths": (5, 4)}, "counterfactual", "kl", False, (1e-3, 1e-2, 0.05, 0.2)),
    ({"attn_only": True, "n_layers": 3}, {"lengths": (6,)}, "zero", "kl", False, (1e-3, 0.03)),
    ({"normalization": None}, {"lengths": (5,)}, "mean", "task", True, (1e-3, 0.02, 0.1)),
    ({}, {"lengths": (4,), "metric": "l2"}, "counterfactual", "l2", False, (1e-4, 1e-2)),
]


@pytest.mark.parametrize("model_kw,task_kw,ablation,divergence,abs_value,taus", CASES)
def test_fast_acdc_equals_reference(model_kw, task_kw, ablation, divergence, abs_value, taus):
    model = random_model(21, **model_kw)
    task = random_task(model, 22, **task_kw)
    sizes = set()
    for tau in taus:
        ref = ACDC(fast=False, divergence=divergence, abs_value=abs_value).run(
            model, task, tau, ablation
        )
        for window in (1, 3, 32):
            fast = ACDC(window=window, divergence=divergence, abs_value=abs_value).run(
                model, task, tau, ablation
            )
            assert torch.equal(fast.keep, ref.keep), (tau, window)
            assert fast.info["final_metric"] == pytest.approx(ref.info["final_metric"], abs=1e-9)
        sizes.add(ref.n_kept)
    assert len(sizes) > 1  # the thresholds give different circuits, so the check has teeth


def test_fast_acdc_is_exact_around_zero_weight_nodes():
    # Tracr pads with heads and MLPs whose weights are all zero (outputs and ablated values
    # exactly zero). A zero head between live ones and a zero MLP sit among the live ones.
    model = random_model(31, n_heads=3, n_layers=3)
    with torch.no_grad():
        attn = model.blocks[1].attn
        for t in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O, attn.b_Q, attn.b_K, attn.b_V):
            t[1].zero_()
        for t in model.blocks[0].mlp.parameters():
            t.zero_()
    task = random_task(model, 32, lengths=(5, 3))
    for ablation in ("counterfactual", "mean"):
        for tau in (1e-3, 0.03):
            ref = ACDC(fast=False).run(model, task, tau, ablation)
            fast = ACDC().run(model, task, tau, ablation)
            assert torch.equal(fast.keep, ref.keep), (ablation, tau)


def test_reference_pass_count_and_fast_saving():
    model = random_model(23)
    task = random_task(model, 24, lengths=(5, 4))
    ref = ACDC(fast=False).run(model, task, 0.02)
    fast = ACDC().run(model, task, 0.02)
    n_batches = len(task.train)
    # The reference runs one forward per batch per tested edge, plus the counterfactual, full
    # and all-kept passes per batch and the initial metric.
    tested = ref.info["cost"]["forward"] // n_batches - 4
    assert 0 < tested <= model.graph.n_edges
    assert fast.info["cost"]["forward"] < ref.info["cost"]["forward"]


def test_extreme_thresholds():
    model = random_model(25)
    task = random_task(model, 26, lengths=(5,))
    everything = ACDC().run(model, task, float("inf"))
    assert not everything.keep.any()  # every removal passes; then every node is disconnected
    nothing = ACDC().run(model, task, -float("inf"))
    assert nothing.keep.all()  # result < -inf never holds
    assert ACDC(fast=False).run(model, task, float("inf")) == everything


def test_a_head_that_writes_nothing_is_removed_with_its_inputs():
    # a1.h0 has W_O = 0, so its output and its ablated value are both zero: removing any of its
    # outgoing edges changes nothing (result exactly 0 < tau), and once it has no outgoing edge
    # its q, k and v inputs are removed without a test, as ACDC does for disconnected nodes.
    model = random_model(27)
    with torch.no_grad():
        model.blocks[1].attn.W_O[0].zero_()
    task = random_task(model, 28, lengths=(5,))
    for fast in (True, False):
        circuit = ACDC(fast=fast).run(model, task, 1e-12)
        touching = [name for name in circuit.edges if "a1.h0" in name]
        assert touching == []
        assert circuit.n_kept > 0


def test_find_circuits_returns_the_largest_circuit_within_each_size():
    """The at-most-budget rule: for size k, the largest swept circuit of size <= k after
    pruning, else the empty circuit; never the nearest larger one."""
    model = random_model(29)
    task = random_task(model, 30, lengths=(5,))
    method = ACDC(thresholds=(1e-4, 1e-2, 0.05, 0.3, 10.0))
    swept = [c.size for c in method.sweep(model, task)]
    smallest = min(s for s in swept if s > 0)
    between = sorted(set(swept))[-2] + 1  # just above the second-largest size
    requested = [0, smallest - 1, smallest, between, model.graph.n_edges]
    circuits = method.find_circuits(model, task, requested)
    assert [t for t, _ in circuits[0].info["sweep"]] == [1e-4, 1e-2, 0.05, 0.3, 10.0]
    assert [s for _, s in circuits[0].info["sweep"]] == swept
    for c, k in zip(circuits, requested, strict=True):
        fits = [s for s in swept if s <= k]
        assert c.size == (max(fits) if fits else 0) <= k
        assert c.info["size"] == c.size and c.info["requested"] == k
        assert "forward" in c.info["cost"]
    assert circuits[1].n_kept == 0 and circuits[1].info["tau"] == 10.0  # the empty sweep circuit
    assert circuits[3].size == sorted(set(swept))[-2] < between
    # no swept circuit fits: the empty circuit, with no threshold
    alone = ACDC(thresholds=(1e-4,))
    size = alone.sweep(model, task)[0].size
    (empty,) = alone.find_circuits(model, task, [size - 1])
    assert empty.n_kept == 0 and empty.info["tau"] is None and empty.info["size"] == 0
    with pytest.raises(ValueError, match="outside"):
        method.find_circuits(model, task, [model.graph.n_edges + 1])
    with pytest.raises(ValueError, match="divergence"):
        ACDC(divergence="js")


MODERN = {
    "llama": dict(n_heads=4, n_kv_heads=2, normalization="RMS", positional="rotary"),
    "gemma": dict(
        n_heads=4,
        n_kv_heads=2,
        normalization="RMS",
        positional="rotary",
        gated_mlp=True,
        post_norms=True,
        attn_softcap=3.0,
        final_softcap=4.0,
        sliding_window=3,
        sliding_layers=[0],
    ),
    "pythia": dict(n_heads=4, positional="rotary", rotary_dim=2, parallel_attn_mlp=True),
}


@pytest.mark.parametrize("family", list(MODERN))
def test_fast_acdc_equals_reference_on_modern_decoders(family):
    """The partial passes serve RoPE, GQA, gated MLPs, post-norms, soft-caps, windows and
    parallel blocks: same decisions as full patched passes."""
    from conftest import random_model as engine_model

    model = engine_model(40, dtype=torch.float64, d_vocab=10, **MODERN[family])
    task = random_task(model, 41, lengths=(5, 4))
    sizes = set()
    for tau in (1e-3, 0.03):
        ref = ACDC(fast=False).run(model, task, tau, "counterfactual")
        fast = ACDC().run(model, task, tau, "counterfactual")
        assert torch.equal(fast.keep, ref.keep), tau
        sizes.add(ref.n_kept)
    assert len(sizes) > 1


def test_acdc_kl_loss_is_the_metrics_kl():
    """ACDC computes KL(full || state) with the full side cached; it is metrics.kl_divergence."""
    from circuitboard.methods.acdc import _Context
    from circuitboard.methods.base import Cost, divergence

    model = random_model(33)
    task = random_task(model, 34, lengths=(5, 4))
    ctx = _Context(model, task, "counterfactual", 0, "kl", Cost())
    gen = torch.Generator().manual_seed(35)
    for bc in ctx.batches:
        logits = bc.full.repeat(3, 1, 1) + torch.randn(
            3 * bc.n, *bc.full.shape[1:], generator=gen, dtype=bc.full.dtype
        )
        ours = ctx.losses(logits, bc, 3)
        reference = divergence("kl", bc.full.repeat(3, 1, 1), logits, task.positions)
        assert torch.allclose(ours, reference.double(), rtol=1e-9, atol=1e-12)
        assert ours.min() > 1e-3
        assert ctx.losses(bc.full, bc, 1).abs().max() <= 1e-12
