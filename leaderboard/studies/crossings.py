"""Edges needed to reach a faithfulness level, from stored results, with a bootstrap interval.

Every number here comes from the rules of ``circuitboard.scoring``: a result's per-example
metrics (``PerExample``) give each returned circuit's faithfulness, ``scoring.credit`` turns them
into the at-most-budget curve, and ``scoring.edges_to_reach`` reads the smallest budget whose
credited faithfulness reaches the level (rule 7; "not reached" is ``inf``, never a number).

- Several seeds of one method: the curve is the mean over seeds of each seed's at-most-budget
  curve (every seed has the same budget grid), as ranks average areas over seeds.
- The interval: the same at each of ``scoring.resample_counts``'s resamples of the test
  examples (1000 by default), and its 2.5th and 97.5th percentiles, taken as order statistics
  so that "not reached" (``inf``) stays "not reached". Every call with the same number of
  examples draws the same resamples, so two methods (or two models) scored on the same examples
  are compared draw by draw: ``ratio`` is paired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitboard import scoring
from circuitboard.leaderboard import scores

INTERVAL = 0.95


def per_example(record: dict) -> scoring.PerExample | None:
    """A result's per-example data, or None where its task was degenerate under the ablation."""
    packed = (record.get("evaluation") or {}).get("per_example")
    return None if packed is None else scores.unpack_per_example(packed)


def _check_runs(runs: Sequence[scoring.PerExample]) -> None:
    if not runs:
        raise ValueError("edges needed: no evaluated run to read a curve from")
    first = runs[0]
    for r in runs[1:]:
        if r.budgets != first.budgets or r.n_edges != first.n_edges:
            raise ValueError("seeds of one method must share the budget grid and the graph")
        if r.digest != first.digest or r.n_examples != first.n_examples:
            raise ValueError(
                "seeds of one method were evaluated on different test examples; rerun them "
                "with the same task data"
            )


def curve_values(runs: Sequence[scoring.PerExample], counts: torch.Tensor | None = None):
    """The at-most-budget curve (``[B]``, or ``[D, B]`` per resample), mean over seeds."""
    _check_runs(runs)
    per_run = []
    for run in runs:
        _, values = scoring.credit(run.sizes, run.faithfulness(counts), run.budgets, run.own)
        per_run.append(values)
    return torch.stack(per_run).mean(0)


@dataclass
class Need:
    """Edges needed to reach ``level``: the estimate and its bootstrap interval (``inf``: not
    reached), the share of resamples that reach it, and the draws (for paired ratios)."""

    level: float
    edges: float
    low: float
    high: float
    share_reached: float
    n_edges: int
    digest: str
    draws: torch.Tensor

    @property
    def reached(self) -> bool:
        return math.isfinite(self.edges)

    def to_dict(self) -> dict:
        def count(v):
            return int(v) if math.isfinite(v) else None

        return {
            "level": self.level,
            "reached": self.reached,
            "edges": count(self.edges),
            "fraction": self.edges / self.n_edges if self.reached else None,
            "ci_low": count(self.low),
            "ci_high": count(self.high),
            "share_reached": self.share_reached,
            "n_edges": self.n_edges,
        }

    def text(self) -> str:
        """``12 [9, 15]``; "not reached"; an open interval reads ``12 [9, not reached]``."""
        if not self.reached:
            return "not reached"
        high = "not reached" if not math.isfinite(self.high) else f"{int(self.high)}"
        low = "not reached" if not math.isfinite(self.low) else f"{int(self.low)}"
        return f"{int(self.edges)} [{low}, {high}]"


def order_interval(draws: torch.Tensor, level: float = INTERVAL) -> tuple[float, float]:
    """Percentile interval as order statistics (``inf`` and ``nan`` sort last)."""
    values = torch.nan_to_num(draws.double(), nan=math.inf).sort().values
    n = len(values)
    lo = values[max(0, math.floor((1 - level) / 2 * (n - 1)))]
    hi = values[min(n - 1, math.ceil((1 + level) / 2 * (n - 1)))]
    return float(lo), float(hi)


def edges_needed(
    runs: Sequence[scoring.PerExample],
    levels: Sequence[float],
    n_boot: int = scoring.N_BOOT,
    seed: int = scoring.BOOT_SEED,
) -> dict[float, Need]:
    """Per level: the edges needed (rule 7) and their bootstrap interval over test examples."""
    _check_runs(runs)
    first = runs[0]
    counts = scoring.resample_counts(first.n_examples, n_boot, seed)
    point = curve_values(runs)
    drawn = curve_values(runs, counts)
    out = {}
    for level in levels:
        edges = float(scoring.edges_to_reach(first.budgets, point, level))
        draws = scoring.edges_to_reach(first.budgets, drawn, level)
        low, high = order_interval(draws)
        out[level] = Need(
            level=float(level),
            edges=edges,
            low=low,
            high=high,
            share_reached=float(torch.isfinite(draws).double().mean()),
            n_edges=first.n_edges,
            digest=first.digest,
            draws=draws,
        )
    return out


def ratio(a: Need, b: Need) -> dict:
    """``a``'s edges over ``b``'s, with the paired interval over the same resamples.

    ``None`` where ``b`` is not reached (nothing to divide by); ``inf`` (printed "not reached")
    where only ``a`` is not reached.
    """
    if a.digest != b.digest or len(a.draws) != len(b.draws):
        raise ValueError("a paired ratio needs both counts measured on the same test examples")
    if not b.reached:
        return {"ratio": None, "ci_low": None, "ci_high": None}
    with torch.no_grad():
        draws = a.draws / b.draws  # inf / finite = inf; inf / inf = nan -> sorted last
    low, high = order_interval(draws)

    def value(v):
        return v if math.isfinite(v) else None

    return {"ratio": value(a.edges / b.edges), "ci_low": value(low), "ci_high": value(high)}


def ratio_text(r: dict, a: Need) -> str:
    if r["ratio"] is None:
        return "not reached" if not a.reached else "-"
    high = "not reached" if r["ci_high"] is None else f"{r['ci_high']:.2f}"
    low = "-" if r["ci_low"] is None else f"{r['ci_low']:.2f}"
    return f"{r['ratio']:.2f} [{low}, {high}]"
