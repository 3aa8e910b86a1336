"""Edges needed to reach a faithfulness level: the rule, its interval, and the two studies
that report it (``edges-for-faithfulness``, ``sparse-vs-dense``), on hand-made curves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from circuitboard import cli, scoring
from circuitboard.leaderboard import scores, store
from circuitboard.leaderboard.studies import crossings, edges, sparse_dense

# Three returned circuits, the empty circuit scoring 0 and the model 1 on every example, so a
# circuit's faithfulness is its mean metric. Circuit 2 (faithfulness 0.99) was returned for the
# budget of 5 edges but has 7: it is never credited at 5 (at most the budget), only at 9.
SIZES = [2, 5, 7]
BUDGETS = [2, 5, 9]
OWN = [0, 2, 1]
METRICS = [[0.5] * 4, [0.7, 0.8, 0.9, 1.0], [0.99] * 4]


def hand_curve(metrics=METRICS, digest="same") -> scoring.PerExample:
    return scoring.PerExample(
        circuit=torch.tensor(metrics, dtype=torch.float64),
        empty=torch.zeros(4),
        full=torch.ones(4),
        sizes=SIZES,
        budgets=BUDGETS,
        own=OWN,
        n_edges=12,
        digest=digest,
    )


# ------------------------------------------------------------------------------ rule 7
def test_edges_to_reach_reads_the_hand_computed_crossing():
    data = hand_curve()
    _, values = scoring.credit(data.sizes, data.faithfulness(), data.budgets, data.own)
    # by hand, the at-most-budget curve: 2 -> 0.5, 5 -> 0.85 (circuit 1), 9 -> 0.99 (circuit 2)
    torch.testing.assert_close(values, torch.tensor([0.5, 0.85, 0.99], dtype=torch.float64))
    assert float(scoring.edges_to_reach(BUDGETS, values, 0.5)) == 2
    assert float(scoring.edges_to_reach(BUDGETS, values, 0.8)) == 5
    # 0.9 and 0.95 need circuit 2, which is over its own budget of 5: credited only at 9
    assert float(scoring.edges_to_reach(BUDGETS, values, 0.9)) == 9
    assert float(scoring.edges_to_reach(BUDGETS, values, 0.95)) == 9
    assert math.isinf(float(scoring.edges_to_reach(BUDGETS, values, 0.995)))  # not reached


def test_edges_to_reach_per_draw_and_in_any_budget_order():
    values = torch.tensor([[0.95, 0.2, 0.7], [0.1, 0.05, 0.3]], dtype=torch.float64)
    budgets = [10, 1, 4]  # unsorted: the rule reads them in order of size
    out = scoring.edges_to_reach(budgets, values, 0.6)
    assert out.tolist() == [4.0, math.inf]
    with pytest.raises(ValueError, match="budgets"):
        scoring.edges_to_reach([1, 2], values, 0.5)


def test_edges_needed_interval_matches_a_loop_over_the_resamples():
    data = hand_curve()
    need = crossings.edges_needed([data], [0.81], n_boot=200)[0.81]
    counts = scoring.resample_counts(4, 200)
    reference = []
    for row in counts.tolist():
        f = [sum(c * m for c, m in zip(row, ms)) / sum(row) for ms in METRICS]
        curve = [max([f[i] for i in range(3) if SIZES[i] <= b], default=0.0) for b in BUDGETS]
        hit = [b for b, v in zip(BUDGETS, curve) if v >= 0.81]
        reference.append(min(hit) if hit else math.inf)
    assert need.draws.tolist() == reference
    assert need.edges == 5  # 0.85 >= 0.81 on the examples themselves
    assert need.low == np.quantile(reference, 0.025, method="lower")
    assert need.high == np.quantile(reference, 0.975, method="higher")
    assert need.low == 5 and need.high == 9  # some resamples fall below 0.81 at 5 edges
    assert need.share_reached == 1.0
    assert need.text() == "5 [5, 9]"


def test_not_reached_is_never_a_number():
    below = hand_curve([[0.1] * 4, [0.2] * 4, [0.3] * 4])
    need = crossings.edges_needed([below], [0.8])[0.8]
    assert not need.reached and need.share_reached == 0.0
    assert need.to_dict()["edges"] is None and need.to_dict()["fraction"] is None
    assert need.text() == "not reached"


def test_seeds_average_their_curves_before_the_crossing():
    a = hand_curve()
    b = hand_curve([[0.5] * 4, [0.6] * 4, [0.99] * 4])
    # mean curve at 5 edges: (0.85 + 0.6) / 2 = 0.725 < 0.8, so 0.8 needs 9 edges
    need = crossings.edges_needed([a, b], [0.8])[0.8]
    assert need.edges == 9


# ------------------------------------------------------------------------------ studies
def record(method, data, task="t", model="m", natives=None) -> dict:
    return {
        "schema": store.SCHEMA,
        "schema_version": store.SCHEMA_VERSION,
        "key": {"method": method, "task": task, "model": model, "ablation": "mean", "seed": 0},
        "method": {"name": method, "target": method, "params": {"steps": 3}},
        "model": {"name": model, "n_edges": data.n_edges},
        "evaluation": {"points": [], "per_example": scores.pack_per_example(data)},
        "circuits": [{"info": {"native_size": n}} for n in (natives or [None] * len(SIZES))],
        "cost": {},
        "environment": {},
    }


def shifted(shift: float, digest="same") -> scoring.PerExample:
    """The hand curve with every circuit's metric moved by ``shift``."""
    return hand_curve([[m + shift for m in row] for row in METRICS], digest)


def test_edges_study_ratio_to_the_best_method_and_not_reached():
    records = [
        record("fast", hand_curve()),  # 0.8 at 5 edges
        record("slow", shifted(-0.1)),  # curve 0.4, 0.75, 0.89: 0.8 at 9 edges
        record("never", shifted(-0.6)),  # stays below 0.8
    ]
    rows = edges.summarize(records, [0.8], n_boot=200)
    by = {r["method"]: r for r in rows}
    assert by["fast"]["edges"] == 5 and by["fast"]["best"] and by["fast"]["fraction"] == 5 / 12
    assert by["slow"]["edges"] == 9 and not by["slow"]["best"]
    assert by["slow"]["ratio_to_best"]["ratio"] == pytest.approx(9 / 5)
    assert by["fast"]["ratio_to_best"]["ratio"] == 1.0
    assert by["never"]["edges"] is None and by["never"]["text"] == "not reached"
    assert by["never"]["ratio_text"] == "not reached"
    assert edges.wins(rows, [0.8])[0.8] == {"fast": 1, "never": 0, "slow": 0}


def test_edges_study_command_reports_a_board(tmp_path, capsys):
    board = tmp_path / "board"
    for r in (record("fast", hand_curve()), record("never", shifted(-0.6))):
        store.write_result(r, board)
    out = tmp_path / "study"
    code = cli.main(["study", "edges-for-faithfulness", "--board", str(board), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "not reached" in printed and "5 [5, 9] (41.7%) *" in printed
    summary = json.loads((out / "edges-for-faithfulness.json").read_text())
    assert {r["level"] for r in summary["rows"]} == {0.8, 0.9, 0.95}
    assert (out / "edges_for_faithfulness.png").stat().st_size > 1000
    assert "not reached" in (out / "REPORT.md").read_text()


def test_sparse_vs_dense_ratio_is_paired_and_shows_native_sizes():
    records = [
        record("eap", shifted(-0.1), model="dense"),  # 0.8 at 9 edges
        record("eap", hand_curve(), model="sparse", natives=[3, 11, 20]),  # 0.8 at 5 edges
    ]
    rows, curves = sparse_dense.summarize(records, "dense", "sparse", [0.8, 0.995])
    at8 = next(r for r in rows if r["level"] == 0.8)
    assert at8["dense"]["edges"] == 9 and at8["sparse"]["edges"] == 5
    assert at8["ratio_dense_over_sparse"]["ratio"] == pytest.approx(9 / 5)
    assert at8["sparse"]["native"] == 11  # circuit 1 is credited at 5 edges
    unreached = next(r for r in rows if r["level"] == 0.995)
    assert unreached["dense"]["text"] == "not reached" and unreached["ratio_text"] == "-"
    assert [c["model"] for c in curves] == ["dense", "sparse"]
    # examples differ: no paired interval, only the point ratio
    other = [records[0], record("eap", hand_curve(digest="other"), model="sparse")]
    rows, _ = sparse_dense.summarize(other, "dense", "sparse", [0.8])
    assert rows[0]["ratio_dense_over_sparse"]["unpaired"] is True
