"""SIIT's parts against references: interchanges against TransformerLens hooks, the IIT and
strictness losses on hand-built models, the alignment against hand-derived edges, determinism.

The shipped planted models are tested in tests/test_planted_shipped.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from circuitboard.groundtruth import derive
from circuitboard.groundtruth import store as tracr_store
from circuitboard.groundtruth.planted import alignment, functional, siit, train
from circuitboard.groundtruth.planted.specs import SPECS
from circuitboard.model import PatchableTransformer

torch.set_flush_denormal(True)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with derive.single_thread():
        yield


def _tracr_resample(name: str) -> list[str]:
    return tracr_store.read_circuits(name)["circuits"]["resample"]["edges"]


# ------------------------------------------------------------------------ hand-built models
def rotated(model: PatchableTransformer, seed: int = 0) -> PatchableTransformer:
    """The same function with its residual stream rotated by a random orthogonal matrix.

    Tracr's model has no LayerNorm, so ``x -> x Q`` everywhere (embeddings and writes times Q,
    reads times Q^T) computes exactly what it did, in a dense basis where no residual dimension
    belongs to one variable: a hand-built model that implements the program, unlike Tracr's
    layout. Built in float64.
    """
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    out = PatchableTransformer(model.cfg).double()
    out.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        out.embed.W_E.copy_(out.embed.W_E @ q)
        out.pos_embed.W_pos.copy_(out.pos_embed.W_pos @ q)
        for block in out.blocks:
            a = block.attn
            for w in (a.W_Q, a.W_K, a.W_V):
                w.copy_(q.T @ w)
            a.W_O.copy_(a.W_O @ q)
            a.b_O.copy_(a.b_O @ q)
            block.mlp.W_in.copy_(q.T @ block.mlp.W_in)
            block.mlp.W_out.copy_(block.mlp.W_out @ q)
            block.mlp.b_out.copy_(block.mlp.b_out @ q)
        out.unembed.W_U.copy_(q.T @ out.unembed.W_U)
    out.tracr_info, out.program = model.tracr_info, model.program
    return out.eval()


def bypassing(model: PatchableTransformer) -> PatchableTransformer:
    """frac_prevs with the mean head reading the token ``x`` itself instead of ``is_x``: the
    same outputs, computed without the MLP that the HL graph says computes is_x."""
    labels = model.tracr_info["residual_labels"]
    is_x = next(i for i, lab in enumerate(labels) if lab.startswith("is_x"))
    token_x = labels.index("tokens:x")
    out = PatchableTransformer(model.cfg)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        w_v = out.blocks[1].attn.W_V
        w_v[0, token_x] = w_v[0, is_x]
        w_v[0, is_x] = 0
    out.tracr_info, out.program = model.tracr_info, model.program
    return out.eval()


@pytest.fixture(scope="module")
def frac_prevs():
    hl = tracr_store.load_model("frac_prevs").double()
    hl.tracr_info, hl.program = tracr_store.load_model("frac_prevs").tracr_info, hl.program
    groups = train.groups_of(hl)
    align = alignment.from_tracr(hl, _tracr_resample("frac_prevs"), hl.graph)
    return hl, groups, align, siit.readout_for(hl, groups)


def _pairs(groups):
    return siit.pairs(groups[-2:], seeds=(0, 1))


def test_iit_loss_is_zero_on_a_model_that_implements_the_program_and_large_otherwise(frac_prevs):
    hl, groups, align, readout = frac_prevs
    exact, wrong = rotated(hl), rotated(bypassing(hl.float()))
    assert align.hl_nodes == ("m0", "a1.h0")  # two steps: is_x, then its running mean
    for base, source in _pairs(groups):
        with torch.no_grad():
            # Both compute the program on every input: the behaviour loss cannot tell them apart.
            assert (exact(base) - hl(base)).abs().max() < 1e-6
            assert (wrong(base) - hl(base)).abs().max() < 1e-5
            assert readout.loss(wrong(base), hl(base)) < 1e-10
            assert siit.iit_loss(exact, hl, align, readout, base, source) < 1e-12
            # The bypassing model ignores the is_x MLP: interchanging it changes nothing there,
            # while the program's output follows the source's is_x.
            assert siit.iit_loss(wrong, hl, align, readout, base, source) > 1e-2


def test_strictness_loss_is_zero_when_only_the_planted_edges_compute(frac_prevs):
    hl, groups, align, readout = frac_prevs
    exact, wrong = rotated(hl), rotated(bypassing(hl.float()))
    inter = siit.Interchanges(align)
    gen = torch.Generator().manual_seed(0)
    for base, source in _pairs(groups):
        with torch.no_grad():
            masks = inter.strict_rows(len(base), 1.0, gen).double()
            for model, small in ((exact, True), (wrong, False)):
                out = model(base, masks, model.source_outputs(source))
                loss = float(readout.loss(out, hl(base)))
                # The bypass reads the token through input->a1.h0<v>, an edge outside the
                # planted circuit; ablating it moves the output.
                assert (loss < 1e-9) if small else (loss > 1e-3), (small, loss)


def test_interchange_mask_is_the_hooked_interchange():
    """An interchange by mask (resample ablation of every outgoing edge) against the same
    intervention made with TransformerLens hooks on the source's cached activations."""
    model = random_model(seed=3).double()
    gen = torch.Generator().manual_seed(4)
    base = torch.randint(0, 20, (5, 6), generator=gen)
    source = torch.randint(0, 20, (5, 6), generator=gen)
    _, cache = model.run_with_cache(source)
    ablated = model.source_outputs(source)

    def patch(name, head):
        def fn(act, hook):
            act = act.clone()
            if head is None:
                return cache[name]
            act[:, :, head] = cache[name][:, :, head]
            return act

        return fn

    for node, name, head in [
        ("a0.h1", "blocks.0.attn.hook_result", 1),
        ("m1", "blocks.1.hook_mlp_out", None),
    ]:
        mask = alignment.interchange_mask(model.graph, [node]).double()
        ours = model(base, mask, ablated)
        fn = patch(name, head)
        reference = model.run_with_hooks(base, fwd_hooks=[(name, fn)])
        assert (ours - reference).abs().max() < 1e-10
        assert (ours - model(base)).abs().max() > 1e-3  # the intervention does something


def test_alignment_of_hist_against_hand_derived_edges():
    hl = tracr_store.load_model("hist")
    ll = train.init_model(train.ll_config(SPECS["hist"], hl), 0)
    # 2 layers x 4 heads: layer 0 readers (12 attention + 1 MLP) read 1 and 5 sources, layer 1
    # readers 6 and 10, logits 11: 12 + 5 + 72 + 10 + 11.
    assert ll.graph.n_edges == 110
    align = alignment.from_tracr(hl, _tracr_resample("hist"), ll.graph)
    assert align.hl_nodes == ("a0.h0", "m0")
    assert align.planted_edges == (
        "input->a0.h0<q>",
        "input->a0.h0<k>",
        "a0.h0->m0",
        "m0->logits",
    )
    assert align.unaligned == ("a0.h1", "a0.h2", "a0.h3", "a1.h0", "a1.h1", "a1.h2", "a1.h3", "m1")
    mask = alignment.interchange_mask(ll.graph, ["a0.h0"])
    # a0.h0 feeds m0, the 12 readers of layer 1 and the logits
    assert int((mask == 0).sum()) == 1 + 12 + 1 + 1
    small = random_model(n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="at least the HL model's layers and heads"):
        alignment.from_tracr(tracr_store.load_model("sort"), _tracr_resample("sort"), small.graph)


def test_readout_decoding_and_losses():
    hl = tracr_store.load_model("frac_prevs")
    readout = siit.readout_for(hl, train.groups_of(hl))
    # frac_prevs outputs k/n, 0 <= k <= n <= 5: eleven distinct values
    expected = sorted({round(k / n, 4) for n in range(1, 6) for k in range(n + 1)})
    assert not readout.categorical and list(readout.values) == pytest.approx(expected, abs=1e-4)
    cat = siit.Readout(True)
    hl_out = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])  # BOS, value 0, undefined
    ll_out = torch.tensor([[[5.0, 0.0], [0.0, 3.0], [9.0, 0.0]]])
    # only the defined position is scored: cross-entropy of logits (0, 3) for class 0
    expected_ce = torch.log(1 + torch.exp(torch.tensor(3.0)))
    assert cat.loss(ll_out, hl_out) == pytest.approx(float(expected_ce), rel=1e-6)
    assert cat.agree(ll_out, hl_out).tolist() == [[False, True]]
    assert cat.interchange_hits(cat.agree(ll_out, hl_out)).tolist() == [0.0]
    num = siit.Readout(False, (0.2, 0.25, 1.0))
    ll = torch.tensor([[[9.0], [0.23], [0.6], [0.7]]])
    hl_num = torch.tensor([[[0.0], [0.2], [1.0], [1.0]]])
    # 0.23 is nearer 0.25 than 0.2; 0.6 is nearer 0.25 than 1.0; 0.7 is nearer 1.0
    assert num.agree(ll, hl_num).tolist() == [[False, False, True]]
    assert num.interchange_hits(num.agree(ll, hl_num)).tolist() == [pytest.approx(1 / 3)]
    assert siit.Readout.from_dict(num.to_dict()) == num


def test_single_edge_effects_against_direct_ablation():
    """The batched effects against one ablated forward per edge, computed the plain way."""
    hl = tracr_store.load_model("hist")
    model = train.init_model(train.ll_config(SPECS["hist"], hl), 5).eval()
    groups = train.groups_of(hl)[1:3]
    effects = functional.single_edge_effects(model, groups, "zero")
    graph = model.graph
    zero = torch.zeros(1, 1, graph.n_sources, model.cfg.d_model)
    sq, count = torch.zeros(graph.n_edges + 1, dtype=torch.float64), 0
    with torch.no_grad():
        for g in groups:
            clean = model(g)
            for e in range(graph.n_edges + 1):
                keep = torch.ones(graph.n_edges)
                keep[e if e < graph.n_edges else slice(None)] = 0
                sq[e] += (model(g, keep, zero) - clean)[:, 1:].double().pow(2).sum()
            count += clean[:, 1:].numel()
    reference = (sq[:-1] / count) / (sq[-1] / count)
    assert torch.allclose(effects, reference, rtol=1e-4, atol=1e-9)
    assert effects.max() > 0.01


def test_training_is_deterministic_and_seeded():
    spec = SPECS["hist"]
    a = train.train(spec, steps=3)
    b = train.train(spec, steps=3)
    assert a.losses == b.losses and a.data_hash == b.data_hash
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = train.train(spec, steps=3, seed=1)
    assert c.losses != a.losses and c.data_hash != a.data_hash
    cfg = a.model.cfg
    w0, w1 = train.init_model(cfg, 0).embed.W_E, train.init_model(cfg, 1).embed.W_E
    assert not torch.equal(w0, w1) and torch.equal(w0, train.init_model(cfg, 0).embed.W_E)


def test_a_causal_model_only_for_programs_that_read_prefixes():
    """frac_prevs (a running share) reads only prefixes; hist (counts over the whole input)
    does not, so a causal model for it is refused."""
    from dataclasses import replace

    frac = tracr_store.load_model("frac_prevs")
    hist = tracr_store.load_model("hist")
    assert train.reads_only_prefixes(frac, train.groups_of(frac))
    assert not train.reads_only_prefixes(hist, train.groups_of(hist))
    spec = replace(SPECS["hist"], causal=True)
    with pytest.raises(ValueError, match="read later tokens"):
        train.ll_config(spec, hist)
    assert train.ll_config(replace(spec, program="frac_prevs"), frac).causal
