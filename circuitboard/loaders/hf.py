"""GPT-2-family models from a local directory, through HF transformers.

Only local files are read (``local_files_only=True``); a path that does not exist is an error, never
a hub download.
"""

from __future__ import annotations

import os

import torch

from circuitboard.model import ModelConfig, PatchableTransformer

SUPPORTED_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}


def from_hf(path_or_model, device: str | torch.device = "cpu") -> PatchableTransformer:
    """Convert a GPT-2 ``GPT2LMHeadModel`` (a local directory, or the model itself)."""
    hf_model = path_or_model
    if isinstance(path_or_model, str | os.PathLike):
        path = os.fspath(path_or_model)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{path} is not a directory; from_hf needs a local directory holding a GPT-2 "
                f"model (config.json and weights), as written by save_pretrained"
            )
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as err:
            raise ImportError(
                "loading GPT-2 needs HF transformers: pip install 'circuitboard[hf]'"
            ) from err
        hf_model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True)
    return convert_gpt2(hf_model).to(device)


def convert_gpt2(hf_model) -> PatchableTransformer:
    c = hf_model.config
    if getattr(c, "model_type", None) != "gpt2":
        raise ValueError(
            f"from_hf supports the GPT-2 family (model_type 'gpt2'), got {c.model_type!r}"
        )
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("scale_attn_by_inverse_layer_idx=True is not supported")
    if c.activation_function not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"activation {c.activation_function!r} is not supported; "
            f"supported: {sorted(SUPPORTED_ACTIVATIONS)}"
        )
    d, h = c.n_embd, c.n_head
    e = d // h
    cfg = ModelConfig(
        n_layers=c.n_layer,
        n_heads=h,
        d_model=d,
        d_head=e,
        d_mlp=c.n_inner or 4 * d,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        normalization="LN",
        act_fn=SUPPORTED_ACTIVATIONS[c.activation_function],
        causal=True,
        ln_eps=c.layer_norm_epsilon,
        attn_scale=float(e) ** 0.5 if c.scale_attn_weights else 1.0,
        name=getattr(c, "name_or_path", "") or "gpt2",
    )
    sd = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    p = "transformer."
    out = {
        "embed.W_E": sd[p + "wte.weight"],
        "pos_embed.W_pos": sd[p + "wpe.weight"],
        "ln_final.w": sd[p + "ln_f.weight"],
        "ln_final.b": sd[p + "ln_f.bias"],
        "unembed.W_U": sd.get("lm_head.weight", sd[p + "wte.weight"]).T,
        "unembed.b_U": torch.zeros(c.vocab_size),
    }
    for layer in range(c.n_layer):
        q = f"{p}h.{layer}."
        b = f"blocks.{layer}."
        w_qkv = sd[q + "attn.c_attn.weight"]  # [d, 3d], applied as x @ W
        b_qkv = sd[q + "attn.c_attn.bias"]
        for name, part_w, part_b in zip("QKV", w_qkv.split(d, dim=1), b_qkv.split(d), strict=True):
            out[b + f"attn.W_{name}"] = part_w.reshape(d, h, e).permute(1, 0, 2)
            out[b + f"attn.b_{name}"] = part_b.reshape(h, e)
        out[b + "attn.W_O"] = sd[q + "attn.c_proj.weight"].reshape(h, e, d)
        out[b + "attn.b_O"] = sd[q + "attn.c_proj.bias"]
        out[b + "ln1.w"], out[b + "ln1.b"] = sd[q + "ln_1.weight"], sd[q + "ln_1.bias"]
        out[b + "ln2.w"], out[b + "ln2.b"] = sd[q + "ln_2.weight"], sd[q + "ln_2.bias"]
        out[b + "mlp.W_in"] = sd[q + "mlp.c_fc.weight"]
        out[b + "mlp.b_in"] = sd[q + "mlp.c_fc.bias"]
        out[b + "mlp.W_out"] = sd[q + "mlp.c_proj.weight"]
        out[b + "mlp.b_out"] = sd[q + "mlp.c_proj.bias"]
    model = PatchableTransformer(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in out.items()})
    return model.eval()
