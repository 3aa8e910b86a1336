"""ACDC: Automatic Circuit DisCovery (Conmy, Mavor-Parker, Lynch, Heimersheim and Garriga-Alonso
2023, "Towards Automated Circuit Discovery for Mechanistic Interpretability").

The algorithm, as in ArthurConmy/Automatic-Circuit-Discovery:

- Start with every edge kept and ``cur`` = the metric of that state (a loss: higher is worse).
- Visit readers in reverse topological order (``logits`` first). If a reader's node has no kept
  outgoing edge left, nothing it reads can matter: all its incoming edges are removed without a
  test, as ACDC does for nodes that are no longer connected.
- Otherwise try removing each incoming edge in turn, latest source first (ACDC's default order):
  ``result = metric(state without the edge) - cur`` (optionally ``abs``). If ``result < tau``
  (strict) the edge stays removed and ``cur`` becomes the new metric, so the baseline drifts with
  every accepted removal; otherwise the edge is restored.

The metric is a loss over the training examples: KL divergence from the full model for
categorical outputs, mean squared error from the full model's output for numerical outputs
(``divergence="auto"``), or the task metric oriented so that higher is worse (``"task"``).

Two implementations make identical decisions:

- ``reference``: the plain loop, one full patched forward per training batch per edge tested.
- the fast path (default). Two exact savings:
  1. *Cached prefix.* When an edge into a reader is tested, every reader topologically before it
     is still unvisited, so still fully kept: everything upstream of the reader's stage (the
     attention or MLP sub-layer it belongs to, or the logits) is the clean forward. The residual
     stream at each stage and the clean source outputs are computed once, and each test runs
     only from the reader's stage onwards.
  2. *Speculative batching.* The tests are laid out in visiting order with a predicted decision
     for each (predict "remove" while removals have been at least as common as keeps, else
     "keep"); each test's state assumes the predictions before it. A window of such states is
     evaluated in one batched pass with one edge mask per state. Walking the window in order,
     every decision up to and including the first one that differs from its prediction was
     made in exactly the state the sequential loop would have reached, so it is kept; the rest
     of the window is discarded and re-planned from the true state. With predictions "keep",
     this is "evaluate candidates speculatively, accept the first removal that passes,
     re-evaluate the rest against the new state".
  Decisions can differ from the reference loop only where floating-point rounding of a batched
  pass moves ``result`` across ``tau``; tests compare both on float64 models.

``find_circuits(sizes)`` runs a sweep over ``thresholds`` and, for each requested size, returns
the largest circuit of the sweep whose size after pruning is at most that size (ties go to the
larger threshold), or the empty circuit if none is that small: a circuit over its budget would
never be credited (``circuitboard.scoring``).
``info`` records the threshold used, the whole sweep (threshold -> size) and the cost of the
sweep, which is what producing the circuits cost.

Hyperparameters:
    thresholds: the tau values swept by ``find_circuits`` (default: 25 values, 1e-6 .. 1,
        log-spaced, plus 0).
    divergence ("auto"): "kl", "l2", "task" or "auto" (KL for categorical tasks, else L2).
    abs_value (False): compare |result| with tau, as ACDC's ``abs_value_threshold``.
    fast (True): use the fast path; False runs the reference loop.
    window (32): candidate states per batched pass in the fast path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from circuitboard.ablation import check_ablation
from circuitboard.graph import Circuit
from circuitboard.methods.base import (
    Cost,
    MethodBase,
    check_choice,
    check_sizes,
    default_divergence,
    divergence,
    loss_sign,
    n_examples,
    prepare,
)
from circuitboard.model import ACTIVATIONS

METRICS = ("auto", "kl", "l2", "task")


def default_thresholds() -> tuple[float, ...]:
    return (0.0,) + tuple(float(t) for t in np.logspace(-6, 0, 25))


@dataclass
class ACDC(MethodBase):
    """Automatic Circuit DisCovery (Conmy et al. 2023); see the module docstring."""

    name: ClassVar[str] = "acdc"
    thresholds: Sequence[float] = field(default_factory=default_thresholds)
    divergence: str = "auto"
    abs_value: bool = False
    fast: bool = True
    window: int = 32

    @property
    def reads_labels(self) -> bool:
        """Only the task metric reads labels; KL and L2 compare with the full model's output."""
        return self.divergence == "task"

    def __post_init__(self) -> None:
        check_choice("ACDC divergence", self.divergence, METRICS)
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if not self.thresholds:
            raise ValueError("ACDC needs at least one threshold")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"ACDC window must be a positive integer, got {self.window!r}")

    # ------------------------------------------------------------------- public
    def run(self, model, task, tau: float, ablation: str = "counterfactual", seed: int = 0):
        """One ACDC pass at threshold ``tau``: a Circuit with ``info`` (cost, metric, tau)."""
        start = time.perf_counter()
        cost = Cost()
        ctx = _Context(model, task, check_ablation(ablation), seed, self.divergence, cost)
        keep, final_metric = self._search(ctx, float(tau), cost)
        info = self._info(cost, time.perf_counter() - start, ablation=ablation, seed=seed)
        info.update(tau=float(tau), metric=ctx.kind, final_metric=final_metric)
        return Circuit(model.graph, keep, info=info)

    def sweep(self, model, task, ablation: str = "counterfactual", seed: int = 0):
        """One circuit per threshold in ``self.thresholds``, sharing the cached clean pass."""
        start = time.perf_counter()
        cost = Cost()
        ctx = _Context(model, task, check_ablation(ablation), seed, self.divergence, cost)
        out: list[Circuit | None] = [None] * len(self.thresholds)
        hint = None  # the circuit at the next smaller tau predicts this one's decisions
        for i in sorted(range(len(self.thresholds)), key=lambda i: self.thresholds[i]):
            tau = self.thresholds[i]
            keep, final_metric = self._search(ctx, tau, cost, hint)
            info = {"tau": tau, "metric": ctx.kind, "final_metric": final_metric}
            out[i] = Circuit(model.graph, keep, info=info)
            hint = ~keep
        seconds = time.perf_counter() - start
        for c in out:
            c.info = {**self._info(cost, seconds, ablation=ablation, seed=seed), **c.info}
        return out

    def find_circuits(self, model, task, sizes, ablation: str = "counterfactual", seed: int = 0):
        sizes = check_sizes(model.graph, sizes)
        swept = self.sweep(model, task, ablation, seed)
        realised = [c.size for c in swept]
        table = [[c.info["tau"], s] for c, s in zip(swept, realised, strict=True)]
        out = []
        for k in sizes:
            fitting = [i for i in range(len(swept)) if realised[i] <= k]
            if not fitting:  # no threshold gives a circuit this small: the empty circuit
                info = {**swept[0].info, "tau": None, "requested": k, "size": 0, "sweep": table}
                out.append(Circuit(model.graph, torch.zeros_like(swept[0].keep), info=info))
                continue
            best = max(fitting, key=lambda i: (realised[i], -self.thresholds[i]))
            c = swept[best]
            info = {**c.info, "requested": k, "size": realised[best], "sweep": table}
            out.append(Circuit(model.graph, c.keep.clone(), info=info))
        return out

    # ------------------------------------------------------------------- search
    def _search(self, ctx: _Context, tau: float, cost: Cost, hint=None):
        """``(keep, final metric)``; ``hint`` (predicted removals) only steers the fast path."""
        if self.fast:
            return _fast_search(ctx, tau, self.abs_value, self.window, hint)
        return _reference_search(ctx, tau, self.abs_value, cost)


# ============================================================================ shared state
class _Context:
    """Everything a search reuses: batches, ablated values, full logits, the clean prefix."""

    def __init__(self, model, task, ablation, seed, kind, cost: Cost) -> None:
        self.model, self.task, self.graph = model, task, model.graph
        self.kind = default_divergence(model, task) if kind == "auto" else kind
        self.sign = loss_sign(task.higher_is_better)
        self.prepared = prepare(model, task, ablation, seed, cost)
        self.n_total = n_examples(self.prepared)
        self.cost = cost
        graph = self.graph
        self.items = _visit_order(graph)
        self.out_edges = {
            node: torch.nonzero(graph.edge_src == node).flatten() for node in range(graph.n_sources)
        }
        self.batches = []
        with torch.no_grad():
            for prep in self.prepared:
                self.batches.append(_BatchCache(model, prep))
                cost.add_forward(prep.n, calls=2)
        # Stage of each reader: index into [attn L0, mlp L0, attn L1, ..., logits].
        per_layer = 1 if graph.attn_only else 2
        stage = []
        for reader in range(graph.n_readers):
            if reader == graph.n_readers - 1:
                stage.append(per_layer * graph.n_layers)
                continue
            layer, offset = divmod(reader, 3 * graph.n_heads + (0 if graph.attn_only else 1))
            stage.append(layer * per_layer + (1 if offset >= 3 * graph.n_heads else 0))
        self.reader_stage = stage
        self.packed = _Packed(self.batches)
        self.live = zero_nodes(model)
        total = sum(float(self.losses(bc.all_kept_logits, bc, 1).sum()) for bc in self.batches)
        self.all_kept_metric = total / self.n_total

    def losses(self, logits: torch.Tensor, bc: _BatchCache, repeat: int) -> torch.Tensor:
        """Per-example loss of ``logits`` (``repeat`` stacked copies of the batch)."""
        task = self.task
        if self.kind == "task":
            batch = bc.batch if repeat == 1 else bc.batch.select(bc.index.repeat(repeat))
            return self.sign * task.score(logits, batch).double()
        full = bc.full if repeat == 1 else bc.full.repeat(repeat, 1, 1)
        return divergence(self.kind, full, logits, task.positions).double()

    def metric_reference(self, keep: torch.Tensor) -> float:
        """Mean loss of the state ``keep`` with one full patched forward per batch."""
        model = self.model
        mask = keep.to(device=model.device, dtype=model.dtype)
        total = 0.0
        with torch.no_grad():
            for bc in self.batches:
                logits = model.run(bc.batch.clean, mask, bc.ablated).logits
                total += float(self.losses(logits, bc, 1).sum())
                self.cost.add_forward(bc.n)
        return total / self.n_total


class _BatchCache:
    """One training batch: its ablated values, full logits, and the clean stream at each stage."""

    def __init__(self, model, prep) -> None:
        graph = model.graph
        self.batch, self.ablated, self.n = prep.batch, prep.ablated, prep.n
        self.index = torch.arange(self.n, device=model.device)
        self.full = model.run(self.batch.clean).logits
        # The all-kept patched pass is what the reference loop computes upstream of any test.
        keep = torch.ones(graph.n_edges, device=model.device, dtype=model.dtype)
        resid: dict[str, torch.Tensor] = {}

        def save(tensor, hook):
            resid[hook.name] = tensor

        names = [f"blocks.{i}.hook_resid_pre" for i in range(model.cfg.n_layers)]
        names += [f"blocks.{i}.hook_resid_mid" for i in range(model.cfg.n_layers)]
        names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
        with model.hooks(fwd_hooks=[(name, save) for name in names]):
            out = model.run(self.batch.clean, keep, self.ablated, return_sources=True)
        self.all_kept_logits = out.logits
        self.diff = out.sources - self.ablated  # a - a~, [n, pos, n_sources, d]
        stages = []
        for layer in range(model.cfg.n_layers):
            stages.append(resid[f"blocks.{layer}.hook_resid_pre"])
            if not graph.attn_only:
                stages.append(resid[f"blocks.{layer}.hook_resid_mid"])
        stages.append(resid[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
        self.stage_resid = stages


class _Packed:
    """Every training batch padded to the longest length and stacked, so that one pass serves
    all of them; attention ignores the padded keys, and losses read each batch's own rows and
    positions, so padding changes no number that is used."""

    def __init__(self, caches: list[_BatchCache]) -> None:
        self.pos = max(bc.batch.length for bc in caches)
        self.n = sum(bc.n for bc in caches)
        self.segments = []
        start = 0
        for bc in caches:
            self.segments.append((bc, start, bc.n, bc.batch.length))
            start += bc.n
        same = all(bc.batch.length == self.pos for bc in caches)
        self.valid = None
        if not same:
            self.valid = torch.cat(
                [
                    (torch.arange(self.pos, device=bc.diff.device) < bc.batch.length).expand(
                        bc.n, self.pos
                    )
                    for bc in caches
                ]
            )
        self.diff = self._stack([bc.diff for bc in caches])  # [n, pos, S, d]
        self.stage_resid = [
            self._stack([bc.stage_resid[i] for bc in caches])
            for i in range(len(caches[0].stage_resid))
        ]
        first = caches[0].ablated
        if all(bc.ablated is first for bc in caches) and first.shape[:2] == (1, 1):
            ablated = first
        else:
            ablated = self._stack(
                [bc.ablated.expand(bc.n, bc.batch.length, *bc.ablated.shape[2:]) for bc in caches]
            )
        # Source-major layouts, as the suffix pass multiplies them.
        self.ablated_by_source = ablated.permute(2, 0, 1, 3)  # [S, 1|n, 1|pos, d]
        self.diff_by_source = self.diff.permute(2, 0, 1, 3).reshape(self.diff.shape[2], -1)

    def _stack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out = parts[0].new_zeros(self.n, self.pos, *parts[0].shape[2:])
        start = 0
        for part in parts:
            out[start : start + part.shape[0], : part.shape[1]] = part
            start += part.shape[0]
        return out


def _visit_order(graph) -> list[tuple[int, list[int], int | None]]:
    """Readers in reverse topological order: (reader, incoming edges latest source first, node)."""
    src_of = {name: i for i, name in enumerate(graph.sources)}
    edges_by_reader: dict[int, list[int]] = {}
    for e, r in enumerate(graph.edge_reader.tolist()):
        edges_by_reader.setdefault(r, []).append(e)
    items = []
    for r in range(graph.n_readers - 1, -1, -1):
        if r not in edges_by_reader:
            continue
        node = graph.reader_node(graph.readers[r])
        edges = sorted(edges_by_reader[r], key=lambda e: -int(graph.edge_src[e]))
        items.append((r, edges, src_of.get(node)))
    return items


def _disconnected(ctx: _Context, keep: torch.Tensor, node: int | None) -> bool:
    return node is not None and not bool(keep[ctx.out_edges[node]].any())


# ============================================================================ reference
def _reference_search(ctx: _Context, tau: float, abs_value: bool, cost: Cost):
    keep = torch.ones(ctx.graph.n_edges, dtype=torch.bool)
    cur = ctx.metric_reference(keep)
    for _reader, edges, node in ctx.items:
        if _disconnected(ctx, keep, node):
            keep[edges] = False
            continue
        for e in edges:
            keep[e] = False
            new = ctx.metric_reference(keep)
            result = new - cur
            if abs_value:
                result = abs(result)
            if result < tau:
                cur = new
            else:
                keep[e] = True
    return keep, cur


# ============================================================================ fast path
def _fast_search(ctx: _Context, tau: float, abs_value: bool, window: int, hint=None):
    """ACDC's loop with speculative batched tests; decisions are the sequential loop's.

    Predictions: ``hint[e]`` (True = removed) where given, else "remove" while removals have
    been at least as common as keeps. The window adapts: it doubles (up to ``window``) after a
    pass whose predictions all held and halves after a misprediction.
    """
    keep = torch.ones(ctx.graph.n_edges, dtype=torch.bool)
    cur = ctx.all_kept_metric
    items = ctx.items
    item, pos, entered = 0, 0, False  # cursor: next test is edge ``pos`` of ``items[item]``
    counts = [0, 0]  # kept, removed
    width = min(4, window)
    while item < len(items):
        if hint is None:
            predict = torch.full_like(keep, counts[1] >= counts[0])
        else:
            predict = hint
        plan, states = _plan(ctx, keep, item, pos, entered, width, predict)
        values = []
        if states:
            stage = min(ctx.reader_stage[items[a[1]][0]] for a in plan if a[0] == "test")
            values = _evaluate(ctx, torch.stack(states), stage).tolist()
        missed = False
        for action in plan:
            if action[0] == "skip":
                i = action[1]
                keep[items[i][1]] = False
                item, pos, entered = i + 1, 0, False
                continue
            _, i, j, e, predicted, slot = action
            result = values[slot] - cur
            if abs_value:
                result = abs(result)
            remove = result < tau
            if remove:
                keep[e] = False
                cur = values[slot]
            counts[remove] += 1
            item, pos, entered = i, j + 1, True
            if pos >= len(items[i][1]):
                item, pos, entered = i + 1, 0, False
            if remove != predicted:
                missed = True
                break
        width = max(1, width // 2) if missed else min(window, 2 * width)
    return keep, cur


def _plan(ctx, keep, item, pos, entered, window, predict):
    """Up to ``window`` tests from the cursor, each in the state its predecessors predict.

    ``predict[e]`` is True where edge ``e`` is predicted to be removed.
    """
    items = ctx.items
    pred = keep.clone()
    plan, states = [], []
    while item < len(items) and len(states) < window:
        _reader, edges, node = items[item]
        if not entered:
            if _disconnected(ctx, pred, node):
                plan.append(("skip", item))
                pred[edges] = False
                item, pos = item + 1, 0
                continue
            entered = True
        e = edges[pos]
        state = pred.clone()
        state[e] = False
        predicted = bool(predict[e])
        plan.append(("test", item, pos, e, predicted, len(states)))
        states.append(state)
        if predicted:
            pred[e] = False
        pos += 1
        if pos >= len(edges):
            item, pos, entered = item + 1, 0, False
    return plan, states


def _evaluate(ctx: _Context, states: torch.Tensor, stage: int) -> torch.Tensor:
    """Mean loss of each state ``[w, n_edges]`` (bool), run from ``stage`` on: ``[w]``."""
    model, packed = ctx.model, ctx.packed
    removed = 1 - ctx.graph.to_dense(states.to(device=model.device, dtype=model.dtype))
    w = len(states)
    with torch.no_grad():
        patches = _Patches(model, removed, stage, ctx.live)
        logits = _suffix_forward(model, packed, patches, ctx.live)
        logits = logits.view(w, packed.n, packed.pos, -1)
        total = torch.zeros(w, dtype=torch.float64, device=model.device)
        for bc, start, n, length in packed.segments:
            part = logits[:, start : start + n, :length].reshape(w * n, length, -1)
            total += ctx.losses(part, bc, w).view(w, n).sum(1)
    ctx.cost.add_forward(packed.n * w)
    return total / ctx.n_total


def zero_nodes(model) -> tuple[list[list[int]], list[bool]]:
    """Live heads per layer and whether each MLP is live; a node whose weights and biases are
    all zero (Tracr's padding) always outputs exactly zero, as does its ablated value, so the
    fast pass can skip it without changing a number."""
    live_heads, live_mlps = [], []
    with torch.no_grad():
        for block in model.blocks:
            a = block.attn
            parts = (a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V)
            live_heads.append(
                [h for h in range(a.W_Q.shape[0]) if any(bool(t[h].any()) for t in parts)]
            )
            m = block.mlp
            live_mlps.append(
                m is not None and any(bool(t.any()) for t in (m.W_in, m.b_in, m.W_out, m.b_out))
            )
    return live_heads, live_mlps


class _Patches:
    """Where a window of states removes edges, from ``stage`` on, split at the cached prefix.

    For each reader group from ``stage`` on (keyed by its first reader): the live readers'
    columns and their removal weights ``[w, s, r]`` over the cached prefix of sources and over
    the sources this pass computes, or None where no state removes any such edge (subtracting
    nothing changes nothing, so the pass skips it).
    """

    def __init__(self, model, removed: torch.Tensor, stage: int, live) -> None:
        cfg, graph = model.cfg, model.graph
        per_layer = 1 if cfg.attn_only else 2
        heads = cfg.n_heads
        self.w, self.stage = removed.shape[0], stage
        self.start_layer, self.in_mlp = divmod(stage, per_layer)
        live_heads, _ = live
        groups = []  # (first reader, live reader columns, sources readable)
        for layer in range(cfg.n_layers):
            first = graph.attn_reader_slice(layer).start
            cols = [first + t * heads + h for t in range(3) for h in live_heads[layer]]
            groups.append((first, cols, graph.attn_sources_before(layer)))
            if not cfg.attn_only:
                r = graph.mlp_reader_index(layer)
                groups.append((r, [r], graph.mlp_sources_before(layer)))
        groups.append((graph.n_readers - 1, [graph.n_readers - 1], graph.n_sources))
        self.n_prefix = groups[stage][2]
        self.groups = {}
        for g in range(stage, len(groups)):
            first, cols, n_src = groups[g]
            index = torch.tensor(cols, dtype=torch.long, device=removed.device)
            prefix = removed[:, : self.n_prefix].index_select(2, index)
            suffix = removed[:, self.n_prefix : n_src].index_select(2, index)
            self.groups[first] = (
                prefix if bool(prefix.any()) else None,
                suffix if suffix.shape[1] and bool(suffix.any()) else None,
            )


def _suffix_forward(model, bc: _Packed, patches: _Patches, live) -> torch.Tensor:
    """The patched forward pass from ``patches.stage`` on, for ``w`` edge masks at once.

    Upstream of the stage every reader is fully kept, so the residual stream entering it and
    the source outputs before it are the cached clean ones. The result is
    ``[w * n, pos, d_vocab_out]``, state major. It follows the maths of
    ``PatchableTransformer.run`` using only the model's parameters (TransformerLens names) and
    config, not the engine's private helpers, so changes to the engine's internals cannot
    silently change it; the fast-versus-reference test checks it. Differences ``a - a~`` are
    kept source-major (``[source, n * pos * d]``) so that a patch is one matmul, and nodes with
    all-zero weights (``zero_nodes``) are skipped.
    """
    cfg, graph = model.cfg, model.graph
    w, n, n_prefix = patches.w, bc.n, patches.n_prefix
    pos, d, heads = bc.pos, cfg.d_model, cfg.n_heads
    live_heads, live_mlps = live
    rows, flat = w * n, n * pos * d
    prefix_diff = bc.diff_by_source[:n_prefix]  # [s, n * pos * d], shared by all states
    ablated = bc.ablated_by_source  # [S, 1|n, 1|pos, d]
    # This pass's a - a~, zero for skipped nodes (read with weight 0, never uninitialised).
    buffer = prefix_diff.new_zeros(w, graph.n_sources - n_prefix, flat)
    act = ACTIVATIONS[cfg.act_fn]
    valid = None if bc.valid is None else bc.valid.repeat(w, 1)

    def write(outputs: torch.Tensor, sources: list[int]) -> None:
        """``outputs`` is ``[k, w * n, pos, d]`` for the ascending ``sources``."""
        k, start = len(sources), sources[0]
        if sources[-1] - start + 1 == k:  # consecutive: one slice
            diff = outputs.view(k, w, n, pos, d) - ablated[start : start + k, None]
            at = start - n_prefix
            buffer[:, at : at + k] = diff.transpose(0, 1).reshape(w, k, flat)
            return
        for i, src in enumerate(sources):
            diff = outputs[i].view(w, n, pos, d) - ablated[src, None]
            buffer[:, src - n_prefix] = diff.reshape(w, flat)

    def read(resid: torch.Tensor, first: int, r: int) -> torch.Tensor:
        """Inputs of the group's ``r`` live readers, ``[r, w * n, pos, d]``."""
        prefix, suffix = patches.groups[first]
        x = resid.view(w, 1, flat)
        if prefix is not None:
            x = x - prefix.transpose(1, 2) @ prefix_diff
        if suffix is not None:
            x = x - torch.bmm(suffix.transpose(1, 2), buffer[:, : suffix.shape[1]])
        x = x.expand(w, r, flat).view(w, r, n, pos, d).transpose(0, 1)
        return x.reshape(r, rows, pos, d)

    def norm(ln, x: torch.Tensor) -> torch.Tensor:
        return x if ln is None else F.layer_norm(x, (d,), ln.w, ln.b, cfg.ln_eps)

    resid = bc.stage_resid[patches.stage]
    resid = resid.unsqueeze(0).expand(w, *resid.shape).reshape(rows, pos, d)
    for layer in range(patches.start_layer, cfg.n_layers):
        block = model.blocks[layer]
        a = graph.attn_sources_before(layer)
        if not (layer == patches.start_layer and patches.in_mlp):
            hs = live_heads[layer]
            if hs:
                first = graph.attn_reader_slice(layer).start
                x = norm(block.ln1, read(resid, first, 3 * len(hs)))
                result = _attention(cfg, block.attn, x, hs, valid)  # [live heads, rows, pos, d]
                resid = resid + (result.sum(0) + block.attn.b_O)
                write(result, [a + h for h in hs])
            else:
                resid = resid + block.attn.b_O
        if block.mlp is not None and live_mlps[layer]:
            x = read(resid, graph.mlp_reader_index(layer), 1)[0]
            mlp = block.mlp
            mlp_out = act(norm(block.ln2, x) @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
            resid = resid + mlp_out
            write(mlp_out[None], [a + heads])
    x = read(resid, graph.n_readers - 1, 1)[0]
    return norm(model.ln_final, x) @ model.unembed.W_U + model.unembed.b_U


def _attention(cfg, attn, x: torch.Tensor, heads: list[int], valid=None) -> torch.Tensor:
    """Outputs ``[len(heads), batch, pos, d]`` of ``heads`` from their normalised q, k, v
    inputs ``[3 * len(heads), batch, pos, d]``; ``valid`` (``[batch, pos]``) masks padded keys."""
    h, b, p, d = len(heads), x.shape[1], x.shape[2], x.shape[3]
    if h < attn.W_Q.shape[0]:
        index = torch.tensor(heads, device=x.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
    else:
        pick = lambda t: t  # noqa: E731
    q, k, v = (
        torch.baddbmm(
            pick(bias)[:, None], x[i * h : (i + 1) * h].reshape(h, b * p, d), pick(weight)
        ).view(h, b, p, -1)
        for i, (weight, bias) in enumerate(
            ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
        )
    )
    scores = q @ k.transpose(-1, -2) / cfg.attn_scale  # [h, b, q, k]
    if cfg.causal:
        future = torch.ones(p, p, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if valid is not None:
        scores = scores.masked_fill(~valid[None, :, None, :], float("-inf"))
    z = torch.softmax(scores, dim=-1) @ v  # [h, b, p, e]
    return torch.bmm(z.reshape(h, b * p, -1), pick(attn.W_O)).view(h, b, p, d)
