"""PatchableTransformer: one explicit forward pass that every method and score shares.

Each reader (a head's q, k or v input, an MLP input, the logits) reads

    sum_src m * a_src + (1 - m) * a~_src  =  resid  -  sum_src (1 - m) * (a_src - a~_src)

where ``resid`` is the ordinary residual stream, ``a_src`` a source's output in this run and
``a~_src`` its ablated value. The second term is computed per layer of readers with one einsum per
earlier layer of sources (never a Python loop over edges, never a hook). The same pass serves
evaluation (binary mask), Edge Pruning (learned mask), EAP and EAP-IG (gradients with respect to
the mask or the reader inputs) and ACDC (one edge flipped per example).

Biases that belong to no node (attention ``b_O``) stay in the residual stream and are never
ablated, as in EAP-IG. Each reader applies its own LayerNorm to its own input.

Decoder features, each switched on by ``ModelConfig`` only where a model needs it:

- normalisation: pre-LN LayerNorm (GPT-2, Pythia), RMSNorm (Llama, Qwen2, Gemma-2; Gemma's
  ``1 + w`` gain is folded into ``w`` by its loader, which is exact), or none (Tracr);
- positions: learned (GPT-2, Tracr) or rotary, full (Llama) or partial (Pythia's ``rotary_pct``),
  applied to each head's q and k *after* the head has read and projected its own patched input;
- grouped-query attention (``n_kv_heads < n_heads``). Every query head keeps its own ``<k>`` and
  ``<v>`` readers, as TransformerLens's split-qkv inputs and the MIB circuit track have them: the
  query heads of one group share the key/value weights, but under patching each projects its own
  input, so their keys and values may differ; with every edge kept they coincide;
- gated MLPs (``act(x W_gate) * (x W_in)``: SwiGLU with ``silu``, GeGLU with a GELU);
- parallel attention + MLP blocks (Pythia): the MLP reads the layer's input, not its heads, so
  the graph has no edge from a layer's heads to its own MLP;
- Gemma-2's extras: post-norms (an RMSNorm on the attention output and on the MLP output before
  they enter the stream), tanh soft-capping of attention scores and of the logits, and
  sliding-window layers. With a post-norm the heads of a layer no longer add up linearly, so a
  head's output (its source value) is its share of the normalised sum,
  ``w * r_h / rms(sum_h r_h)``, with the layer's own normaliser of this run; the shares add up to
  what enters the stream, so both invariants (all kept, all removed) stay exact.

Nothing here names a device: tensors follow the model's parameters (``model.to(device)``), and
float32 is the default dtype (bfloat16 works for evaluation; norms, rotary angles and softmax
are then computed in float32, as HF does).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from circuitboard.graph import Circuit, Graph

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
NORMALIZATIONS = ("LN", "RMS", None)
POSITIONAL = ("learned", "rotary")
LOW_PRECISION = (torch.float16, torch.bfloat16)


MODERN_FIELDS = (
    "positional",
    "rotary_dim",
    "rotary_base",
    "rotary_inv_freq",
    "n_kv_heads",
    "gated_mlp",
    "parallel_attn_mlp",
    "post_norms",
    "attn_softcap",
    "final_softcap",
    "sliding_window",
    "sliding_layers",
)


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only transformer; every feature is off by default.

    ``d_vocab_out`` may differ from ``d_vocab``. The fields after ``name`` switch on the modern
    decoder features described in the module docstring; a checkpoint written before they existed
    loads unchanged.
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None = None
    d_vocab_out: int | None = None
    normalization: str | None = "LN"
    act_fn: str = "gelu_new"
    attn_only: bool = False
    causal: bool = True
    ln_eps: float = 1e-5
    attn_scale: float | None = None
    dead: list[str] = field(default_factory=list)
    name: str = ""
    # ---- modern decoders
    positional: str = "learned"
    rotary_dim: int | None = None  # rotated dimensions of each head; default d_head
    rotary_base: float = 10000.0
    rotary_inv_freq: list[float] | None = None  # explicit frequencies (scaled RoPE) over base
    n_kv_heads: int | None = None  # grouped-query attention; default n_heads
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    post_norms: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    sliding_layers: list[int] | None = None  # layers with the window; None: every layer

    def __post_init__(self) -> None:
        for key in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{key} must be a positive integer, got {value!r}")
        if self.d_vocab_out is None:
            self.d_vocab_out = self.d_vocab
        if not self.attn_only and (not isinstance(self.d_mlp, int) or self.d_mlp < 1):
            raise ValueError("ModelConfig.d_mlp must be a positive integer unless attn_only=True")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"ModelConfig.normalization must be 'LN', 'RMS' or None, got {self.normalization!r}"
            )
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(
                f"ModelConfig.act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}"
            )
        if self.attn_scale is None:
            self.attn_scale = math.sqrt(self.d_head)
        self.dead = sorted(self.dead)
        self._check_modern()

    def _check_modern(self) -> None:
        if self.positional not in POSITIONAL:
            raise ValueError(
                f"ModelConfig.positional must be one of {POSITIONAL}, got {self.positional!r}"
            )
        if self.positional == "rotary":
            if self.rotary_dim is None:
                self.rotary_dim = self.d_head
            if not 2 <= self.rotary_dim <= self.d_head or self.rotary_dim % 2:
                raise ValueError(
                    f"ModelConfig.rotary_dim must be even and in [2, d_head={self.d_head}], "
                    f"got {self.rotary_dim}"
                )
            if self.rotary_inv_freq is not None:
                self.rotary_inv_freq = [float(f) for f in self.rotary_inv_freq]
                if len(self.rotary_inv_freq) != self.rotary_dim // 2:
                    raise ValueError(
                        f"ModelConfig.rotary_inv_freq needs rotary_dim / 2 = "
                        f"{self.rotary_dim // 2} frequencies, got {len(self.rotary_inv_freq)}"
                    )
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}"
            )
        if self.attn_only and (self.gated_mlp or self.parallel_attn_mlp):
            raise ValueError("an attention-only model has no MLP to gate or run in parallel")
        if self.post_norms and self.normalization != "RMS":
            raise ValueError(
                "ModelConfig.post_norms needs normalization='RMS' (Gemma-2's form): only a "
                "bias-free norm splits exactly into per-head shares"
            )
        for key in ("attn_softcap", "final_softcap", "sliding_window"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"ModelConfig.{key} must be positive or None, got {value!r}")
        if self.sliding_layers is not None:
            self.sliding_layers = sorted(int(i) for i in self.sliding_layers)
            if self.sliding_window is None:
                raise ValueError("ModelConfig.sliding_layers needs sliding_window")
            bad = [i for i in self.sliding_layers if not 0 <= i < self.n_layers]
            if bad:
                raise ValueError(f"ModelConfig.sliding_layers {bad} are not layers of this model")

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (keys at most ``window - 1`` back), or None."""
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or layer in self.sliding_layers:
            return self.sliding_window
        return None

    def to_dict(self) -> dict:
        """The fields as JSON-able values; modern-decoder fields appear only where they differ
        from their defaults, so configs written before those features existed are unchanged."""
        out = asdict(self)
        implied = {"n_kv_heads": self.n_heads, "rotary_dim": self.d_head}
        for f in fields(self):
            if f.name in MODERN_FIELDS:
                default = implied.get(f.name, f.default)
                if out[f.name] == default or out[f.name] is None:
                    del out[f.name]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


def graph_of(cfg: ModelConfig) -> Graph:
    """The edge universe of a model of this config (no weights needed)."""
    return Graph(
        cfg.n_layers,
        cfg.n_heads,
        cfg.attn_only,
        frozenset(cfg.dead),
        parallel_attn_mlp=cfg.parallel_attn_mlp,
        model=cfg.name,
    )


@dataclass
class RunOutput:
    """What one pass returns when more than the logits is asked for."""

    logits: torch.Tensor
    sources: torch.Tensor | None = None  # [batch, pos, n_sources, d_model]
    reader_inputs: list[torch.Tensor] | None = None  # per reader group, see PatchableTransformer


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight + bias`` as one fused matmul over all leading dimensions."""
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return flat.view(*x.shape[:-1], weight.shape[-1])


def _rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / rms(x)`` over the last dimension, in float32 at least (as HF computes it)."""
    x = x.float() if x.dtype in LOW_PRECISION else x
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [..., pos, d_head]`` on its first ``cos.shape[-1]`` dimensions."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    head, tail = x[..., :rot], x[..., rot:]
    return torch.cat((head * cos + _rotate_half(head) * sin, tail), dim=-1)


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


def attention_scores(cfg, q, k, hidden=None, valid=None) -> torch.Tensor:
    """Scaled, soft-capped and masked scores ``[..., batch, q, k]`` from ``[..., batch, pos, e]``.

    ``hidden`` ``[q, k]`` marks positions out of view (causal, sliding window); ``valid``
    ``[batch, k]`` marks real (not padded) keys.
    """
    scores = _softcap(q @ k.transpose(-1, -2) / cfg.attn_scale, cfg.attn_softcap)
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return scores


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over keys, in float32 for low-precision scores (as HF does)."""
    if scores.dtype in LOW_PRECISION:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


class _LayerNorm(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()


class _RMSNorm(nn.Module):
    """``w * x / rms(x)``: no bias and no centring (Llama, Qwen2; Gemma-2 with ``w = 1 + w'``)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_normalized = HookPoint()


def _make_norm(cfg: ModelConfig) -> nn.Module | None:
    if cfg.normalization == "LN":
        return _LayerNorm(cfg.d_model)
    if cfg.normalization == "RMS":
        return _RMSNorm(cfg.d_model)
    return None


class _Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, kv, d, e = cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.zeros(h, d, e))
        self.W_K = nn.Parameter(torch.zeros(kv, d, e))
        self.W_V = nn.Parameter(torch.zeros(kv, d, e))
        self.W_O = nn.Parameter(torch.zeros(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(kv, e))
        self.b_V = nn.Parameter(torch.zeros(kv, e))
        if cfg.post_norms:
            # Inside a post-norm an output bias would belong to no head and break the exact
            # split into per-head shares; Gemma-2 has none, so here it is a fixed zero.
            self.register_buffer("b_O", torch.zeros(d))
        else:
            self.b_O = nn.Parameter(torch.zeros(d))
        names = ["q", "k", "v", "attn_scores", "pattern", "z", "result"]
        if cfg.positional == "rotary":
            names += ["rot_q", "rot_k"]
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())


class _MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        if cfg.gated_mlp:
            self.W_gate = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
            self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp))
            self.hook_pre_linear = HookPoint()
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = _make_norm(cfg)
        self.attn = _Attention(cfg)
        self.ln2 = None if cfg.attn_only else _make_norm(cfg)
        self.mlp = None if cfg.attn_only else _MLP(cfg)
        if cfg.post_norms:  # Gemma-2: norms on what attention and MLP write, before the stream
            self.ln1_post = _make_norm(cfg)
            self.ln2_post = None if cfg.attn_only else _make_norm(cfg)
        names = ["resid_pre", "q_input", "k_input", "v_input", "attn_out"]
        if not cfg.parallel_attn_mlp:
            names.append("resid_mid")
        if not cfg.attn_only:
            names += ["mlp_in", "mlp_out"]
        names.append("resid_post")
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())


class _Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.zeros(d_vocab, d_model))


class _PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(n_ctx, d_model))


class _Unembed(nn.Module):
    def __init__(self, d_model: int, d_vocab_out: int) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.zeros(d_model, d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(d_vocab_out))


class PatchableTransformer(HookedRootModule):
    """A decoder-only transformer whose every edge can be kept, removed or weighted.

    Parameters use TransformerLens names and shapes (``blocks.0.attn.W_Q`` is
    ``[n_heads, d_model, d_head]``; ``W_K``/``W_V`` are ``[n_kv_heads, d_model, d_head]``), and
    HookPoints sit at TransformerLens hook names, so ``run_with_cache`` and ``run_with_hooks``
    work. With grouped-query attention ``hook_k``/``hook_v`` see one key/value per query head
    (``[batch, pos, n_heads, d_head]``), as the patched pass computes them. Weights start at
    zero; a loader fills them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = _Embed(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = _PosEmbed(cfg.n_ctx, cfg.d_model)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = _make_norm(cfg)
        self.unembed = _Unembed(cfg.d_model, cfg.d_vocab_out)
        self._act = ACTIVATIONS[cfg.act_fn]
        self.setup()

    @cached_property
    def graph(self) -> Graph:
        return graph_of(self.cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    # ------------------------------------------------------------------ input checks
    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int):
            raise TypeError("tokens must be an integer tensor of shape [batch, pos]")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds the model's n_ctx {self.cfg.n_ctx}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.d_vocab):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.d_vocab}); got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        return tokens.to(self.device)

    def _removed(self, mask, batch: int) -> torch.Tensor | None:
        """``1 - mask`` in the dense layout: ``[S, R]`` or, per example, ``[batch, S, R]``."""
        if mask is None:
            return None
        if isinstance(mask, Circuit):
            if mask.graph != self.graph:
                raise ValueError(
                    f"the circuit belongs to another graph ({mask.graph.describe()}) than this "
                    f"model ({self.graph.describe()})"
                )
            mask = mask.keep
        mask = torch.as_tensor(mask, device=self.device)
        if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
            raise ValueError("the edge mask holds NaN or infinite values; masks are finite floats")
        n = self.graph.n_edges
        if mask.shape not in ((n,), (batch, n)):
            raise ValueError(
                f"edge mask must have shape ({n},) or (batch={batch}, {n}), one value per edge "
                f"in model.graph.edge_names order; got {tuple(mask.shape)}"
            )
        mask = mask.to(self.dtype)
        return 1 - self.graph.to_dense(mask)

    def _check_ablated(self, ablated, batch: int, pos: int) -> torch.Tensor:
        if ablated is None:
            raise ValueError(
                "the mask removes edges but no ablated values were given; build them with "
                "circuitboard.ablation.ablated_values(model, tokens, 'zero'|'mean'|'resample'|"
                "'counterfactual', ...)"
            )
        s, d = self.graph.n_sources, self.cfg.d_model
        ok = (
            ablated.dim() == 4
            and ablated.shape[0] in (1, batch)
            and ablated.shape[1] in (1, pos)
            and tuple(ablated.shape[2:]) == (s, d)
        )
        if not ok:
            raise ValueError(
                f"ablated values must have shape [1|batch={batch}, 1|pos={pos}, "
                f"n_sources={s}, d_model={d}]; got {tuple(ablated.shape)}"
            )
        return ablated.to(device=self.device, dtype=self.dtype)

    def input_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``input`` node's output ``[batch, pos, d_model]``: token (and learned position)
        embeddings, through their hooks, exactly as ``run`` computes it."""
        tokens = self._check_tokens(tokens)
        embed = self.hook_embed(self.embed.W_E[tokens])
        if self.cfg.positional != "learned":
            return embed
        return embed + self.hook_pos_embed(self.pos_embed.W_pos[: tokens.shape[1]])

    # ------------------------------------------------------------------ the forward pass
    def forward(self, tokens=None, mask=None, ablated=None, *, input_embeds=None) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab_out]``. See ``run`` for the arguments."""
        return self.run(tokens, mask, ablated, input_embeds=input_embeds).logits

    def run(
        self,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | Circuit | None = None,
        ablated: torch.Tensor | None = None,
        *,
        input_embeds: torch.Tensor | None = None,
        return_sources: bool = False,
        return_reader_inputs: bool = False,
        return_logits: bool = True,
    ) -> RunOutput:
        """One patched forward pass.

        - ``mask``: ``[n_edges]`` or ``[batch, n_edges]`` floats (1 keeps the edge), or a Circuit.
        - ``ablated``: ``[1|batch, 1|pos, n_sources, d_model]``, each source's ablated value.
        - ``input_embeds``: the ``input`` node's output ``[batch, pos, d_model]`` in place of
          token and position embeddings (EAP-IG interpolates it).
        - ``return_sources``: also return every source's output, ``[batch, pos, n_sources, d]``.
        - ``return_logits=False``: stop after the last source (``logits`` is then None).
        - ``return_reader_inputs``: also return the reader inputs, before LayerNorm, one tensor
          per reader group in reader order, laid out ``[readers, batch, pos, d]``: per layer the
          q, k and v of all heads (``3 * n_heads`` readers) and, with MLPs, the MLP (1 reader);
          last the logits (1 reader). Gradients with respect to them give EAP-IG's edge scores.

        Internally per-head activations are head-major (``[head, batch, pos, d]``), so that a
        patch is one matmul over a contiguous block of sources and a head's projection is one
        matmul over all its tokens. Hooks see TransformerLens's layouts through permuted views.
        """
        cfg, graph = self.cfg, self.graph
        if input_embeds is None:
            x_in = self.input_embeddings(tokens)
            batch, pos = x_in.shape[:2]
        else:
            if input_embeds.dim() != 3 or input_embeds.shape[-1] != cfg.d_model:
                raise ValueError(
                    f"input_embeds must have shape [batch, pos, {cfg.d_model}], "
                    f"got {tuple(input_embeds.shape)}"
                )
            x_in = input_embeds.to(self.dtype)
            batch, pos = x_in.shape[:2]
            if pos > cfg.n_ctx:
                raise ValueError(f"sequence length {pos} exceeds the model's n_ctx {cfg.n_ctx}")
        removed = self._removed(mask, batch)
        patch = None
        if removed is not None:
            ablated = self._check_ablated(ablated, batch, pos)
            patch = _Patcher(removed, ablated.permute(2, 0, 1, 3), x_in)
        track = return_reader_inputs
        sources = [x_in[None]] if return_sources else None
        readers = [] if track else None

        def read(resid: torch.Tensor, first_reader: int, n_readers: int, share: bool = False):
            """The group's reader inputs ``[n_readers, batch, pos, d]``; with ``share``, readers
            whose mask columns are equal may come back as one ``_SharedInputs`` row each."""
            if patch is not None:
                if share and not track:
                    shared = patch.read_shared(resid, first_reader, n_readers)
                    if shared is not None:
                        return shared
                return patch.read(resid, first_reader, n_readers)
            x = resid[None].expand(n_readers, *resid.shape)
            return x.clone() if track else x

        def record(*groups: torch.Tensor) -> None:
            if readers is not None:
                readers.extend(groups)

        resid = x_in
        n_heads = cfg.n_heads
        per_head = patch is not None or sources is not None
        context = _PassContext(self, pos, x_in.device, x_in.dtype)
        for layer, block in enumerate(self.blocks):
            resid = block.hook_resid_pre(resid)
            start = graph.attn_sources_before(layer)
            first = graph.attn_reader_slice(layer).start
            if cfg.parallel_attn_mlp:
                # q, k, v of every head and the MLP all read the layer's input: one group of
                # 3H + 1 readers, recorded as the two groups a sequential block has.
                x = read(resid, first, 3 * n_heads + 1, share=True)
                attn_x, mlp_x = x[: 3 * n_heads], x[3 * n_heads :]
                record(attn_x, mlp_x)
                result, attn_out = self._attention(layer, block, attn_x, per_head, context)
                attn_out = block.hook_attn_out(attn_out)
                mlp_in = mlp_x.full()[0] if isinstance(mlp_x, _SharedInputs) else mlp_x[0]
                mlp_out = self._mlp(block, block.hook_mlp_in(mlp_in))
                resid = mlp_out + attn_out + resid  # HF's order of the three terms
                if patch is not None:
                    patch.write(result, start)
                    patch.write(mlp_out[None], start + n_heads)
                if sources is not None:
                    sources += [result, mlp_out[None]]
                resid = block.hook_resid_post(resid)
                continue
            # ---- attention: 3 * n_heads readers, [3H, batch, pos, d]
            x = read(resid, first, 3 * n_heads, share=True)
            record(x)
            result, attn_out = self._attention(layer, block, x, per_head, context)
            attn_out = block.hook_attn_out(attn_out)
            resid = block.hook_resid_mid(resid + attn_out)
            if patch is not None:
                patch.write(result, start)
            if sources is not None:
                sources.append(result)
            # ---- MLP: one reader
            if block.mlp is not None:
                x = read(resid, graph.mlp_reader_index(layer), 1)
                record(x)
                mlp_out = self._mlp(block, block.hook_mlp_in(x[0]))
                resid = resid + mlp_out
                if patch is not None:
                    patch.write(mlp_out[None], start + n_heads)
                if sources is not None:
                    sources.append(mlp_out[None])
            resid = block.hook_resid_post(resid)
        # ---- logits: one reader
        if not return_logits:  # only the sources were wanted: skip the unembedding
            sources = torch.cat(sources).permute(1, 2, 0, 3) if sources is not None else None
            return RunOutput(logits=None, sources=sources, reader_inputs=readers)
        x = read(resid, graph.n_readers - 1, 1)
        record(x)
        logits = self._unembed(x[0])
        return RunOutput(
            logits=logits,
            sources=None if sources is None else torch.cat(sources).permute(1, 2, 0, 3),
            reader_inputs=readers,
        )

    def _unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the logits reader's input: final norm, unembedding, soft-capping."""
        logits = _affine(self._norm(self.ln_final, x), self.unembed.W_U, self.unembed.b_U)
        return _softcap(logits, self.cfg.final_softcap)

    def _norm(self, ln: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        if ln is None:
            return x
        if isinstance(ln, _RMSNorm):
            return ln.hook_normalized(self._rms(ln, x, _rms_scale(x, self.cfg.ln_eps)))
        return ln.hook_normalized(F.layer_norm(x, (x.shape[-1],), ln.w, ln.b, self.cfg.ln_eps))

    @staticmethod
    def _rms(ln: _RMSNorm, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``w * x * scale``; low-precision inputs are normalised in float32, then cast back."""
        if x.dtype in LOW_PRECISION:
            return (x.float() * scale * ln.w.float()).to(x.dtype)
        return x * scale * ln.w

    def _mlp(self, block: _Block, x: torch.Tensor) -> torch.Tensor:
        """The MLP node's output from its reader input ``[batch, pos, d]`` (post-norm included)."""
        mlp = block.mlp
        normed = self._norm(block.ln2, x)
        if self.cfg.gated_mlp:
            pre = mlp.hook_pre(_affine(normed, mlp.W_gate, mlp.b_gate))
            linear = mlp.hook_pre_linear(_affine(normed, mlp.W_in, mlp.b_in))
            post = mlp.hook_post(self._act(pre) * linear)
        else:
            pre = mlp.hook_pre(_affine(normed, mlp.W_in, mlp.b_in))
            post = mlp.hook_post(self._act(pre))
        out = _affine(post, mlp.W_out, mlp.b_out)
        if self.cfg.post_norms:
            out = self._norm(block.ln2_post, out)
        return block.hook_mlp_out(out)

    def _attention(self, layer: int, block: _Block, x: torch.Tensor, per_head: bool, context):
        """Attention from reader inputs ``[3H, b, p, d]``: ``(per-head outputs, summed output)``.

        Per-head outputs ``[n_heads, batch, pos, d_model]`` are the heads' source values (with
        a post-norm, their shares of the normalised sum); they are computed only when asked for
        (patching, sources) or hooked, else ``None``.

        When no reader is patched and no hook changes the inputs, every head reads the same
        stream, which is normalised once, and grouped keys and values are projected once per
        key/value head. The projections are the same batched matmuls either way, so keeping
        every edge gives bit-for-bit the logits of the unpatched pass.
        """
        attn, cfg = block.attn, self.cfg
        n_heads = cfg.n_heads
        qkv = self._project_qkv(block, x)
        batch, pos = qkv[0].shape[1:3]
        d = cfg.d_model
        q, k, v = (
            hook(t.permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
            for t, hook in zip(qkv, (attn.hook_q, attn.hook_k, attn.hook_v))
        )
        if cfg.positional == "rotary":
            cos, sin = context.rotary
            q = attn.hook_rot_q(_rope(q, cos, sin).permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
            k = attn.hook_rot_k(_rope(k, cos, sin).permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
        scores = attention_scores(cfg, q, k, context.mask(layer))  # [H, b, q, k]
        scores = attn.hook_attn_scores(scores.transpose(0, 1)).transpose(0, 1)
        pattern = attn.hook_pattern(softmax(scores).transpose(0, 1)).transpose(0, 1)
        z = attn.hook_z((pattern @ v).permute(1, 2, 0, 3))  # [b, p, H, e]
        if not per_head and not attn.hook_result.fwd_hooks:
            # Nobody needs the heads apart: one matmul sums them, as a plain GPT-2 does.
            out = torch.addmm(attn.b_O, z.reshape(batch * pos, -1), attn.W_O.reshape(-1, d))
            out = out.view(batch, pos, d)
            if cfg.post_norms:
                out = self._norm(block.ln1_post, out)
            return None, out
        heads = z.permute(2, 0, 1, 3).reshape(n_heads, batch * pos, -1)
        result = (heads @ attn.W_O).view(n_heads, batch, pos, d)
        view = result.permute(1, 2, 0, 3)
        hooked = attn.hook_result(view)
        if hooked is view:
            # The stream gets the same fused sum as the plain pass, so that keeping every edge
            # reproduces the unpatched logits bit for bit; the heads feed only the patches.
            out = torch.addmm(attn.b_O, z.reshape(batch * pos, -1), attn.W_O.reshape(-1, d))
            out = out.view(batch, pos, d)
        else:
            result = hooked.permute(2, 0, 1, 3)
            out = result.sum(0) + attn.b_O
        if cfg.post_norms:
            # Each head's share of the normalised sum: w * r_h / rms(sum), which adds up to it.
            ln = block.ln1_post
            scale = _rms_scale(out, cfg.ln_eps)
            out = ln.hook_normalized(self._rms(ln, out, scale))
            result = self._rms(ln, result, scale)
        return result, out

    def _project_qkv(self, block: _Block, x) -> list[torch.Tensor]:
        """Each head's q, k and v ``[n_heads, batch, pos, d_head]`` from its reader inputs.

        ``x`` is ``[3H, batch, pos, d]`` (stride 0 along readers when they all read the same
        stream), or ``_SharedInputs`` when readers with equal mask columns share one input: then
        each distinct input is normalised once and projected once for all heads that read it.
        """
        attn, cfg = block.attn, self.cfg
        n_heads, group = cfg.n_heads, cfg.kv_group
        hooks = (block.hook_q_input, block.hook_k_input, block.hook_v_input)
        weights = (attn.W_Q, attn.W_K, attn.W_V)
        biases = (attn.b_Q, attn.b_K, attn.b_V)
        if isinstance(x, _SharedInputs):
            if not any(hook.fwd_hooks for hook in hooks):
                return self._project_shared(block, x)
            x = x.full()
        _, batch, pos, d = x.shape
        shared = x.stride(0) == 0
        inputs = []
        for i, hook in enumerate(hooks):
            part = x[i * n_heads : (i + 1) * n_heads]
            view = part.permute(1, 2, 0, 3)
            out = hook(view)
            if out is not view:
                shared = False
                part = out.permute(2, 0, 1, 3)
            inputs.append(part)
        if shared:  # normalise once; one matmul per projection, as a plain GPT-2 does
            normed = self._norm(block.ln1, x[0]).reshape(batch * pos, d)
            qkv = [
                torch.addmm(b.reshape(-1), normed, w.permute(1, 0, 2).reshape(d, -1))
                .view(batch, pos, w.shape[0], -1)
                .permute(2, 0, 1, 3)
                for w, b in zip(weights, biases)
            ]
            if group > 1:  # one key and value per query head, as the hooks and patches see
                qkv[1:] = [t.repeat_interleave(group, dim=0) for t in qkv[1:]]
            return qkv
        if group > 1:  # each query head projects its own k and v input
            weights = (attn.W_Q, *(w.repeat_interleave(group, 0) for w in weights[1:]))
            biases = (attn.b_Q, *(b.repeat_interleave(group, 0) for b in biases[1:]))
        return [
            torch.baddbmm(
                b[:, None], self._norm(block.ln1, part).reshape(n_heads, batch * pos, d), w
            ).view(n_heads, batch, pos, -1)
            for part, w, b in zip(inputs, weights, biases)
        ]

    def _project_shared(self, block: _Block, x: _SharedInputs) -> list[torch.Tensor]:
        """q, k, v from distinct inputs: per (distinct input, projection) one matmul over the
        heads that read it (their key/value heads, with GQA)."""
        attn, cfg = block.attn, self.cfg
        n_heads, group, e = cfg.n_heads, cfg.kv_group, cfg.d_head
        normed = self._norm(block.ln1, x.unique)
        u, batch, pos, d = normed.shape
        flat = normed.reshape(u, batch * pos, d)
        inverse = x.inverse.tolist()
        device = normed.device
        out = []
        for t, (w, b) in enumerate(
            ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
        ):
            cols = inverse[t * n_heads : (t + 1) * n_heads]
            result = normed.new_empty(n_heads, batch, pos, e)
            for col in sorted(set(cols)):
                heads = [h for h in range(n_heads) if cols[h] == col]
                own = heads if t == 0 else sorted({h // group for h in heads})
                index = torch.tensor(own, device=device)
                weight = w.index_select(0, index).permute(1, 0, 2).reshape(d, -1)
                proj = torch.addmm(b.index_select(0, index).reshape(-1), flat[col], weight)
                proj = proj.view(batch, pos, len(own), e).permute(2, 0, 1, 3)
                if own != heads:  # one key/value per query head, from its group's head
                    pick = torch.tensor([own.index(h // group) for h in heads], device=device)
                    proj = proj.index_select(0, pick)
                result[heads] = proj
            out.append(result)
        return out

    # ------------------------------------------------------------- partial passes (ACDC)
    @cached_property
    def stages(self) -> tuple[tuple[str, int], ...]:
        """The points a partial pass can start at, in order: per layer ``("attn", l)`` then
        ``("mlp", l)`` (``("block", l)`` for a parallel block, ``("attn", l)`` alone without
        MLPs), then ``("logits", n_layers)``."""
        out = []
        for layer in range(self.cfg.n_layers):
            if self.cfg.attn_only:
                out.append(("attn", layer))
            elif self.cfg.parallel_attn_mlp:
                out.append(("block", layer))
            else:
                out += [("attn", layer), ("mlp", layer)]
        out.append(("logits", self.cfg.n_layers))
        return tuple(out)

    @cached_property
    def reader_stage(self) -> tuple[int, ...]:
        """The stage each reader (in ``graph.readers`` order) belongs to."""
        out = [0] * self.graph.n_readers
        for i in range(len(self.stages)):
            readers = self.stage_readers(i)
            out[readers] = [i] * (readers.stop - readers.start)
        return tuple(out)

    def stage_readers(self, stage: int) -> slice:
        kind, layer = self.stages[stage]
        graph = self.graph
        if kind == "logits":
            return slice(graph.n_readers - 1, graph.n_readers)
        if kind == "mlp":
            r = graph.mlp_reader_index(layer)
            return slice(r, r + 1)
        attn = graph.attn_reader_slice(layer)
        return slice(attn.start, attn.stop + (1 if kind == "block" else 0))

    def stage_sources(self, stage: int) -> int:
        """How many sources are computed before ``stage`` (all of them clean at its start)."""
        kind, layer = self.stages[stage]
        if kind == "logits":
            return self.graph.n_sources
        if kind == "mlp":
            return self.graph.attn_sources_before(layer) + self.cfg.n_heads
        return self.graph.attn_sources_before(layer)

    def stage_hooks(self) -> list[tuple[str, int]]:
        """The hook whose value is the residual entering each stage, with the stage."""
        names = []
        for i, (kind, layer) in enumerate(self.stages):
            if kind == "logits":
                names.append((f"blocks.{layer - 1}.hook_resid_post", i))
            elif kind == "mlp":
                names.append((f"blocks.{layer}.hook_resid_mid", i))
            else:
                names.append((f"blocks.{layer}.hook_resid_pre", i))
        return names

    def last_attention_stage(self) -> int:
        return max(i for i, (kind, _) in enumerate(self.stages) if kind in ("attn", "block"))

    def pass_context(self, pos: int, device, dtype) -> _PassContext:
        return _PassContext(self, pos, device, dtype)

    def stage_cache(self, tokens: torch.Tensor, ablated: torch.Tensor):
        """The clean pass of ``tokens`` kept at every stage, for ``run_states``."""
        from circuitboard.partial import stage_cache

        return stage_cache(self, tokens, ablated)

    def run_states(self, cache, stage: int, masks: torch.Tensor, last_only: bool = False):
        """``(logits [U, n, P, d_vocab_out], index [w])``: the logits of ``w`` edge masks run
        from ``stage`` on, from the clean activations in ``cache`` (``stage_cache``); state
        ``s``'s are ``logits[index[s]]``. See ``circuitboard.partial``."""
        from circuitboard.partial import run_states

        return run_states(self, cache, stage, masks, last_only)

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def source_outputs(self, tokens: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Every source's clean output, ``[batch, pos, n_sources, d_model]``."""
        tokens = self._check_tokens(tokens)
        step = batch_size or max(1, len(tokens))
        parts = [
            self.run(tokens[i : i + step], return_sources=True, return_logits=False).sources
            for i in range(0, len(tokens), step)
        ]
        return torch.cat(parts)

    def edge_scores(self, diff: torch.Tensor, reader_grads: list[torch.Tensor]) -> torch.Tensor:
        """``sum_{batch,pos,d} diff[src] * grad[reader]`` for every edge, as ``[n_edges]``.

        ``diff`` is ``[batch, pos, n_sources, d]`` (for EAP, ablated minus clean) and
        ``reader_grads`` the gradients with respect to ``run(..., return_reader_inputs=True)``'s
        reader inputs (``[readers, batch, pos, d]`` each). The differences are laid out
        source-major once, so each reader group is one matmul over its prefix of sources (no
        copy of the differences per group). If ``diff`` is already stored source-major (a
        permuted view), the layout costs nothing.
        """
        graph = self.graph
        flat = diff.permute(2, 0, 1, 3).reshape(graph.n_sources, -1)
        dense = diff.new_zeros(graph.n_sources, graph.n_readers)
        col = 0
        for grad in reader_grads:
            width = grad.shape[0]
            n_src = graph._reader_n_sources[col]
            dense[:n_src, col : col + width] = flat[:n_src] @ grad.reshape(width, -1).T
            col += width
        return graph.from_dense(dense)


class _PassContext:
    """What every layer of one pass shares: rotary angles and attention masks, built once."""

    def __init__(self, model: PatchableTransformer, pos: int, device, dtype) -> None:
        self.cfg, self.pos, self.device, self.dtype = model.cfg, pos, device, dtype
        self._masks: dict[int | None, torch.Tensor | None] = {}

    @cached_property
    def rotary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[pos, rotary_dim]``, computed as HF does (float32 angles)."""
        cfg = self.cfg
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        if cfg.rotary_inv_freq is not None:
            inv = torch.tensor(cfg.rotary_inv_freq, dtype=torch.float32, device=self.device)
        else:
            dims = torch.arange(0, cfg.rotary_dim, 2, dtype=torch.int64, device=self.device)
            inv = 1.0 / (cfg.rotary_base ** (dims.float() / cfg.rotary_dim))
        angles = torch.arange(self.pos, device=self.device, dtype=work)[:, None] * inv.to(work)
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def mask(self, layer: int) -> torch.Tensor | None:
        """Positions a query may not attend to ``[pos, pos]`` (True = hidden), or None."""
        window = self.cfg.window(layer)
        if window not in self._masks:
            pos, device = self.pos, self.device
            hidden = None
            if self.cfg.causal:
                hidden = torch.ones(pos, pos, dtype=torch.bool, device=device).triu(1)
            if window is not None:  # keys more than window - 1 back are out of view
                far = torch.ones(pos, pos, dtype=torch.bool, device=device).tril(-window)
                hidden = far if hidden is None else hidden | far
            self._masks[window] = hidden
        return self._masks[window]


@dataclass
class _SharedInputs:
    """Reader inputs of one group, stored once per distinct mask column: reader ``r`` reads
    ``unique[inverse[r]]``. Slicing by readers keeps the sharing."""

    unique: torch.Tensor  # [u, batch, pos, d]
    inverse: torch.Tensor  # [n_readers] long

    def __getitem__(self, readers: slice) -> _SharedInputs:
        return _SharedInputs(self.unique, self.inverse[readers])

    def full(self) -> torch.Tensor:
        return self.unique.index_select(0, self.inverse)


class _Patcher:
    """Holds ``a_src - a~_src`` for the sources computed so far and patches reader groups.

    The differences live in one buffer, ``[n_sources, batch, pos, d]`` (``[batch, n_sources,
    pos, d]`` for per-example masks), written once per block of sources. The patch for a group
    of readers is then a single matmul over the prefix of sources it may read. ``_PrefixPatch``
    gives autograd the same maths without the copies that concatenating the blocks at every
    layer would cost (and keep alive for the backward pass).
    """

    def __init__(self, removed: torch.Tensor, ablated: torch.Tensor, x_in: torch.Tensor) -> None:
        self.removed = removed  # [S, R] or [batch, S, R]
        self.ablated = ablated  # [S, 1|batch, 1|pos, d]
        self.per_example = removed.dim() == 3
        self.binary = bool(((removed == 0) | (removed == 1)).all())
        n_sources = removed.shape[-2]
        batch, pos, d = x_in.shape
        shape = (batch, n_sources, pos, d) if self.per_example else (n_sources, batch, pos, d)
        self.buffer = x_in.new_empty(shape)
        self.total = x_in.new_zeros(batch, pos, d)  # sum of the differences written so far
        self.blocks: list[torch.Tensor] = []  # differences with autograd history, [n, b, p, d]
        self.filled = 0
        self.write(x_in[None], 0)

    def write(self, outputs: torch.Tensor, start: int) -> None:
        """Record sources ``start ..`` from ``outputs [n, batch, pos, d]``."""
        assert start == self.filled, "sources must be written in order"
        n = outputs.shape[0]
        if not self.per_example and not torch.is_grad_enabled():  # no history to keep
            diff = self.buffer[start : start + n]
            torch.sub(outputs, self.ablated[start : start + n], out=diff)
            self.total += diff.sum(0)
            self.blocks.append(diff)
            self.filled += n
            return
        diff = outputs - self.ablated[start : start + n]
        with torch.no_grad():
            if self.per_example:
                self.buffer[:, start : start + n] = diff.transpose(0, 1)
            else:
                self.buffer[start : start + n] = diff
            self.total += diff.sum(0)
        self.blocks.append(diff)
        self.filled += n

    def read_shared(self, resid: torch.Tensor, first_reader: int, n_readers: int):
        """The group's inputs with one row per distinct mask column, or None.

        Readers whose columns of the mask are equal read exactly the same input, so it is
        computed (and later normalised and projected) once. Only for a binary mask shared by
        the batch and without gradients (evaluation, ACDC); None when every column differs.
        """
        if self.per_example or not self.binary or torch.is_grad_enabled():
            return None
        weight = self.removed[: self.filled, first_reader : first_reader + n_readers]
        cols, inverse = torch.unique(weight, dim=1, return_inverse=True)
        if cols.shape[1] == n_readers:
            return None
        unique = self.patch(resid, cols)
        if cols.shape[1] == 1:  # one input for all: the stride-0 form the plain pass uses
            return unique[:1].expand(n_readers, *unique.shape[1:])
        return _SharedInputs(unique, inverse)

    def read(self, resid: torch.Tensor, first_reader: int, n_readers: int) -> torch.Tensor:
        """Reader inputs ``[n_readers, batch, pos, d]`` = ``resid - sum_src (1 - m)(a - a~)``."""
        weight = self.removed[..., : self.filled, first_reader : first_reader + n_readers]
        return _PrefixPatch.apply(resid, weight, self, *self.blocks)

    def _prefix(self, rows: torch.Tensor | None) -> torch.Tensor:
        """The buffer's rows ``rows`` (all written rows if None), flattened per row."""
        n, buf = self.filled, self.buffer
        if self.per_example:
            part = buf[:, :n] if rows is None else buf.index_select(1, rows)
            return part.reshape(buf.shape[0], part.shape[1], -1)
        part = buf[:n] if rows is None else buf.index_select(0, rows)
        return part.reshape(part.shape[0], -1)

    def patch(self, resid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The forward value, computed from whichever side of the mask is sparser.

        ``resid - sum_s w_s D_s`` equals ``(resid - sum_s D_s) + sum_s (1 - w_s) D_s``. With a
        binary mask only the sources that have a removed edge (first form) or a kept edge
        (second form) into these readers enter the matmul, so small circuits and nearly full
        ones both cost a fraction of the dense product; a mask that removes nothing costs none.
        """
        batch, pos, d = resid.shape
        n_readers = weight.shape[-1]
        rows = self._rows(weight.ne(0))
        if len(rows) == 0:  # nothing removed: every reader reads the stream itself
            return resid[None].expand(n_readers, batch, pos, d)
        base, coef, sign = resid, weight, -1
        if self.binary:
            kept_rows = self._rows(weight.ne(1))
            if len(kept_rows) < len(rows):
                base, coef, sign, rows = resid - self.total, 1 - weight, 1, kept_rows
                if len(rows) == 0:  # everything removed: the fully ablated stream
                    return base[None].expand(n_readers, batch, pos, d)
        if len(rows) > 0.75 * self.filled:  # gathering most rows costs more than it saves
            prefix = self._prefix(None)
        else:
            coef, prefix = coef.index_select(coef.dim() - 2, rows), self._prefix(rows)
        if self.per_example:
            flat = base.reshape(batch, 1, pos * d)
            out = torch.baddbmm(flat, coef.transpose(1, 2), prefix, alpha=sign)
            return out.view(batch, n_readers, pos, d).transpose(0, 1)
        out = torch.addmm(base.reshape(1, -1), coef.transpose(0, 1), prefix, alpha=sign)
        return out.view(n_readers, batch, pos, d)

    def _rows(self, active: torch.Tensor) -> torch.Tensor:
        """Sources with any active entry: ``active`` is ``[S, r]`` or ``[batch, S, r]``."""
        any_reader = active.any(dim=-1)
        if self.per_example:
            any_reader = any_reader.any(dim=0)
        return torch.nonzero(any_reader).flatten()


class _PatchView:
    """The parts of a ``_Patcher`` that ``_PrefixPatch.backward`` reads."""

    def __init__(self, buffer: torch.Tensor, per_example: bool) -> None:
        self.buffer, self.per_example = buffer, per_example


class _PrefixPatch(torch.autograd.Function):
    """``x[r] = resid - sum_s weight[s, r] * diff[s]`` over the sources written so far.

    The forward value comes from ``_Patcher.patch``. Forward and backward read the patcher's
    buffer, which only ever grows past the prefix a call read, so the prefix stays valid until
    the backward pass. Gradients flow to the residual stream, to the weight (hence to the edge
    mask) and to every block of differences (hence to earlier activations).
    """

    @staticmethod
    def forward(ctx, resid, weight, patcher, *blocks):
        # Keep only what backward reads: holding the patcher itself (whose difference blocks
        # carry this node in their autograd history) made a cycle through the C++ graph that
        # Python's collector cannot see, leaking every patched graph built with gradients.
        ctx.patcher, ctx.n = _PatchView(patcher.buffer, patcher.per_example), patcher.filled
        ctx.block_sizes = [b.shape[0] for b in blocks]
        ctx.save_for_backward(weight)
        out = patcher.patch(resid, weight)
        if out.stride(0) == 0 and any(ctx.needs_input_grad):
            # Materialise shared rows: each reader must own its input so that its gradient (and
            # with it the gradient of each edge's mask) stays separate from the others'.
            out = out.clone()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        patcher, n = ctx.patcher, ctx.n
        grad_resid = grad.sum(0) if ctx.needs_input_grad[0] else None
        grad_weight, grad_blocks = None, [None] * len(ctx.block_sizes)
        nonzero = bool(weight.ne(0).any())
        if patcher.per_example:
            batch, _, pos, d = patcher.buffer.shape
            g = grad.transpose(0, 1).reshape(batch, -1, pos * d)  # [b, r, p*d]
            if ctx.needs_input_grad[1]:
                prefix = patcher.buffer[:, :n].reshape(batch, n, pos * d)
                grad_weight = -(prefix @ g.transpose(1, 2))
            if nonzero:
                grad_diff = -(weight @ g).view(batch, n, pos, d).transpose(0, 1)
                grad_blocks = grad_diff.split(ctx.block_sizes, dim=0)
        else:
            _, batch, pos, d = patcher.buffer.shape
            g = grad.reshape(grad.shape[0], -1)  # [r, b*p*d]
            if ctx.needs_input_grad[1]:
                grad_weight = -(patcher.buffer[:n].reshape(n, -1) @ g.transpose(0, 1))
            if nonzero:
                grad_diff = -(weight @ g).view(n, batch, pos, d)
                grad_blocks = grad_diff.split(ctx.block_sizes, dim=0)
        return (grad_resid, grad_weight, None, *grad_blocks)
