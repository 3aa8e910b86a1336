"""The referee's rules: every score a result, a table, a validation or a study reports.

Everything that turns circuits and their per-example metrics into a verdict is decided here, once,
and every other module calls it. Each rule says why; where it follows MIB (Mueller et al. 2025, the
circuit track of hannamw/MIB-circuit-track) it says so.

1. **Budget grid** (``budget_grid``). MIB scores circuits at ten fractions of the edges,
   ``(0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100%)``, sized ``int(f * n)`` as MIB's code does.
   On a graph with fewer than 1000 edges those collapse (on a 33-edge Tracr program every fraction
   up to 5% is one edge or none), so there the grid is distinct integer sizes instead: every size
   for ``n <= 40``; above, 1..10, about twenty log-spaced sizes from 10 to ``n``, and MIB's own
   sizes. No two budgets are equal, the grid is recorded in every result, and it is all a method
   is given: never the ground truth's size (that would be an oracle no user has).
2. **At most the budget** (``credit``). The curve's point at budget ``B`` is the best circuit the
   method returned whose size after pruning is at most ``B``; "best" is the highest faithfulness
   for CPR and the smallest ``|1 - f|`` for CMD, ties going to the circuit returned for that
   budget, then to the smaller circuit. A circuit larger than its budget is never credited there;
   if no returned circuit fits, the point is the empty circuit (faithfulness 0). MIB requires a
   circuit to fit its budget in the same way.
3. **Areas of the step function, no extrapolation** (``step_areas``). The at-most-budget curve is a
   step function of the size: it holds its value from one budget to the next, and below the
   smallest budget it is the empty circuit's value. CPR is its integral, CMD the integral of
   ``|1 - f|``, on a log axis over [1 edge, all edges] normalised to [0, 1]. MIB's own linear-axis
   values (``mib_areas``) are computed as MIB computes them: the method's circuit at each MIB
   fraction (empty if it does not fit; ``int(f * n) == 0`` is the empty circuit), trapezoids over
   the fraction itself, not normalised. They are labelled ``*_mib``.
4. **Faithfulness** is ``(m(C) - m(empty)) / (m(M) - m(empty))`` of the mean metrics
   (``circuitboard.metrics``); a task where ``m(M) = m(empty)`` is degenerate and is an error,
   never a number (``check_not_degenerate``).
5. **Against ground truth, no oracle** (``groundtruth_scores``). One ROC estimator for every
   method: each returned circuit that fits its budget is one (FPR, TPR) point, with (0, 0) and
   (1, 1) added, and the AUC is the trapezoid through the points sorted by (FPR, TPR); adding
   circuits cannot raise it on its own, unlike an upper envelope. Scoring methods also get the
   AUC of their full ranking, labelled ``auc_ranking``. F1 is read from the method's circuit at the
   smallest budget at least the ground truth's size (the empty circuit if that circuit does not
   fit); ``exact`` means some fitting returned circuit equals the ground truth after pruning.
   A program whose ground truth is empty has no ROC and no F1 and is reported apart: it never
   counts towards ``exact``.
6. **Ranks** (``rank``). For each task, a paired bootstrap over the test examples: every resample
   recomputes every method's whole curve and areas on the same examples (a method's area is the
   mean over its seeds). A ranks above B only if A's area beats B's by more than
   ``MIN_AREA_DIFFERENCE`` in at least ``SIGNIFICANCE`` of the resamples; a method's rank is one
   plus the number of methods that rank above it, so methods that no test separates share a rank.
   ``MIN_AREA_DIFFERENCE`` is ``REPRODUCIBLE``, the difference this project promises to reproduce
   on another machine: on trained weights two methods' circuits can differ by edges of effect
   1e-4, a difference that holds in every resample yet moves with a CPU's rounding, and a rank
   that another machine could reverse is no verdict.
   The same paired test decides whether a method beats a control (``compare``).
7. **Edges to reach a level** (``edges_to_reach``). The edges a method needs for faithfulness
   ``f`` are the smallest budget whose at-most-budget value (rule 2) is at least ``f``; where no
   budget reaches it the answer is "not reached" (``inf``), never a number. Since the curve
   only rises with the budget, this is where it first crosses ``f``. Read from rule 2's curve, a
   circuit over its budget can never make a method look smaller than it is, and the answer is
   always a budget of the grid (Bhaskar et al. 2024 compare methods this way).

The functions here are pure: tensors and numbers in, numbers out. ``PerExample`` is the data a
rank needs, stored with each result, so tables recompute ranks from stored results alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from circuitboard import metrics

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SMALL_GRAPH = 40  # every size is a budget up to this many edges
LOG_STEPS = 20  # log-spaced budgets from 10 edges to all of them, on a mid-sized graph
SIGNIFICANCE = 0.95
# The smallest difference in an area (or an AUC, an F1) promised to reproduce across machines:
# the reference board is compared within it (``leaderboard.reference``).
REPRODUCIBLE = 1e-3
# Areas closer than this are equal for ranks and controls: a difference that holds in every
# resample but is below what reproduces elsewhere (float rounding, edges of effect 1e-4 at a
# threshold) is not a win.
MIN_AREA_DIFFERENCE = REPRODUCIBLE
N_BOOT = 1000
BOOT_SEED = 0
DEGENERATE_TOLERANCE = 1e-9


class DegenerateTask(ValueError):
    """The full model and the empty circuit score the same: faithfulness is undefined."""


# ------------------------------------------------------------------------------ budgets
def mib_sizes(n_edges: int) -> list[int]:
    """MIB's edge counts for its ten fractions: ``int(f * n)``, as its evaluation code rounds."""
    return [int(f * n_edges) for f in MIB_FRACTIONS]


def budget_grid(n_edges: int) -> list[int]:
    """The budgets (edge counts) a method is asked for on a graph of ``n_edges`` edges."""
    if not isinstance(n_edges, int) or n_edges < 1:
        raise ValueError(f"a budget grid needs a positive edge count, got {n_edges!r}")
    mib = mib_sizes(n_edges)
    if min(mib) >= 1 and len(set(mib)) == len(mib):
        return mib
    if n_edges <= SMALL_GRAPH:
        return list(range(1, n_edges + 1))
    sizes = set(range(1, 11)) | {k for k in mib if k >= 1} | {n_edges}
    sizes |= {round(10 * (n_edges / 10) ** (i / LOG_STEPS)) for i in range(LOG_STEPS + 1)}
    return sorted(sizes)


def check_budgets(budgets: Sequence[int], n_edges: int) -> list[int]:
    budgets = [int(b) for b in budgets]
    if not budgets:
        raise ValueError("a curve needs at least one budget")
    if any(b < 0 or b > n_edges for b in budgets):
        raise ValueError(f"budgets must lie in [0, {n_edges}], got {budgets}")
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"budgets must be distinct, got {budgets}")
    return budgets


# ------------------------------------------------------------------------------- credit
CRITERIA = ("cpr", "cmd")


def credit(
    sizes: torch.Tensor,
    faithfulness: torch.Tensor,
    budgets: Sequence[int],
    own: Sequence[int | None] | None = None,
    criterion: str = "cpr",
) -> tuple[list[int | None], torch.Tensor]:
    """The circuit credited at each budget, and the curve values, for every row of draws.

    - ``sizes``: ``[C]`` each returned circuit's size after pruning;
    - ``faithfulness``: ``[C]`` or ``[D, C]`` (one row per bootstrap draw);
    - ``budgets``: ``[B]`` edge counts;
    - ``own``: for each budget, the index of the circuit returned for it (wins ties), or None;
    - ``criterion``: ``"cpr"`` (highest f) or ``"cmd"`` (smallest ``|1 - f|``).

    Returns ``(index per budget of the first row, or None for the empty circuit; values [B] or
    [D, B])``; for ``cmd`` the values are ``|1 - f|``, the empty circuit's being 1.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    sizes = torch.as_tensor(sizes, dtype=torch.long).flatten()
    f = torch.as_tensor(faithfulness, dtype=torch.float64)
    single = f.dim() == 1
    f = f[None] if single else f
    n_circuits, n_budgets = len(sizes), len(budgets)
    if f.shape[-1] != n_circuits:
        raise ValueError(f"{n_circuits} circuit sizes but {f.shape[-1]} faithfulness values")
    budget_t = torch.tensor([int(b) for b in budgets], dtype=torch.long)
    fits = sizes[None, :] <= budget_t[:, None]  # [B, C]
    # Goodness per circuit: higher is better. Ties: the budget's own circuit, then smaller.
    goodness = f if criterion == "cpr" else -(1 - f).abs()
    bonus = torch.zeros(n_budgets, n_circuits, dtype=torch.float64)
    if own is not None:
        for b, i in enumerate(own):
            if i is not None:
                bonus[b, i] = 1.0
    order = torch.argsort(sizes, stable=True)  # smaller circuits first among exact ties
    rank_small = torch.empty(n_circuits, dtype=torch.float64)
    rank_small[order] = torch.arange(n_circuits, dtype=torch.float64)
    # Per budget and draw: the best goodness among fitting circuits; among exact ties, the
    # budget's own circuit, then the smallest.
    values = torch.empty(f.shape[0], n_budgets, dtype=torch.float64)
    chosen: list[int | None] = []
    for b in range(n_budgets):
        candidates = torch.nonzero(fits[b]).flatten()
        if len(candidates) == 0:
            values[:, b] = 0.0 if criterion == "cpr" else 1.0
            chosen.append(None)
            continue
        g = goodness[:, candidates]  # [D, k]
        best = g.max(dim=1, keepdim=True).values
        tied = g == best
        # among ties: own circuit first, then the smallest
        tie_key = bonus[b, candidates] * n_circuits - rank_small[candidates]
        pick = torch.where(tied, tie_key[None], torch.tensor(-math.inf, dtype=torch.float64))
        index = candidates[pick.argmax(dim=1)]
        picked = f.gather(1, index[:, None])[:, 0]
        values[:, b] = picked if criterion == "cpr" else (1 - picked).abs()
        chosen.append(int(index[0]))
    return chosen, values[0] if single else values


# ----------------------------------------------------------------------- edges to a level
def edges_to_reach(budgets: Sequence[int], values: torch.Tensor, level: float) -> torch.Tensor:
    """Rule 7: the smallest budget whose at-most-budget value is at least ``level``.

    ``values`` are ``credit``'s CPR values at ``budgets`` (``[B]``, or ``[D, B]`` for bootstrap
    draws or seeds). Returns a float64 tensor (a scalar, or ``[D]``) of edge counts, ``inf``
    where no budget reaches ``level``: "not reached", which a report must never print as a
    number.
    """
    budgets = [int(b) for b in budgets]
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.shape[-1] != len(budgets):
        raise ValueError(f"{len(budgets)} budgets but {v.shape[-1]} curve values")
    order = sorted(range(len(budgets)), key=lambda i: budgets[i])
    sizes = torch.tensor([float(budgets[i]) for i in order], dtype=torch.float64)
    reached = v[..., order] >= level
    first = reached.to(torch.int8).argmax(-1)  # the first budget at or above the level
    return torch.where(reached.any(-1), sizes[first], torch.tensor(math.inf, dtype=torch.float64))


# -------------------------------------------------------------------------------- areas
def step_areas(budgets: Sequence[int], values: torch.Tensor, n_edges: int, empty: float):
    """The area under a step curve on a log axis over [1, n_edges], normalised to [0, 1].

    ``values`` (``[B]`` or ``[D, B]``) holds from each budget to the next (the last one to
    ``n_edges``); below the smallest budget the curve is ``empty`` (the empty circuit's value).
    A budget of 0 edges sits at the left end. No value is extrapolated past a scored budget.
    """
    budgets = [int(b) for b in budgets]
    if sorted(budgets) != budgets:
        raise ValueError(f"budgets must be ascending, got {budgets}")
    v = torch.as_tensor(values, dtype=torch.float64)
    single = v.dim() == 1
    v = v[None] if single else v
    if n_edges <= 1:  # a one-edge graph has no axis: the full budget's value is the area
        out = v[:, -1] if budgets and budgets[-1] >= n_edges else torch.full_like(v[:, 0], empty)
        return out[0] if single else out
    width = math.log(n_edges)
    left = [math.log(max(b, 1)) for b in budgets]
    right = left[1:] + [width]
    spans = torch.tensor([r - lo for lo, r in zip(left, right)], dtype=torch.float64)
    area = (v * spans).sum(1) + empty * left[0]
    area = area / width
    return area[0] if single else area


@dataclass
class Areas:
    """CPR and CMD on the log axis, and MIB's linear-axis values (None where the budgets do not
    hold MIB's sizes, as for circuits evaluated at budgets of a user's own choosing)."""

    cpr: float
    cmd: float
    cpr_mib: float | None
    cmd_mib: float | None

    def to_dict(self) -> dict:
        return {"cpr": self.cpr, "cmd": self.cmd, "cpr_mib": self.cpr_mib, "cmd_mib": self.cmd_mib}


def mib_areas(n_edges: int, budgets: Sequence[int], own_faithfulness: Sequence[float | None]):
    """MIB's ``area_under`` (CPR) and ``area_from_1`` (CMD): trapezoids over the ten fractions.

    ``own_faithfulness[i]`` is the faithfulness of the circuit returned for ``budgets[i]``, or
    None where it does not fit (it is then scored as the empty circuit, faithfulness 0). MIB's
    budget ``int(f * n)`` must be in ``budgets`` unless it is 0, which is the empty circuit.
    """
    by_budget = dict(zip([int(b) for b in budgets], own_faithfulness))
    ys = []
    for k in mib_sizes(n_edges):
        if k == 0:
            ys.append(0.0)
            continue
        if k not in by_budget:
            raise ValueError(f"MIB's budget of {k} edges was not scored; budgets: {budgets}")
        value = by_budget[k]
        ys.append(0.0 if value is None else float(value))
    cpr = cmd = 0.0
    for i in range(len(ys) - 1):
        dx = MIB_FRACTIONS[i + 1] - MIB_FRACTIONS[i]
        cpr += dx * (ys[i] + ys[i + 1]) / 2
        cmd += dx * (abs(1 - ys[i]) + abs(1 - ys[i + 1])) / 2
    return cpr, cmd


# ------------------------------------------------------------------------ per-example data
@dataclass
class PerExample:
    """What ranks and control tests need from one evaluation, per test example.

    - ``circuit``: ``[C, n]`` the task metric of each returned circuit (after pruning);
    - ``empty``, ``full``: ``[n]`` the metric of the empty circuit and of the model;
    - ``sizes``: ``[C]`` sizes after pruning; ``budgets``: the grid; ``own``: for each budget the
      index of the circuit returned for it;
    - ``n_edges``: the graph's edge count; ``digest``: which examples these are (a hash of the
      test split), so that only evaluations of the same examples are compared.
    """

    circuit: torch.Tensor
    empty: torch.Tensor
    full: torch.Tensor
    sizes: list[int]
    budgets: list[int]
    own: list[int | None]
    n_edges: int
    digest: str = ""

    def __post_init__(self) -> None:
        self.circuit = torch.as_tensor(self.circuit, dtype=torch.float64)
        if self.circuit.dim() == 1:
            self.circuit = self.circuit[None]
        self.empty = torch.as_tensor(self.empty, dtype=torch.float64).flatten()
        self.full = torch.as_tensor(self.full, dtype=torch.float64).flatten()
        n = len(self.full)
        if self.circuit.shape[1:] != (n,) or self.empty.shape != (n,):
            raise ValueError(
                f"per-example metrics disagree in shape: circuits {tuple(self.circuit.shape)}, "
                f"empty {tuple(self.empty.shape)}, full {tuple(self.full.shape)}"
            )
        if len(self.sizes) != self.circuit.shape[0]:
            raise ValueError(f"{len(self.sizes)} sizes for {self.circuit.shape[0]} circuits")
        if len(self.own) != len(self.budgets):
            raise ValueError(f"{len(self.own)} own circuits for {len(self.budgets)} budgets")
        self.budgets = check_budgets(self.budgets, self.n_edges)

    @property
    def n_examples(self) -> int:
        return len(self.full)

    def faithfulness(self, counts: torch.Tensor | None = None) -> torch.Tensor:
        """``[C]`` faithfulness of each circuit, or ``[D, C]`` for resample ``counts [D, n]``."""
        if counts is None:
            c, e, m = self.circuit.mean(1), self.empty.mean(), self.full.mean()
            return metrics.faithfulness(c, e, m)
        weights = counts.to(torch.float64) / counts.sum(1, keepdim=True)
        c = weights @ self.circuit.T  # [D, C]
        e, m = weights @ self.empty, weights @ self.full  # [D]
        return metrics.faithfulness(c, e[:, None], m[:, None])

    def areas(self, counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"cpr", "cmd"}``: scalars, or ``[D]`` per resample."""
        f = self.faithfulness(counts)
        order = sorted(range(len(self.budgets)), key=lambda i: self.budgets[i])
        budgets = [self.budgets[i] for i in order]
        own = [self.own[i] for i in order]
        _, cpr_v = credit(self.sizes, f, budgets, own, "cpr")
        _, cmd_v = credit(self.sizes, f, budgets, own, "cmd")
        return {
            "cpr": step_areas(budgets, cpr_v, self.n_edges, empty=0.0),
            "cmd": step_areas(budgets, cmd_v, self.n_edges, empty=1.0),
        }


def check_not_degenerate(full: torch.Tensor, empty: torch.Tensor, where: str = "task") -> None:
    """Refuse a task whose model and empty circuit score the same (faithfulness is 0/0)."""
    full_m, empty_m = float(torch.as_tensor(full).double().mean()), float(empty.double().mean())
    scale = max(abs(full_m), abs(empty_m), 1.0)
    if not math.isfinite(full_m - empty_m) or abs(full_m - empty_m) <= DEGENERATE_TOLERANCE * scale:
        raise DegenerateTask(
            f"{where} is degenerate: the full model and the empty circuit score the same "
            f"(m(M) = {full_m:.6g}, m(empty) = {empty_m:.6g}), so faithfulness "
            f"(m(C) - m(empty)) / (m(M) - m(empty)) is undefined. Check that the counterfactual "
            f"inputs differ from the clean ones and the answers from the distractors, or use "
            f"another ablation."
        )


def examples_digest(batches) -> str:
    """A short hash of a split's tokens and labels: equal digests mean the same examples."""
    h = hashlib.sha1()
    for b in batches:
        for name in ("clean", "counterfactual", "answer", "distractor", "target"):
            t = getattr(b, name, None)
            if t is not None:
                t = t.detach().cpu().contiguous()
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ curves
@dataclass
class BudgetPoint:
    """One point of the at-most-budget curve.

    ``own`` is the circuit the method returned for this budget (its index), ``own_size`` its size
    after pruning and ``own_fits`` whether that fits; ``credited`` is the circuit scored here
    (None: the empty circuit), and ``faithfulness`` its value.
    """

    budget: int
    own: int | None
    own_size: int | None
    own_fits: bool
    credited: int | None
    size: int
    faithfulness: float
    cmd_credited: int | None
    cmd_value: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def curve(data: PerExample) -> list[BudgetPoint]:
    """The at-most-budget curve of one evaluation, one point per budget of the grid."""
    f = data.faithfulness()
    chosen, values = credit(data.sizes, f, data.budgets, data.own, "cpr")
    cmd_chosen, cmd_values = credit(data.sizes, f, data.budgets, data.own, "cmd")
    out = []
    for b, budget in enumerate(data.budgets):
        own = data.own[b]
        own_size = None if own is None else data.sizes[own]
        c = chosen[b]
        out.append(
            BudgetPoint(
                budget=budget,
                own=own,
                own_size=own_size,
                own_fits=own_size is not None and own_size <= budget,
                credited=c,
                size=0 if c is None else data.sizes[c],
                faithfulness=float(values[b]),
                cmd_credited=cmd_chosen[b],
                cmd_value=float(cmd_values[b]),
            )
        )
    return out


def areas(data: PerExample) -> Areas:
    """CPR and CMD (log axis, step function) and MIB's linear values for one evaluation."""
    log = data.areas()
    f = data.faithfulness()
    own_f = []
    for b, i in zip(data.budgets, data.own):
        own_f.append(None if i is None or data.sizes[i] > b else float(f[i]))
    try:
        cpr_mib, cmd_mib = mib_areas(data.n_edges, data.budgets, own_f)
    except ValueError:  # MIB's sizes are not among these budgets
        cpr_mib = cmd_mib = None
    return Areas(float(log["cpr"]), float(log["cmd"]), cpr_mib, cmd_mib)


# ----------------------------------------------------------------------- ground truth
def roc_of_circuits(keeps: Sequence[torch.Tensor], truth: torch.Tensor):
    """``(fpr, tpr, auc)``: each circuit one point, with (0,0) and (1,1), sorted, trapezoids."""
    truth = torch.as_tensor(truth).bool()
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"an ROC needs at least one true and one false edge; the ground truth has {n_pos} "
            f"of {n_pos + n_neg} edges"
        )
    points = {(0.0, 0.0), (1.0, 1.0)}
    for keep in keeps:
        keep = torch.as_tensor(keep).bool()
        points.add((int((keep & ~truth).sum()) / n_neg, int((keep & truth).sum()) / n_pos))
    pts = sorted(points)
    fpr, tpr = [p[0] for p in pts], [p[1] for p in pts]
    return fpr, tpr, metrics.trapezoid(fpr, tpr)


def groundtruth_scores(
    keeps: Sequence[torch.Tensor],
    budgets: Sequence[int],
    own: Sequence[int | None],
    truth: torch.Tensor,
    ranking: torch.Tensor | None = None,
) -> dict:
    """Scores of a method's circuits against a ground truth, without an oracle (rule 5).

    ``keeps`` are the returned circuits after pruning, ``own[b]`` the one returned for
    ``budgets[b]``; ``truth`` is the ground truth after pruning; ``ranking`` the method's edge
    scores where it ranks edges.
    """
    truth = torch.as_tensor(truth).bool()
    keeps = [torch.as_tensor(k).bool() for k in keeps]
    budgets = [int(b) for b in budgets]
    sizes = [int(k.sum()) for k in keeps]
    fitting = sorted({i for b, i in zip(budgets, own) if i is not None and sizes[i] <= b})
    size = int(truth.sum())
    out: dict = {"size": size, "n_fitting_circuits": len(fitting)}
    if size == 0:
        out.update(
            empty_truth=True,
            auc=None,
            auc_ranking=None,
            roc=None,
            f1=None,
            precision=None,
            recall=None,
            exact_recovery=None,
            recovers_empty=any(sizes[i] == 0 for i in fitting),
        )
        return out
    out["empty_truth"] = False
    try:
        fpr, tpr, auc = roc_of_circuits([keeps[i] for i in fitting], truth)
        out.update(auc=auc, roc={"fpr": fpr, "tpr": tpr})
    except ValueError as err:  # every edge is in the ground truth: no false edge to rank
        out.update(auc=None, roc=None, roc_problem=str(err))
    out["auc_ranking"] = None
    if ranking is not None and out.get("auc") is not None:
        out["auc_ranking"] = metrics.roc_from_scores(ranking, truth)[2]
    at = [b for b in sorted(budgets) if b >= size]
    f1_budget = at[0] if at else max(budgets)
    i = own[budgets.index(f1_budget)]
    chosen = keeps[i] if i is not None and sizes[i] <= f1_budget else torch.zeros_like(truth)
    out.update(metrics.precision_recall_f1(chosen, truth))
    out["f1_budget"] = f1_budget
    out["f1_circuit_size"] = int(chosen.sum())
    exact = [i for i in fitting if torch.equal(keeps[i], truth)]
    out["exact_recovery"] = bool(exact)
    out["exact_circuits"] = exact
    return out


# ------------------------------------------------------------------------------- ranks
def resample_counts(n_examples: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> torch.Tensor:
    """``[n_boot, n]`` how often each example is drawn in each resample (seeded, shared)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_examples, (n_boot, n_examples), generator=gen)
    counts = torch.zeros(n_boot, n_examples, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts


def _check_same_examples(groups: Mapping[str, Sequence[PerExample]]) -> int:
    digests = {d.digest for runs in groups.values() for d in runs}
    sizes = {d.n_examples for runs in groups.values() for d in runs}
    if len(digests) > 1 or len(sizes) > 1:
        raise ValueError(
            "ranks compare methods on the same test examples, but these evaluations were made "
            f"on different ones (digests {sorted(digests)}, sizes {sorted(sizes)}); rerun them "
            "with the same task data"
        )
    return sizes.pop()


def area_draws(
    groups: Mapping[str, Sequence[PerExample]], n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, ``{"cpr": [D], "cmd": [D]}``: areas on shared resamples, mean over seeds."""
    n = _check_same_examples(groups)
    counts = resample_counts(n, n_boot, seed)
    out = {}
    for name, runs in groups.items():
        per_run = [run.areas(counts) for run in runs]
        out[name] = {k: torch.stack([r[k] for r in per_run]).mean(0) for k in ("cpr", "cmd")}
    return out


@dataclass
class Ranking:
    """Ranks of methods on one task, by one area."""

    area: str
    estimate: dict[str, float]  # the area, mean over seeds, on the actual examples
    rank: dict[str, int]
    beats: dict[str, list[str]]  # methods each one ranks above, significantly

    def wins(self, method: str) -> bool:
        """Whether ``method`` ranks above every other method, significantly."""
        return len(self.beats[method]) == len(self.rank) - 1 and len(self.rank) > 1


def rank(
    groups: Mapping[str, Sequence[PerExample]],
    area: str = "cpr",
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    level: float = SIGNIFICANCE,
) -> Ranking:
    """Rule 6: rank methods (each a list of evaluations, one per seed) on the same examples."""
    if area not in CRITERIA:
        raise ValueError(f"area must be one of {CRITERIA}, got {area!r}")
    names = list(groups)
    draws = area_draws(groups, n_boot, seed)
    sign = 1.0 if area == "cpr" else -1.0  # CMD: lower is better
    estimate = {m: float(torch.stack([r.areas()[area] for r in groups[m]]).mean()) for m in names}
    beats = {m: [] for m in names}
    for a in names:
        for b in names:
            if a != b and _significant(sign * draws[a][area], sign * draws[b][area], level):
                beats[a].append(b)
    above = {m: sum(m in beats[o] for o in names) for m in names}
    return Ranking(area, estimate, {m: 1 + above[m] for m in names}, beats)


def _significant(a: torch.Tensor, b: torch.Tensor, level: float) -> bool:
    """``a`` beats ``b`` (both higher-is-better draws) by more than noise in >= level of draws."""
    return float(((a - b) > MIN_AREA_DIFFERENCE).double().mean()) >= level


def compare(
    method: PerExample,
    control: PerExample,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    level: float = SIGNIFICANCE,
) -> dict:
    """Whether ``method`` beats ``control`` on CPR, by the paired test of rule 6."""
    draws = area_draws({"method": [method], "control": [control]}, n_boot, seed)
    a, b = draws["method"]["cpr"], draws["control"]["cpr"]
    share = float(((a - b) > MIN_AREA_DIFFERENCE).double().mean())
    return {
        "cpr": float(control.areas()["cpr"]),
        "share_better": share,
        "beats": share >= level,
    }
