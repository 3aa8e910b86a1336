"""The shipped planted models: the checks hold on every one, the cards match what the weights do,
the interface matches the Tracr ground truths', and a retrain reproduces the card.

The full retrain of one program is marked slow; the fast variant checks that the card's command
reproduces its first losses.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import circuitboard as cb
from circuitboard.groundtruth import derive, planted
from circuitboard.groundtruth import store as tracr_store
from circuitboard.groundtruth.planted import alignment, build, store, train, truth
from circuitboard.groundtruth.planted.siit import Readout
from circuitboard.metrics import accuracy, l2

torch.set_flush_denormal(True)
NAMES = planted.names()
RETRAIN_TOL = 0.005  # a retrain's accuracy and IIA may differ from the card by half a point


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with derive.single_thread():
        yield


@pytest.fixture(scope="module")
def gts():
    return {name: planted.load(name) for name in NAMES}


def _parts(gt):
    hl = tracr_store.load_model(gt.record["program"])
    align = alignment.from_tracr(hl, gt.record["alignment"]["hl_edges"], gt.model.graph)
    return hl, align, Readout.from_dict(gt.record["readout"]), gt.groups()


def test_at_least_six_programs_are_shipped():
    assert len(NAMES) >= 6, NAMES
    assert NAMES == [n for n in planted.SPECS if n in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_every_check_passes_on_the_shipped_weights(gts, name):
    gt = gts[name]
    hl, align, readout, groups = _parts(gt)
    assert list(align.planted_edges) == gt.record["circuits"]["planted"]["edges"]
    checks = truth.run_checks(gt.model, hl, align, groups, readout)
    assert truth.failures(checks) == []
    assert min(checks["iia"]["per_node"].values()) >= truth.MIN_IIA
    outside = checks["outside"]
    assert outside["accuracy_outside_ablated"] >= outside["accuracy"] - truth.MAX_ACCURACY_DROP
    # every planted edge is necessary or listed as redundant, as recorded
    assert sorted(checks["necessity"]["redundant"]) == sorted(gt.redundant("planted"))
    for edge, cost in checks["necessity"]["per_edge"].items():
        assert (cost > planted.functional.TOL) or edge in gt.redundant("planted")
    # the same numbers as the record, on this machine up to float noise
    for node, value in checks["iia"]["per_node"].items():
        assert value == pytest.approx(gt.record["checks"]["iia"]["per_node"][node], abs=0.005)


@pytest.mark.parametrize("name", NAMES)
def test_the_card_matches_the_weights(gts, name):
    gt = gts[name]
    card = gt.card
    assert card["command"].startswith(f"circuitboard groundtruth train {name}")
    assert isinstance(card["seed"], int) and len(card["data_hash"]) == 64
    assert 0 < card["train_time_s"] and card["train_cpu_s"] > 0 and card["checks_pass"]
    assert card["accuracy"] == pytest.approx(gt.record["checks"]["behaviour"]["accuracy"])
    assert card["sizes"] == {k: len(gt.record["circuits"][k]["edges"]) for k in truth.KINDS}
    assert len(card["first_losses"]) == build.FIRST_LOSSES


@pytest.mark.parametrize("name", NAMES)
def test_interface_matches_the_tracr_ground_truths(gts, name):
    gt = gts[name]
    model, task = gt.model, gt.task
    assert task.name == f"planted/{name}" and task.models == (f"planted/{name}",)
    assert task.metric == "l2" and task.positions == "after_bos"
    assert model.cfg.normalization == "LN" and model.cfg.act_fn == "gelu"
    assert not model.graph.dead
    for batch in task.train + task.test:
        assert torch.equal(batch.target, model(batch.clean))
        assert torch.equal(l2(model(batch.clean), batch), torch.zeros(len(batch)))
        if task.categorical:
            assert torch.equal(accuracy(model(batch.clean), batch), torch.ones(len(batch)))
    for kind in truth.KINDS:
        c = gt.circuit(kind)
        assert c.graph == model.graph and c.scores is not None
        assert c.size == c.n_kept  # every edge lies on an input-to-logits path
    # the functional ground truth's gap: every edge in it has a larger effect than every one out
    for kind in ("resample", "mean"):
        rec = gt.record["circuits"][kind]
        if rec["edges"] and rec["largest_effect_out"] is not None:
            assert rec["smallest_effect_in"] > rec["largest_effect_out"]
    with pytest.raises(ValueError, match="choose one of planted"):
        gt.circuit("structural")


def test_registry_and_groundtruth_load():
    name = NAMES[0]
    assert f"planted/{name}" in cb.MODELS.names() and f"planted/{name}" in cb.TASKS.names()
    model = cb.load_model(f"planted/{name}")
    assert isinstance(model, cb.PatchableTransformer) and model.cfg.name == f"planted/{name}"
    assert cb.load_task(f"planted/{name}").name == f"planted/{name}"
    gt = cb.groundtruth.load(f"planted/{name}")
    assert isinstance(gt, planted.PlantedGroundTruth)
    assert cb.groundtruth.load("tracr/hist").name == "hist"
    with pytest.raises(KeyError, match="unknown planted program"):
        cb.load_model("planted/nope")
    with pytest.raises(FileNotFoundError, match="groundtruth train"):
        planted.load("nope")


def test_loading_refuses_a_changed_encoding(tmp_path, gts):
    name = NAMES[0]
    gt = gts[name]
    card = dict(gt.card, input_tokens=["BOS", "q"])
    store.save(gt.model, card, gt.record, name, str(tmp_path))
    with pytest.raises(ValueError, match="retrain it"):
        store.load_model(name, str(tmp_path))


def test_a_failing_program_is_not_written(tmp_path, gts):
    gt = gts[NAMES[0]]
    record = {**gt.record, "checks": {**gt.record["checks"]}}
    record["checks"]["iia"] = {**record["checks"]["iia"], "pass": False, "per_node": {"m0": 0.5}}
    built = build.Built(result=None, record=record, card=gt.card)
    with pytest.raises(ValueError, match="IIA below"):
        build.save(built, NAMES[0], str(tmp_path))
    assert store.shipped(str(tmp_path)) == []


@pytest.mark.parametrize("name", NAMES)
def test_retrain_reproduces_the_first_losses(gts, name):
    """The card's command, stopped after a few steps: the same losses (same machine: bit for
    bit; elsewhere within float tolerance)."""
    card = gts[name].card
    spec = planted.SPECS[name]
    result = train.train(spec, stop_after=build.FIRST_LOSSES)
    for ours, theirs in zip(result.losses, card["first_losses"]):
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key


@pytest.mark.slow
def test_full_retrain_reproduces_the_card():
    """``circuitboard groundtruth train`` from scratch: the same accuracies within half a point
    and the same planted and functional circuits."""
    name = min(NAMES, key=lambda n: planted.load(n).card["train_cpu_s"])  # the cheapest
    gt = planted.load(name)
    built = build.build(name)
    card, record = built.card, built.record
    assert abs(card["accuracy"] - gt.card["accuracy"]) <= RETRAIN_TOL
    for node, value in gt.card["iia"].items():
        assert abs(card["iia"][node] - value) <= RETRAIN_TOL
    for kind in truth.KINDS:
        assert sorted(record["circuits"][kind]["edges"]) == sorted(
            gt.record["circuits"][kind]["edges"]
        ), kind


def test_cli_lists_and_checks_planted_programs():
    name = NAMES[0]
    out = subprocess.run(
        [sys.executable, "-m", "circuitboard.cli", "groundtruth", "list"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and f"planted/{name}" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "circuitboard.cli", "groundtruth", "check", f"planted/{name}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "PASS" in out.stdout and "FAIL" not in out.stdout
