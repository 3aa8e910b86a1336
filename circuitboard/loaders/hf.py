"""Decoder-only HF transformers models from a local directory: GPT-2, Pythia (GPT-NeoX), Llama,
Qwen2 and Gemma-2.

``from_hf(path)`` reads ``config.json`` with HF's config class (local files only: a path that does
not exist is an error, never a hub download) and the weights straight from ``*.safetensors``
(one file or a sharded index), so no HF model is built and nothing is unpickled; a directory
that holds only ``pytorch_model.bin`` is refused with a pointer to safetensors. ``from_hf`` also
takes an HF model object already in memory.

Each family has one converter from HF's parameter names to the engine's TransformerLens-style
ones. Every tensor is checked against the shape the config implies, and every tensor in the
files must be used, so a config that does not match its weights fails with the names of the
disagreeing tensors instead of loading a silently different model. A feature the engine does not
reproduce exactly (length-dependent RoPE scaling, an output bias inside Gemma-2's post-norm, ...)
is refused by name. Each family is tested against HF's own forward on a small random model
(max abs logit difference <= 1e-4 in float32).

What each converter folds (exactly, elementwise in float32):
- Gemma-2's RMSNorm gain ``1 + w`` into ``w``, and its embedding scale ``sqrt(d_model)`` into
  ``W_E`` (the unembedding keeps the unscaled, tied matrix);
- GPT-NeoX's fused ``query_key_value`` (per head: q, k, v) into per-head ``W_Q``/``W_K``/``W_V``;
- scaled RoPE (``llama3``, ``linear``) into explicit ``rotary_inv_freq`` computed by HF's own
  RoPE functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

from circuitboard.model import ModelConfig, PatchableTransformer

# HF activation names -> the engine's
ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# model_type -> (the causal-LM class, the prefix of its base model's weights)
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", "transformer."),
    "gpt_neox": ("GPTNeoXForCausalLM", "gpt_neox."),
    "llama": ("LlamaForCausalLM", "model."),
    "qwen2": ("Qwen2ForCausalLM", "model."),
    "gemma2": ("Gemma2ForCausalLM", "model."),
}
# buffers that some checkpoints carry and that are not weights
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "attention.bias", "attention.masked_bias")
IGNORED_SUFFIXES += ("rotary_emb.inv_freq",)


class UnsupportedModel(ValueError):
    """The model's architecture or one of its features has no exact engine equivalent."""


def from_hf(
    path_or_model, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> PatchableTransformer:
    """A PatchableTransformer from a local HF model directory (or an HF model object).

    ``device``: where the model goes (default: stays on the CPU, where it is built); ``dtype``:
    float32 by default, bfloat16 allowed for evaluation.
    """
    if isinstance(path_or_model, str | os.PathLike):
        config, tensors = read_directory(os.fspath(path_or_model))
    else:
        config = getattr(path_or_model, "config", None)
        if config is None or not hasattr(path_or_model, "state_dict"):
            raise TypeError(
                f"from_hf takes a local directory or an HF transformers model, got "
                f"{type(path_or_model).__name__}"
            )
        tensors = path_or_model.state_dict()
    model = convert(config, tensors, dtype=dtype)
    return model if device is None else model.to(device)


def convert_gpt2(hf_model) -> PatchableTransformer:
    """A GPT-2 ``GPT2LMHeadModel`` already in memory (kept for callers that build one)."""
    return convert(hf_model.config, hf_model.state_dict())


def read_directory(path: str) -> tuple[object, dict[str, torch.Tensor]]:
    """``(HF config, tensors)`` from a local directory, weights from safetensors only."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path} is not a directory; from_hf needs a local directory holding a model "
            f"(config.json and *.safetensors), as written by save_pretrained"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{path} has no config.json; from_hf needs a directory written by save_pretrained"
        )
    try:
        from transformers import AutoConfig
    except ImportError as err:
        raise ImportError(
            "loading an HF model needs HF transformers: pip install 'circuitboard[hf]'"
        ) from err
    with open(os.path.join(path, "config.json")) as f:
        try:
            model_type = json.load(f).get("model_type")
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}/config.json: not valid JSON ({err})") from None
    check_family(model_type, None, path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return config, read_safetensors(path)


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
        if missing:
            raise FileNotFoundError(f"{path}: the safetensors index names missing shards {missing}")
        files = shards
    if not files:
        pickles = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
        hint = (
            f" It holds {pickles}, pickled weights, which circuitboard never unpickles: load them "
            f"yourself and save_pretrained(..., safe_serialization=True)."
            if pickles
            else ""
        )
        raise FileNotFoundError(f"{path} holds no *.safetensors weights.{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(os.path.join(path, name), device="cpu"))
    return tensors


def check_family(model_type, architectures, where: str = "the model") -> None:
    if model_type not in FAMILIES:
        supported = ", ".join(f"{cls} ({t})" for t, (cls, _) in FAMILIES.items())
        raise UnsupportedModel(
            f"{where}: architecture {model_type!r} is not supported; from_hf converts {supported}"
        )
    expected = FAMILIES[model_type][0]
    other = [a for a in architectures or () if a != expected]
    if architectures and other:
        raise UnsupportedModel(
            f"{where}: config.json declares {architectures}; from_hf converts the causal LM "
            f"{expected} of the {model_type!r} family"
        )


def convert(config, tensors: Mapping[str, torch.Tensor], dtype=torch.float32):
    """The engine model for an HF ``config`` and its state dict (HF parameter names)."""
    model_type = getattr(config, "model_type", None)
    check_family(model_type, getattr(config, "architectures", None))
    weights = _Weights(tensors, FAMILIES[model_type][1])
    cfg, state = CONVERTERS[model_type](config, weights)
    weights.check_all_used()
    with torch.device("meta"):
        model = PatchableTransformer(cfg)
    expected = model.state_dict()
    wrong = sorted(
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    )
    missing = sorted(set(expected) - set(state))
    if wrong or missing:  # a converter bug, not a user error; say so plainly
        raise RuntimeError(f"converter for {model_type} built bad weights: {wrong} {missing}")
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def model_config(config) -> ModelConfig:
    """The engine's ModelConfig for an HF config, without any weights (e.g. to count edges)."""
    model_type = getattr(config, "model_type", None)
    check_family(model_type, getattr(config, "architectures", None))
    cfg, _ = CONVERTERS[model_type](config, _Shapes(FAMILIES[model_type][1]))
    return cfg


class _Weights:
    """HF tensors by name, each checked against the shape the config implies and marked used."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
        # Some checkpoints (the original GPT-2 upload) store the base model without its prefix.
        if tensors and not any(k.startswith(prefix) for k in tensors):
            tensors = {prefix + k: v for k, v in tensors.items()}
        self.tensors, self.prefix, self.used = tensors, prefix, set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, *shape: int) -> torch.Tensor:
        if name not in self.tensors:
            raise ValueError(
                f"config and weights disagree: the config needs {name} {tuple(shape)}, which "
                f"the weights do not have"
            )
        t = self.tensors[name]
        if tuple(t.shape) != shape:
            raise ValueError(
                f"config and weights disagree: {name} has shape {tuple(t.shape)}, the config "
                f"implies {shape}"
            )
        self.used.add(name)
        return t.detach().float()

    def base(self, name: str, *shape: int) -> torch.Tensor:
        return self.take(self.prefix + name, *shape)

    def check_all_used(self) -> None:
        extra = sorted(set(self.tensors) - self.used)
        if extra:
            raise ValueError(
                f"config and weights disagree: {len(extra)} tensor(s) have no place in a model "
                f"of this config, e.g. {extra[:4]}"
            )


class _Shapes(_Weights):
    """Stands in for the weights: every tensor exists, with the shape asked for (meta)."""

    def __init__(self, prefix: str) -> None:
        super().__init__({}, prefix)

    def has(self, name: str) -> bool:
        return name == "lm_head.weight"

    def take(self, name: str, *shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta")


def _activation(name: str, family: str) -> str:
    if name not in ACTIVATIONS:
        raise UnsupportedModel(
            f"{family}: activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _rotary(config, head_dim: int, family: str) -> dict:
    """Rotary fields of ModelConfig from HF's ``rope_parameters`` (scaled RoPE through HF)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    factor = params.get("partial_rotary_factor", 1.0)
    rotary_dim = int(head_dim * factor)
    out = {
        "positional": "rotary",
        "rotary_dim": rotary_dim,
        "rotary_base": float(params.get("rope_theta", 10000.0)),
    }
    if rope_type == "default":
        return out
    if rope_type in ("dynamic", "longrope"):
        raise UnsupportedModel(
            f"{family}: RoPE scaling {rope_type!r} changes with the sequence length; only "
            f"'default', 'linear' and 'llama3' are supported"
        )
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise UnsupportedModel(f"{family}: unknown RoPE type {rope_type!r}")
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config)
    if attention_factor != 1.0:
        raise UnsupportedModel(
            f"{family}: RoPE scaling {rope_type!r} rescales attention ({attention_factor}); "
            f"only scalings with factor 1 are supported"
        )
    out["rotary_inv_freq"] = [float(f) for f in inv_freq.float()]
    return out


def _windows(config, family: str) -> dict:
    """Sliding-window layers from HF's ``layer_types`` (Gemma-2, Qwen2 with windows)."""
    types = list(getattr(config, "layer_types", None) or [])
    known = {"full_attention", "sliding_attention"}
    if set(types) - known:
        raise UnsupportedModel(f"{family}: attention layer types {sorted(set(types) - known)}")
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if not sliding or getattr(config, "sliding_window", None) is None:
        return {}
    return {"sliding_window": int(config.sliding_window), "sliding_layers": sliding}


# ------------------------------------------------------------------------------- families
def convert_gpt2_config(c, w: _Weights):
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedModel("gpt2: scale_attn_by_inverse_layer_idx=True is not supported")
    d, h, n = c.n_embd, c.n_head, c.n_layer
    e, m, vocab = d // h, c.n_inner or 4 * d, c.vocab_size
    cfg = ModelConfig(
        n_layers=n,
        n_heads=h,
        d_model=d,
        d_head=e,
        d_mlp=m,
        d_vocab=vocab,
        n_ctx=c.n_positions,
        normalization="LN",
        act_fn=_activation(c.activation_function, "gpt2"),
        ln_eps=c.layer_norm_epsilon,
        attn_scale=float(e) ** 0.5 if c.scale_attn_weights else 1.0,
        name=getattr(c, "name_or_path", "") or "gpt2",
    )
    wte = w.base("wte.weight", vocab, d)
    out = {
        "embed.W_E": wte,
        "pos_embed.W_pos": w.base("wpe.weight", c.n_positions, d),
        "ln_final.w": w.base("ln_f.weight", d),
        "ln_final.b": w.base("ln_f.bias", d),
        "unembed.W_U": (w.take("lm_head.weight", vocab, d) if w.has("lm_head.weight") else wte).T,
        "unembed.b_U": torch.zeros(vocab),
    }
    for layer in range(n):
        q, b = f"h.{layer}.", f"blocks.{layer}."
        w_qkv = w.base(q + "attn.c_attn.weight", d, 3 * d)  # applied as x @ W
        b_qkv = w.base(q + "attn.c_attn.bias", 3 * d)
        for name, part_w, part_b in zip("QKV", w_qkv.split(d, dim=1), b_qkv.split(d), strict=True):
            out[b + f"attn.W_{name}"] = part_w.reshape(d, h, e).permute(1, 0, 2)
            out[b + f"attn.b_{name}"] = part_b.reshape(h, e)
        out[b + "attn.W_O"] = w.base(q + "attn.c_proj.weight", d, d).reshape(h, e, d)
        out[b + "attn.b_O"] = w.base(q + "attn.c_proj.bias", d)
        out[b + "ln1.w"], out[b + "ln1.b"] = (
            w.base(q + "ln_1.weight", d),
            w.base(q + "ln_1.bias", d),
        )
        out[b + "ln2.w"], out[b + "ln2.b"] = (
            w.base(q + "ln_2.weight", d),
            w.base(q + "ln_2.bias", d),
        )
        out[b + "mlp.W_in"] = w.base(q + "mlp.c_fc.weight", d, m)
        out[b + "mlp.b_in"] = w.base(q + "mlp.c_fc.bias", m)
        out[b + "mlp.W_out"] = w.base(q + "mlp.c_proj.weight", m, d)
        out[b + "mlp.b_out"] = w.base(q + "mlp.c_proj.bias", d)
    return cfg, out


def convert_gpt_neox(c, w: _Weights):
    d, h, n, m, vocab = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_hidden_layers,
        c.intermediate_size,
        c.vocab_size,
    )
    e = d // h
    cfg = ModelConfig(
        n_layers=n,
        n_heads=h,
        d_model=d,
        d_head=e,
        d_mlp=m,
        d_vocab=vocab,
        n_ctx=c.max_position_embeddings,
        normalization="LN",
        act_fn=_activation(c.hidden_act, "gpt_neox"),
        ln_eps=c.layer_norm_eps,
        parallel_attn_mlp=bool(c.use_parallel_residual),
        name=getattr(c, "name_or_path", "") or "gpt_neox",
        **_rotary(c, e, "gpt_neox"),
    )
    biased = getattr(c, "attention_bias", True)
    out = {
        "embed.W_E": w.base("embed_in.weight", vocab, d),
        "ln_final.w": w.base("final_layer_norm.weight", d),
        "ln_final.b": w.base("final_layer_norm.bias", d),
        "unembed.W_U": w.take("embed_out.weight", vocab, d).T,
        "unembed.b_U": torch.zeros(vocab),
    }
    for layer in range(n):
        q, b = f"layers.{layer}.", f"blocks.{layer}."
        # Rows of query_key_value are, per head, q then k then v (HF views it [.., H, 3 * e]).
        w_qkv = w.base(q + "attention.query_key_value.weight", 3 * d, d).view(h, 3, e, d)
        if biased:
            b_qkv = w.base(q + "attention.query_key_value.bias", 3 * d).view(h, 3, e)
        else:
            b_qkv = torch.zeros(h, 3, e)
        for i, name in enumerate("QKV"):
            out[b + f"attn.W_{name}"] = w_qkv[:, i].transpose(1, 2)
            out[b + f"attn.b_{name}"] = b_qkv[:, i]
        out[b + "attn.W_O"] = w.base(q + "attention.dense.weight", d, d).T.reshape(h, e, d)
        out[b + "attn.b_O"] = w.base(q + "attention.dense.bias", d) if biased else torch.zeros(d)
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            out[b + f"{ours}.w"] = w.base(q + f"{theirs}.weight", d)
            out[b + f"{ours}.b"] = w.base(q + f"{theirs}.bias", d)
        out[b + "mlp.W_in"] = w.base(q + "mlp.dense_h_to_4h.weight", m, d).T
        out[b + "mlp.b_in"] = w.base(q + "mlp.dense_h_to_4h.bias", m)
        out[b + "mlp.W_out"] = w.base(q + "mlp.dense_4h_to_h.weight", d, m).T
        out[b + "mlp.b_out"] = w.base(q + "mlp.dense_4h_to_h.bias", d)
    return cfg, out


def _llama_like(c, w: _Weights, family: str, *, gemma: bool):
    """Llama, Qwen2 and Gemma-2: RMSNorm, rotary, GQA, gated MLP, optionally Gemma's extras."""
    d, h, n, m, vocab = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_hidden_layers,
        c.intermediate_size,
        c.vocab_size,
    )
    kv = getattr(c, "num_key_value_heads", None) or h
    e = getattr(c, "head_dim", None) or d // h
    if getattr(c, "pretraining_tp", 1) not in (None, 1):
        raise UnsupportedModel(f"{family}: pretraining_tp > 1 is not supported")
    act = getattr(c, "hidden_activation", None) or c.hidden_act
    extra = {}
    attn_scale = float(e) ** 0.5
    if gemma:
        if getattr(c, "attention_bias", False):
            raise UnsupportedModel(
                "gemma2: attention_bias=True is not supported: the attention output bias would "
                "sit inside the post-attention norm, where it belongs to no head"
            )
        attn_scale = float(c.query_pre_attn_scalar) ** 0.5
        extra = {
            "post_norms": True,
            "attn_softcap": getattr(c, "attn_logit_softcapping", None),
            "final_softcap": getattr(c, "final_logit_softcapping", None),
        }
    if getattr(c, "use_bidirectional_attention", False):
        extra["causal"] = False
    cfg = ModelConfig(
        n_layers=n,
        n_heads=h,
        d_model=d,
        d_head=e,
        d_mlp=m,
        d_vocab=vocab,
        n_ctx=c.max_position_embeddings,
        normalization="RMS",
        act_fn=_activation(act, family),
        ln_eps=c.rms_norm_eps,
        attn_scale=attn_scale,
        n_kv_heads=kv,
        gated_mlp=True,
        name=getattr(c, "name_or_path", "") or family,
        **_rotary(c, e, family),
        **_windows(c, family),
        **extra,
    )
    gain = (lambda t: 1.0 + t) if gemma else (lambda t: t)  # Gemma's RMSNorm is x * (1 + w)
    qkv_bias = family == "qwen2" or bool(getattr(c, "attention_bias", False))
    o_bias = family != "qwen2" and bool(getattr(c, "attention_bias", False))
    mlp_bias = bool(getattr(c, "mlp_bias", False))
    embed = w.base("embed_tokens.weight", vocab, d)
    if gemma:  # HF multiplies the looked-up rows by sqrt(d_model), in the weights' dtype
        scaled = embed * torch.tensor(d**0.5, dtype=embed.dtype)
    out = {
        "embed.W_E": scaled if gemma else embed,
        "ln_final.w": gain(w.base("norm.weight", d)),
        "unembed.W_U": (
            w.take("lm_head.weight", vocab, d).T
            if w.has("lm_head.weight")
            else _tied(c, embed, family)
        ),
        "unembed.b_U": torch.zeros(vocab),
    }
    for layer in range(n):
        q, b = f"layers.{layer}.", f"blocks.{layer}."
        a = q + "self_attn."
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            weight = w.base(a + f"{name}_proj.weight", heads * e, d)
            out[b + f"attn.W_{name.upper()}"] = weight.view(heads, e, d).transpose(1, 2)
            bias = w.base(a + f"{name}_proj.bias", heads * e) if qkv_bias else None
            out[b + f"attn.b_{name.upper()}"] = (
                torch.zeros(heads, e) if bias is None else bias.view(heads, e)
            )
        out[b + "attn.W_O"] = w.base(a + "o_proj.weight", d, h * e).T.reshape(h, e, d)
        out[b + "attn.b_O"] = w.base(a + "o_proj.bias", d) if o_bias else torch.zeros(d)
        out[b + "ln1.w"] = gain(w.base(q + "input_layernorm.weight", d))
        if gemma:
            out[b + "ln1_post.w"] = gain(w.base(q + "post_attention_layernorm.weight", d))
            out[b + "ln2.w"] = gain(w.base(q + "pre_feedforward_layernorm.weight", d))
            out[b + "ln2_post.w"] = gain(w.base(q + "post_feedforward_layernorm.weight", d))
        else:
            out[b + "ln2.w"] = w.base(q + "post_attention_layernorm.weight", d)
        for ours, theirs, shape in (
            ("W_gate", "gate_proj", (m, d)),
            ("W_in", "up_proj", (m, d)),
            ("W_out", "down_proj", (d, m)),
        ):
            out[b + f"mlp.{ours}"] = w.base(q + f"mlp.{theirs}.weight", *shape).T
        for ours, theirs, size in (
            ("b_gate", "gate_proj", m),
            ("b_in", "up_proj", m),
            ("b_out", "down_proj", d),
        ):
            out[b + f"mlp.{ours}"] = (
                w.base(q + f"mlp.{theirs}.bias", size) if mlp_bias else torch.zeros(size)
            )
    return cfg, out


def _tied(config, embed: torch.Tensor, family: str) -> torch.Tensor:
    if not getattr(config, "tie_word_embeddings", False):
        raise ValueError(
            f"config and weights disagree: {family} with tie_word_embeddings=False needs "
            f"lm_head.weight, which the weights do not have"
        )
    return embed.T


CONVERTERS = {
    "gpt2": convert_gpt2_config,
    "gpt_neox": convert_gpt_neox,
    "llama": lambda c, w: _llama_like(c, w, "llama", gemma=False),
    "qwen2": lambda c, w: _llama_like(c, w, "qwen2", gemma=False),
    "gemma2": lambda c, w: _llama_like(c, w, "gemma2", gemma=True),
}
