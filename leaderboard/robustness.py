"""The robustness part of a result: does a method's answer survive a change of conditions?

Computed per cell, from the cell's own circuits at the MIB budgets:

- ``ablations``: the same circuits scored under every ablation (a circuit found under one ablation
  is often unfaithful under another; Miller et al. 2024);
- ``off_distribution``: faithfulness on the task's off-distribution split, where it has one;
- ``controls``: random circuits, a random model, shuffled labels (see ``controls``); each one's
  circuits are scored on the real model and task, and ``beats`` says whether the method's CPR
  (log axis) is higher than the control's.

Edge Jaccard between seeds needs several cells and is computed by the tables from the stored
circuits.
"""

from __future__ import annotations

from circuitboard.evaluate import Evaluation, evaluate
from circuitboard.graph import Circuit
from circuitboard.leaderboard import controls

ABLATIONS = ("zero", "mean", "resample", "counterfactual")
STAGES = (
    "ablations",
    "off-distribution",
    "control: random circuits",
    "control: random model",
    "control: shuffled labels",
)


def summary(evaluation: Evaluation) -> dict:
    """Area scores and the faithfulness curve of an evaluation."""
    areas = evaluation.areas
    return {
        "cpr": areas["log"]["cpr"],
        "cmd": areas["log"]["cmd"],
        "cpr_linear": areas["linear_mib"]["cpr"],
        "cmd_linear": areas["linear_mib"]["cmd"],
        "n_edges": [p.n_edges for p in evaluation.points],
        "faithfulness": [p.faithfulness for p in evaluation.points],
    }


def report(method, bundle, cell, circuits, evaluation: Evaluation, step) -> dict:
    """The robustness section of one cell's result (``circuits``: those at the MIB budgets)."""
    model, task = bundle.model, bundle.task
    sizes = [c.info["n_requested"] for c in circuits]
    budgets = [c.info["budget"] for c in circuits]
    own = summary(evaluation)
    own = {**own, "n_edges": own["n_edges"][: len(circuits)]}
    own["faithfulness"] = own["faithfulness"][: len(circuits)]

    def score(found, **kwargs) -> dict:
        for c, k, b in zip(found, sizes, budgets):
            c.info = {**c.info, "budget": b, "n_requested": k}
        ev = evaluate(
            model, task, found, cell.ablation, seed=cell.seed, n_boot=cell.n_boot, **kwargs
        )
        return summary(ev)

    out: dict = {"ablations": {}, "off_distribution": None, "controls": {}}
    for ablation in ABLATIONS:
        if ablation == cell.ablation:
            out["ablations"][ablation] = own
            continue
        try:
            ev = evaluate(model, task, circuits, ablation, seed=cell.seed, n_boot=cell.n_boot)
            out["ablations"][ablation] = summary(ev)
        except ValueError as err:  # e.g. no counterfactual inputs, no mean reference
            out["ablations"][ablation] = {"problem": str(err)}
    step("ablations")

    if task.off_distribution:
        out["off_distribution"] = score(circuits, split="off_distribution")
    step("off-distribution")

    graph = model.graph
    out["controls"]["random_circuits"] = score(controls.random_circuits(graph, sizes, cell.seed))
    step("control: random circuits")
    reruns = getattr(method, "reruns", True)
    if reruns:
        fake = controls.random_model(model, cell.seed)
        found = method.find_circuits(fake, task, list(sizes), cell.ablation, cell.seed)
        out["controls"]["random_model"] = score(_same_graph(found, graph, len(sizes)))
    else:
        out["controls"]["random_model"] = {"problem": NO_RERUN}
    step("control: random model")
    if reruns:
        shuffled = controls.shuffled_labels(task, cell.seed)
        found = method.find_circuits(model, shuffled, list(sizes), cell.ablation, cell.seed)
        out["controls"]["shuffled_labels"] = score(_same_graph(found, graph, len(sizes)))
    else:
        out["controls"]["shuffled_labels"] = {"problem": NO_RERUN}
    step("control: shuffled labels")

    for control in out["controls"].values():
        if "cpr" in control:
            control["beats"] = bool(own["cpr"] > control["cpr"])
    return out


NO_RERUN = "not applicable: submitted data cannot be rerun on another model or task"


def _same_graph(circuits, graph, n: int):
    """A control's circuits (found on a twin of the model) re-homed on the model's graph."""
    circuits = list(circuits)
    if len(circuits) != n:
        raise ValueError(f"a control run returned {len(circuits)} circuits for {n} sizes")
    return [Circuit(graph, c.keep, info=c.info) for c in circuits]
