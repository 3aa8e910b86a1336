"""Edge Pruning (Bhaskar, Wettig, Friedman and Chen 2024, "Finding Transformer Circuits with Edge
Pruning"), with every budget of a grid trained in one run.

Every edge gets a hard-concrete gate (Louizos, Welling and Kingma 2018) with a learned
``log_alpha``; the model runs with the sampled gates as its float edge mask, so a removed edge
reads its ablated value. The gates are trained to keep the model faithful while a Lagrangian
term pulls the expected sparsity to a target:

    loss = D(full || masked) + lambda_1 (s - t) + lambda_2 (s - t)^2
    s    = 1 - E[L0] / n_edges,  E[L0] = sum_e sigmoid(log_alpha_e - beta log(-l / r))

``D`` is the KL divergence from the full model on clean inputs (mean squared error for numerical
outputs, where a softmax over one output is constant), so the method never reads the task's
labels (``reads_labels`` is False). The target ``t`` warms up linearly from 0 and the
multipliers are trained by gradient ascent. As in princeton-nlp/Edge-Pruning: beta = 2/3,
l = -0.1, r = 1.1, Adam for the gates, and the test-time (deterministic) mask of the reference
code: the ``round(E[L0])`` gates with the largest ``log_alpha`` kept, the rest removed.

**One run, every budget.** Each requested size ``k`` (a budget) has its own gates, its own
target (``t_k = 1 - (k - margin) / n_edges``) and its own two multipliers. All budgets train
together: the batch is replicated once per budget and each copy runs with its budget's gates as
per-example edge masks, so one forward and one backward serve every budget. The loss is the
sum of the budgets' losses, so each budget's gradient is exactly what it would be alone; the
optimisers are elementwise and each budget's gates are their own tensors, so each budget
follows its own single run. Each budget draws its gate noise (and its initial ``log_alpha``)
from its own generator seeded by ``(seed, k)``, and minibatches come from one generator seeded
by ``seed`` that every budget shares. A budget therefore gets the same gates whether it trains
alone (``mode="single"``: one run per budget, as in the paper) or with other budgets
(``mode="batched"``, the default); a test holds that.

**Stopping.** After the warm-up, a budget stops once its deterministic mask has kept at most
``k`` edges for ``stop_after`` consecutive steps (its gates are then frozen and its copy of the
batch leaves the pass), or after ``steps`` steps. ``stop_after=None`` trains every budget for
all ``steps``, the paper's fixed schedule.

**Circuits, never over budget.** A budget's own circuit is its deterministic mask after pruning
the edges not on a path from ``input`` to ``logits``; if that has more than ``k`` edges (the
budget ended over its target) it is the budget's ``k`` largest ``log_alpha`` instead, pruned.
With ``select=True`` (default) the circuit returned for ``k`` is, among its own circuit, every
other budget's circuit that fits in ``k`` and the ``select_window`` nearest larger budgets'
masks thresholded at ``k``, the one with the lowest training divergence (measured on a fixed,
seeded subset of at most ``fit_examples`` training examples; another candidate replaces the
budget's own only if clearly lower, fewer edges breaking ties). This uses the training data
and the method's own objective only, never a ground truth; ``select=False`` returns each
budget's own circuit. Nothing is ever padded. ``info`` reports per budget: ``met_budget`` (its
deterministic mask met the budget without padding or truncation), ``truncated``,
``open_gates``, ``stopped_at`` (or None), ``steps_trained``, ``selected_from`` (the budget
whose gates gave the circuit), ``own_fit`` and ``circuit_fit`` (training divergence of its own
and of the returned circuit), ``final_fit`` (last minibatch, sampled gates), ``empty``, the
multipliers and the sparsities. ``Circuit.scores`` holds the budget's final ``log_alpha``.
Sizes 0 and ``n_edges`` need no run (``info["trained"]`` is False).

Ours, not the paper's, each measured on the Tracr programs (see the README):
- ``samples="example"``: every example draws its own gate sample (the reference draws one per
  step for the whole minibatch, ``samples="step"``); per-example masks cost nothing extra in
  the batched pass, and the lower-variance gradient is what recovers sort_unique;
- ``init_mean=3`` (the reference: 10), so that gates start where the divergence has a gradient
  (from 10, every sample is clamped open and the gates fall in lockstep under the penalty
  alone until they reach that region together);
- plain gradient ascent for lambda_2 (the reference uses Adam for both multipliers, which grows
  lambda_2 at the full rate for any violation and then closes every gate at once), Adam for
  lambda_1;
- the target half an edge under the budget (``margin``), so that ``round(E[L0])`` settles on
  the budget rather than flickering across it;
- the stopping rule, the selection, minibatches of 8 drawn from one training batch (one
  sequence length) with probability proportional to its size (the reference: 16), and 80
  steps at a constant learning rate of 0.3 (the reference scripts: 6000 steps at 0.03 with a
  linear schedule). ``batch_size=None`` uses every training example in every step.

Hyperparameters:
    mode ("batched" | "single"), steps (80), lr (0.3) for log_alpha, reg_lr (0.3) for the
    multipliers, warmup (0.15 of ``steps``), stop_after (5, or None), samples ("example" |
    "step"), margin (0.5), select (True), select_window (2), fit_examples (128), batch_size (8,
    or None), max_examples (64: examples per pass; more budgets than fit run in chunks within
    the same step), divergence ("auto" | "kl" | "l2"), init_mean (3.0), init_std (0.01), beta
    (2/3), left (-0.1), right (1.1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from circuitboard.graph import Circuit
from circuitboard.methods.base import (
    Cost,
    MethodBase,
    check_choice,
    check_sizes,
    default_divergence,
    divergence,
    frozen,
    n_examples,
    prepare,
)

EPS = 1e-6
MODES = ("batched", "single")


@dataclass
class GateRun:
    """One budget's training: final ``log_alpha`` ``[n_edges]`` and what happened."""

    k: int
    log_alpha: torch.Tensor
    stats: dict = field(default_factory=dict)


@dataclass
class EdgePruning(MethodBase):
    """Edge Pruning (Bhaskar et al. 2024), every budget in one run; see the module docstring."""

    name: ClassVar[str] = "edge-pruning"
    mode: str = "batched"
    steps: int = 80
    lr: float = 0.3
    reg_lr: float = 0.3
    warmup: float = 0.15
    stop_after: int | None = 5
    samples: str = "example"
    margin: float = 0.5
    select: bool = True
    select_window: int = 2
    fit_examples: int = 128
    batch_size: int | None = 8
    max_examples: int = 64
    divergence: str = "auto"
    init_mean: float = 3.0
    init_std: float = 0.01
    beta: float = 2 / 3
    left: float = -0.1
    right: float = 1.1

    def __post_init__(self) -> None:
        check_choice("Edge Pruning mode", self.mode, MODES)
        check_choice("Edge Pruning samples", self.samples, ("step", "example"))
        check_choice("Edge Pruning divergence", self.divergence, ("auto", "kl", "l2"))
        for key in ("steps", "max_examples", "fit_examples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Edge Pruning {key} must be a positive integer, got {value!r}")
        for key in ("batch_size", "stop_after"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{key} must be a positive integer or None, got {value!r}")
        if isinstance(self.select_window, bool) or not isinstance(self.select_window, int):
            raise ValueError(f"select_window must be an integer >= 0: {self.select_window!r}")
        if self.select_window < 0 or not 0 <= self.margin < 1:
            raise ValueError("select_window must be >= 0 and margin in [0, 1)")
        if not 0 <= self.warmup <= 1:
            raise ValueError(f"warmup is a share of the steps in [0, 1], got {self.warmup!r}")
        if not (self.left < 0 and self.right > 1 and self.beta > 0):
            raise ValueError("hard-concrete needs left < 0, right > 1 and beta > 0")

    @property
    def reads_labels(self) -> bool:
        """False: the loss is a divergence from the full model's own outputs."""
        return False

    # ------------------------------------------------------------------- public
    def find_circuits(self, model, task, sizes, ablation: str = "counterfactual", seed: int = 0):
        graph = model.graph
        sizes = check_sizes(graph, sizes)
        start = time.perf_counter()
        cost = Cost()
        trainer = _Trainer(self, model, task, ablation, seed, cost)
        runs = self._train(trainer, sizes)
        circuits = trainer.circuits(runs, sizes)
        seconds = time.perf_counter() - start
        for c in circuits:
            c.info = {**self._info(cost, seconds, ablation=ablation, seed=seed), **c.info}
        return circuits

    def train(self, model, task, sizes, ablation="counterfactual", seed=0) -> dict[int, GateRun]:
        """The gates of every budget in ``sizes`` (0 < k < n_edges), as ``{k: GateRun}``."""
        trainer = _Trainer(self, model, task, ablation, seed, Cost())
        runs = self._train(trainer, check_sizes(model.graph, sizes))
        for run in runs.values():
            run.stats["cost"] = trainer.cost.as_dict()
        return runs

    def _train(self, trainer: _Trainer, sizes: list[int]) -> dict[int, GateRun]:
        budgets = sorted({k for k in sizes if 0 < k < trainer.model.graph.n_edges})
        if self.mode == "batched":
            return trainer.train(budgets) if budgets else {}
        runs = {}
        for k in budgets:
            runs.update(trainer.train([k]))
        return runs

    # --------------------------------------------------------------- hard concrete
    def open_probability(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(gate > 0): the expected L0 of each gate."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.left / self.right))

    def sample(self, log_alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(log_alpha.shape, generator=gen, dtype=torch.float64)
        u = u.clamp(EPS, 1 - EPS).to(log_alpha)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return (s * (self.right - self.left) + self.left).clamp(0, 1)

    def deterministic(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The test-time mask, as princeton-nlp/Edge-Pruning computes it: the
        ``round(E[L0])`` gates with the largest ``log_alpha`` are kept, the others removed.

        ``log_alpha`` is ``[n_edges]`` or ``[budgets, n_edges]``; the mask is boolean, ties
        going to the earlier edge."""
        expected = self.open_probability(log_alpha).sum(-1, keepdim=True)
        n_open = torch.round(expected).long()
        order = torch.sort(log_alpha, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(log_alpha.shape[-1]).expand_as(order).contiguous())
        return rank < n_open

    def budget_seed(self, seed: int, k: int) -> int:
        """The seed of budget ``k``'s own generator (its initial gates and gate noise)."""
        return (seed * 1_000_003 + k) % (2**63)


class _Trainer:
    """Prepared data, the full model's outputs, and the batched training of many budgets."""

    def __init__(self, method: EdgePruning, model, task, ablation, seed, cost: Cost) -> None:
        self.method, self.model, self.task, self.seed, self.cost = method, model, task, seed, cost
        self.kind = (
            default_divergence(model, task) if method.divergence == "auto" else method.divergence
        )
        self.prepared = prepare(model, task, ablation, seed, cost)
        self.n_total = n_examples(self.prepared)
        with torch.no_grad():
            self.full = [model(p.batch.clean) for p in self.prepared]
        for p in self.prepared:
            cost.add_forward(p.n)

    # ------------------------------------------------------------------- the data
    def _pieces(self, gen: torch.Generator | None):
        """This step's data: ``(tokens, ablated, full, weight)`` per training batch, or one
        seeded minibatch; ``weight`` turns a sum of divergences into the step's mean."""
        size = self.method.batch_size
        if size is None:
            for prep, full in zip(self.prepared, self.full, strict=True):
                yield prep.batch.clean, prep.ablated, full, 1.0 / self.n_total
            return
        weights = torch.tensor([p.n for p in self.prepared], dtype=torch.float64)
        i = int(torch.multinomial(weights, 1, generator=gen))
        prep, full = self.prepared[i], self.full[i]
        rows = torch.randperm(prep.n, generator=gen)[:size].to(full.device)
        ablated = prep.ablated if prep.ablated.shape[0] == 1 else prep.ablated[rows]
        yield prep.batch.clean[rows], ablated, full[rows], 1.0 / len(rows)

    def _chunks(self, n_budgets: int, n: int) -> list[slice]:
        """Budgets per forward pass, so that no pass holds more than ``max_examples``."""
        per = max(1, self.method.max_examples // max(n, 1))
        return [slice(i, min(i + per, n_budgets)) for i in range(0, n_budgets, per)]

    def _fit(self, tokens, ablated, full, gates: torch.Tensor) -> torch.Tensor:
        """Summed divergence per budget, ``[budgets]``, for gates ``[budgets, n_edges]`` (one
        mask per budget) or ``[budgets, n, n_edges]`` (one mask per example).

        One budget with one mask runs it as the shared mask; otherwise the examples are
        replicated per budget and each copy runs with its own per-example masks."""
        n, n_budgets = len(tokens), gates.shape[0]
        positions = self.task.positions
        self.cost.add_forward(n * n_budgets)
        if n_budgets == 1 and gates.dim() == 2:
            logits = self.model.run(tokens, gates[0], ablated).logits
            return divergence(self.kind, full, logits, positions).sum()[None]
        mask = gates.reshape(-1, gates.shape[-1]) if gates.dim() == 3 else None
        if mask is None:
            mask = gates.repeat_interleave(n, dim=0)
        if n_budgets == 1:
            logits = self.model.run(tokens, mask, ablated).logits
            return divergence(self.kind, full, logits, positions).sum()[None]
        abl = ablated if ablated.shape[0] == 1 else ablated.repeat(n_budgets, 1, 1, 1)
        logits = self.model.run(tokens.repeat(n_budgets, 1), mask, abl).logits
        full = full.repeat(n_budgets, *([1] * (full.dim() - 1)))
        return divergence(self.kind, full, logits, positions).view(n_budgets, n).sum(1)

    # ------------------------------------------------------------------- training
    def train(self, budgets: list[int]) -> dict[int, GateRun]:
        """Train one set of gates per budget, all in the same forward and backward passes."""
        m, model = self.method, self.model
        n_edges = model.graph.n_edges
        gens = [torch.Generator().manual_seed(m.budget_seed(self.seed, k)) for k in budgets]
        data_gen = torch.Generator().manual_seed(self.seed)
        log_alphas, lambda1, lambda2 = [], [], []
        for gen in gens:
            noise = torch.randn(n_edges, generator=gen, dtype=torch.float64)
            init = m.init_mean + m.init_std * noise
            log_alphas.append(init.to(device=model.device, dtype=model.dtype).requires_grad_(True))
            zero = torch.zeros((), device=model.device, dtype=model.dtype)
            lambda1.append(zero.clone().requires_grad_(True))
            lambda2.append(zero.clone().requires_grad_(True))
        # Ascent on the multipliers: Adam for lambda_1 (as the reference code), whose steps do
        # not shrink with the violation, so a budget the fit resists is still pulled to its
        # target; plain gradient ascent for lambda_2, which then grows with the squared
        # violation itself (under Adam it grew at the full rate for any violation, and its
        # quadratic term closed every gate at once).
        opt = torch.optim.Adam(
            [
                {"params": log_alphas, "lr": m.lr},
                {"params": lambda1, "lr": m.reg_lr, "maximize": True},
            ]
        )
        dual = torch.optim.SGD(lambda2, lr=m.reg_lr, maximize=True)
        targets = torch.tensor(
            [1 - max(k - m.margin, 0) / n_edges for k in budgets], dtype=model.dtype
        )
        active = list(range(len(budgets)))
        steady = [0] * len(budgets)  # consecutive steps within budget, after the warm-up
        stopped_at: list[int | None] = [None] * len(budgets)
        trained = [0] * len(budgets)
        last_fit = torch.zeros(len(budgets), dtype=torch.float64)
        warm = max(1, round(m.warmup * m.steps))
        with frozen(model), torch.enable_grad():
            for step in range(m.steps):
                if not active:
                    break
                opt.zero_grad(set_to_none=True)
                dual.zero_grad(set_to_none=True)
                alpha = torch.stack([log_alphas[i] for i in active])
                per_example = m.samples == "example"
                if not per_example:  # one gate sample per budget for the whole step
                    gates = torch.stack([m.sample(log_alphas[i], gens[i]) for i in active])
                    # The passes take the gates as a leaf; its gradient, summed over every
                    # pass of this step, then flows through the sampling once.
                    leaf = gates.detach().requires_grad_(True)
                fit = torch.zeros(len(active), dtype=model.dtype, device=model.device)
                for tokens, ablated, full, weight in self._pieces(data_gen):
                    n = len(tokens)
                    for part in self._chunks(len(active), n):
                        if per_example:
                            piece = torch.stack(
                                [
                                    m.sample(log_alphas[i].expand(n, -1), gens[i])
                                    for i in active[part]
                                ]
                            )
                        else:
                            piece = leaf[part]
                        d = self._fit(tokens, ablated, full, piece) * weight
                        d.sum().backward()
                        self.cost.backward += 1
                        fit[part] += d.detach()
                if not per_example:
                    gates.backward(leaf.grad)
                t = targets[active].to(model.device) * min(1.0, step / warm)
                s = 1 - m.open_probability(alpha).mean(1)
                lam1 = torch.stack([lambda1[i] for i in active])
                lam2 = torch.stack([lambda2[i] for i in active])
                reg = lam1 * (s - t) + lam2 * (s - t) ** 2
                reg.sum().backward()
                opt.step()
                dual.step()
                with torch.no_grad():
                    masks = m.deterministic(torch.stack([log_alphas[i] for i in active])).cpu()
                still = []
                for j, i in enumerate(active):
                    trained[i] = step + 1
                    last_fit[i] = float(fit[j])
                    within = step + 1 >= warm and int(masks[j].sum()) <= budgets[i]
                    steady[i] = steady[i] + 1 if within else 0
                    if m.stop_after is not None and steady[i] >= m.stop_after:
                        stopped_at[i] = step + 1
                    else:
                        still.append(i)
                active = still
        runs = {}
        for i, k in enumerate(budgets):
            la = log_alphas[i].detach()
            runs[k] = GateRun(
                k,
                la,
                {
                    "target_sparsity": float(targets[i]),
                    "expected_sparsity": float(1 - m.open_probability(la).mean()),
                    "open_gates": int(m.deterministic(la).sum()),
                    "stopped_at": stopped_at[i],
                    "steps_trained": trained[i],
                    "final_fit": float(last_fit[i]),
                    "lambdas": [float(lambda1[i].detach()), float(lambda2[i].detach())],
                },
            )
        return runs

    # ------------------------------------------------------------------- circuits
    def circuits(self, runs: dict[int, GateRun], sizes: list[int]) -> list[Circuit]:
        """One circuit per requested size, each at most its budget after pruning."""
        graph = self.model.graph
        own: dict[int, torch.Tensor] = {}
        infos: dict[int, dict] = {}
        for k, run in runs.items():
            pruned = graph.prune(self.method.deterministic(run.log_alpha).cpu())
            met = int(pruned.sum()) <= k
            if not met:  # training ended over budget: its k strongest gates, pruned
                pruned = self._truncated(run, k)
            own[k] = pruned
            infos[k] = {
                **run.stats,
                "requested": k,
                "trained": True,
                "met_budget": met,
                "truncated": not met,
                "padded": False,
                "divergence": self.kind,
            }
        candidates = {k: self._candidates(k, runs, own) for k in runs}
        fits = self._fits([c for cs in candidates.values() for c in cs])
        out = []
        for k in sizes:
            if k not in runs:
                out.append(self.trivial(k))
                continue
            keep, source = own[k], k
            own_fit = fits[_key(keep)]
            if self.method.select:
                keep, source = min(
                    candidates[k], key=lambda c: (fits[_key(c[0])], int(c[0].sum()), c[1])
                )
                if fits[_key(keep)] >= own_fit - 1e-6 * max(abs(own_fit), 1e-12):
                    keep, source = own[k], k  # not clearly better: keep the budget's own
            info = {
                **infos[k],
                "selected_from": source,
                "own_fit": own_fit,
                "circuit_fit": fits[_key(keep)],
                "empty": not bool(keep.any()),
            }
            scores = runs[k].log_alpha.to("cpu", torch.float64)
            out.append(Circuit(graph, keep.clone(), scores, info=info))
        return out

    def _truncated(self, run: GateRun, k: int) -> torch.Tensor:
        """A budget's ``k`` largest ``log_alpha``, pruned: its mask thresholded at ``k``."""
        graph = self.model.graph
        scores = run.log_alpha.to("cpu", torch.float64)
        return graph.prune(Circuit.top_k(graph, scores, k, absolute=False).keep)

    def _candidates(self, k: int, runs: dict[int, GateRun], own: dict) -> list[tuple]:
        """``(keep, budget)`` pairs budget ``k`` may return: its own mask, every other budget's
        mask that fits in ``k``, and, of the larger budgets whose masks do not fit, the
        ``select_window`` smallest thresholded at ``k`` (their ``k`` strongest gates)."""
        out = [(own[k], k)] + [(own[j], j) for j in runs if j != k and int(own[j].sum()) <= k]
        larger = sorted(j for j in runs if j > k and int(own[j].sum()) > k)
        out += [(self._truncated(runs[j], k), j) for j in larger[: self.method.select_window]]
        return out

    def _fits(self, candidates: list[tuple]) -> dict[bytes, float]:
        """Training divergence of every distinct candidate circuit, on the fixed subset."""
        distinct = {}
        for keep, _ in candidates:
            distinct.setdefault(_key(keep), keep)
        out = {}
        with torch.no_grad():
            for key, keep in distinct.items():
                mask = keep.to(device=self.model.device, dtype=self.model.dtype)
                total = 0.0
                for tokens, ablated, full, weight in self._fit_subset():
                    total += float(self._fit(tokens, ablated, full, mask[None])) * weight
                out[key] = total
        return out

    def _fit_subset(self) -> list:
        """At most ``fit_examples`` training examples (a seeded subset, a share of each batch
        in proportion to its size), weighted so that sums add up to their mean divergence."""
        cache = self.__dict__.get("_subset")
        if cache is not None:
            return cache
        limit = self.method.fit_examples
        gen = torch.Generator().manual_seed(self.seed)
        pieces = []
        total = min(limit, self.n_total)
        for prep, full in zip(self.prepared, self.full, strict=True):
            take = max(1, round(prep.n * total / self.n_total)) if total < self.n_total else prep.n
            rows = torch.randperm(prep.n, generator=gen)[:take].to(full.device)
            ablated = prep.ablated if prep.ablated.shape[0] == 1 else prep.ablated[rows]
            pieces.append((prep.batch.clean[rows], ablated, full[rows], take))
        n = sum(p[3] for p in pieces)
        self._subset = [(t, a, f, 1.0 / n) for t, a, f, _ in pieces]
        return self._subset

    def trivial(self, k: int) -> Circuit:
        """The empty or the full circuit, for which there is nothing to train."""
        graph = self.model.graph
        circuit = Circuit.full(graph) if k == graph.n_edges else Circuit.empty(graph)
        circuit.info = {
            "requested": k,
            "trained": False,
            "met_budget": True,
            "truncated": False,
            "padded": False,
            "empty": k == 0,
            "open_gates": k,
        }
        return circuit


def _key(keep: torch.Tensor) -> bytes:
    """A boolean edge vector as a dictionary key."""
    return bytes(keep.to(torch.uint8).numpy())
