"""Cells, the run harness (skip, resume, failures), robustness, executors and rendering."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
from test_leaderboard_helpers import FLAG_ENV, GT_EDGES, MARKS_ENV, tiny_bundle

from circuitboard import cli, scoring
from circuitboard.evaluate import evaluate
from circuitboard.graph import Circuit
from circuitboard.leaderboard import claims, controls, rendering, runner, scores, store, tables
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
    assert gt["exact_recovery"] is True and gt["auc_ranking"] == 1.0
    anti = run_cell(cell("AntiOracle"))["groundtruth"]
    assert anti["exact_recovery"] is False and anti["f1"] == 0.0 and anti["auc_ranking"] == 0.0

    bundle = tiny_bundle()
    n_edges = bundle.model.graph.n_edges
    grid = scoring.budget_grid(n_edges)
    assert record["budgets"] == grid == [c["budget"] for c in record["circuits"]]
    # The stored curve is evaluate()'s on the same circuits (reference: a direct call).
    truth = Circuit.from_edges(bundle.model.graph, GT_EDGES).keep.double()
    circuits = [Circuit.top_k(bundle.model.graph, truth, k, absolute=False) for k in grid]
    direct = evaluate(bundle.model, bundle.task, circuits, "resample", budgets=grid, n_boot=50)
    stored = record["evaluation"]
    assert [p["faithfulness"] for p in stored["points"]] == [p.faithfulness for p in direct.points]
    assert stored["curve"] == direct.curve and stored["areas"] == direct.areas
    # The stored per-example data gives back the same areas.
    data = scores.unpack_per_example(stored["per_example"])
    assert scoring.areas(data).to_dict() == stored["areas"]
    # Same cell, same record, apart from timing and machine.
    assert store.comparable(run_cell(cell("Oracle"))) == store.comparable(record)


def test_a_method_is_asked_for_the_grid_and_never_for_the_truths_size():
    helpers = importlib.import_module(HELPERS)
    helpers.ASKED.clear()
    run_cell(cell("Recorder"))
    grid = scoring.budget_grid(tiny_bundle().model.graph.n_edges)
    assert helpers.ASKED == [grid]  # one call, the grid itself: nothing added for the truth


def test_over_budget_circuits_are_never_credited():
    record = run_cell(cell("OverBudget"))
    n_edges = record["model"]["n_edges"]
    curve = record["evaluation"]["curve"]
    assert all(p["credited"] is None for p in curve if p["budget"] < n_edges)
    assert [p["own_fits"] for p in curve] == [p["budget"] == n_edges for p in curve]
    assert record["evaluation"]["areas"]["cpr"] == 0.0  # the full point has no width
    assert [c["fits"] for c in record["circuits"]] == [p["own_fits"] for p in curve]
    gt = record["groundtruth"]
    assert gt["n_fitting_circuits"] == 1 and gt["f1"] == 0.0  # F1 read from the empty circuit


def test_the_same_circuits_get_the_same_auc_with_or_without_a_ranking():
    ranked = run_cell(cell("Oracle"))["groundtruth"]
    unranked = run_cell(cell("Circuits"))["groundtruth"]
    assert ranked["auc"] == unranked["auc"] and unranked["auc_ranking"] is None


def test_robustness_report_and_controls():
    record = run_cell(cell("EdgeEffects", robustness=True))
    assert record["cost"]["forward"] == 4 and record["cost"]["backward"] == 0
    assert record["cost"]["seconds"] > 0 and record["environment"]["python"]
    rob = record["robustness"]
    assert set(rob["ablations"]) == {"zero", "mean", "resample", "counterfactual"}
    own = rob["ablations"]["resample"]
    assert own["cpr"] == record["evaluation"]["areas"]["cpr"]
    assert rob["off_distribution"] is not None
    # The random-circuit control is exactly evaluate() of controls.random_circuits.
    bundle = tiny_bundle()
    grid = scoring.budget_grid(bundle.model.graph.n_edges)
    rand = controls.random_circuits(bundle.model.graph, grid, 0)
    direct = evaluate(bundle.model, bundle.task, rand, "resample", budgets=grid, n_boot=50)
    control = rob["controls"]["random_circuits"]
    assert control["faithfulness"] == [p["faithfulness"] for p in direct.curve]
    # "beats" is the paired test of scoring.compare, not a comparison of two numbers.
    own_data = scores.unpack_per_example(record["evaluation"]["per_example"])
    assert control["beats"] == scoring.compare(own_data, direct.per_example)["beats"]
    for name in ("random_circuits", "random_model", "shuffled_labels"):
        c = rob["controls"][name]
        assert c["applicable"] is True
        assert c["beats"] is (c["share_better"] >= scoring.SIGNIFICANCE)
    # Diagnostics: on the smallest credited circuit that reaches faithfulness 0.9.
    diag = rob["diagnostics"]
    curve = record["evaluation"]["curve"]
    first = next(p for p in curve if p["credited"] is not None and p["faithfulness"] >= 0.9)
    assert diag["circuit"] == first["credited"] and diag["size"] == first["size"]
    assert set(diag["self_repair"]["summary"]) >= {"self_repair_k1", "backup_heads"}
    assert 0 <= diag["token_density"]["summary"]["median_density"] <= 1
    row = tables.robustness(tables.frame([record])).iloc[0]
    assert row["diagnosed_size"] == first["size"] and row["backup_heads"] in ("yes", "no")
    # Off-distribution: the same circuits on the off-distribution split.
    keep = [Circuit(bundle.model.graph, torch.ones(46, dtype=torch.bool))]
    off = evaluate(bundle.model, bundle.task, keep, "resample", split="off_distribution")
    assert off.points[0].faithfulness == pytest.approx(1.0)


def test_shuffled_labels_do_not_apply_to_a_method_that_never_reads_labels():
    record = run_cell(cell("LabelBlind", robustness=True))
    control = record["robustness"]["controls"]["shuffled_labels"]
    assert control["applicable"] is False and "beats" not in control
    table = tables.robustness(tables.frame([record])).iloc[0]
    assert table["beats_shuffled_labels"] == "n/a"
    assert table["beats_random_circuits"] in ("yes", "no")
    # ACDC fitting the full model's outputs reads no labels; with the task metric it does.
    import circuitboard as cb

    assert controls.applies(cb.get_method("acdc"), "shuffled_labels")[0] is False
    assert controls.applies(cb.get_method("acdc", divergence="task"), "shuffled_labels")[0]
    assert controls.applies(cb.get_method("random"), "random_model")[0] is False
    assert controls.applies(cb.get_method("eap"), "shuffled_labels")[0] is True


def test_an_empty_ground_truth_is_counted_apart_from_exact_recoveries():
    full = run_cell(cell("Recorder"))
    empty = run_cell(
        Cell(
            spec("Recorder"),
            f"{HELPERS}:empty_truth_bundle",
            "tiny-model",
            "resample",
            0,
            False,
            50,
            None,
            1,
        )  # fmt: skip
    )
    assert empty["groundtruth"]["empty_truth"] is True
    assert empty["groundtruth"]["exact_recovery"] is None
    df = tables.frame([full, empty])
    row = tables.groundtruth_summary(df).iloc[0]
    # Recorder returns only empty circuits: it "recovers" the empty truth, and that is no exact
    # recovery of a real circuit.
    assert row["programs"] == 1 and row["exact"] == "0/1" and row["empty_gt_recovered"] == "1/1"


def test_identical_circuits_share_scores_and_rank():
    cells = [cell("Oracle"), Cell(spec("OracleTwin"), TASK, "tiny-model", "resample", 0, False,
                                  50, None, 1), cell("AntiOracle")]  # fmt: skip
    records = [run_cell(c) for c in cells]
    a, b = records[0], records[1]
    assert a["evaluation"]["areas"] == b["evaluation"]["areas"]
    assert a["groundtruth"]["auc"] == b["groundtruth"]["auc"]
    per_task = tables.per_task(tables.frame(records)).set_index("method")
    assert per_task.loc["oracle", "cpr_rank"] == per_task.loc["oracletwin", "cpr_rank"]


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
    assert os.path.dirname(written["markdown"]) == str(results)  # in the results folder itself
    assert os.stat(written["markdown"]).st_mode & 0o777 == 0o666 & ~_umask()
    text = open(written["markdown"]).read()
    assert "How to read these tables" in text and "## Ground truth" in text
    assert "## Robustness" in text
    df = tables.load_results(results)
    assert len(df) == 4 and set(df["method"]) == {"oracle", "edgeeffects"}
    per_task = tables.per_task(df)
    best = per_task.loc[per_task["cpr"].idxmax(), "method"]
    assert per_task.set_index("method").loc[best, "cpr_rank"] == 1
    summary = tables.summary(df).set_index("method")
    assert summary.loc[best, "mean_cpr_rank"] == 1 and f"| {best}" in text
    oracle_row = tables.groundtruth(df).set_index("method").loc["oracle"]
    assert oracle_row["auc"] == 1.0 and oracle_row["exact"] == "2/2"
    rob = tables.robustness(df).set_index("method")
    assert rob.loc["oracle", "seed_jaccard"] == 1.0  # the oracle ignores the seed
    csv = open(written["csv"]).read().splitlines()
    assert len(csv) == 5 and csv[0].startswith("method,task,model,ablation,seed")
    plots = [p for k, p in written.items() if k.startswith("plot")]
    assert len(plots) == 1 and open(plots[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.relpath(plots[0], results) in text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_two_runs_sharing_a_directory_compute_each_cell_once(tmp_path):
    marks, results = tmp_path / "marks", tmp_path / "results"
    marks.mkdir()
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, MARKS_ENV: str(marks), "PYTHONPATH": tests_dir}
    argv = [
        sys.executable,
        "-m",
        "circuitboard.cli",
        "run",
        "--methods",
        f"{HELPERS}:Slow",
        "--tasks",
        TASK,
        "--seeds",
        "4",
        "--results",
        str(results),
        "--no-robustness",
        "--n-boot",
        "20",
        "--threads",
        "1",
        "--no-render",
        "--executor",
        "local",
    ]  # fmt: skip  (in-process: each run claims cell by cell)
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]  # fmt: skip
    outputs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    computed = sorted(name.split("-")[0] for name in os.listdir(marks))
    assert computed == ["seed0", "seed1", "seed2", "seed3"]  # each cell exactly once
    files = store.result_files(results)
    assert len(files) == 4 and all(store.read_result(f) for f in files)
    assert not [n for n in os.listdir(results) if n.startswith(".")]  # no claim left behind


def test_a_claim_is_exclusive_and_dies_with_its_process(tmp_path):
    key = store.Key("m", "t", "x", "zero", 0)
    first = claims.acquire(key, str(tmp_path))
    assert first is not None
    code = (
        "import sys; from circuitboard.leaderboard import claims, store;"
        "k = store.Key('m', 't', 'x', 'zero', 0);"
        "sys.exit(0 if claims.acquire(k, sys.argv[1]) is None else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0
    first.release()
    # A process that dies holding a claim leaves none behind: the kernel drops its lock.
    holder = "import os, sys; from circuitboard.leaderboard import claims, store;" + (
        "claims.acquire(store.Key('m', 't', 'x', 'zero', 0), sys.argv[1]); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", holder, str(tmp_path)]).returncode == 9
    again = claims.acquire(key, str(tmp_path))
    assert again is not None
    again.release()


def test_a_lost_process_worker_is_replaced_and_nothing_is_lost(tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv(MARKS_ENV, str(marks))
    cells = sweep(["DiesOnce"], 2)
    summary = runner.run(cells, tmp_path / "pool", executor="process", workers=2, progress=False)
    assert summary.ok and len(summary.written) == 2, summary.describe()
    assert sorted(os.listdir(marks)) == ["died-seed0", "died-seed1"]
    runner.run(cells, tmp_path / "local", progress=False)  # marks exist: nobody dies here
    assert comparable_dir(tmp_path / "pool") == comparable_dir(tmp_path / "local")


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
    assert (results / "LEADERBOARD.md").exists()
    assert "mean_cpr_rank" in out  # the summary table is printed
    assert "reference board: 0/0 cells reproduced" in out and "1 cells not in the reference" in out
    assert cli.main(argv) == 0
    assert "1 already stored" in capsys.readouterr().out


def test_the_default_board_holds_every_method_on_every_family():
    """``circuitboard run`` with no arguments: the six methods on every Tracr and planted program
    and on the five standard tasks, each of those on the dense zoo model only."""
    from circuitboard.leaderboard import catalog, suite

    cells = runner.plan()
    methods = {c.method.name for c in cells}
    assert (
        methods
        == set(suite.ALL_METHODS)
        == {
            "random",
            "eap",
            "eap-ig",
            "acdc",
            "edge-pruning",
            "node-pruning",
        }
    )
    tasks = {(c.task, c.model) for c in cells}
    tracr, planted = catalog.tracr_names(), catalog.planted_names()
    assert len(tracr) == 12 and len(planted) >= 6
    standard = {(t, "zoo/toy-lm") for t in catalog.standard_names()}
    assert len(standard) == 5
    assert tasks == {(t, t) for t in tracr + planted} | standard
    assert len(cells) == 6 * (len(tracr) + len(planted) + 5)
    # ``--tasks standard`` still means every model of every standard task
    more = runner.plan(["eap"], ["standard"], robustness=False)
    assert {c.model for c in more} >= {"zoo/toy-lm", "zoo/toy-lm-sparse", "zoo/attn-only-2l"}


def test_run_spreads_cells_over_a_process_pool_by_default():
    """The board's cells (``run``, and ``submit``, which runs the same board) go to a process
    pool; ``--executor local`` still runs them in this process."""
    assert cli.build_parser("run").parse_args(["run"]).executor == "process"
    submit = cli.build_parser("submit").parse_args(["submit", "x:Y", "--name", "y"])
    assert submit.executor == "process"
    assert cli.build_parser("run").parse_args(["run", "--executor", "local"]).executor == "local"


def test_summary_by_family_keeps_compiled_trained_and_standard_tasks_apart():
    """A method first on every Tracr program and last on every planted one: the mean over all
    tasks says 1.4, the family rows say 1 and 2, and degenerate tasks stay out of both."""
    import pandas as pd

    rows = []
    for task, ranks in [
        ("tracr/a", {"m": 1, "n": 2}),
        ("tracr/b", {"m": 1, "n": 2}),
        ("planted/a", {"m": 2, "n": 1}),
        ("planted/b", {"m": 2, "n": 1}),
        ("ioi", {"m": 1, "n": 1}),
        ("tracr/length", {"m": None, "n": None}),  # degenerate: no rank
    ]:
        for method, rank in ranks.items():
            rows.append(
                dict(task=task, method=method, cpr_rank=rank, cmd_rank=rank, wins=rank == 1,
                     cpr=0.5, cmd=0.5, seconds=1.0)
            )  # fmt: skip
    tasks = pd.DataFrame(rows)
    overall = tables.summary(pd.DataFrame(), tasks).set_index("method")
    assert overall.loc["m", "mean_cpr_rank"] == pytest.approx(7 / 5)
    assert overall.loc["m", "tasks"] == 5
    fam = tables.summary(pd.DataFrame(), tasks, by_family=True).set_index(["family", "method"])
    assert fam.loc[("tracr", "m"), "mean_cpr_rank"] == 1 and fam.loc[("tracr", "m"), "tasks"] == 2
    assert fam.loc[("planted", "m"), "mean_cpr_rank"] == 2
    assert fam.loc[("other", "n"), "mean_cpr_rank"] == 1
    assert list(fam.index.get_level_values(0).unique()) == ["other", "planted", "tracr"]
