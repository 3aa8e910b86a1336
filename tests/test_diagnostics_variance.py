"""Variance by group: per-example faithfulness, per-group intervals, eta squared, the flag."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_model

import circuitboard as cb
from circuitboard import metrics
from circuitboard.ablation import for_batch
from circuitboard.diagnostics import eta_squared, group_variance, variance_from_metrics

torch.set_num_threads(1)


def test_eta_squared_equals_the_hand_computation():
    # mean 3.5; group means 2 and 5: SS_between = 3 * 1.5^2 * 2 = 13.5; SS_total = 17.5
    assert eta_squared([1, 2, 3, 4, 5, 6], list("aaabbb")) == pytest.approx(13.5 / 17.5)
    # three groups: mean 3; a = (1, 2), b = (3, 2), c = (4, 6) have means 1.5, 2.5, 5:
    # SS_between = 2 * (1.5^2 + 0.5^2 + 2^2) = 13; SS_total = 4 + 1 + 0 + 1 + 9 + 1 = 16
    assert eta_squared([1, 2, 3, 4, 6, 2], list("aabccb")) == pytest.approx(13 / 16)


def test_eta_squared_is_zero_for_identical_groups_and_one_without_within_spread():
    assert eta_squared([1, 2, 3, 1, 2, 3], list("aaabbb")) == pytest.approx(0.0, abs=1e-15)
    assert eta_squared([1, 1, 1, 5, 5, 5], list("aaabbb")) == 1.0
    assert eta_squared([2, 2, 2], list("abc")) == 0.0  # no spread to explain
    with pytest.raises(ValueError, match="one label per value"):
        eta_squared([1, 2], ["a"])


def _metrics_two_groups(shift: float):
    """Per-example metrics with faithfulness 0.5 + noise in group a and 0.5 + shift in b."""
    gen = torch.Generator().manual_seed(0)
    n = 40
    empty = torch.zeros(n, dtype=torch.float64)
    full = 2 + torch.rand(n, generator=gen, dtype=torch.float64)
    f = 0.5 + 0.02 * torch.randn(n, generator=gen, dtype=torch.float64)
    f[n // 2 :] += shift
    labels = ["a"] * (n // 2) + ["b"] * (n // 2)
    return f * full, empty, full, labels


def test_groups_far_apart_are_flagged_and_close_ones_are_not():
    circuit, empty, full, labels = _metrics_two_groups(shift=0.3)
    report = variance_from_metrics(circuit, empty, full, {"g": labels}, n_boot=500)
    g = report.grouping("g")
    a, b = g.group("a"), g.group("b")
    # Each group's value is its ratio of mean metrics, as for the whole split.
    member = torch.tensor([x == "b" for x in labels])
    assert b.faithfulness == pytest.approx(float(circuit[member].mean() / full[member].mean()))
    assert a.ci_low < a.faithfulness < a.ci_high and b.ci_high < 1.0
    assert g.differs and g.separated == [("b", "a")] and report.flagged
    per_example = torch.tensor(report.per_example, dtype=torch.float64)
    assert g.eta_squared == pytest.approx(eta_squared(per_example, labels))
    assert g.eta_squared > 0.9

    circuit, empty, full, labels = _metrics_two_groups(shift=0.0)
    report = variance_from_metrics(circuit, empty, full, {"g": labels}, n_boot=500)
    assert not report.flagged and report.grouping("g").eta_squared < 0.1


def test_separated_but_negligible_differences_are_not_flagged():
    """Faithfulness near 0 in both groups: intervals tiny and apart, the difference 1e-4."""
    circuit, empty, full, labels = _metrics_two_groups(shift=0.3)
    tiny = circuit * 1e-3
    report = variance_from_metrics(tiny, empty, full, {"g": labels}, n_boot=500)
    a, b = report.grouping("g").group("a"), report.grouping("g").group("b")
    assert b.ci_low > a.ci_high and b.faithfulness - a.faithfulness < 0.01
    assert not report.flagged
    strict = variance_from_metrics(tiny, empty, full, {"g": labels}, n_boot=500, min_difference=0)
    assert strict.flagged


def test_examples_without_a_gap_have_no_value():
    circuit = torch.tensor([1.0, 2.0, 3.0, 4.0])
    empty = torch.tensor([0.0, 1.0, 0.0, 0.0])
    full = torch.tensor([2.0, 1.0, 4.0, 4.0])  # example 1: full == empty
    report = variance_from_metrics(circuit, empty, full, {"g": list("aabb")}, n_boot=100)
    assert report.per_example == [0.5, None, 0.75, 1.0]
    assert report.n_with_value == 3
    assert report.grouping("g").group("a").per_example_mean == 0.5
    json.dumps(report.to_dict(), allow_nan=False)


def _grouped_task(model):
    gen = torch.Generator().manual_seed(7)
    n = 24
    clean = torch.randint(0, 20, (n, 6), generator=gen)
    clean[:, 0], clean[:, 1] = torch.arange(n) % 20, torch.arange(n) // 20  # distinct prompts
    counter = torch.randint(0, 20, (n, 6), generator=gen)
    answer = torch.randint(0, 10, (n,), generator=gen)
    parity = ["even" if int(t) % 2 == 0 else "odd" for t in answer]
    thirds = [str(i % 3) for i in range(n)]
    return cb.tasks.from_tokens(
        clean, counter, answer, answer + 10, model=model, group={"parity": parity, "third": thirds}
    )


def test_group_variance_reproduces_evaluate_and_the_groups_by_hand():
    model = random_model(seed=2, dtype=torch.float64)
    task = _grouped_task(model)
    scores = torch.randn(model.graph.n_edges, generator=torch.Generator().manual_seed(1))
    circuit = cb.Circuit.top_k(model.graph, scores, 30)
    report = group_variance(model, task, circuit, n_boot=300)
    point = cb.evaluate(model, task, [circuit], n_boot=300).points[0]
    assert report.faithfulness == pytest.approx(point.faithfulness, abs=1e-12)
    assert (report.ci_low, report.ci_high) == pytest.approx((point.ci_low, point.ci_high))
    assert report.median == pytest.approx(point.median, abs=1e-12)
    assert report.n_examples == task.n_examples("test") == len(report.per_example)

    # By hand: run the model per batch, then the ratio of the group's mean metrics.
    keep = circuit.pruned().keep.double()
    parts = {"full": [], "empty": [], "circuit": []}
    reference = [b.clean for b in task.train]
    for i, batch in enumerate(task.test):
        ablated = for_batch(model, "counterfactual", batch, reference=reference, seed=i)
        with torch.no_grad():
            parts["full"].append(task.score(model(batch.clean), batch))
            parts["empty"].append(task.score(model(batch.clean, keep * 0, ablated), batch))
            parts["circuit"].append(task.score(model(batch.clean, keep, ablated), batch))
    full, empty, kept = (torch.cat(parts[k]) for k in ("full", "empty", "circuit"))
    labels = task.group_labels("test")
    assert [g.grouping for g in report.groupings] == ["parity", "third"]
    for grouping in report.groupings:
        for group in grouping.groups:
            member = torch.tensor([x == group.level for x in labels[grouping.grouping]])
            expected = metrics.faithfulness(
                kept[member].mean(), empty[member].mean(), full[member].mean()
            )
            assert group.faithfulness == pytest.approx(float(expected), abs=1e-9)
            assert group.n == int(member.sum())
        per_example = metrics.faithfulness(kept, empty, full)
        assert grouping.eta_squared == pytest.approx(
            eta_squared(per_example, labels[grouping.grouping]), abs=1e-9
        )
    only = group_variance(model, task, circuit, groupings=["third"], n_boot=50)
    assert [g.grouping for g in only.groupings] == ["third"]
    row = report.summary()
    assert set(row) == {"faithfulness", "std", "flagged", "eta2_parity", "eta2_third"}


def test_unknown_grouping_is_named():
    model = random_model(seed=2, dtype=torch.float64)
    task = _grouped_task(model)
    with pytest.raises(ValueError, match="no grouping 'order'"):
        group_variance(model, task, cb.Circuit.full(model.graph), groupings=["order"])
