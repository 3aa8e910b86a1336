"""Node pruning at neuron granularity, in the style of Gao et al. 2025 ("Weight-sparse
transformers have interpretable circuits", OpenAI; viewer code at openai/circuit_sparsity).

A learnable logit ``tau_i`` gates each node, where a node is one channel at one location:

    a{l}.read[c]     residual channel c as layer l's attention reads it (q, k and v inputs)
    a{l}.h{h}.q[e]   query channel e of head h (likewise .k and .v)
    a{l}.write[c]    residual channel c of what layer l's attention writes
    m{l}.read[c]     residual channel c as layer l's MLP reads it
    m{l}.n[j]        MLP neuron j (after the activation)
    m{l}.write[c]    residual channel c of what the MLP writes

The forward pass uses ``x * H(tau) + (1 - H(tau)) * x~`` with ``H`` the Heaviside step, so a
pruned node carries its ablated value ``x~``; the backward pass replaces ``H'`` by the sigmoid's
derivative (a straight-through estimator). The loss is

    task loss + lam * (number of kept nodes)

with the two-sided contrast loss ``-log sigmoid(logit(answer) - logit(distractor))`` where the
task has an answer and a distractor, cross-entropy on the answer where it has only an answer,
and the task metric (L2 to the targets) for L2 tasks such as Tracr. After training, nodes are
ranked by ``tau`` and a bisection over the number kept finds the smallest prefix whose task loss
on the training data is at most the target loss.

From the paper: node locations (residual reads and writes, q/k/v channels, MLP neurons), the
Heaviside forward with a sigmoid-derivative backward, mean ablation of pruned nodes, a penalty
on the number of kept nodes, the two-sided task loss, searching for the smallest circuit that
reaches a target loss. Ours (Gao et al.'s pruning code is not public): the hook points used
(reads are masked before the sublayer's LayerNorm, so every model, with LayerNorm or without,
is pruned the same way), means pooled over examples and positions of the training data, the
initial ``tau``, Adam and its learning rate, the default target loss, the bisection over the
ranking by ``tau``, zero and counterfactual ablation as options, and the embedding (the
``input`` node) never being pruned.

Projection onto the edge universe, so that node pruning shares the x-axis of every other
method: a head is kept as a source if any of its q/k/v channels and any of its layer's
attention write channels are kept; a head's ``<q>`` reader if any of its q channels and any
attention read channel are kept (likewise ``<k>``, ``<v>``); an MLP as a source if any neuron
and any MLP write channel are kept, as a reader if any neuron and any MLP read channel are kept;
``input`` and ``logits`` are always kept. An edge is kept iff both its ends are. ``circuit.native``
lists the kept nodes; ``info`` carries the native size and the edge size. ``circuit.scores``
gives each edge the threshold on ``tau`` at which it enters, so an ROC of the scores is the ROC
of the projected circuits.

Implementation: the model's TransformerLens HookPoints (``hook_q_input``, ``attn.hook_q``,
``hook_attn_out``, ``hook_mlp_in``, ``mlp.hook_post``, ``hook_mlp_out``, ...) through
``model.hooks``; hooks are fine here, since this method does not use the edge-patching hot path.

``find_circuits(sizes)`` returns, for each edge budget, the longest prefix of the ranking whose
projection has at most that many edges after pruning; ``info["target_search"]`` reports the
smallest circuit reaching the target loss.

A known limit, measured on Tracr: there the model fits its L2 targets exactly, so the task
loss has zero gradient while every node is kept; only the penalty moves ``tau`` (Adam moves all
of them alike), they cross zero together, and a Tracr model with its few critical channels
gone sits on flat ReLU regions with zero gradient again. ``loss="contrast"`` (ours) replaces
the L2 loss by the linear contrast ``mean[(y - target)^2 - (y - y_empty)^2]`` (``y_empty``: the
output with every node pruned), whose gradient is not zero at an exact fit.

Hyperparameters:
    lam (1e-3): penalty per kept node. steps (300). lr (0.05). init (1.0) and init_std (1e-3):
        initial tau ~ N(init, init_std). loss ("task"): "task" (as above) or "contrast" (L2
        tasks only; others keep their task loss).
    target_loss (None): the task loss to reach; None means full + 0.1 * (empty - full), where
        full and empty are the losses with every node kept and every node pruned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from circuitboard.ablation import check_ablation
from circuitboard.graph import Circuit
from circuitboard.methods.base import (
    Cost,
    MethodBase,
    _to_device,
    ablation_tokens,
    check_choice,
    check_sizes,
    frozen,
    scored,
)


# ------------------------------------------------------------------------------ locations
@dataclass(frozen=True)
class Location:
    """One hooked activation whose channels are nodes."""

    name: str  # node-name prefix, e.g. "a0.read", "m1.n"
    hooks: tuple[str, ...]  # hook points the mask applies to
    source: str  # hook recording the ablated value (same layout as the masked activation)
    shape: tuple[int, ...]  # mask shape, broadcast over the activation's trailing dims
    broadcast_heads: bool = False  # value recorded as [b, p, d], activation is [b, p, H, d]


def locations(model) -> list[Location]:
    cfg = model.cfg
    d, heads, e = cfg.d_model, cfg.n_heads, cfg.d_head
    out = []
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        qkv_in = tuple(f"{b}.hook_{t}_input" for t in "qkv")
        out.append(Location(f"a{layer}.read", qkv_in, f"{b}.hook_resid_pre", (d,), True))
        for t in "qkv":
            out.append(
                Location(f"a{layer}.{t}", (f"{b}.attn.hook_{t}",), f"{b}.attn.hook_{t}", (heads, e))
            )
        out.append(Location(f"a{layer}.write", (f"{b}.hook_attn_out",), f"{b}.hook_attn_out", (d,)))
        if not cfg.attn_only:
            out.append(Location(f"m{layer}.read", (f"{b}.hook_mlp_in",), f"{b}.hook_mlp_in", (d,)))
            out.append(
                Location(f"m{layer}.n", (f"{b}.mlp.hook_post",), f"{b}.mlp.hook_post", (cfg.d_mlp,))
            )
            out.append(
                Location(f"m{layer}.write", (f"{b}.hook_mlp_out",), f"{b}.hook_mlp_out", (d,))
            )
    return out


def node_names(model) -> list[str]:
    names = []
    for loc in locations(model):
        if len(loc.shape) == 2:  # per head: a0.q -> a0.h{h}.q[e]
            layer, t = loc.name.split(".")
            names += [
                f"{layer}.h{h}.{t}[{c}]" for h in range(loc.shape[0]) for c in range(loc.shape[1])
            ]
        else:
            names += [f"{loc.name}[{c}]" for c in range(loc.shape[0])]
    return names


def _gate(tau: torch.Tensor) -> torch.Tensor:
    """Heaviside(tau) forward, d sigmoid(tau) / d tau backward."""
    soft = torch.sigmoid(tau)
    return (tau > 0).to(tau.dtype) + soft - soft.detach()


# ---------------------------------------------------------------------------------- method
@dataclass
class NodePruning(MethodBase):
    """Neuron-level node pruning in the style of Gao et al. 2025; see the module docstring."""

    name: ClassVar[str] = "node-pruning"
    lam: float = 1e-3
    steps: int = 300
    lr: float = 0.05
    init: float = 1.0
    init_std: float = 1e-3
    target_loss: float | None = None
    loss: str = "task"

    def __post_init__(self) -> None:
        check_choice("node pruning loss", self.loss, ("task", "contrast"))
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"node pruning steps must be a non-negative integer: {self.steps!r}")
        if self.lam < 0:
            raise ValueError(f"node pruning lam must be >= 0, got {self.lam!r}")

    def find_circuits(self, model, task, sizes, ablation: str = "mean", seed: int = 0):
        graph = model.graph
        sizes = check_sizes(graph, sizes)
        start = time.perf_counter()
        cost = Cost()
        pruner = _Pruner(model, task, check_ablation(ablation), cost, seed)
        tau = self.train(pruner, seed)
        order = torch.argsort(tau.cpu(), descending=True, stable=True)
        search = pruner.search_target(order, self.target_loss)
        scores = pruner.edge_scores(tau)
        out = []
        for k in sizes:
            j = pruner.largest_prefix(order, k)
            keep_nodes = torch.zeros(len(tau), dtype=torch.bool)
            keep_nodes[order[:j]] = True
            circuit = Circuit(graph, pruner.project(keep_nodes), scores)
            circuit.native = {
                "granularity": "neuron",
                "nodes": [pruner.names[i] for i in order[:j].tolist()],
                "n_nodes": j,
                "n_nodes_total": len(tau),
            }
            circuit.info = {
                "requested": k,
                "native_size": j,
                "edge_size": circuit.size,
                "edges_kept": circuit.n_kept,
                "over_budget": circuit.size > k,
                "target_search": search,
            }
            out.append(circuit)
        seconds = time.perf_counter() - start
        for c in out:
            c.info = {**self._info(cost, seconds, ablation=ablation, seed=seed), **c.info}
        return out

    def train(self, pruner: _Pruner, seed: int) -> torch.Tensor:
        """Train the node logits; returns the final ``tau`` (``[n_nodes]``)."""
        model = pruner.model
        gen = torch.Generator().manual_seed(seed)
        n = pruner.n_nodes
        init = self.init + self.init_std * torch.randn(n, generator=gen, dtype=torch.float64)
        tau = init.to(device=model.device, dtype=model.dtype).requires_grad_(True)
        opt = torch.optim.Adam([tau], lr=self.lr)
        with frozen(model), torch.enable_grad():
            for _ in range(self.steps):
                gate = _gate(tau)
                loss = pruner.task_loss(gate, self.loss) + self.lam * gate.sum()
                opt.zero_grad()
                loss.backward()
                pruner.cost.backward += len(pruner.batches)
                opt.step()
        return tau.detach()


class _Pruner:
    """Hooks, ablated values, the task loss and the projection for one (model, task)."""

    def __init__(self, model, task, ablation: str, cost: Cost, seed: int = 0) -> None:
        self.model, self.task, self.cost, self.ablation = model, task, cost, ablation
        self.seed = seed
        self.locations = locations(model)
        self.names = node_names(model)
        sizes = [int(torch.tensor(loc.shape).prod()) for loc in self.locations]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.n_nodes = self.offsets[-1]
        device = model.device
        self.batches = [_to_device(b, device) for b in task.train]
        self.values = self._ablated_values()

    # --------------------------------------------------------------- ablated values
    def _record(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        saved: dict[str, torch.Tensor] = {}

        def save(x, hook):
            saved[hook.name] = x.detach()

        names = sorted({loc.source for loc in self.locations})
        with torch.no_grad(), self.model.hooks(fwd_hooks=[(n, save) for n in names]):
            self.model(tokens)
        self.cost.add_forward(len(tokens))
        return saved

    def _ablated_values(self) -> list[dict[str, torch.Tensor]]:
        """Per batch: the value each location's pruned nodes carry."""
        if self.ablation == "zero":
            return [{} for _ in self.batches]
        per_batch = []
        for batch in self.batches:
            tokens = ablation_tokens(batch, self.ablation, self.seed)
            per_batch.append(self._record(tokens) if tokens is not None else None)
        if all(v is not None for v in per_batch):
            return per_batch
        # mean and mean-pooled: channel means pooled over the train data
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self.batches:
            for name, x in self._record(batch.clean).items():
                sums[name] = sums.get(name, 0) + x.flatten(0, 1).sum(0)
            count += batch.clean.numel()
        means = {name: (s / count)[None, None] for name, s in sums.items()}
        return [means for _ in self.batches]

    # ------------------------------------------------------------------------ forward
    def hooks(self, gate: torch.Tensor, values: dict[str, torch.Tensor]):
        out = []
        for i, loc in enumerate(self.locations):
            g = gate[self.offsets[i] : self.offsets[i + 1]].view(loc.shape)
            value = values.get(loc.source)
            if value is not None and loc.broadcast_heads:
                value = value[:, :, None, :]

            def hook(x, hook=None, g=g, value=value):
                if value is None:
                    return x * g
                return x * g + (1 - g) * value

            out += [(name, hook) for name in loc.hooks]
        return out

    def run(self, gate: torch.Tensor, index: int) -> torch.Tensor:
        batch = self.batches[index]
        with self.model.hooks(fwd_hooks=self.hooks(gate, self.values[index])):
            logits = self.model(batch.clean)
        self.cost.add_forward(len(batch))
        return logits

    def task_loss(self, gate: torch.Tensor, kind: str = "task") -> torch.Tensor:
        """Mean task loss over the training data; ``kind="contrast"`` uses the L2 contrast."""
        total, n = 0.0, sum(len(b) for b in self.batches)
        for i, batch in enumerate(self.batches):
            logits = self.run(gate, i)
            if kind == "contrast" and batch.target is not None:
                per = _contrast_loss(self.task, logits, batch, self.empty_output(i))
            else:
                per = _per_example_loss(self.task, logits, batch)
            total = total + per.sum() / n
        return total

    def empty_output(self, index: int) -> torch.Tensor:
        """The output with every node pruned (cached), the far end of the L2 contrast."""
        cache = self.__dict__.setdefault("_empty", {})
        if index not in cache:
            with torch.no_grad():
                zeros = torch.zeros(self.n_nodes, device=self.model.device, dtype=self.model.dtype)
                cache[index] = self.run(zeros, index).detach()
        return cache[index]

    def loss_of(self, keep: torch.Tensor) -> float:
        with torch.no_grad():
            gate = keep.to(device=self.model.device, dtype=self.model.dtype)
            return float(self.task_loss(gate))

    # ------------------------------------------------------------------------ search
    def search_target(self, order: torch.Tensor, target: float | None) -> dict:
        """Smallest prefix of ``order`` whose task loss is at most the target (bisection)."""
        n = self.n_nodes
        full = self.loss_of(torch.ones(n, dtype=torch.bool))
        empty = self.loss_of(torch.zeros(n, dtype=torch.bool))
        if target is None:
            target = full + 0.1 * (empty - full)

        def prefix_loss(j: int) -> float:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[order[:j]] = True
            return self.loss_of(keep)

        lo, hi = 0, n  # invariant: prefix hi reaches the target (assumed for hi = n)
        if empty <= target:
            hi = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if prefix_loss(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[:hi]] = True
        projected = Circuit(self.model.graph, self.project(keep))
        return {
            "target_loss": target,
            "full_loss": full,
            "empty_loss": empty,
            "native_size": hi,
            "loss": prefix_loss(hi),
            "reached": prefix_loss(hi) <= target,
            "edge_size": projected.size,
        }

    def largest_prefix(self, order: torch.Tensor, k: int) -> int:
        """The most nodes (in ``order``) whose projection has at most ``k`` edges after pruning."""
        graph, n = self.model.graph, self.n_nodes

        def size(j: int) -> int:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[order[:j]] = True
            return int(graph.prune(self.project(keep)).sum())

        lo, hi = 0, n  # the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size(mid) <= k:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # -------------------------------------------------------------------- projection
    def _component_values(self, values: torch.Tensor, reduce) -> tuple[dict, dict]:
        """Per graph source and reader: ``reduce`` over the node groups that must be kept."""
        cfg = self.model.cfg
        group = {}
        for i, loc in enumerate(self.locations):
            v = values[self.offsets[i] : self.offsets[i + 1]].view(loc.shape)
            group[loc.name] = v
        source, reader = {"input": None}, {"logits": None}
        for layer in range(cfg.n_layers):
            read, write = group[f"a{layer}.read"].max(), group[f"a{layer}.write"].max()
            for h in range(cfg.n_heads):
                qkv = torch.stack([group[f"a{layer}.{t}"][h].max() for t in "qkv"])
                source[f"a{layer}.h{h}"] = reduce(qkv.max(), write)
                for t in "qkv":
                    reader[f"a{layer}.h{h}<{t}>"] = reduce(group[f"a{layer}.{t}"][h].max(), read)
            if not cfg.attn_only:
                neurons = group[f"m{layer}.n"].max()
                source[f"m{layer}"] = reduce(neurons, group[f"m{layer}.write"].max())
                reader[f"m{layer}"] = reduce(neurons, group[f"m{layer}.read"].max())
        return source, reader

    def project(self, keep_nodes: torch.Tensor) -> torch.Tensor:
        """Edge keep vector ``[n_edges]`` for a node keep vector ``[n_nodes]``."""
        graph = self.model.graph
        src, rdr = self._component_values(keep_nodes.bool(), lambda a, b: a & b)
        s = torch.tensor([True if src[n] is None else bool(src[n]) for n in graph.sources])
        r = torch.tensor([True if rdr[x] is None else bool(rdr[x]) for x in graph.readers])
        return s[graph.edge_src] & r[graph.edge_reader]

    def edge_scores(self, tau: torch.Tensor) -> torch.Tensor:
        """Each edge's entry threshold on ``tau``: ``min`` over both ends of ``max`` per group."""
        graph = self.model.graph
        tau = tau.detach().cpu().double()
        src, rdr = self._component_values(tau, torch.minimum)
        big = float(tau.max()) + 1.0 if len(tau) else 1.0
        s = torch.tensor([big if src[n] is None else float(src[n]) for n in graph.sources])
        r = torch.tensor([big if rdr[x] is None else float(rdr[x]) for x in graph.readers])
        return torch.minimum(s[graph.edge_src], r[graph.edge_reader])


def _per_example_loss(task, logits: torch.Tensor, batch) -> torch.Tensor:
    """Two-sided contrast, answer cross-entropy, or the L2 task metric; ``[n]``."""
    if task.metric == "l2" or (batch.answer is None and batch.target is not None):
        target = batch.target.to(logits.device, logits.dtype)
        return (
            (scored(logits, task.positions) - scored(target, task.positions))
            .pow(2)
            .flatten(1)
            .mean(1)
        )
    if batch.answer is None:
        raise ValueError(f"task {task.name!r} gives no answer tokens or targets to prune for")
    last = logits[:, -1]
    if batch.distractor is not None:
        return -F.logsigmoid(_set_mean(last, batch.answer) - _set_mean(last, batch.distractor))
    answer = batch.answer if batch.answer.dim() == 1 else batch.answer[:, 0]
    return F.cross_entropy(last, answer, reduction="none")


def _contrast_loss(task, logits, batch, empty: torch.Tensor) -> torch.Tensor:
    """``mean[(y - target)^2 - (y - y_empty)^2]``: below zero as ``y`` nears the target and
    leaves the all-pruned output; linear in ``y``, so its gradient is not zero at an exact fit."""
    y = scored(logits, task.positions)
    target = scored(batch.target.to(logits.device, logits.dtype), task.positions)
    far = scored(empty.to(logits.dtype), task.positions)
    return ((y - target).pow(2) - (y - far).pow(2)).flatten(1).mean(1)


def _set_mean(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    ids = ids if ids.dim() == 2 else ids[:, None]
    picked = values.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, 0.0)
    return picked.sum(1) / ids.ge(0).sum(1).clamp(min=1)
