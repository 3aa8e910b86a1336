"""The robustness part of a result: does a method's answer survive a change of conditions?

Computed per cell, from the cell's own circuits at the budget grid:

- ``ablations``: the same circuits scored under every ablation (a circuit found under one ablation
  is often unfaithful under another; Miller et al. 2024);
- ``off_distribution``: faithfulness on the task's off-distribution split, where it has one;
- ``controls``: random circuits, a random model, shuffled labels (see ``controls``); each one's
  circuits are scored on the real model and task, and ``beats`` says whether the method's CPR is
  higher than the control's by the paired bootstrap of ``circuitboard.scoring.compare``. A
  control that cannot apply to a method (shuffled labels for a method that never reads labels,
  a random model for one that never reads the model, any rerun of submitted data) is recorded
  as not applicable, never as a loss.

Edge Jaccard between seeds needs several cells and is computed by the tables from the stored
circuits.
"""

from __future__ import annotations

from circuitboard import scoring
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
    """Area scores and the at-most-budget curve of an evaluation."""
    return {
        **evaluation.areas,
        "budgets": [p["budget"] for p in evaluation.curve],
        "faithfulness": [p["faithfulness"] for p in evaluation.curve],
    }


def report(method, bundle, cell, circuits, evaluation: Evaluation | None, step) -> dict:
    """The robustness section of one cell's result (``circuits``: one per budget of the grid).

    ``evaluation`` is the cell's own evaluation, or None where the task is degenerate under the
    cell's ablation (the controls then have nothing to be compared with).
    """
    model, task = bundle.model, bundle.task
    budgets = [c.info["budget"] for c in circuits]

    def score(found, **kwargs) -> Evaluation:
        return evaluate(
            model,
            task,
            found,
            cell.ablation,
            budgets=budgets,
            seed=cell.seed,
            n_boot=cell.n_boot,
            **kwargs,
        )

    out: dict = {"ablations": {}, "off_distribution": None, "controls": {}}
    for ablation in ABLATIONS:
        if ablation == cell.ablation:
            out["ablations"][ablation] = (
                summary(evaluation) if evaluation is not None else {"problem": "degenerate"}
            )
            continue
        try:
            ev = evaluate(
                model, task, circuits, ablation, budgets=budgets, seed=cell.seed, n_boot=cell.n_boot
            )
            out["ablations"][ablation] = summary(ev)
        except ValueError as err:  # no counterfactual inputs, no mean reference, degenerate
            out["ablations"][ablation] = {"problem": str(err)}
    step("ablations")

    if task.off_distribution:
        try:
            out["off_distribution"] = summary(score(circuits, split="off_distribution"))
        except scoring.DegenerateTask as err:
            out["off_distribution"] = {"problem": str(err)}
    step("off-distribution")

    graph = model.graph
    runs = {
        "random_circuits": lambda: controls.random_circuits(graph, budgets, cell.seed),
        "random_model": lambda: _same_graph(
            method.find_circuits(
                controls.random_model(model, cell.seed),
                task,
                list(budgets),
                cell.ablation,
                cell.seed,
            ),
            graph,
            len(budgets),
        ),
        "shuffled_labels": lambda: _same_graph(
            method.find_circuits(
                model,
                controls.shuffled_labels(task, cell.seed),
                list(budgets),
                cell.ablation,
                cell.seed,
            ),
            graph,
            len(budgets),
        ),
    }
    for name, found in runs.items():
        applies, why = controls.applies(method, name)
        if not applies:
            out["controls"][name] = {"applicable": False, "problem": why}
        elif evaluation is None:
            out["controls"][name] = {"applicable": True, "problem": "degenerate task"}
        else:
            try:
                if name == "random_circuits":  # the same for every method: scored once
                    key = (
                        id(model),
                        task.name,
                        cell.ablation,
                        cell.seed,
                        cell.n_boot,
                        tuple(budgets),
                    )
                    control = _RANDOM_CONTROL.get(key) or score(found())
                    _RANDOM_CONTROL.clear()
                    _RANDOM_CONTROL[key] = control
                else:
                    control = score(found())
            except scoring.DegenerateTask as err:
                out["controls"][name] = {"applicable": True, "problem": str(err)}
            else:
                verdict = scoring.compare(evaluation.per_example, control.per_example)
                out["controls"][name] = {"applicable": True, **summary(control), **verdict}
        step(f"control: {name.replace('_', ' ')}")
    return out


# The last random-circuits control scored in this process: cells are grouped by task, so the
# next method on the same (model, task, ablation, seed) reuses it instead of scoring it again.
_RANDOM_CONTROL: dict = {}


def _same_graph(circuits, graph, n: int):
    """A control's circuits (found on a twin of the model) re-homed on the model's graph."""
    circuits = list(circuits)
    if len(circuits) != n:
        raise ValueError(f"a control run returned {len(circuits)} circuits for {n} sizes")
    return [Circuit(graph, c.keep, info=c.info) for c in circuits]
