"""Tracr models: a compiled ``AssembledTransformerModel`` as a PatchableTransformer.

Tracr compiles a RASP program into a transformer without LayerNorm, with ReLU MLPs, one-hot token
and position embeddings, and a residual stream whose every dimension has a label such as
``tokens:3`` or ``reverse_1:2``. The conversion is exact:

- ``transformer/layer_i/attn`` and ``transformer/layer_i/mlp`` become our layer ``i``. Haiku's
  linears carry biases; tracr zeroes them, and we copy them anyway.
- Attention scores are divided by ``sqrt(key_size)``, where ``key_size`` is tracr's *padded* key
  size (``MultiHeadAttention`` divides by ``np.sqrt(self.key_size)``). Our ``d_head`` is that
  size; if a value size differs, the smaller of the two is zero-padded and the scale stays
  ``sqrt(key_size)``.
- Position 0 (BOS) has an all-zero position embedding, so ``n_ctx = max_seq_len + 1``.
- The unembedding is tracr's own projection of the residual stream onto the output variable's
  dimensions, read from tracr's unembed module, so ``d_vocab_out`` is the number of output values
  (categorical) or 1 (numerical). Tracr then takes an argmax (categorical) or the value itself.
- Zero-weight heads and MLPs (tracr pads layers to a common shape) are dead nodes.

What a task needs to encode inputs and decode outputs is kept on ``model.tracr_info``, a plain
JSON-able dict (see ``tracr_info``); ``encode`` and ``decode`` use it and import nothing of tracr.
This module imports neither jax nor tracr at import time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from circuitboard.model import ModelConfig, PatchableTransformer

EXPECTED_PARAMS = ("pos_embed", "token_embed")
LAYER_MODULES = (
    "attn/query",
    "attn/key",
    "attn/value",
    "attn/linear",
    "mlp/linear_1",
    "mlp/linear_2",
)


class UnsupportedTracrModel(ValueError):
    """The tracr model uses a feature that has no exact PatchableTransformer equivalent."""


def from_tracr(assembled_model, name: str = "") -> PatchableTransformer:
    """Convert a compiled tracr ``AssembledTransformerModel``; ``model.tracr_info`` has its I/O."""
    _check_supported(assembled_model)
    params = {
        k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in assembled_model.params.items()
    }
    mc = assembled_model.model_config
    n_layers, n_heads, key_size = mc.num_layers, mc.num_heads, mc.key_size
    w_e = params["token_embed"]["embeddings"]
    w_pos = params["pos_embed"]["embeddings"]
    d_model = w_e.shape[1]
    value_size = params["transformer/layer_0/attn/value"]["w"].shape[1] // n_heads
    d_head = max(key_size, value_size)
    w_u = tracr_unembedding(assembled_model, d_model)
    cfg = ModelConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        d_vocab=w_e.shape[0],
        n_ctx=w_pos.shape[0],
        d_mlp=mc.mlp_hidden_size,
        d_vocab_out=w_u.shape[1],
        normalization=None,
        act_fn="relu",
        causal=bool(mc.causal),
        attn_scale=math.sqrt(key_size),
        name=name,
    )
    state = {
        "embed.W_E": w_e,
        "pos_embed.W_pos": w_pos,
        "unembed.W_U": w_u,
        "unembed.b_U": np.zeros(w_u.shape[1]),
    }
    for layer in range(n_layers):
        state.update(_layer_state(params, layer, n_heads, key_size, value_size, d_head))
    model = PatchableTransformer(cfg)
    model.load_state_dict(
        {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in state.items()}, strict=True
    )
    dead = dead_nodes(model)
    if dead:
        cfg.dead = sorted(dead)
        model.__dict__.pop("graph", None)  # the cached graph must see the dead nodes
    model.tracr_info = tracr_info(assembled_model, w_u)
    return model.eval()


def _check_supported(assembled) -> None:
    mc = getattr(assembled, "model_config", None)
    params = getattr(assembled, "params", None)
    if mc is None or params is None:
        raise TypeError(
            f"from_tracr expects a compiled tracr AssembledTransformerModel (from "
            f"tracr.compiler.compiling.compile_rasp_to_model), got {type(assembled).__name__}"
        )
    if mc.layer_norm:
        raise UnsupportedTracrModel(
            "this tracr model has layer_norm=True; tracr's compiler never sets it and the "
            "compiled weights assume no normalisation. Set model_config.layer_norm = False or "
            "compile the program again"
        )
    import jax

    if mc.activation_function is not jax.nn.relu:
        raise UnsupportedTracrModel(
            f"this tracr model uses activation {mc.activation_function!r}; only jax.nn.relu "
            f"(what tracr's compiler emits) converts exactly"
        )
    if getattr(mc, "dropout_rate", 0.0):
        raise UnsupportedTracrModel("dropout_rate must be 0 for a compiled tracr model")
    expected = set(EXPECTED_PARAMS)
    for layer in range(mc.num_layers):
        expected |= {f"transformer/layer_{layer}/{m}" for m in LAYER_MODULES}
    extra = sorted(set(params) - expected)
    missing = sorted(expected - set(params))
    if extra or missing:
        raise UnsupportedTracrModel(
            f"unexpected tracr parameter layout (a compressed or edited model?): extra "
            f"{extra[:4]}, missing {missing[:4]}; from_tracr converts the plain output of "
            f"compile_rasp_to_model"
        )
    enc = assembled.input_encoder
    if enc is None or getattr(enc, "bos_token", None) is None:
        raise UnsupportedTracrModel(
            "the model has no categorical input encoder with a BOS token; compile with "
            "compiler_bos set (tracr's default)"
        )
    if assembled.output_encoder is None:
        raise UnsupportedTracrModel("the model has no output encoder; tracr always sets one")


def tracr_unembedding(assembled, d_model: int) -> np.ndarray:
    """Tracr's own residual -> output projection ``[d_model, d_out]``, read by unembedding I."""
    import haiku as hk
    import jax.numpy as jnp

    def unembed(x):
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    out = np.asarray(hk.transform(unembed).apply({}, None, jnp.eye(d_model)))
    return out.reshape(d_model, -1)


def _split_heads(w: np.ndarray, n_heads: int, size: int, d_head: int) -> np.ndarray:
    """``[d, H*size]`` -> ``[H, d, d_head]`` with zero padding past ``size``."""
    d = w.shape[0]
    out = np.zeros((n_heads, d, d_head), dtype=w.dtype)
    out[:, :, :size] = w.reshape(d, n_heads, size).transpose(1, 0, 2)
    return out


def _split_bias(b: np.ndarray, n_heads: int, size: int, d_head: int) -> np.ndarray:
    out = np.zeros((n_heads, d_head), dtype=b.dtype)
    out[:, :size] = b.reshape(n_heads, size)
    return out


def _layer_state(params, layer, n_heads, key_size, value_size, d_head) -> dict:
    p = lambda m: params[f"transformer/layer_{layer}/{m}"]  # noqa: E731
    d = p("attn/linear")["w"].shape[1]
    w_o = np.zeros((n_heads, d_head, d), dtype=np.float32)
    w_o[:, :value_size] = p("attn/linear")["w"].reshape(n_heads, value_size, d)
    pre = f"blocks.{layer}."
    return {
        pre + "attn.W_Q": _split_heads(p("attn/query")["w"], n_heads, key_size, d_head),
        pre + "attn.W_K": _split_heads(p("attn/key")["w"], n_heads, key_size, d_head),
        pre + "attn.W_V": _split_heads(p("attn/value")["w"], n_heads, value_size, d_head),
        pre + "attn.b_Q": _split_bias(p("attn/query")["b"], n_heads, key_size, d_head),
        pre + "attn.b_K": _split_bias(p("attn/key")["b"], n_heads, key_size, d_head),
        pre + "attn.b_V": _split_bias(p("attn/value")["b"], n_heads, value_size, d_head),
        pre + "attn.W_O": w_o,
        pre + "attn.b_O": p("attn/linear")["b"],
        pre + "mlp.W_in": p("mlp/linear_1")["w"],
        pre + "mlp.b_in": p("mlp/linear_1")["b"],
        pre + "mlp.W_out": p("mlp/linear_2")["w"],
        pre + "mlp.b_out": p("mlp/linear_2")["b"],
    }


def dead_nodes(model: PatchableTransformer) -> set[str]:
    """Heads and MLPs all of whose weights and biases are zero (tracr's padding)."""
    dead = set()
    for layer, block in enumerate(model.blocks):
        a = block.attn
        for h in range(model.cfg.n_heads):
            parts = (a.W_Q[h], a.W_K[h], a.W_V[h], a.W_O[h], a.b_Q[h], a.b_K[h], a.b_V[h])
            if all(not bool(t.any()) for t in parts):
                dead.add(f"a{layer}.h{h}")
        m = block.mlp
        if all(not bool(t.any()) for t in (m.W_in, m.b_in, m.W_out, m.b_out)):
            dead.add(f"m{layer}")
    return dead


def tracr_info(assembled, w_u: np.ndarray) -> dict:
    """Everything needed to encode inputs and decode outputs, as plain JSON-able values.

    - ``residual_labels``: one label per residual dimension.
    - ``input_tokens``: the token of each input id (BOS and PAD included); ``bos_id``, ``pad_id``.
    - ``output_labels``: the residual label each output dimension reads.
    - ``categorical``; ``output_values``: the value of each output dimension (categorical) or None.
    - ``max_seq_len``: the longest input without BOS.
    """
    enc = assembled.input_encoder
    by_id = sorted(enc.encoding_map.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UnsupportedTracrModel("the input encoding is not a dense range of ids")
    labels = list(assembled.residual_labels)
    rows = [np.flatnonzero(w_u[:, j]) for j in range(w_u.shape[1])]
    if any(len(r) != 1 for r in rows):
        raise UnsupportedTracrModel("tracr's unembedding is not a projection onto labelled dims")
    out_enc = assembled.output_encoder
    categorical = hasattr(out_enc, "encoding_map")
    values = None
    if categorical:
        inverse = {i: v for v, i in out_enc.encoding_map.items()}
        values = [_plain(inverse[j]) for j in range(w_u.shape[1])]
    max_len = getattr(enc, "_max_seq_len", None)
    return {
        "residual_labels": labels,
        "input_tokens": [_plain(t) for t, _ in by_id],
        "bos_id": int(enc.bos_encoding),
        "pad_id": None if enc.pad_encoding is None else int(enc.pad_encoding),
        "output_labels": [labels[int(r[0])] for r in rows],
        "categorical": categorical,
        "output_values": values,
        "max_seq_len": None if max_len is None else int(max_len) - 1,
    }


def _plain(value):
    """Token and output values must survive JSON unchanged (ints, floats, strings, bools)."""
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, bool | int | float | str):
        raise UnsupportedTracrModel(
            f"value {value!r} of type {type(value).__name__} cannot be stored; use ints, floats, "
            f"strings or bools as RASP values"
        )
    return value


# ---------------------------------------------------------------------- encode and decode
def encode(info: dict, sequences: Sequence[Sequence]) -> torch.Tensor:
    """Token ids ``[n, 1 + len]`` for equal-length sequences of raw tokens; BOS is prepended."""
    ids = {t: i for i, t in enumerate(info["input_tokens"])}
    bos = info["input_tokens"][info["bos_id"]]
    out = []
    for seq in sequences:
        seq = list(seq)
        if seq and seq[0] == bos:
            seq = seq[1:]
        unknown = [t for t in seq if t not in ids or t == bos]
        if unknown:
            raise ValueError(
                f"tokens {unknown} are not in this model's vocabulary "
                f"{[t for t in info['input_tokens'] if t != bos]}"
            )
        out.append([info["bos_id"]] + [ids[t] for t in seq])
    if len({len(r) for r in out}) > 1:
        raise ValueError("encode takes sequences of one length; group them by length first")
    return torch.tensor(out, dtype=torch.long)


def decode(info: dict, logits: torch.Tensor) -> list[list]:
    """Tracr's decoding of ``[n, pos, d_out]`` outputs: argmax value or number, BOS first."""
    bos = info["input_tokens"][info["bos_id"]]
    if info["categorical"]:
        values = info["output_values"]
        idx = logits.argmax(-1).tolist()
        return [[bos] + [values[i] for i in row[1:]] for row in idx]
    return [[bos] + row[1:] for row in logits[..., 0].tolist()]
