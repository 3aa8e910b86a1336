"""The referee's rules (circuitboard.scoring), each against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from circuitboard import scoring


def data(metric_rows, sizes, budgets, own, n_edges, empty=None, full=None) -> scoring.PerExample:
    """Per-example data with the empty circuit at 0 and the model at 1 on every example, so each
    circuit's faithfulness is the mean of its row."""
    rows = torch.tensor(metric_rows, dtype=torch.float64)
    n = rows.shape[1]
    empty = torch.zeros(n) if empty is None else torch.tensor(empty, dtype=torch.float64)
    full = torch.ones(n) if full is None else torch.tensor(full, dtype=torch.float64)
    return scoring.PerExample(rows, empty, full, sizes, budgets, own, n_edges, "d")


# --------------------------------------------------------------------------- budget grid
def test_budget_grid_is_mibs_on_large_graphs_and_distinct_integers_on_small_ones():
    # GPT-2 small: MIB's ten fractions, rounded down as MIB's code does (int(f * n)).
    assert scoring.budget_grid(32491) == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]
    assert scoring.budget_grid(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    # A 33-edge Tracr program: every size; MIB's fractions would give 0, 0, 0, 0, 0, 1, 3, ...
    assert scoring.mib_sizes(33)[:6] == [0, 0, 0, 0, 0, 1]
    assert scoring.budget_grid(33) == list(range(1, 34))
    for n in (41, 83, 204, 479, 999):
        grid = scoring.budget_grid(n)
        assert grid == sorted(set(grid)) and grid[0] == 1 and grid[-1] == n
        assert set(range(1, 11)) <= set(grid)
        assert {k for k in scoring.mib_sizes(n) if k} <= set(grid)  # MIB's values computable
        assert 20 <= len(grid) <= 45
    with pytest.raises(ValueError, match="positive edge count"):
        scoring.budget_grid(0)


# ------------------------------------------------------------------------ at most budget
def test_only_circuits_within_their_budget_are_credited():
    # Circuits of sizes 1, 5, 3 returned for budgets 2, 4, 6 (the one for 4 is over budget).
    d = data([[0.2], [0.9], [0.5]], sizes=[1, 5, 3], budgets=[2, 4, 6], own=[0, 1, 2], n_edges=6)
    points = scoring.curve(d)
    assert [p.own_fits for p in points] == [True, False, True]
    # At 4 the size-5 circuit returned for it does not count; the best that fits is the size-3
    # one returned for 6. At 6 the size-5 circuit fits and is the best.
    assert [p.credited for p in points] == [0, 2, 1]
    assert [p.faithfulness for p in points] == pytest.approx([0.2, 0.5, 0.9])
    # A method returning only over-budget circuits scores as the empty circuit.
    over = data([[1.0], [1.0]], sizes=[6, 6], budgets=[2, 4], own=[0, 1], n_edges=6)
    assert [p.credited for p in scoring.curve(over)] == [None, None]
    assert scoring.areas(over).cpr == 0.0 and scoring.areas(over).cmd == 1.0


def test_best_fitting_circuit_and_ties():
    # A smaller, more faithful circuit beats the budget's own one; CMD prefers |1 - f| small.
    d = data([[1.5], [1.0], [0.8]], sizes=[2, 3, 3], budgets=[2, 3, 4], own=[0, 1, 2], n_edges=4)
    cpr_index, cpr_values = scoring.credit(d.sizes, d.faithfulness(), d.budgets, d.own, "cpr")
    cmd_index, cmd_values = scoring.credit(d.sizes, d.faithfulness(), d.budgets, d.own, "cmd")
    assert cpr_index == [0, 0, 0] and cpr_values.tolist() == pytest.approx([1.5, 1.5, 1.5])
    assert cmd_index == [0, 1, 1] and cmd_values.tolist() == pytest.approx([0.5, 0.0, 0.0])
    # Exact ties go to the budget's own circuit.
    tie = data([[0.5], [0.5]], sizes=[1, 2], budgets=[1, 2], own=[0, 1], n_edges=2)
    assert scoring.credit(tie.sizes, tie.faithfulness(), tie.budgets, tie.own)[0] == [0, 1]


# -------------------------------------------------------------------------------- areas
def test_step_area_by_hand_on_both_axes():
    # 100 edges; budgets 1, 10, 100 with values 0.2, 0.6, 1.0. On log10 over [1, 100]: the step
    # holds 0.2 over [1, 10) (half the axis) and 0.6 over [10, 100) (the other half).
    area = scoring.step_areas([1, 10, 100], torch.tensor([0.2, 0.6, 1.0]), 100, empty=0.0)
    assert float(area) == pytest.approx(0.5 * 0.2 + 0.5 * 0.6)
    # Below the smallest budget the curve is the empty circuit's: budgets 10, 100 only.
    area = scoring.step_areas([10, 100], torch.tensor([0.6, 1.0]), 100, empty=0.0)
    assert float(area) == pytest.approx(0.5 * 0.6)
    # MIB's linear axis on a 1000-edge graph, where its ten sizes are the grid: f = 1 at 50%
    # and 100%, 0.5 at 20%, 0 below. MIB's trapezoids over the fraction itself:
    # (0.2 - 0.1) * (0 + 0.5) / 2 + (0.5 - 0.2) * (0.5 + 1) / 2 + (1 - 0.5) * (1 + 1) / 2.
    grid = scoring.budget_grid(1000)
    own_f = [0.0] * 7 + [0.5, 1.0, 1.0]
    cpr_mib, cmd_mib = scoring.mib_areas(1000, grid, own_f)
    assert cpr_mib == pytest.approx(0.025 + 0.225 + 0.5)
    # |1 - f|: 1 from 0.1% to 10% (0.099), then (1 + 0.5)/2 * 0.1, (0.5 + 0)/2 * 0.3, 0.
    assert cmd_mib == pytest.approx(0.099 + 0.075 + 0.075)
    # An over-budget circuit (None) counts as empty for MIB too, and MIB's 0-edge budgets are
    # the empty circuit.
    assert scoring.mib_areas(1000, grid, [None] * 9 + [1.0])[0] == pytest.approx(0.25)


def test_the_same_circuit_at_the_same_budget_gets_the_same_area():
    # The extrapolation defect: a method whose smallest circuit is the 3-edge ground truth was
    # credited at 1 and 2 edges too. Now both methods below score the same.
    only_truth = data([[1.0]] * 3, sizes=[3, 3, 3], budgets=[1, 2, 3], own=[0, 1, 2], n_edges=3)
    honest = data(
        [[0.0], [0.0], [1.0]], sizes=[1, 2, 3], budgets=[1, 2, 3], own=[0, 1, 2], n_edges=3
    )
    assert scoring.areas(only_truth) == scoring.areas(honest)
    # Both: 0 over [1, 3) on the log axis, the full-budget point has no width.
    assert scoring.areas(honest).cpr == 0.0


# -------------------------------------------------------------------------- ground truth
def test_roc_is_the_same_estimator_for_every_method():
    truth = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    keeps = [
        torch.tensor([1, 0, 0, 0, 0], dtype=torch.bool),  # (0, .5)
        torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool),  # (1/3, .5)
        torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool),  # (1/3, 1)
    ]
    fpr, tpr, auc = scoring.roc_of_circuits(keeps, truth)
    assert (fpr, tpr) == ([0, 0, 1 / 3, 1 / 3, 1], [0, 0.5, 0.5, 1, 1])
    assert auc == pytest.approx(1 / 3 * 0.5 + 2 / 3 * 1)
    with_ranking = scoring.groundtruth_scores(
        keeps, [1, 2, 3], [0, 1, 2], truth, torch.tensor([5.0, 4, 3, 2, 1])
    )
    without = scoring.groundtruth_scores(keeps, [1, 2, 3], [0, 1, 2], truth)
    assert with_ranking["auc"] == without["auc"] == auc  # the ranking never replaces it
    assert with_ranking["auc_ranking"] == 1.0 and without["auc_ranking"] is None
    # Random circuits: adding points cannot lift the AUC the way an upper envelope did.
    gen = torch.Generator().manual_seed(0)
    truth = torch.zeros(40, dtype=torch.bool)
    truth[:8] = True
    many = [torch.rand(40, generator=gen) < 0.5 for _ in range(200)]
    assert abs(scoring.roc_of_circuits(many, truth)[2] - 0.5) < 0.1


def test_f1_and_exact_without_an_oracle():
    truth = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    k = lambda *bits: torch.tensor(bits, dtype=torch.bool)  # noqa: E731
    keeps = [k(1, 0, 0, 0, 0, 0), k(1, 1, 0, 1, 0, 0), k(1, 1, 1, 0, 0, 0), k(1, 1, 1, 1, 1, 0)]
    # Budgets 1, 2, 4, 5: the ground truth (3 edges) is read at budget 4, the smallest >= 3.
    # The circuit returned for 2 has 3 edges: over its budget, so it is not a point of the ROC.
    out = scoring.groundtruth_scores(keeps, [1, 2, 4, 5], [0, 1, 2, 3], truth)
    assert out["f1_budget"] == 4 and out["f1"] == 1.0 and out["exact_recovery"] is True
    assert out["n_fitting_circuits"] == 3
    # Without a circuit that fits at the F1 budget, F1 is that of the empty circuit.
    out = scoring.groundtruth_scores([keeps[3]], [4], [0], truth)
    assert out["f1"] == 0.0 and out["exact_recovery"] is False
    # An over-budget exact circuit is no exact recovery.
    assert scoring.groundtruth_scores([truth], [2], [0], truth)["exact_recovery"] is False


def test_an_empty_ground_truth_is_reported_apart():
    truth = torch.zeros(4, dtype=torch.bool)
    keeps = [torch.tensor([1, 0, 0, 0], dtype=torch.bool), torch.zeros(4, dtype=torch.bool)]
    out = scoring.groundtruth_scores(keeps, [1, 2], [0, 1], truth)
    assert out["empty_truth"] is True and out["auc"] is None and out["f1"] is None
    assert out["exact_recovery"] is None  # never counted towards exact
    assert out["recovers_empty"] is True


# --------------------------------------------------------------------------------- ranks
def _method(level: float, noise: float, seed: int, n: int = 300) -> scoring.PerExample:
    gen = torch.Generator().manual_seed(seed)
    row = level + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return data([row.tolist()], sizes=[2], budgets=[2], own=[0], n_edges=4)


def test_noise_shares_a_rank_and_a_clear_difference_does_not():
    # Per-example values 0.50 and 0.50 + noise: no significant difference.
    a = _method(0.5, 0.3, seed=1)
    b = data([(a.circuit[0] + 0.01 * torch.randn(300, generator=torch.Generator().manual_seed(2)))
              .tolist()], sizes=[2], budgets=[2], own=[0], n_edges=4)  # fmt: skip
    c = _method(0.8, 0.3, seed=3)  # clearly better
    ranking = scoring.rank({"a": [a], "b": [b], "c": [c]})
    assert ranking.rank == {"c": 1, "a": 2, "b": 2}
    assert ranking.beats["c"] == ["a", "b"] and ranking.wins("c") and not ranking.wins("a")
    # Identical data: identical estimates and one shared rank, whatever the names.
    same = scoring.rank({"x": [a], "y": [a]})
    assert same.estimate["x"] == same.estimate["y"] and same.rank == {"x": 1, "y": 1}


def test_a_difference_below_float_noise_is_never_a_win():
    # 0.5109366984 vs 0.5109366963: consistent in every resample, but 2e-9 apart.
    a = _method(0.5109366984, 0.0, seed=0)
    b = _method(0.5109366963, 0.0, seed=0)
    assert scoring.rank({"a": [a], "b": [b]}).rank == {"a": 1, "b": 1}


def test_a_difference_that_would_not_reproduce_elsewhere_is_no_win():
    """planted/reverse: EAP 0.88646, EAP-IG 0.88641, Edge Pruning 0.88628, ACDC 0.88599, each
    difference in every resample and each below the cross-machine tolerance: one shared rank.
    A difference of twice the tolerance, held in every resample, separates them. (The circuit
    holds budget 2 of 4 edges: half the log axis, so an area moves by half the faithfulness.)"""
    assert scoring.MIN_AREA_DIFFERENCE == scoring.REPRODUCIBLE == 1e-3
    base = _method(0.6, 0.2, seed=4)
    near = data([(base.circuit[0] + 0.001).tolist()], sizes=[2], budgets=[2], own=[0], n_edges=4)
    far = data([(base.circuit[0] + 0.004).tolist()], sizes=[2], budgets=[2], own=[0], n_edges=4)
    assert scoring.rank({"base": [base], "near": [near]}).rank == {"base": 1, "near": 1}
    assert scoring.compare(near, base)["beats"] is False
    assert scoring.rank({"base": [base], "far": [far]}).rank == {"far": 1, "base": 2}
    assert scoring.compare(far, base)["beats"] is True


def test_paired_bootstrap_uses_shared_resamples():
    counts = scoring.resample_counts(7, n_boot=5, seed=0)
    assert counts.shape == (5, 7) and bool((counts.sum(1) == 7).all())
    assert torch.equal(counts, scoring.resample_counts(7, n_boot=5, seed=0))
    a, b = _method(0.5, 0.3, seed=1), _method(0.5, 0.3, seed=1, n=200)
    with pytest.raises(ValueError, match="different ones"):
        scoring.rank({"a": [a], "b": [b]})


def test_compare_with_a_control():
    method, control = _method(0.8, 0.2, seed=0), _method(0.2, 0.2, seed=1)
    assert scoring.compare(method, control)["beats"] is True
    assert scoring.compare(control, method)["beats"] is False
    assert scoring.compare(method, method)["beats"] is False  # a tie is not a win


def test_faithfulness_per_resample_is_the_ratio_of_means():
    d = data([[0.5, 1.5, 3.0]], sizes=[1], budgets=[1], own=[0], n_edges=2,
             empty=[0.0, 1.0, 1.0], full=[1.0, 2.0, 3.0])  # fmt: skip
    counts = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]])
    f = d.faithfulness(counts)[:, 0]
    assert f[0] == pytest.approx((5.0 / 3 - 2 / 3) / (2 - 2 / 3))
    assert f[1] == pytest.approx(((1 + 3) / 3 - 1 / 3) / ((2 + 3) / 3 - 1 / 3))


def test_degenerate_task_is_an_error():
    with pytest.raises(scoring.DegenerateTask, match="degenerate"):
        scoring.check_not_degenerate(torch.ones(4), torch.ones(4))
    scoring.check_not_degenerate(torch.ones(4), torch.zeros(4))
    with pytest.raises(scoring.DegenerateTask):
        scoring.check_not_degenerate(torch.tensor([math.nan]), torch.zeros(1))
