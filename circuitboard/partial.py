"""Partial passes for many edge masks at once, started from cached clean activations.

This is the engine mode that ACDC runs on (``PatchableTransformer.run_states``). ACDC visits
readers in reverse topological order, so when it tests an edge into a reader every reader
upstream of that reader's *stage* (an attention or MLP sub-layer, a parallel block, or the
logits) is still fully kept: upstream of the stage the pass is the clean pass. A partial pass
therefore starts at the stage from the cached clean residual stream and the cached clean source
differences ``a - a~`` (``StageCache``), and runs ``w`` edge masks (one per ACDC state) together.

Every reader still reads ``resid - sum_src (1 - m) (a_src - a~_src)`` and every node is computed
by the engine's own functions (norms, projections, rotary, attention scores, MLP, unembedding),
so a partial pass gives the numbers of a full patched pass with the same mask (up to float
rounding; tests hold ACDC's decisions equal to those of full passes). What it avoids is
computing anything twice:

- **Streams.** States whose computation so far is identical share one *stream* (one residual
  and one set of source outputs). All states start as the single clean stream; a state splits
  off only where one of its nodes reads a different input, so states that differ only in later
  readers keep sharing the earlier layers.
- **Distinct inputs.** A reader's input is determined by its stream and its mask column, so each
  distinct (stream, column) pair is computed, normalised and projected once, however many
  readers and states read it (within a state, readers whose columns agree, e.g. all those with
  every edge kept, share one input). A head is computed once per distinct (q, k, v) input triple.
  No per-state copy of every reader's input (``[w, 3H, n * pos * d]``) is ever made.
- **Only what is read.** A head's or MLP's difference ``a - a~`` is stored only if some state
  removes one of its outgoing edges, and patches are sparse products over the removed edges.
- **Only the scored positions.** With ``last_only`` the pass keeps every position while later
  layers' keys and values need them and, after the last attention, only each row's last real
  position (the position ``"last"``-scored tasks read): the last MLP and the unembedding run on
  one position per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitboard.model import _rms_scale, _rope, attention_scores, softmax


@dataclass
class StageCache:
    """Clean activations a partial pass starts from.

    ``stage_resid[i]``: the residual stream entering stage ``i`` (``[n, pos, d]``);
    ``diff``: every source's clean ``a - a~``, source-major ``[S, n, pos, d]``;
    ``ablated``: the ablated values, source-major ``[S, 1|n, 1|pos, d]``;
    ``valid``: ``[n, pos]`` real (not padded) positions, or None when all are real;
    ``last``: ``[n]`` each row's last real position.
    """

    stage_resid: list[torch.Tensor]
    diff: torch.Tensor
    ablated: torch.Tensor
    valid: torch.Tensor | None
    last: torch.Tensor

    @property
    def n(self) -> int:
        return self.diff.shape[1]

    @classmethod
    def pack(cls, caches: list[StageCache]) -> StageCache:
        """Caches of batches of different lengths stacked along examples, padded to the longest
        (attention ignores padded keys; each row's ``last`` is its own last position)."""
        if len(caches) == 1:
            return caches[0]
        pos = max(c.diff.shape[2] for c in caches)
        n = sum(c.n for c in caches)

        def stack(parts, dim):  # examples along ``dim``, positions along dim + 1
            shape = list(parts[0].shape)
            shape[dim], shape[dim + 1] = n, pos
            out = parts[0].new_zeros(shape)
            start = 0
            for part in parts:
                index = [slice(None)] * len(shape)
                index[dim] = slice(start, start + part.shape[dim])
                index[dim + 1] = slice(0, part.shape[dim + 1])
                out[tuple(index)] = part
                start += part.shape[dim]
            return out

        device = caches[0].diff.device
        valid = torch.cat(
            [
                torch.arange(pos, device=device)[None] < c.diff.shape[2]
                for c in caches
                for _ in range(c.n)
            ]
        )
        ablated = [c.ablated.expand(-1, c.n, c.diff.shape[2], -1) for c in caches]
        first = caches[0].ablated
        same = all(c.ablated is first for c in caches) and first.shape[1:3] == (1, 1)
        return cls(
            stage_resid=[
                stack([c.stage_resid[i] for c in caches], 0)
                for i in range(len(caches[0].stage_resid))
            ],
            diff=stack([c.diff for c in caches], 1),
            ablated=first if same else stack(ablated, 1),
            valid=valid,
            last=torch.cat([c.last for c in caches]),
        )


@torch.no_grad()
def stage_cache(model, tokens: torch.Tensor, ablated: torch.Tensor) -> StageCache:
    """The clean pass of ``tokens`` with the residual entering every stage."""
    tokens = model._check_tokens(tokens)
    ablated = model._check_ablated(ablated, *tokens.shape)
    saved: dict[str, torch.Tensor] = {}

    def save(tensor, hook):
        saved[hook.name] = tensor

    names = [name for name, _ in model.stage_hooks()]
    with model.hooks(fwd_hooks=[(name, save) for name in set(names)]):
        out = model.run(tokens, return_sources=True, return_logits=False)
    by_source = ablated.permute(2, 0, 1, 3)
    n, pos = tokens.shape
    return StageCache(
        stage_resid=[saved[name] for name in names],
        diff=out.sources.permute(2, 0, 1, 3) - by_source,
        ablated=by_source,
        valid=None,
        last=torch.full((n,), pos - 1, dtype=torch.long, device=tokens.device),
    )


class _Streams:
    """The residual streams of a partial pass and the source differences they wrote.

    ``resid[m]`` is the residual of stream ``m``; ``of_state[s]`` the stream state ``s`` is on.
    Each block of sources written in this pass keeps the differences of its needed sources, one
    row per stream that existed when it was written; ``row`` maps current streams to rows.
    """

    def __init__(self, cache: StageCache, resid: torch.Tensor, n_prefix: int, w: int) -> None:
        self.resid = resid[None]  # [m, n, P, d]
        self.of_state = torch.zeros(w, dtype=torch.long, device=resid.device)
        self.prefix = cache.diff[:n_prefix]  # [S0, n, P, d], shared by every stream
        self.n_prefix = n_prefix
        self.blocks: list[dict] = []

    @property
    def flat(self) -> int:
        return self.resid[0].numel()

    def read(self, cols: torch.Tensor):
        """Distinct inputs of a reader group: ``(x [U, n, P, d], inverse [w, g])``.

        ``cols`` is ``[w, n_src, g]``: for each state, the removal weight of each readable
        source into each reader of the group.
        """
        w, n_src, g = cols.shape
        stream = self.of_state[:, None, None].expand(w, g, 1)
        keys = torch.cat([stream, cols.transpose(1, 2).round().long()], dim=2).reshape(w * g, -1)
        uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
        stream_u, col = uniq[:, 0], uniq[:, 1:]
        flat = self.flat
        x = self.resid.reshape(len(self.resid), flat).index_select(0, stream_u)
        n_u = len(uniq)
        part = col[:, : self.n_prefix]
        x = self._subtract(x, part.nonzero(), self.prefix.reshape(-1, flat), n_u)
        for block in self.blocks:
            lo = block["first"]
            if lo >= n_src:
                break
            part = col[:, lo : lo + block["n"]]
            nz = part.nonzero()
            if len(nz):
                local = block["local"][nz[:, 1]]  # data is source-major: [k, m, ...]
                rows = local * block["m"] + block["row"][stream_u[nz[:, 0]]]
                pairs = torch.stack([nz[:, 0], rows], dim=1)
                x = self._subtract(x, pairs, block["data"].reshape(-1, flat), n_u)
        return x.view(n_u, *self.resid.shape[1:]), inverse.view(w, g)

    @staticmethod
    def _subtract(x, pairs, rows, n_u):
        """``x[u] -= sum of rows[j]`` over the (u, j) pairs: one sparse product."""
        if not len(pairs):
            return x
        values = torch.ones(len(pairs), dtype=x.dtype, device=x.device)
        matrix = torch.sparse_coo_tensor(
            pairs.T, values, (n_u, rows.shape[0]), check_invariants=False
        )
        return torch.sparse.addmm(x, matrix, rows, alpha=-1)

    def split(self, key: torch.Tensor):
        """New streams from ``key [w, c]`` (the old stream first): ``(old stream, a state)`` of
        each new stream. Block rows follow the new streams."""
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        rep = torch.empty(len(uniq), dtype=torch.long, device=key.device)
        rep.scatter_(0, inverse, torch.arange(len(key), device=key.device))
        old = uniq[:, 0]
        for block in self.blocks:
            block["row"] = block["row"][old]
        self.of_state = inverse
        return old, rep

    def add_block(self, first: int, needed: torch.Tensor, data: torch.Tensor) -> None:
        """Sources ``first ..< first + len(needed)``: ``data [k, m, n, P, d]`` holds the
        differences of the ``needed`` ones (a bool mask with ``k`` set), one row per stream."""
        local = torch.cumsum(needed.long(), 0) - 1
        local[~needed] = -1
        m = data.shape[1]
        self.blocks.append(
            {
                "first": first,
                "n": len(needed),
                "k": int(needed.sum()),
                "m": m,
                "local": local,
                "data": data,
                "row": torch.arange(m, device=data.device),
            }
        )

    def restrict(self, last: torch.Tensor) -> None:
        """Keep only each row's position ``last[row]`` from here on."""
        self.resid = _at(self.resid, last, 1)
        self.prefix = _at(self.prefix, last, 1)
        for block in self.blocks:
            block["data"] = _at(block["data"], last, 2)  # [k, m, n, P, d]


def _at(t: torch.Tensor, last: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` with examples along ``dim`` and positions along ``dim + 1``, at ``last [n]`` only."""
    if t.shape[dim + 1] == 1:
        return t
    if t.shape[dim] != len(last):  # one value for every example (mean ablation): broadcast
        t = t.expand(*t.shape[:dim], len(last), *t.shape[dim + 1 :])
    index = last.view(*([1] * dim), -1, 1, *([1] * (t.dim() - dim - 2)))
    index = index.expand(*t.shape[: dim + 1], 1, *t.shape[dim + 2 :])
    return t.gather(dim + 1, index)


@torch.no_grad()
def run_states(
    model, cache: StageCache, stage: int, masks: torch.Tensor, last_only: bool = False
) -> torch.Tensor:
    """``(logits [U, n, P, d_vocab_out], index [w])`` for ``w`` edge masks ``[w, n_edges]``
    (1 keeps), each run from ``stage`` on: state ``s`` has the logits ``logits[index[s]]``.
    States that end on the same logits share one row (``U <= w``), so a loss is computed once
    per distinct output. Every reader before the stage must be fully kept in every mask.

    ``P`` is the number of positions (1 with ``last_only``: each row's last real position).
    """
    cfg, graph = model.cfg, model.graph
    masks = torch.as_tensor(masks, device=model.device).to(model.dtype)
    if masks.dim() != 2 or masks.shape[1] != graph.n_edges:
        raise ValueError(f"masks must be [w, {graph.n_edges}], got {tuple(masks.shape)}")
    stages = model.stages
    if not 0 <= stage < len(stages):
        raise ValueError(f"stage must be in [0, {len(stages)}), got {stage}")
    removed = 1 - graph.to_dense(masks)  # [w, S, R]
    first_reader = model.stage_readers(stage).start
    if bool(removed[:, :, :first_reader].any()):
        raise ValueError("a mask removes an edge into a reader before the start stage")
    needed = removed.any(dim=2).any(dim=0)  # sources some state reads through a removed edge
    w = len(masks)
    kind, start_layer = stages[stage]
    n_prefix = model.stage_sources(stage)
    streams = _Streams(cache, cache.stage_resid[stage], n_prefix, w)
    ablated = cache.ablated
    valid = cache.valid
    pos = cache.diff.shape[2]
    context = model.pass_context(pos, cache.diff.device, cache.diff.dtype)
    # With last_only, only each row's last position matters once no later attention reads keys:
    # from the last attention stage on (whose queries are then only that position).
    restrict_at = model.last_attention_stage() if last_only else len(stages)

    def restrict():
        nonlocal ablated
        streams.restrict(cache.last)
        if ablated.shape[2] > 1:
            ablated = _at(ablated, cache.last, 1)

    if stage > restrict_at:
        restrict()
    for i in range(stage, len(stages)):
        kind, layer = stages[i]
        readers = model.stage_readers(i)
        n_src = graph._reader_n_sources[readers.start]
        cols = removed[:, :n_src, readers]
        x, inverse = streams.read(cols)
        last = cache.last if i == restrict_at else None  # keys at every position, one query
        if kind == "logits":
            return model._unembed(x), inverse[:, 0]
        block = model.blocks[layer]
        src = graph.attn_sources_before(layer)
        if kind == "mlp":
            out = model._mlp(block, x)  # [U, n, P, d], one per distinct input
            old, rep = streams.split(torch.stack([streams.of_state, inverse[:, 0]], 1))
            u = inverse[rep, 0]
            streams.resid = streams.resid[old] + out[u]
            m_src = src + cfg.n_heads
            if bool(needed[m_src]):
                diff = (out[u] - ablated[m_src])[None]
                streams.add_block(m_src, needed[m_src : m_src + 1], diff)
            continue
        # attention (and, in a parallel block, the MLP beside it)
        z, job_of = _heads(
            model, block, layer, x, inverse[:, : 3 * cfg.n_heads], context, valid, last
        )
        if last is not None:
            restrict()
            x = _at(x, last, 1)
        key = [streams.of_state[:, None], job_of]
        mlp_u = None
        if kind == "block" and block.mlp is not None:
            mlp_inputs, mlp_u = torch.unique(inverse[:, 3 * cfg.n_heads], return_inverse=True)
            key.append(mlp_u[:, None])
        old, rep = streams.split(torch.cat(key, dim=1))
        jobs = job_of[rep]  # [m', H]
        attn_out, heads_out = _head_outputs(model, block, z, jobs)
        resid = streams.resid[old]
        if mlp_u is not None:
            mlp_out = model._mlp(block, x.index_select(0, mlp_inputs))[mlp_u[rep]]
            streams.resid = mlp_out + attn_out + resid
        else:
            streams.resid = resid + attn_out
        head_needed = needed[src : src + cfg.n_heads]
        if bool(head_needed.any()):
            idx = torch.nonzero(head_needed).flatten()
            diff = heads_out(idx).sub_(ablated[src + idx, None])  # [k, m, n, P, d]
            streams.add_block(src, head_needed, diff)
        m_src = src + cfg.n_heads
        if mlp_u is not None and bool(needed[m_src]):
            diff = (mlp_out - ablated[m_src])[None]
            streams.add_block(m_src, needed[m_src : m_src + 1], diff)
    raise AssertionError("the pass ends at the logits stage")


def _heads(model, block, layer, x, inverse, context, valid, last=None):
    """Attention of every distinct (head, q input, k input, v input): ``(z [J, n, P, e],
    job_of [w, H])``, each head of each state mapped to its job. With ``last`` (``[n]``) the
    queries are only each row's position ``last`` (``P = 1``); keys and values are all."""
    cfg, attn = model.cfg, block.attn
    n_heads, group = cfg.n_heads, cfg.kv_group
    normed = model._norm(block.ln1, x)  # [U, n, P, d]
    w = inverse.shape[0]
    heads = torch.arange(n_heads, device=x.device).expand(w, n_heads)
    keys = torch.stack(
        [heads, inverse[:, :n_heads], inverse[:, n_heads : 2 * n_heads], inverse[:, 2 * n_heads :]],
        dim=-1,
    ).reshape(-1, 4)
    jobs, job_of = torch.unique(keys, dim=0, return_inverse=True)
    h = jobs[:, 0]
    normed_q = normed if last is None else _at(normed, last, 1)
    q = _project(normed_q, attn.W_Q, attn.b_Q, jobs[:, 1], h)
    k = _project(normed, attn.W_K, attn.b_K, jobs[:, 2], h // group)
    v = _project(normed, attn.W_V, attn.b_V, jobs[:, 3], h // group)
    hidden = context.mask(layer)
    if cfg.positional == "rotary":
        cos, sin = context.rotary
        k = _rope(k, cos, sin)
        q = _rope(q, cos, sin) if last is None else _rope(q, cos[last, None], sin[last, None])
    if last is not None and hidden is not None:
        hidden = hidden[last, None]  # [n, 1, pos]: the query row of each example
    pattern = softmax(attention_scores(cfg, q, k, hidden, valid))
    return pattern @ v, job_of.view(w, n_heads)


def _project(normed, weight, bias, u_idx, h_idx) -> torch.Tensor:
    """``normed[u] @ weight[h] + bias[h]`` for every (u, h) pair: ``[pairs, n, P, e]``.

    Pairs are grouped by the set of heads each distinct input needs, and each group is one
    matmul of its inputs with those heads' weights side by side, so every projection that is
    needed is computed once and no input is copied per head.
    """
    n_u, n, p, d = normed.shape
    n_w, _, e = weight.shape
    need = torch.zeros(n_u, n_w, dtype=torch.bool, device=normed.device)
    need[u_idx, h_idx] = True
    used = torch.nonzero(need.any(1)).flatten()
    sets, which = torch.unique(need[used], dim=0, return_inverse=True)
    out = normed.new_empty(n_u, n_w, n, p, e)
    for j in range(len(sets)):
        us = used[which == j]
        hs = torch.nonzero(sets[j]).flatten()
        w_cat = weight.index_select(0, hs).permute(1, 0, 2).reshape(d, -1)
        b_cat = bias.index_select(0, hs).reshape(-1)
        inputs = (
            normed.index_select(0, us).reshape(-1, d) if len(us) < n_u else normed.reshape(-1, d)
        )
        proj = torch.addmm(b_cat, inputs, w_cat).view(len(us), n, p, len(hs), e)
        out[us[:, None], hs[None, :]] = proj.permute(0, 3, 1, 2, 4)
    return out[u_idx, h_idx]


def _head_outputs(model, block, z, jobs):
    """The attention output of each stream ``[m, n, P, d]`` (its post-norm included), and a
    function giving the per-head outputs (source values) of heads ``idx``: ``[k, m, n, P, d]``."""
    cfg, attn = model.cfg, block.attn
    m, n_heads = jobs.shape
    _, n, p, e = z.shape
    d = cfg.d_model
    per = z[jobs.reshape(-1)].view(m, n_heads, n, p, e)
    cat = per.permute(0, 2, 3, 1, 4).reshape(m * n * p, n_heads * e)
    out = torch.addmm(attn.b_O, cat, attn.W_O.reshape(-1, d)).view(m, n, p, d)
    scale = None
    if cfg.post_norms:
        scale = _rms_scale(out, cfg.ln_eps)
        out = model._rms(block.ln1_post, out, scale)

    def heads_out(idx: torch.Tensor) -> torch.Tensor:
        sel = per.index_select(1, idx)  # [m, k, n, p, e]
        k = len(idx)
        res = torch.bmm(
            sel.permute(1, 0, 2, 3, 4).reshape(k, m * n * p, e), attn.W_O.index_select(0, idx)
        ).view(k, m, n, p, d)
        if scale is not None:
            res = model._rms(block.ln1_post, res, scale[None])
        return res

    return out, heads_out
