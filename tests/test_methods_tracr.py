"""Methods against Tracr ground truths: exact recovery (ACDC) and ROC AUC (EAP, Edge Pruning).

Every AUC measured here is printed (``pytest -s`` shows them) whether or not it passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods_helpers import one_thread  # noqa: F401

from circuitboard import methods
from circuitboard.metrics import roc_from_scores

groundtruth = pytest.importorskip("circuitboard.groundtruth")
if not hasattr(groundtruth, "load"):
    pytest.skip("circuitboard.groundtruth.load is not available yet", allow_module_level=True)

PROGRAMS = ("reverse", "frac_prevs")
_LOADED: dict = {}


def truth_set(name: str):
    if name not in _LOADED:
        torch.set_flush_denormal(True)
        _LOADED[name] = groundtruth.load(name)
    return _LOADED[name]


def report(what: str, value: float) -> None:
    print(f"\n[tracr] {what}: {value:.3f}")


@pytest.mark.parametrize("name", PROGRAMS)
def test_acdc_zero_ablation_recovers_the_ground_truth(name):
    gt = truth_set(name)
    truth = gt.circuit("zero")
    thresholds = tuple(float(t) for t in np.logspace(-6, -1, 11))
    swept = methods.get("acdc", thresholds=thresholds).sweep(gt.model, gt.task, "zero", 0)
    exact = [c.info["tau"] for c in swept if torch.equal(c.keep, truth.keep)]
    print(f"\n[tracr] ACDC zero {name}: exact at tau {exact}; sizes {[c.n_kept for c in swept]}")
    assert exact, f"no threshold recovers the {truth.n_kept}-edge zero-ablation ground truth"


@pytest.mark.parametrize("ablation", ["zero", "resample", "mean"])
@pytest.mark.parametrize("name", PROGRAMS)
def test_eap_auc(name, ablation):
    gt = truth_set(name)
    truth = gt.circuit(ablation).keep
    scores = methods.get("eap").score_edges(gt.model, gt.task, ablation, 0)
    auc = roc_from_scores(scores, truth)[2]
    report(f"EAP {name} {ablation} AUC", auc)
    assert auc >= 0.9


@pytest.mark.parametrize("name", PROGRAMS)
def test_eap_ig_auc(name):
    gt = truth_set(name)
    truth = gt.circuit("zero").keep
    auc = roc_from_scores(methods.get("eap-ig").score_edges(gt.model, gt.task, "zero", 0), truth)[2]
    report(f"EAP-IG {name} zero AUC", auc)
    assert auc >= 0.9


@pytest.mark.parametrize("name", PROGRAMS)
def test_edge_pruning_auc(name):
    # One run with the truth's size as its budget; its final log alphas rank every edge.
    gt = truth_set(name)
    truth = gt.circuit("zero")
    (circuit,) = methods.get("edge-pruning").find_circuits(
        gt.model, gt.task, [truth.n_kept], "zero", 0
    )
    auc = roc_from_scores(circuit.scores, truth.keep)[2]
    report(f"Edge Pruning {name} zero AUC (log alpha)", auc)
    print(f"[tracr] Edge Pruning {name} zero: exact recovery {circuit == truth}")
    assert auc >= 0.9


@pytest.mark.parametrize("name", PROGRAMS)
def test_random_stays_near_one_half(name):
    gt = truth_set(name)
    truth = gt.circuit("zero").keep
    rnd = methods.get("random")
    aucs = [
        roc_from_scores(rnd.score_edges(gt.model, gt.task, "zero", seed), truth)[2]
        for seed in range(200)
    ]
    mean = float(np.mean(aucs))
    report(f"random {name} zero mean AUC over 200 seeds", mean)
    assert abs(mean - 0.5) < 0.05


def test_groundtruth_baseline_is_the_oracle():
    gt = truth_set("reverse")
    truth = gt.circuit("zero")
    method = methods.get("groundtruth")
    big, small = method.find_circuits(gt.model, gt.task, [truth.n_kept + 5, 2], "zero", 0)
    assert torch.equal(big.keep, truth.keep)
    assert small.n_kept == 2 and bool((small.keep & ~truth.keep).sum() == 0)
    scores = method.score_edges(gt.model, gt.task, "zero", 0)
    assert roc_from_scores(scores, truth.keep)[2] == 1.0
