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
  1. *Partial passes from the clean stage.* When an edge into a reader is tested, every reader
     topologically before it is still unvisited, so still fully kept: everything upstream of
     the reader's stage (the attention or MLP sub-layer it belongs to, a parallel block, or the
     logits) is the clean forward. The engine caches the clean pass at every stage once
     (``PatchableTransformer.stage_cache``) and runs each test from the reader's stage on
     (``run_states``, ``circuitboard.partial``): the same node computations as a full pass, for
     every model family the engine runs. States share whatever they compute alike (a stream
     per distinct history, an input per distinct mask column), and for ``"last"``-scored tasks
     the pass keeps only the last position after the last attention layer.
  2. *Speculative batching.* The tests are laid out in visiting order with a predicted decision
     for each (predict "remove" while removals have been at least as common as keeps, else
     "keep"); each test's state assumes the predictions before it. A window of such states is
     evaluated in one partial pass with one edge mask per state. Walking the window in order,
     every decision up to and including the first one that differs from its prediction was
     made in exactly the state the sequential loop would have reached, so it is kept; the rest
     of the window is discarded and re-planned from the true state. With predictions "keep",
     this is "evaluate candidates speculatively, accept the first removal that passes,
     re-evaluate the rest against the new state". ``window=1`` is the plain loop with one
     partial pass per edge test (auto-circuit's way).
  Decisions can differ from the reference loop only where floating-point rounding of a partial
  pass moves ``result`` across ``tau``; tests compare both on float64 models.

``find_circuits(sizes)`` runs a sweep over ``thresholds`` and, for each requested size, returns
the largest circuit of the sweep whose size after pruning is at most that size (the empty
circuit when none fits), as the at-most-budget scoring rule credits. ``info`` records the
requested and realised sizes, the threshold used, the whole sweep (threshold -> size) and the
cost of the sweep, which is what producing the circuits cost.

Hyperparameters:
    thresholds: the tau values swept by ``find_circuits`` (default: 25 values, 1e-6 .. 1,
        log-spaced, plus 0).
    divergence ("auto"): "kl", "l2", "task" or "auto" (KL for categorical tasks, else L2).
    abs_value (False): compare |result| with tau, as ACDC's ``abs_value_threshold``.
    fast (True): use the fast path; False runs the reference loop.
    window (32): the most candidate states per batched pass in the fast path (1: the plain
        loop, one partial pass per edge test).
    last_position_only (True): for "last"-scored tasks, partial passes keep only the last
        position after the last attention layer (exact: nothing else is read); False computes
        every position, as a plain partial forward does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

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
    scored,
)
from circuitboard.partial import StageCache

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
    last_position_only: bool = True

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
    def _context(self, model, task, ablation: str, seed: int, cost: Cost) -> _Context:
        """The cached clean pass and ablated values that every threshold's search shares."""
        ablation = check_ablation(ablation)
        return _Context(model, task, ablation, seed, self.divergence, cost, self.last_position_only)

    def run(self, model, task, tau: float, ablation: str = "counterfactual", seed: int = 0):
        """One ACDC pass at threshold ``tau``: a Circuit with ``info`` (cost, metric, tau)."""
        start = time.perf_counter()
        cost = Cost()
        ctx = self._context(model, task, ablation, seed, cost)
        keep, final_metric, stats = self._search(ctx, float(tau), cost)
        stats.pop("results", None)
        info = self._info(cost, time.perf_counter() - start, ablation=ablation, seed=seed)
        info.update(tau=float(tau), metric=ctx.kind, final_metric=final_metric, **stats)
        return Circuit(model.graph, keep, info=info)

    def sweep(self, model, task, ablation: str = "counterfactual", seed: int = 0):
        """One circuit per threshold in ``self.thresholds``, sharing the cached clean pass."""
        start = time.perf_counter()
        cost = Cost()
        ctx = self._context(model, task, ablation, seed, cost)
        out: list[Circuit | None] = [None] * len(self.thresholds)
        hint = {}  # each edge's result at the next smaller tau predicts its decision here
        for i in sorted(range(len(self.thresholds)), key=lambda i: self.thresholds[i]):
            tau = self.thresholds[i]
            keep, final_metric, stats = self._search(ctx, tau, cost, hint)
            hint = {**hint, **stats.pop("results", {})}
            info = {"tau": tau, "metric": ctx.kind, "final_metric": final_metric, **stats}
            out[i] = Circuit(model.graph, keep, info=info)
        seconds = time.perf_counter() - start
        for c in out:
            c.info = {**self._info(cost, seconds, ablation=ablation, seed=seed), **c.info}
        return out

    def find_circuits(self, model, task, sizes, ablation: str = "counterfactual", seed: int = 0):
        """For each size, the largest circuit of one threshold sweep whose size after pruning is
        at most that size (the empty circuit when none fits): a circuit over its budget would
        score as empty under the at-most-budget rule, and padding one would not be ACDC's.

        Ties in size go to the larger threshold (fewer edges kept before pruning). ``info``
        records the requested size, the realised size, the threshold (None for the empty
        fallback) and the whole sweep (threshold -> size).
        """
        sizes = check_sizes(model.graph, sizes)
        swept = self.sweep(model, task, ablation, seed)
        realised = [c.size for c in swept]
        table = [[c.info["tau"], s] for c, s in zip(swept, realised, strict=True)]
        per_tau = ("tau", "final_metric", "tests", "states_evaluated", "passes")
        base = {k: v for k, v in swept[0].info.items() if k not in per_tau}
        out = []
        for k in sizes:
            fits = [i for i in range(len(swept)) if realised[i] <= k]
            if fits:
                best = max(fits, key=lambda i: (realised[i], swept[i].info["tau"]))
                c = swept[best]
                keep, info = c.keep.clone(), {**c.info, "size": realised[best]}
            else:
                keep = torch.zeros(model.graph.n_edges, dtype=torch.bool)
                info = {**base, "tau": None, "final_metric": None, "size": 0}
            info.update(requested=k, sweep=table)
            out.append(Circuit(model.graph, keep, info=info))
        return out

    # ------------------------------------------------------------------- search
    def _search(self, ctx: _Context, tau: float, cost: Cost, hint=None):
        """``(keep, final metric, stats)``: ``stats`` counts the edge tests, the states evaluated
        (speculative ones included) and the passes, and holds each tested edge's ``results``.
        ``hint`` (edge -> a result measured at another threshold) only steers the fast path."""
        if self.fast:
            return _fast_search(ctx, tau, self.abs_value, self.window, hint)
        return _reference_search(ctx, tau, self.abs_value, cost)


# ============================================================================ shared state
class _Context:
    """Everything a search reuses: batches, ablated values, full logits, the clean stages."""

    def __init__(self, model, task, ablation, seed, kind, cost: Cost, last_only=True) -> None:
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
                self.batches.append(_BatchCache(model, prep, task.positions))
                cost.add_forward(prep.n, calls=2)  # the full pass and the staged clean pass
        self.reader_stage = model.reader_stage
        self.reader_owner = graph._reader_owner[graph.edge_reader]  # edge -> its reader's node
        # Every training batch in one partial pass: stacked, padded to the longest length.
        self.packed = StageCache.pack([bc.cache for bc in self.batches])
        self.segments, start = [], 0
        for bc in self.batches:
            self.segments.append((bc, start, bc.n))
            start += bc.n
        # "last"-scored tasks read one position: the partial pass keeps only that one after
        # the last attention layer.
        self.last_only = last_only and task.positions == "last"
        pos = self.packed.diff.shape[2]
        self.costs = _Costs(model, self.packed.n * pos, self.packed.n, pos, self.last_only)
        # With every edge kept the patched pass is the plain one, bit for bit (an engine test).
        total = sum(float(self.losses(bc.full, bc, 1).sum()) for bc in self.batches)
        self.all_kept_metric = total / self.n_total

    def losses(self, logits: torch.Tensor, bc: _BatchCache, repeat: int) -> torch.Tensor:
        """Per-example loss of ``logits`` (``repeat`` stacked copies of the batch)."""
        task = self.task
        if self.kind == "task":
            batch = bc.batch if repeat == 1 else bc.batch.select(bc.index.repeat(repeat))
            return self.sign * task.score(logits, batch).double()
        if self.kind == "kl":
            # circuitboard.metrics.kl_divergence, with the full model's side computed once per
            # batch and broadcast over the states (a test holds the two equal):
            # sum p log q = sum p * logits - logsumexp(logits), as sum p = 1; in float64
            x = scored(logits, task.positions).double()
            x = x.view(repeat, bc.n, *x.shape[1:])
            cross = (bc.full_probs * x).sum(-1) - torch.logsumexp(x, dim=-1)
            return (bc.full_neg_entropy - cross).mean(-1).reshape(-1)
        full = bc.full if logits.shape[1] == bc.full.shape[1] else bc.full_last
        full = full if repeat == 1 else full.repeat(repeat, 1, 1)
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
    """One training batch: its ablated values, full logits, and the clean pass at each stage."""

    def __init__(self, model, prep, positions: str) -> None:
        self.batch, self.ablated, self.n = prep.batch, prep.ablated, prep.n
        self.index = torch.arange(self.n, device=model.device)
        self.full = model.run(self.batch.clean).logits
        self.full_last = self.full[:, -1:].contiguous()  # what "last"-scored losses read
        log_p = torch.log_softmax(scored(self.full, positions).double(), dim=-1)
        self.full_probs = log_p.exp()
        self.full_neg_entropy = (self.full_probs * log_p).sum(-1)
        self.cache = model.stage_cache(self.batch.clean, self.ablated)


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
    tests = 0
    for _reader, edges, node in ctx.items:
        if _disconnected(ctx, keep, node):
            keep[edges] = False
            continue
        for e in edges:
            keep[e] = False
            tests += 1
            new = ctx.metric_reference(keep)
            result = new - cur
            if abs_value:
                result = abs(result)
            if result < tau:
                cur = new
            else:
                keep[e] = True
    return keep, cur, {"tests": tests, "states_evaluated": tests, "passes": tests}


# ============================================================================ fast path
def _fast_search(ctx: _Context, tau: float, abs_value: bool, window: int, hint=None):
    """ACDC's loop with speculative batched tests; decisions are the sequential loop's.

    Predictions, best first: "remove" for an edge into a node with no kept path to the logits
    (its test cannot change the output, so with ``tau > 0`` it passes); the result this edge's
    test gave in the last pass that evaluated it (in a state that differs from the true one
    only by the decisions after a misprediction, so nearly always the same decision);
    ``hint[e]``, the result the edge's test gave at another threshold of a sweep, compared
    with this one; else "remove" while removals have been at least as common as keeps.

    Each pass plans up to ``window`` tests and evaluates the prefix that maximises the expected
    number of tests it decides per unit of cost: the chance that each prediction holds is the
    running hit rate of its kind, and the cost of a pass is a fixed overhead per stage it runs
    plus the estimated work per state (``_Costs``); both depend only on shapes and counts, so a
    run is deterministic.
    """
    keep = torch.ones(ctx.graph.n_edges, dtype=torch.bool)
    cur = ctx.all_kept_metric
    items = ctx.items
    item, pos, entered = 0, 0, False  # cursor: next test is edge ``pos`` of ``items[item]``
    counts = [0, 0]  # kept, removed
    evaluated = passes = 0
    measured: dict[int, bool] = {}  # edge -> "remove", as its last speculative test found
    hits = {"sure": [1, 1], "measured": [1, 2], "hint": [1, 2], "blind": [1, 2]}  # [held+1, made+2]
    results: dict[int, float] = {}  # edge -> its result in the sequential loop

    def passes_test(value: float, base: float) -> bool:
        result = value - base
        return (abs(result) if abs_value else result) < tau

    while item < len(items):
        predict = torch.full_like(keep, counts[1] >= counts[0])
        kind = {}
        for e, result in (hint or {}).items():
            predict[e] = (abs(result) if abs_value else result) < tau
            kind[e] = "hint"
        kind.update({e: "measured" for e in measured})
        for e, remove in measured.items():
            predict[e] = remove
        if tau > 0:  # an edge into a node with no kept path to the logits changes nothing
            sure = ~ctx.graph.useful_nodes(keep)[ctx.reader_owner]
            predict |= sure
            kind.update({e: "sure" for e in torch.nonzero(sure).flatten().tolist()})
        plan, states = _plan(ctx, keep, item, pos, entered, window, predict)
        plan, states = _best_prefix(ctx, plan, states, kind, hits)
        values = []
        if states:
            stage = min(ctx.reader_stage[items[a[1]][0]] for a in plan if a[0] == "test")
            values = _evaluate(ctx, torch.stack(states), stage).tolist()
            evaluated, passes = evaluated + len(states), passes + 1
            # Every slot's result in the state the pass assumed: predictions for the next pass.
            base = cur
            for action in plan:
                if action[0] == "test":
                    _, _, _, e, predicted, slot = action
                    measured[e] = passes_test(values[slot], base)
                    if predicted:
                        base = values[slot]
        for action in plan:
            if action[0] == "skip":
                i = action[1]
                keep[items[i][1]] = False
                item, pos, entered = i + 1, 0, False
                continue
            _, i, j, e, predicted, slot = action
            results[e] = values[slot] - cur
            remove = passes_test(values[slot], cur)
            if remove:
                keep[e] = False
                cur = values[slot]
            counts[remove] += 1
            record = hits[kind.get(e, "blind")]
            record[0] += remove == predicted
            record[1] += 1
            measured.pop(e, None)
            item, pos, entered = i, j + 1, True
            if pos >= len(items[i][1]):
                item, pos, entered = i + 1, 0, False
            if remove != predicted:
                break
    stats = {"tests": sum(counts), "states_evaluated": evaluated, "passes": passes}
    return keep, cur, {**stats, "results": results}


def _best_prefix(ctx, plan, states, kind, hits):
    """The prefix of ``plan`` with the most expected decided tests per unit of cost."""
    tests = [a for a in plan if a[0] == "test"]
    if len(tests) <= 1:
        return plan, states
    rate = {k: held / made for k, (held, made) in hits.items()}
    best, best_value = 1, -1.0
    expected, alive = 0.0, 1.0
    stage = len(ctx.costs.per_state)
    for n, (_, i, _, e, _, _) in enumerate(tests, start=1):
        expected += alive  # test n is decided if every prediction before it held
        alive *= rate[kind.get(e, "blind")]
        stage = min(stage, ctx.reader_stage[ctx.items[i][0]])
        value = expected / ctx.costs.of_pass(stage, n)
        if value > best_value:
            best, best_value = n, value
    last = tests[best - 1]
    cut = plan.index(last) + 1
    return plan[:cut], states[:best]


class _Costs:
    """Estimated cost of a partial pass, in multiply-adds: a fixed overhead per stage it runs
    (Python and kernel launches, about that of a small matmul), the work its states share (at
    an attention stage the heads no state changes are computed once), and each state's own
    work from the stage on (projections, attention, MLP, the unembedding and the loss of the
    positions read)."""

    OVERHEAD = 5e7  # multiply-add equivalents per stage per pass (about 2 ms of CPU time)

    def __init__(self, model, n_tokens: int, n_rows: int, pos: int, last_only: bool) -> None:
        cfg = model.cfg
        d, e, h, kv = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.n_kv_heads
        mlp = 0 if cfg.attn_only else (3 if cfg.gated_mlp else 2) * d * cfg.d_mlp
        last_attn = model.last_attention_stage()
        work, attention = [], []
        for i, (kind, _layer) in enumerate(model.stages):
            rows = n_rows if (last_only and i > last_attn) else n_tokens
            attn = 0
            if kind == "logits":
                work.append(rows * d * cfg.d_vocab_out + 20 * rows * cfg.d_vocab_out)
            elif kind == "mlp":
                work.append(rows * mlp)
            else:
                q_rows = n_rows if (last_only and i == last_attn) else n_tokens
                attn = n_tokens * d * 2 * kv * e + q_rows * (
                    d * h * e + h * e * d + 2 * h * e * pos
                )
                work.append(attn + (rows * mlp if kind == "block" else 0))
            attention.append(attn)
        self.shared = attention  # the untouched heads of the first stage, once per pass
        self.per_state = [sum(work[i:]) - attention[i] * (1 - 1 / h) for i in range(len(work))]
        self.stages_left = [len(work) - i for i in range(len(work))]

    def of_pass(self, stage: int, n_states: int) -> float:
        return (
            self.OVERHEAD * self.stages_left[stage]
            + self.shared[stage]
            + n_states * self.per_state[stage]
        )


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
    """Mean loss of each state ``[w, n_edges]`` (bool), run from ``stage`` on: ``[w]``.

    One partial pass of the engine (``PatchableTransformer.run_states``) for all states and all
    training batches, started from the clean activations at ``stage``.
    """
    model = ctx.model
    w = len(states)
    logits, index = model.run_states(ctx.packed, stage, states, last_only=ctx.last_only)
    u = len(logits)  # distinct outputs: each loss is computed once
    total = torch.zeros(u, dtype=torch.float64, device=model.device)
    for bc, start, n in ctx.segments:
        length = logits.shape[2] if ctx.last_only else bc.batch.length
        part = logits[:, start : start + n, :length].reshape(u * n, length, -1)
        total += ctx.losses(part, bc, u).view(u, n).sum(1)
    ctx.cost.add_forward(ctx.packed.n * w)
    return total[index] / ctx.n_total
