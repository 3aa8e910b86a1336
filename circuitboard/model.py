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
}
NORMALIZATIONS = ("LN", None)


@dataclass
class ModelConfig:
    """Shape and flavour of a GPT-2-style decoder. ``d_vocab_out`` may differ from ``d_vocab``."""

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
                f"ModelConfig.normalization must be 'LN' or None, got {self.normalization!r}"
            )
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(
                f"ModelConfig.act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}"
            )
        if self.attn_scale is None:
            self.attn_scale = math.sqrt(self.d_head)
        self.dead = sorted(self.dead)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


@dataclass
class RunOutput:
    """What one pass returns when more than the logits is asked for."""

    logits: torch.Tensor
    sources: torch.Tensor | None = None  # [batch, pos, n_sources, d_model]
    reader_inputs: list[torch.Tensor] | None = None  # per reader group, see PatchableTransformer


class _LayerNorm(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()


class _Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.zeros(h, d, e))
        self.W_K = nn.Parameter(torch.zeros(h, d, e))
        self.W_V = nn.Parameter(torch.zeros(h, d, e))
        self.W_O = nn.Parameter(torch.zeros(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())


class _MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        norm = cfg.normalization == "LN"
        self.ln1 = _LayerNorm(cfg.d_model) if norm else None
        self.attn = _Attention(cfg)
        self.ln2 = _LayerNorm(cfg.d_model) if norm and not cfg.attn_only else None
        self.mlp = None if cfg.attn_only else _MLP(cfg)
        names = ["resid_pre", "q_input", "k_input", "v_input", "attn_out", "resid_mid"]
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
    """A GPT-2-style decoder whose every edge can be kept, removed or weighted.

    Parameters use TransformerLens names and shapes (``blocks.0.attn.W_Q`` is
    ``[n_heads, d_model, d_head]``), and HookPoints sit at TransformerLens hook names, so
    ``run_with_cache`` and ``run_with_hooks`` work. Weights start at zero; a loader fills them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = _Embed(cfg.d_vocab, cfg.d_model)
        self.pos_embed = _PosEmbed(cfg.n_ctx, cfg.d_model)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = _LayerNorm(cfg.d_model) if cfg.normalization == "LN" else None
        self.unembed = _Unembed(cfg.d_model, cfg.d_vocab_out)
        self._act = ACTIVATIONS[cfg.act_fn]
        self.setup()

    @cached_property
    def graph(self) -> Graph:
        return Graph(self.cfg.n_layers, self.cfg.n_heads, self.cfg.attn_only, frozenset(self.cfg.dead))

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
                raise ValueError("the circuit belongs to a different graph than this model")
            mask = mask.keep
        mask = torch.as_tensor(mask, device=self.device)
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
    ) -> RunOutput:
        """One patched forward pass.

        - ``mask``: ``[n_edges]`` or ``[batch, n_edges]`` floats (1 keeps the edge), or a Circuit.
        - ``ablated``: ``[1|batch, 1|pos, n_sources, d_model]``, each source's ablated value.
        - ``input_embeds``: the ``input`` node's output ``[batch, pos, d_model]`` in place of
          token and position embeddings (EAP-IG interpolates it).
        - ``return_sources``: also return every source's output, ``[batch, pos, n_sources, d]``.
        - ``return_reader_inputs``: also return the reader inputs, before LayerNorm, one tensor
          per reader group in reader order: per layer ``[batch, pos, 3 * n_heads, d]`` (q, k, v
          of all heads) and, with MLPs, ``[batch, pos, 1, d]``; last ``[batch, pos, 1, d]`` for
          the logits. Gradients with respect to them give EAP-IG's edge scores.
        """
        cfg, graph = self.cfg, self.graph
        if input_embeds is None:
            tokens = self._check_tokens(tokens)
            batch, pos = tokens.shape
            embed = self.hook_embed(self.embed.W_E[tokens])
            pos_embed = self.hook_pos_embed(self.pos_embed.W_pos[:pos])
            x_in = embed + pos_embed
        else:
            if input_embeds.dim() != 3 or input_embeds.shape[-1] != cfg.d_model:
                raise ValueError(
                    f"input_embeds must have shape [batch, pos, {cfg.d_model}], "
                    f"got {tuple(input_embeds.shape)}"
                )
            x_in = input_embeds.to(self.dtype)
            batch, pos = x_in.shape[:2]
        removed = self._removed(mask, batch)
        if removed is not None:
            ablated = self._check_ablated(ablated, batch, pos)
        patch = _Patcher(removed, ablated)
        patch.add(x_in[:, :, None], 0)
        sources = [x_in[:, :, None]] if return_sources else None
        readers = [] if return_reader_inputs else None
        keep_readers = return_reader_inputs

        resid = x_in
        n_heads = cfg.n_heads
        for layer, block in enumerate(self.blocks):
            resid = block.hook_resid_pre(resid)
            # ---- attention: 3 * n_heads readers
            start = graph.attn_sources_before(layer)
            if patch.active or keep_readers:
                x = resid[:, :, None, :].expand(batch, pos, 3 * n_heads, cfg.d_model)
                x = patch.apply(x, graph.attn_reader_slice(layer))
                if keep_readers:
                    readers.append(x)
                x = x.view(batch, pos, 3, n_heads, cfg.d_model)
                q_in = block.hook_q_input(x[:, :, 0])
                k_in = block.hook_k_input(x[:, :, 1])
                v_in = block.hook_v_input(x[:, :, 2])
                q_in, k_in, v_in = (self._norm(block.ln1, t) for t in (q_in, k_in, v_in))
                result = self._attention(block.attn, q_in, k_in, v_in, shared=False)
            else:
                result = self._attention(block.attn, self._norm(block.ln1, resid), None, None, True)
            attn_out = block.hook_attn_out(result.sum(2) + block.attn.b_O)
            resid = block.hook_resid_mid(resid + attn_out)
            patch.add(result, start)
            if sources is not None:
                sources.append(result)
            # ---- MLP: one reader
            if block.mlp is not None:
                x = resid
                if patch.active or keep_readers:
                    r = graph.mlp_reader_index(layer)
                    x = patch.apply(x[:, :, None], slice(r, r + 1))
                    if keep_readers:
                        readers.append(x)
                    x = x[:, :, 0]
                x = block.hook_mlp_in(x)
                mlp = block.mlp
                pre = mlp.hook_pre(self._norm(block.ln2, x) @ mlp.W_in + mlp.b_in)
                post = mlp.hook_post(self._act(pre))
                mlp_out = block.hook_mlp_out(post @ mlp.W_out + mlp.b_out)
                resid = resid + mlp_out
                patch.add(mlp_out[:, :, None], start + n_heads)
                if sources is not None:
                    sources.append(mlp_out[:, :, None])
            resid = block.hook_resid_post(resid)
        # ---- logits: one reader
        x = resid
        if patch.active or keep_readers:
            x = patch.apply(x[:, :, None], slice(graph.n_readers - 1, graph.n_readers))
            if keep_readers:
                readers.append(x)
            x = x[:, :, 0]
        logits = self._norm(self.ln_final, x) @ self.unembed.W_U + self.unembed.b_U
        return RunOutput(
            logits=logits,
            sources=None if sources is None else torch.cat(sources, dim=2),
            reader_inputs=readers,
        )

    def _norm(self, ln: _LayerNorm | None, x: torch.Tensor) -> torch.Tensor:
        if ln is None:
            return x
        return ln.hook_normalized(F.layer_norm(x, (x.shape[-1],), ln.w, ln.b, self.cfg.ln_eps))

    def _attention(self, attn: _Attention, q_in, k_in, v_in, shared: bool) -> torch.Tensor:
        """Per-head outputs ``[batch, pos, n_heads, d_model]`` (TransformerLens ``hook_result``)."""
        if shared:  # every head reads the same normalised residual stream
            q = torch.einsum("bpd,hde->bphe", q_in, attn.W_Q)
            k = torch.einsum("bpd,hde->bphe", q_in, attn.W_K)
            v = torch.einsum("bpd,hde->bphe", q_in, attn.W_V)
        else:
            q = torch.einsum("bphd,hde->bphe", q_in, attn.W_Q)
            k = torch.einsum("bphd,hde->bphe", k_in, attn.W_K)
            v = torch.einsum("bphd,hde->bphe", v_in, attn.W_V)
        q = attn.hook_q(q + attn.b_Q)
        k = attn.hook_k(k + attn.b_K)
        v = attn.hook_v(v + attn.b_V)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.cfg.attn_scale
        if self.cfg.causal:
            n = scores.shape[-1]
            future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        scores = attn.hook_attn_scores(scores)
        pattern = attn.hook_pattern(torch.softmax(scores, dim=-1))
        z = attn.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return attn.hook_result(torch.einsum("bqhe,hed->bqhd", z, attn.W_O))

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def source_outputs(self, tokens: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Every source's clean output, ``[batch, pos, n_sources, d_model]``."""
        tokens = self._check_tokens(tokens)
        step = batch_size or max(1, len(tokens))
        parts = [self.run(tokens[i : i + step], return_sources=True).sources for i in
                 range(0, len(tokens), step)]
        return torch.cat(parts)

    def edge_scores(self, diff: torch.Tensor, reader_grads: list[torch.Tensor]) -> torch.Tensor:
        """``sum_{batch,pos,d} diff[src] * grad[reader]`` for every edge, as ``[n_edges]``.

        ``diff`` is ``[batch, pos, n_sources, d]`` (for EAP, ablated minus clean) and
        ``reader_grads`` the gradients with respect to ``run(..., return_reader_inputs=True)``'s
        reader inputs. One einsum per reader group.
        """
        graph = self.graph
        dense = diff.new_zeros(graph.n_sources, graph.n_readers)
        col = 0
        for grad in reader_grads:
            width = grad.shape[2]
            n_src = graph._reader_n_sources[col]
            dense[:n_src, col : col + width] = torch.einsum(
                "bpsd,bprd->sr", diff[:, :, :n_src], grad
            )
            col += width
        return graph.from_dense(dense)


class _Patcher:
    """Accumulates ``a_src - a~_src`` per block of sources and applies it to reader groups.

    Keeping one difference tensor per block (the input, a layer's heads, an MLP) and summing one
    einsum per block avoids concatenating the stream of differences at every layer, which would
    also make autograd keep a copy per layer.
    """

    def __init__(self, removed: torch.Tensor | None, ablated: torch.Tensor | None) -> None:
        self.removed = removed
        self.ablated = ablated
        self.blocks: list[tuple[int, torch.Tensor]] = []

    @property
    def active(self) -> bool:
        return self.removed is not None

    def add(self, outputs: torch.Tensor, start: int) -> None:
        """``outputs`` is ``[batch, pos, n, d]`` for sources ``start .. start + n - 1``."""
        if self.removed is None:
            return
        n = outputs.shape[2]
        self.blocks.append((start, outputs - self.ablated[:, :, start : start + n]))

    def apply(self, x: torch.Tensor, readers: slice) -> torch.Tensor:
        """``x`` is ``[batch, pos, r, d]``; subtract ``sum_src (1 - m) (a - a~)`` for each reader."""
        if self.removed is None:
            return x
        per_example = self.removed.dim() == 3
        for start, diff in self.blocks:
            stop = start + diff.shape[2]
            weight = self.removed[..., start:stop, readers]
            if per_example:
                x = x - torch.einsum("bpsd,bsr->bprd", diff, weight)
            else:
                x = x - torch.einsum("bpsd,sr->bprd", diff, weight)
        return x
