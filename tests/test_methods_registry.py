"""The method registry, the shared interface, and properties every method must have."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch
from test_methods_helpers import one_thread, random_model, random_task  # noqa: F401

import circuitboard as cb
from circuitboard import methods
from circuitboard.ablation import derangement
from circuitboard.graph import Circuit
from circuitboard.methods.base import Method, ScoringMethod, check_sizes, prepare

BUILTIN = ["acdc", "eap", "eap-ig", "edge-pruning", "node-pruning", "random", "groundtruth", "full"]
PAPERS = {
    "acdc": "Conmy",
    "eap": "Syed",
    "eap-ig": "Hanna",
    "edge-pruning": "Bhaskar",
    "node-pruning": "Gao",
}
QUICK = {
    "acdc": {"thresholds": (1e-3, 0.05, 1.0)},
    "edge-pruning": {"steps": 20},
    "node-pruning": {"steps": 20},
}


def test_names_and_get():
    assert methods.names()[: len(BUILTIN)] == BUILTIN
    for name in BUILTIN:
        method = methods.get(name, **QUICK.get(name, {}))
        assert method.name == name
        assert isinstance(method, Method)
    assert cb.method_names()[: len(BUILTIN)] == BUILTIN
    assert cb.get_method("eap", absolute=False).absolute is False
    assert type(cb.get_method("circuitboard.methods.eap_ig:EAPIG", steps=3)).__name__ == "EAPIG"


def test_unknown_names_and_parameters_are_explained():
    with pytest.raises(KeyError, match="registered: acdc, eap"):
        methods.get("eap-ig2")
    with pytest.raises(TypeError, match="method 'eap' does not accept"):
        methods.get("eap", steps=3)


def test_entry_points_are_found(monkeypatch):
    class Mine(ScoringMethod):
        name = "mine"

        def _score_edges(self, model, task, ablation, seed, cost):
            return torch.arange(model.graph.n_edges, dtype=torch.float64)

    ep = SimpleNamespace(name="mine", load=lambda: Mine)
    monkeypatch.setattr(
        methods.metadata,
        "entry_points",
        lambda group: [ep] if group == "circuitboard.methods" else [],
    )
    assert methods.names()[-1] == "mine"
    model = random_model(51)
    task = random_task(model, 52)
    (c,) = methods.get("mine").find_circuits(model, task, [3], "zero", 0)
    assert c.keep[-3:].all() and c.n_kept == 3


def test_sizes_are_checked():
    graph = random_model(53).graph
    assert check_sizes(graph, [0, 3.0, graph.n_edges]) == [0, 3, graph.n_edges]
    with pytest.raises(TypeError, match="edge counts"):
        check_sizes(graph, [0.5])
    with pytest.raises(ValueError, match="outside"):
        check_sizes(graph, [-1])


def test_docstrings_name_papers_and_hyperparameters():
    for name, author in PAPERS.items():
        module = importlib.import_module(methods.BUILTIN[name].split(":")[0])
        assert author in module.__doc__ and "Hyperparameters" in module.__doc__, name
        assert any(year in module.__doc__ for year in ("2023", "2024", "2025")), name


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "groundtruth"])
def test_every_method_returns_circuits_with_cost_and_is_deterministic(name):
    model = random_model(55)
    task = random_task(model, 56, lengths=(5, 4))
    sizes = [2, 10, model.graph.n_edges]
    method = methods.get(name, **QUICK.get(name, {}))
    first = method.find_circuits(model, task, sizes, "counterfactual", 3)
    second = method.find_circuits(model, task, sizes, "counterfactual", 3)
    assert len(first) == len(sizes)
    for a, b in zip(first, second, strict=True):
        assert isinstance(a, Circuit) and a.graph == model.graph
        assert {"forward", "backward"} <= set(a.info["cost"])
        assert a.info["method"] == name and "params" in a.info
        assert torch.equal(a.keep, b.keep)


def test_random_baseline_is_seeded():
    model = random_model(57)
    task = random_task(model, 58)
    r = methods.get("random")
    a, b = r.score_edges(model, task, "zero", 0), r.score_edges(model, task, "zero", 1)
    assert torch.equal(a, r.score_edges(model, task, "zero", 0)) and not torch.equal(a, b)
    (full,) = methods.get("full").find_circuits(model, task, [1], "zero", 0)
    assert full.keep.all()


def test_methods_see_only_the_train_split():
    model = random_model(59)
    task = random_task(model, 60, lengths=(5,))
    poisoned = random_task(model, 60, lengths=(5,))
    for batch in poisoned.test:
        batch.clean.fill_(0)
        batch.answer.fill_(0)
        batch.distractor.fill_(1)
    for name in ("eap", "acdc"):
        method = methods.get(name, **QUICK.get(name, {}))
        a = method.find_circuits(model, task, [7], "counterfactual", 0)[0]
        b = method.find_circuits(model, poisoned, [7], "counterfactual", 0)[0]
        assert torch.equal(a.keep, b.keep), name


def test_ablation_helper_uses_counterfactuals_and_train_means():
    from circuitboard.methods.base import Cost

    model = random_model(61)
    task = random_task(model, 62, lengths=(5, 4))
    cost = Cost()
    cf = prepare(model, task, "counterfactual", 0, cost)
    torch.testing.assert_close(cf[0].ablated, model.source_outputs(task.train[0].counterfactual))
    assert cost.forward == 2
    mean = prepare(model, task, "mean", 0, Cost())
    torch.testing.assert_close(
        mean[1].ablated, model.source_outputs(task.train[1].clean).mean(0, keepdim=True)
    )
    # resample: another example of the same batch, the seeded derangement ablation.for_batch uses
    rs = prepare(model, task, "resample", 5, Cost())
    batch = task.train[0]
    other = batch.clean[derangement(len(batch), 5)]
    assert not torch.equal(other, batch.clean)
    torch.testing.assert_close(rs[0].ablated, model.source_outputs(other))
    no_cf = random_task(model, 64, lengths=(5,))
    no_cf.train[0].counterfactual = None
    with pytest.raises(ValueError, match="counterfactual"):
        prepare(model, no_cf, "counterfactual", 0, Cost())
    with pytest.raises(ValueError, match="unknown ablation"):
        prepare(model, task, "gaussian", 0, Cost())
