"""from_tracr against tracr's own forward pass, on every input of several compiled programs."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("tracr", reason="the Tracr loader tests need tracr (pip install tracr-pypi)")
jax = pytest.importorskip("jax")

from circuitboard.groundtruth import data as gt_data  # noqa: E402
from circuitboard.groundtruth.compile import compiled  # noqa: E402
from circuitboard.groundtruth.derive import single_thread  # noqa: E402
from circuitboard.loaders.tracr import (  # noqa: E402
    UnsupportedTracrModel,
    decode,
    encode,
    from_tracr,
)

torch.set_flush_denormal(True)

# Categorical and 4 layers with padding; numerical and causal; two heads in one layer; numerical
# MLPs with every head dead; a categorical sort whose keys are floats.
PROGRAMS = ["reverse", "frac_prevs_causal", "pattern_abc", "numerical_map", "sort"]


@pytest.fixture(scope="module", params=PROGRAMS)
def pair(request):
    model = compiled(request.param)
    return model, model.assembled


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with single_thread():  # tiny models: threads only contend on a shared CPU
        yield


def _tracr_outputs(assembled, tokens: torch.Tensor, w_u: np.ndarray):
    """Tracr's residual output projected by tracr's unembedding, and tracr's own argmax/value.

    tracr's forward is compiled without XLA's expensive passes: the same computation, and the
    compile is what dominates for these tiny models.
    """
    x = np.asarray(tokens)
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    forward = jax.jit(assembled.forward).lower(assembled.params, x).compile(options)
    out = forward(assembled.params, x)
    final = np.asarray(out.transformer_output.output, dtype=np.float64)
    return final @ w_u.astype(np.float64), np.asarray(out.unembedded_output)


def _decisive(outputs: np.ndarray) -> np.ndarray:
    """Positions after BOS whose categorical output encodes a value (one-hot, margin >= 0.5).

    Elsewhere the RASP value is None (a default, e.g. before a shift), the output is zero up to
    float noise of ~1e-8, and tracr's argmax picks whichever noise is largest: those positions
    have no defined decoding, so they are checked to be zero instead.
    """
    top = np.sort(outputs, axis=-1)
    margin = top[..., -1] - (top[..., -2] if outputs.shape[-1] > 1 else 0.0)
    decisive = margin >= 0.5
    decisive[:, 0] = False  # BOS
    undecided = ~decisive
    undecided[:, 0] = False
    assert np.abs(outputs[undecided]).max(initial=0.0) < 1e-6
    return decisive


def test_logits_equal_tracr_on_every_input(pair):
    model, assembled = pair
    w_u = model.unembed.W_U.detach().numpy()
    groups = gt_data.token_groups(model)
    lengths = [g.shape[1] - 1 for g in groups]
    assert lengths == list(range(1, model.program["max_seq_len"] + 1))
    worst = 0.0
    for tokens in groups:
        ours = model(tokens).detach().double().numpy()
        projected, unembedded = _tracr_outputs(assembled, tokens, w_u)
        worst = max(worst, float(np.abs(ours - projected).max()))
        if model.tracr_info["categorical"]:
            decisive = _decisive(projected)
            np.testing.assert_array_equal(ours.argmax(-1)[decisive], unembedded[decisive])
        else:
            np.testing.assert_allclose(ours[..., 0], unembedded, atol=1e-5, rtol=0)
    assert worst <= 1e-5, f"max |ours - tracr| = {worst}"


def test_decoded_outputs_equal_tracr_apply(pair):
    model, assembled = pair
    info = model.tracr_info
    gen = torch.Generator().manual_seed(0)
    tokens = gt_data.token_groups(model)[-1]  # the longest (apply compiles per length)
    for row in tokens[torch.randperm(len(tokens), generator=gen)[:8]]:
        raw = [info["input_tokens"][i] for i in row.tolist()]
        expected = assembled.apply(raw).decoded
        logits = model(row[None])
        ours = decode(info, logits)[0]
        if info["categorical"]:
            keep = [0] + np.flatnonzero(_decisive(logits.detach().numpy())[0]).tolist()
            assert [ours[i] for i in keep] == [expected[i] for i in keep]
        else:
            assert ours[0] == expected[0]
            np.testing.assert_allclose(ours[1:], expected[1:], atol=1e-5, rtol=0)


def test_output_space_is_the_output_variable(pair):
    model, assembled = pair
    info = model.tracr_info
    w_u = model.unembed.W_U.detach()
    # One output per categorical value (1 for numerical), each reading one labelled dimension.
    enc = assembled.output_encoder
    n_out = len(enc.encoding_map) if info["categorical"] else 1
    assert model.cfg.d_vocab_out == n_out == len(info["output_labels"])
    assert torch.equal(w_u.ne(0).sum(0), torch.ones(n_out, dtype=torch.long))
    labels = info["residual_labels"]
    assert [labels[i] for i in w_u.argmax(0).tolist()] == info["output_labels"]
    names = {label.split(":")[0] for label in info["output_labels"]}
    assert len(names) == 1 and not names & {"tokens", "indices", "one"}
    if info["categorical"]:
        values = [label.split(":", 1)[1] for label in info["output_labels"]]
        assert values == [str(v) for v in info["output_values"]]
    # Configuration read from tracr.
    mc = assembled.model_config
    assert model.cfg.causal == mc.causal and model.cfg.n_heads == mc.num_heads
    assert model.cfg.attn_scale == pytest.approx(np.sqrt(mc.key_size))
    assert model.cfg.n_ctx == model.program["max_seq_len"] + 1
    assert model.cfg.d_mlp == mc.mlp_hidden_size and model.cfg.normalization is None


def test_dead_nodes_are_exactly_the_zero_weight_ones(pair):
    model, assembled = pair
    mc, params = assembled.model_config, assembled.params
    ks = mc.key_size
    expected = set()
    for layer in range(mc.num_layers):
        p = {k.split("/")[-1]: v for k, v in params.items() if f"layer_{layer}/attn/" in k}
        for h in range(mc.num_heads):
            cols = slice(h * ks, (h + 1) * ks)
            parts = [np.asarray(p[n]["w"])[:, cols] for n in ("query", "key", "value")]
            parts += [np.asarray(p[n]["b"])[cols] for n in ("query", "key", "value")]
            parts.append(np.asarray(p["linear"]["w"])[cols])
            if not any(np.any(x) for x in parts):
                expected.add(f"a{layer}.h{h}")
        mlp = [
            np.asarray(v[k])
            for n, v in params.items()
            if f"layer_{layer}/mlp/" in n
            for k in ("w", "b")
        ]
        if not any(np.any(x) for x in mlp):
            expected.add(f"m{layer}")
    assert set(model.cfg.dead) == expected
    assert set(model.graph.dead) == expected
    # Dead nodes carry no edges, and every live node has some.
    for name in model.graph.edge_names:
        src, reader = name.split("->")
        assert src not in expected and model.graph.reader_node(reader) not in expected


def test_encode_prepends_bos_and_rejects_unknown_tokens():
    model = compiled("reverse")
    info = model.tracr_info
    tokens = encode(info, [[3, 1, 2]])
    assert tokens[0, 0] == info["bos_id"]
    assert [info["input_tokens"][i] for i in tokens[0, 1:].tolist()] == [3, 1, 2]
    assert torch.equal(encode(info, [["BOS", 3, 1, 2]]), tokens)
    with pytest.raises(ValueError, match="not in this model's vocabulary"):
        encode(info, [[4, 1]])
    with pytest.raises(ValueError, match="one length"):
        encode(info, [[1], [1, 2]])


def _variant(assembled, **config):
    other = copy.copy(assembled)
    other.model_config = dataclasses.replace(assembled.model_config, **config)
    return other


def test_unsupported_features_raise_clear_errors():
    assembled = compiled("frac_prevs").assembled
    with pytest.raises(UnsupportedTracrModel, match="layer_norm=True"):
        from_tracr(_variant(assembled, layer_norm=True))
    with pytest.raises(UnsupportedTracrModel, match="activation"):
        from_tracr(_variant(assembled, activation_function=jax.nn.gelu))
    edited = copy.copy(assembled)
    edited.params = {**assembled.params, "compressed_transformer": {"w_emb": np.zeros((2, 2))}}
    with pytest.raises(UnsupportedTracrModel, match="compressed_transformer"):
        from_tracr(edited)
    no_encoder = copy.copy(assembled)
    no_encoder.input_encoder = None
    with pytest.raises(UnsupportedTracrModel, match="BOS"):
        from_tracr(no_encoder)
    with pytest.raises(TypeError, match="AssembledTransformerModel"):
        from_tracr(object())
