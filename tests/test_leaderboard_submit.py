"""`circuitboard submit` (code and data) and `circuitboard validate`, end to end."""

from __future__ import annotations

import json
import os

import torch
from test_leaderboard_helpers import GT_EDGES, EdgeEffects, tiny_bundle

from circuitboard import cli
from circuitboard.graph import Circuit
from circuitboard.leaderboard import store, tables

HELPERS = "test_leaderboard_helpers"
TASK = f"{HELPERS}:tiny_bundle"
QUICK = ["--n-boot", "20", "--threads", "1", "--quiet"]


def submit(tmp_path, spec, name, *extra):
    argv = ["submit", spec, "--name", name, "--results", str(tmp_path / "results"), *QUICK]
    return cli.main(argv + list(extra))


def snapshot(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def scores_graph(tmp_path, name="scores.json") -> tuple[str, dict]:
    bundle = tiny_bundle()
    scores = EdgeEffects().score_edges(bundle.model, bundle.task, "resample", 0)
    data = Circuit(bundle.model.graph, torch.zeros(46, dtype=torch.bool), scores).to_json_dict()
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path), data


def test_submit_code_and_scores_json_end_to_end(tmp_path, capsys):
    code = submit(
        tmp_path,
        f"{HELPERS}:EdgeEffects",
        "mine",
        "--tasks",
        TASK,
        "--seeds",
        "1",
        "--no-robustness",
    )
    assert code == 0, capsys.readouterr().err
    path, _ = scores_graph(tmp_path)
    assert submit(tmp_path, path, "mine-json", "--task", TASK) == 0, capsys.readouterr().err
    text = (tmp_path / "results" / "LEADERBOARD.md").read_text()
    assert "| mine " in text and "| mine-json " in text
    csv = (tmp_path / "results" / "leaderboard.csv").read_text()
    assert "\nmine," in csv and "\nmine-json," in csv
    df = tables.load_results(tmp_path / "results")
    code_rec = df.set_index("method").loc["mine", "record"]
    data_rec = df.set_index("method").loc["mine-json", "record"]
    # The same scores, as code or as data, give the same circuits and the same curve.
    assert [c["edges"] for c in data_rec["circuits"]] == [c["edges"] for c in code_rec["circuits"]]
    strip = lambda r: store.comparable(r)["evaluation"]  # noqa: E731
    assert strip(data_rec) == strip(code_rec)
    assert data_rec["groundtruth"]["auc"] == code_rec["groundtruth"]["auc"]
    assert data_rec["method"]["submission"]["kind"] == "scores"
    # Data cannot be rerun on a random model or shuffled labels: those controls say so.
    controls = data_rec["robustness"]["controls"]
    assert "not applicable" in controls["random_model"]["problem"]
    assert "beats" in controls["random_circuits"]


def test_submit_circuits_json(tmp_path):
    bundle = tiny_bundle()
    truth = Circuit.from_edges(bundle.model.graph, GT_EDGES)
    path = tmp_path / "circuits.json"
    path.write_text(json.dumps({"circuits": [truth.to_json_dict()]}))
    assert submit(tmp_path, str(path), "gt-data", "--task", TASK, "--no-robustness") == 0
    rec = tables.load_results(tmp_path / "results")["record"][0]
    gt = rec["groundtruth"]
    assert gt["auc_ranking"] is None and gt["exact_recovery"] is True and gt["f1"] == 1.0
    sizes = [c["size"] for c in rec["circuits"]]
    grid = [c["budget"] for c in rec["circuits"]]
    assert grid[:4] == [1, 2, 3, 4]
    assert sizes == [0 if b < 4 else 4 for b in grid]  # below 4 edges: the empty circuit


def malformed(tmp_path) -> dict[str, tuple[str, str]]:
    """Variant name -> (file text, the reason the refusal must give)."""
    _, good = scores_graph(tmp_path)
    edges = good["edges"]
    first = next(iter(edges))
    out = {}
    bad = json.loads(json.dumps(good))
    bad["edges"]["input->a9.h0<q>"] = {"score": 1.0, "in_graph": False}
    out["unknown"] = (json.dumps(bad), "unknown edge 'input->a9.h0<q>': no reader 'a9.h0<q>'")
    text = json.dumps(good).replace(json.dumps(edges[first]["score"]), "NaN", 1)
    out["nan"] = (text, f"edge {first!r} has a non-finite score nan")
    bad = json.loads(json.dumps(good))
    del bad["edges"]["m1->logits"]
    out["missing"] = (json.dumps(bad), "1 of the model's 46 edges have no score")
    body = json.dumps(good["edges"])[1:-1]
    dup = '{"' + first + '": {"score": 0.5, "in_graph": false}, ' + body + "}"
    out["duplicate"] = ('{"edges": ' + dup + "}", f"duplicate key {first!r}")
    bad = json.loads(json.dumps(good))
    bad["cfg"]["n_layers"] = 12
    out["other model"] = (json.dumps(bad), "cfg.n_layers is 12 but the task's model has 2")
    bad = json.loads(json.dumps(good))
    bad["edges"][first]["score"] = float("inf")
    out["inf"] = (json.dumps(bad), "non-finite score inf")
    out["not json"] = ("{edges: }", "not valid JSON")
    out["deep"] = ("[" * 100_000 + "]" * 100_000, "nested too deeply")
    bad = json.loads(json.dumps(good))
    text = json.dumps(bad).replace(json.dumps(edges[first]["score"]), "1" + "0" * 400, 1)
    out["huge int"] = (text, "a score of 401 digits, too large for a float")
    out["huge digits"] = ('{"edges": {"x": {"score": 1' + "0" * 5000 + "}}}", "not usable JSON")
    out["no edges"] = ('{"edges": {}}', "46 of the model's 46 edges are missing")
    out["oversized"] = (" " * (3 << 20) + json.dumps(good), "more than a submission for this model")
    return out


def test_files_that_are_not_regular_or_lie_outside_a_manifest_are_refused(tmp_path, capsys):
    inside = tmp_path / "sub"
    inside.mkdir()
    path, _ = scores_graph(inside)
    outside, _ = scores_graph(tmp_path, "outside.json")
    cases = {
        "dir": ({"tasks": {TASK: "."}}, "not a regular file"),
        "dev": ({"tasks": {TASK: "/dev/zero"}}, "outside the manifest's folder"),
        "up": ({"tasks": {TASK: "../outside.json"}}, "outside the manifest's folder"),
        "abs": ({"tasks": {TASK: outside}}, "outside the manifest's folder"),
        "typo": ({"tasks": {"tracr/revese": "scores.json"}}, "did you mean 'tracr/reverse'"),
    }
    for name, (manifest, reason) in cases.items():
        m = inside / f"{name}.json"
        m.write_text(json.dumps(manifest))
        assert submit(tmp_path, str(m), "bad") == 2, name
        assert reason in capsys.readouterr().err, name
    assert submit(tmp_path, "/dev/zero", "bad", "--task", TASK) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert submit(tmp_path, str(inside), "bad", "--task", TASK) == 2
    assert "not a regular file" in capsys.readouterr().err
    # A single graph file given as a manifest, and a good manifest inside its folder.
    assert submit(tmp_path, path, "bad") == 2
    assert "a single graph file needs --task" in capsys.readouterr().err
    good = inside / "good.json"
    good.write_text(json.dumps({"tasks": {TASK: os.path.basename(path)}}))
    assert submit(tmp_path, str(good), "fine", "--no-robustness") == 0


def test_a_malformed_file_is_refused_before_any_task_is_built(tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the task must not be built to refuse a malformed file")

    monkeypatch.setattr("circuitboard.tasks.load", forbidden)
    bad = tmp_path / "bad.json"
    bad.write_text('{"edges": {"input->a9.h0<q>": {"score": 1.0}}}')
    assert submit(tmp_path, str(bad), "bad", "--task", "ioi") == 2
    assert "no reader 'a9.h0<q>'" in capsys.readouterr().err


def test_malformed_submissions_are_refused_and_write_nothing(tmp_path, capsys):
    assert submit(tmp_path, f"{HELPERS}:Oracle", "first", "--tasks", TASK, "--no-robustness") == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    bad_dir = tmp_path.parent / (tmp_path.name + "-bad")
    bad_dir.mkdir()
    for variant, (text, reason) in malformed(bad_dir).items():
        path = bad_dir / f"{variant.replace(' ', '-')}.json"
        path.write_text(text)
        assert submit(tmp_path, str(path), "bad", "--task", TASK) == 2, variant
        err = capsys.readouterr().err
        assert "submission refused, nothing was written" in err and reason in err, (variant, err)
        assert snapshot(tmp_path) == before, variant
    refusals = {
        f"{HELPERS}:NotAMethod": "has no find_circuits",
        f"{HELPERS}:Missing": "cannot build",
        "no-such-entry-point": "neither a file, nor an import path",
    }
    for spec, reason in refusals.items():
        assert submit(tmp_path, spec, "bad", "--tasks", TASK) == 2
        assert reason in capsys.readouterr().err
    assert submit(tmp_path, f"{HELPERS}:Oracle", "eap", "--tasks", TASK) == 2
    assert "already a registered method" in capsys.readouterr().err
    assert submit(tmp_path, f"{HELPERS}:Oracle", "bad name!", "--tasks", TASK) == 2
    assert "is not valid" in capsys.readouterr().err
    # Another submission under a stored name needs --replace.
    assert submit(tmp_path, f"{HELPERS}:AntiOracle", "first", "--tasks", TASK) == 2
    assert "from a different submission" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_validate_command(capsys):
    assert cli.main(["validate", f"{HELPERS}:Oracle", "--tasks", TASK, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "AUC (of its circuits) >= 0.9 and F1 at the smallest budget" in out
    assert "PASS" in out and "1/1 programs passed" in out
    assert cli.main(["validate", f"{HELPERS}:AntiOracle", "--tasks", TASK]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "AUC < 0.9; F1 at 4 edges < 0.9" in out
    # An unknown method is a usage error (2), not a failed validation (1).
    assert cli.main(["validate", "no-such-method", "--tasks", TASK]) == 2
    assert "unknown method 'no-such-method'" in capsys.readouterr().err
    assert cli.main(["validate", f"{HELPERS}:Oracle", "--tasks", f"{HELPERS}:plain_bundle"]) == 1
    assert "no ground truth" in capsys.readouterr().out


def test_validate_exact(capsys):
    argv = ["validate", f"{HELPERS}:EdgeEffects", "--tasks", TASK, "--threads", "1"]
    assert cli.main(argv + ["--min-auc", "0.5", "--min-f1", "0"]) == 0
    assert cli.main(argv + ["--min-auc", "0.5", "--min-f1", "0", "--require-exact"]) == 1
    out = capsys.readouterr().out
    assert "and exact recovery" in out and "not recovered exactly" in out


def test_submit_by_entry_point_name(tmp_path, monkeypatch):
    from importlib import metadata
    from types import SimpleNamespace

    point = SimpleNamespace(name="oracle-ep", value=f"{HELPERS}:Oracle")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [point])
    assert submit(tmp_path, "oracle-ep", "via-ep", "--tasks", TASK, "--no-robustness") == 0
    rec = tables.load_results(tmp_path / "results")["record"][0]
    assert rec["method"]["target"] == f"{HELPERS}:Oracle" and rec["key"]["method"] == "via-ep"
    assert rec["groundtruth"]["auc"] == 1.0


def test_validate_judges_tracr_and_planted_programs_in_their_own_tables(capsys, monkeypatch):
    """By default validate runs every Tracr and every planted program; each family gets its own
    table and pass count (here one program of each, judged by the oracle)."""
    from circuitboard.leaderboard import catalog

    monkeypatch.setattr(catalog, "tracr_names", lambda: ["tracr/hist"])
    monkeypatch.setattr(catalog, "planted_names", lambda: ["planted/hist"])
    assert cli.main(["validate", "groundtruth", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    tracr_at = out.index("Tracr programs (compiled weights):")
    planted_at = out.index("planted programs (trained weights):")
    assert tracr_at < out.index("| tracr/hist") < planted_at < out.index("| planted/hist")
    assert "Tracr programs (compiled weights): 1/1 programs passed" in out
    assert "planted programs (trained weights): 1/1 programs passed" in out
    assert "2/2 programs passed" in out
