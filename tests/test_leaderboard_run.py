"""Cells, the run harness (skip, resume, failures), robustness, executors and rendering."""

from __future__ import annotations

import os

import pytest
import torch
from test_leaderboard_helpers import FLAG_ENV, GT_EDGES, tiny_bundle

from circuitboard import cli, metrics
from circuitboard.evaluate import budget_sizes, evaluate
from circuitboard.graph import Circuit
from circuitboard.leaderboard import controls, rendering, runner, store, tables
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.cell import Cell, run_cell

HELPERS = "test_leaderboard_helpers"
TASK = f"{HELPERS}:tiny_bundle"


def spec(cls: str, name: str | None = None) -> MethodSpec:
    return MethodSpec(name or cls.lower(), target=f"{HELPERS}:{cls}")


def cell(cls: str, seed: int = 0, robustness: bool = False, ablation="resample") -> Cell:
    return Cell(spec(cls), TASK, "tiny-model", ablation, seed, robustness, 50, None, 1)


def sweep(classes, seeds, robustness=False):
    return runner.plan(
        [spec(c) for c in classes], [TASK], seeds, robustness=robustness, n_boot=50, threads=1
    )


def comparable_dir(path) -> dict:
    return {
        os.path.basename(f): store.comparable(store.read_result(f))
        for f in store.result_files(path)
    }


def test_ground_truth_scores_of_oracles_and_the_stored_evaluation():
    record = run_cell(cell("Oracle"))
    gt = record["groundtruth"]
    assert gt["ablation"] == "resample" and gt["size"] == len(GT_EDGES)
    assert (gt["auc"], gt["precision"], gt["recall"], gt["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert gt["exact_recovery"] is True and gt["roc_from"] == "scores"
    anti = run_cell(cell("AntiOracle"))["groundtruth"]
    assert anti["auc"] == 0.0 and anti["exact_recovery"] is False and anti["f1"] == 0.0

    bundle = tiny_bundle()
    n_edges = bundle.model.graph.n_edges
    sizes = budget_sizes(n_edges) + [len(GT_EDGES)]  # 4 is no budget size of 46 edges
    assert len(GT_EDGES) not in budget_sizes(n_edges)
    assert [c["n_requested"] for c in record["circuits"]] == sizes
    assert [c["role"] for c in record["circuits"]][-1] == "groundtruth_size"
    # The stored curve is evaluate()'s on the same circuits (reference: a direct call).
    truth = Circuit.from_edges(bundle.model.graph, GT_EDGES).keep.double()
    circuits = [Circuit.top_k(bundle.model.graph, truth, k, absolute=False) for k in sizes]
    direct = evaluate(bundle.model, bundle.task, circuits, "resample", n_boot=50)
    stored = record["evaluation"]["points"]
    assert [p["faithfulness"] for p in stored] == [p.faithfulness for p in direct.points]
    assert [p["n_edges"] for p in stored] == [p.n_edges for p in direct.points]
    # Areas come from the MIB budget points only, not the extra ground-truth-size point.
    budget = stored[:-1]
    expected = metrics.area_scores(
        [p["fraction"] for p in budget], [p["faithfulness"] for p in budget]
    )
    assert record["evaluation"]["areas"]["log"] == pytest.approx(expected, abs=0)
    # Same cell, same record, apart from timing and machine.
    assert store.comparable(run_cell(cell("Oracle"))) == store.comparable(record)


def test_robustness_report_and_controls():
    record = run_cell(cell("EdgeEffects", robustness=True))
    assert record["cost"]["forward"] == 4 and record["cost"]["backward"] == 0
    assert record["cost"]["seconds"] > 0 and record["environment"]["python"]
    rob = record["robustness"]
    assert set(rob["ablations"]) == {"zero", "mean", "resample", "counterfactual"}
    own = rob["ablations"]["resample"]
    assert own["cpr"] == record["evaluation"]["areas"]["log"]["cpr"]
    assert rob["off_distribution"] is not None
    # The random-circuit control is exactly evaluate() of controls.random_circuits.
    bundle = tiny_bundle()
    sizes = budget_sizes(bundle.model.graph.n_edges)
    rand = controls.random_circuits(bundle.model.graph, sizes, 0)
    direct = evaluate(bundle.model, bundle.task, rand, "resample", n_boot=50)
    control = rob["controls"]["random_circuits"]
    assert control["faithfulness"] == [p.faithfulness for p in direct.points]
    for name in ("random_circuits", "random_model", "shuffled_labels"):
        c = rob["controls"][name]
        assert c["beats"] is (own["cpr"] > c["cpr"])
    # Off-distribution: the same circuits on the off-distribution split.
    keep = [Circuit(bundle.model.graph, torch.ones(46, dtype=torch.bool))]
    off = evaluate(bundle.model, bundle.task, keep, "resample", split="off_distribution")
    assert off.points[0].faithfulness == pytest.approx(1.0)


def test_controls_change_what_they_claim_to():
    bundle = tiny_bundle()
    task = controls.shuffled_labels(bundle.task, 0)
    for before, after in zip(bundle.task.train + bundle.task.test, task.train + task.test):
        assert torch.equal(before.clean, after.clean)
        moved = before.answer != after.answer
        assert moved.any() and sorted(after.answer.tolist()) == sorted(before.answer.tolist())
    fresh = controls.random_model(bundle.model, 0)
    assert fresh.graph == bundle.model.graph
    assert not torch.equal(fresh.blocks[0].attn.W_Q, bundle.model.blocks[0].attn.W_Q)
    assert torch.equal(fresh.ln_final.w, torch.ones_like(fresh.ln_final.w))
    assert abs(float(fresh.blocks[0].attn.W_Q.detach().std()) - controls.INIT_STD) < 0.01


def test_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch):
    cells = sweep(["Flaky"], 3)
    runner.run(cells, tmp_path / "clean", progress=False)
    monkeypatch.setenv(FLAG_ENV, "interrupt:1")  # Ctrl-C inside the second cell
    with pytest.raises(KeyboardInterrupt):
        runner.run(cells, tmp_path / "resumed", progress=False)
    assert len(store.result_files(tmp_path / "resumed")) == 1
    monkeypatch.delenv(FLAG_ENV)
    summary = runner.run(cells, tmp_path / "resumed", progress=False)
    assert summary.skipped == 1 and len(summary.written) == 2
    clean = comparable_dir(tmp_path / "clean")
    assert len(clean) == 3 and comparable_dir(tmp_path / "resumed") == clean


def test_a_failing_cell_is_reported_and_the_others_are_kept(tmp_path, monkeypatch):
    cells = sweep(["Flaky"], 2)
    monkeypatch.setenv(FLAG_ENV, "error:0")
    summary = runner.run(cells, tmp_path, progress=False)
    assert not summary.ok and len(summary.written) == 1
    assert "RuntimeError: flaky failure" in summary.failed[0][1]
    assert "FAILED" in summary.describe()
    monkeypatch.delenv(FLAG_ENV)
    again = runner.run(cells, tmp_path, progress=False)
    assert again.ok and again.skipped == 1 and len(again.written) == 1
    assert runner.run(cells, tmp_path, progress=False, force=True).skipped == 0


def test_render_reads_stored_results_only(tmp_path, monkeypatch):
    results = tmp_path / "results"
    runner.run(sweep(["Oracle", "EdgeEffects"], 2, robustness=True), results, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("rendering must not compute")

    monkeypatch.setattr("circuitboard.leaderboard.cell._run_cell", forbidden)
    monkeypatch.setattr("circuitboard.leaderboard.cell.evaluate", forbidden)
    monkeypatch.setattr("circuitboard.leaderboard.robustness.evaluate", forbidden)
    written = rendering.render(results)
    assert os.path.dirname(written["markdown"]) == str(tmp_path)
    text = open(written["markdown"]).read()
    assert "Ranking follows MIB" in text and "## Ground truth" in text and "## Robustness" in text
    df = tables.load_results(results)
    assert len(df) == 4 and set(df["method"]) == {"oracle", "edgeeffects"}
    per_task = tables.per_task(df)
    best = per_task.loc[per_task["cpr"].idxmax(), "method"]
    assert per_task.set_index("method").loc[best, "cpr_rank"] == 1
    summary = tables.summary(df)
    assert summary.iloc[0]["method"] == best and f"| {best}" in text
    oracle_row = tables.groundtruth(df).set_index("method").loc["oracle"]
    assert oracle_row["auc"] == 1.0 and oracle_row["exact"] == "2/2"
    rob = tables.robustness(df).set_index("method")
    assert rob.loc["oracle", "seed_jaccard"] == 1.0  # the oracle ignores the seed
    csv = open(written["csv"]).read().splitlines()
    assert len(csv) == 5 and csv[0].startswith("method,task,model,ablation,seed")
    plots = [p for k, p in written.items() if k.startswith("plot")]
    assert len(plots) == 1 and open(plots[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.relpath(plots[0], tmp_path) in text


def test_process_executor_matches_in_process(tmp_path):
    cells = sweep(["EdgeEffects"], 2)
    runner.run(cells, tmp_path / "local", progress=False)
    summary = runner.run(cells, tmp_path / "pool", executor="process", workers=2, progress=False)
    assert summary.ok and len(summary.written) == 2
    assert comparable_dir(tmp_path / "pool") == comparable_dir(tmp_path / "local")


def test_run_command(tmp_path, capsys):
    results = tmp_path / "res"
    argv = [
        "run",
        "--methods",
        f"{HELPERS}:Oracle",
        "--tasks",
        TASK,
        "--results",
        str(results),
        "--n-boot",
        "20",
        "--threads",
        "1",
        "--no-robustness",
        "--quiet",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 cells: 0 already stored, 1 written, 0 failed" in out
    assert (tmp_path / "LEADERBOARD.md").exists()
    assert cli.main(argv) == 0
    assert "1 already stored" in capsys.readouterr().out
