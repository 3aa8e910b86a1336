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

- ``diagnostics`` (``circuitboard.diagnostics``), on one circuit per cell: the credited circuit
  at the smallest budget whose faithfulness reaches ``DIAGNOSED_FAITHFULNESS`` (the method's
  smallest "faithful" circuit), else at the largest budget below all edges: its variance by the
  task's groupings (eta^2, a flag when groups differ beyond their intervals), self-repair after
  knocking out its top heads (backup and negative heads), and its edges' token density.

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
    "diagnostics",
)
DIAGNOSED_FAITHFULNESS = 0.9


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
    out["diagnostics"] = (
        diagnose(model, task, circuits, evaluation, cell) if cell.diagnostics else None
    )
    step("diagnostics")
    return out


def diagnosed_circuit(evaluation: Evaluation) -> int | None:
    """Index of the circuit the diagnostics look at (see the module docstring), or None."""
    n_edges = evaluation.n_edges_total
    credited = [p for p in evaluation.curve if p["credited"] is not None]
    for p in credited:
        if p["faithfulness"] >= DIAGNOSED_FAITHFULNESS:
            return p["credited"]
    below = [p for p in credited if p["budget"] < n_edges]
    return below[-1]["credited"] if below else None


def diagnose(model, task, circuits, evaluation: Evaluation | None, cell) -> dict:
    """The three diagnostics of ``circuitboard.diagnostics`` on the diagnosed circuit."""
    from circuitboard import diagnostics

    if evaluation is None:
        return {"problem": "degenerate task: no faithful circuit to diagnose"}
    index = diagnosed_circuit(evaluation)
    if index is None:
        return {"problem": "no circuit of the method fits a budget below all edges"}
    circuit = circuits[index]
    out: dict = {"circuit": index, "budget": circuit.info.get("budget"), "size": circuit.size}
    split = ("test", "off_distribution") if task.off_distribution else "test"
    runs = {
        "variance": lambda: diagnostics.group_variance(
            model, task, circuit, cell.ablation, split=split, seed=cell.seed, n_boot=cell.n_boot
        ),
        "self_repair": lambda: diagnostics.self_repair(
            model, task, circuit, cell.ablation, seed=cell.seed, n_boot=cell.n_boot
        ),
        "token_density": lambda: diagnostics.token_density(
            model, task, circuit, cell.ablation, seed=cell.seed, progress=False
        ),
    }
    for name, run in runs.items():
        try:
            report = run()
        except ValueError as err:  # e.g. a task without heads to knock out, or no groupings
            out[name] = {"problem": str(err)}
            continue
        detail = {"per_example": False} if name == "variance" else {}
        detail = {"per_edge": False} if name == "token_density" else detail
        out[name] = {"summary": report.summary(), **report.to_dict(**detail)}
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
