"""One cell of the benchmark: a method on a (task, model) under one ablation with one seed.

``run_cell`` is a pure function of its ``Cell`` (plain data), so it runs the same in this
process, a process pool or a Ray worker, and returns the result record (plain JSON data) for
the driver to write. Same cell, same record, except the fields ``store.VOLATILE_FIELDS`` names
(timing, cost, machine).

A cell:
1. asks the method for one circuit per budget of ``scoring.budget_grid`` (nothing else: never
   the ground truth's size);
2. scores every circuit with ``circuitboard.evaluate.evaluate`` on the test split, which builds
   the at-most-budget curve and its areas by the rules of ``circuitboard.scoring``, and stores
   the per-example metrics that ranks are computed from;
3. scores the circuits against the ground truth (``scoring.groundtruth_scores``);
4. optionally computes the robustness report (``robustness.report``).

A task that is degenerate under the cell's ablation (the full model and the empty circuit score
the same, as Tracr's ``length`` does under resample) gets no curve: the record says so, and the
ground-truth scores are still computed.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from circuitboard import scoring
from circuitboard.evaluate import evaluate
from circuitboard.graph import Circuit
from circuitboard.leaderboard import robustness, scores
from circuitboard.leaderboard.catalog import GROUNDTRUTH_FOR, MethodSpec, load_bundle
from circuitboard.leaderboard.environment import environment
from circuitboard.leaderboard.store import SCHEMA, SCHEMA_VERSION, Key, json_safe

STAGES = ("method", "evaluate", "ground truth")


@dataclass(frozen=True)
class Cell:
    method: MethodSpec
    task: str
    model: str
    ablation: str
    seed: int = 0
    robustness: bool = True
    n_boot: int = 1000
    device: str | None = None
    threads: int | None = None
    diagnostics: bool = True

    @property
    def key(self) -> Key:
        return Key(self.method.name, self.task, self.model, self.ablation, self.seed)

    @property
    def n_stages(self) -> int:
        return len(STAGES) + (len(robustness.STAGES) if self.robustness else 0)


def run_cell(cell: Cell, progress: Callable[[str], None] | None = None) -> dict:
    """The result record of ``cell``. ``progress(stage)`` is called as each stage ends.

    ``cell.threads`` sets torch's CPU threads for the cell (restored after): small models run
    fastest on one thread, and a fixed count makes every executor compute the same way.
    """
    before = torch.get_num_threads()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    try:
        return _run_cell(cell, progress or (lambda stage: None))
    finally:
        torch.set_num_threads(before)


def _run_cell(cell: Cell, step: Callable[[str], None]) -> dict:
    bundle = load_bundle(cell.task, cell.model)
    model, task = bundle.model, bundle.task
    if cell.device is not None and str(model.device) != cell.device:
        model = bundle.model = model.to(cell.device)
    graph = model.graph
    method = cell.method.build()

    truth, truth_problem = None, None
    try:
        circuit = bundle.truth(cell.ablation)
        truth = None if circuit is None else circuit.pruned().keep
    except (KeyError, ValueError, FileNotFoundError) as err:
        truth_problem = str(err)
    budgets = scoring.budget_grid(graph.n_edges)
    with _seeded(cell.seed), _Meter(model.device) as meter:
        circuits = method.find_circuits(model, task, list(budgets), cell.ablation, cell.seed)
    circuits = check_circuits(circuits, budgets, graph, cell.method.name)
    for c, b in zip(circuits, budgets):
        c.info = {**c.info, "budget": b}
    step("method")

    try:
        evaluation = evaluate(
            model,
            task,
            circuits,
            cell.ablation,
            budgets=budgets,
            seed=cell.seed,
            n_boot=cell.n_boot,
        )
        evaluation_record = {
            **evaluation.to_dict(),
            "per_example": scores.pack_per_example(evaluation.per_example),
        }
    except scoring.DegenerateTask as err:
        evaluation = None
        evaluation_record = {"degenerate": str(err), "budgets": budgets, "points": []}
    step("evaluate")

    pruned = [c.pruned().keep for c in circuits]
    gt = None
    if truth is not None:
        ranking = _edge_scores(method, circuits, model, task, cell)
        own = list(range(len(circuits)))
        gt = scoring.groundtruth_scores(pruned, budgets, own, truth, ranking)
        gt["ablation"] = GROUNDTRUTH_FOR[cell.ablation]
    elif truth_problem:
        gt = {"problem": truth_problem}
    step("ground truth")

    record = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "key": cell.key.as_dict(),
        "method": cell.method.describe(method),
        "task": {
            "name": task.name,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "n_train": task.n_examples("train"),
            "n_test": task.n_examples("test"),
        },
        "model": {
            "name": cell.model,
            "n_edges": graph.n_edges,
            "n_nodes": graph.n_nodes,
            "graph": graph.cfg(),
        },
        "budgets": budgets,
        "evaluation": evaluation_record,
        "circuits": [_circuit_entry(c, keep, b) for c, keep, b in zip(circuits, pruned, budgets)],
        "groundtruth": gt,
        "cost": meter.cost(circuits),
        "environment": environment(model.device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cell.robustness:
        with _seeded(cell.seed):
            record["robustness"] = robustness.report(
                method, bundle, cell, circuits, evaluation, step
            )
    return json_safe(record)


def check_circuits(circuits, sizes: list[int], graph, name: str) -> list[Circuit]:
    """One Circuit of the model's graph per requested size, or an error that says what is off.

    A circuit over its budget is allowed here (it is scored as a point and never credited on
    the curve); a circuit with edge scores that are not finite is refused, since NaN scores
    would give a meaningless ranking.
    """
    circuits = list(circuits)
    if len(circuits) != len(sizes):
        raise ValueError(
            f"method {name!r} returned {len(circuits)} circuits for {len(sizes)} requested sizes; "
            f"find_circuits must return one circuit per requested size, in order"
        )
    for i, c in enumerate(circuits):
        if not isinstance(c, Circuit):
            raise TypeError(f"method {name!r} returned a {type(c).__name__}, not a Circuit")
        if c.graph != graph:
            raise ValueError(f"method {name!r}: circuit {i} belongs to another graph")
        if c.scores is not None and bool(torch.isnan(c.scores).any()):
            raise ValueError(
                f"method {name!r}: circuit {i} carries NaN edge scores; a ranking needs a number "
                f"for every edge (-inf ranks an edge last)"
            )
    return circuits


def _edge_scores(method, circuits, model, task, cell):
    """The method's edge scores, for methods that rank edges (``score_edges``); else None."""
    if not callable(getattr(method, "score_edges", None)):
        return None
    for c in circuits:
        if c.scores is not None:
            return c.scores
    with _seeded(cell.seed):
        ranking = method.score_edges(model, task, cell.ablation, cell.seed)
    ranking = torch.as_tensor(ranking).detach().to("cpu", torch.float64)
    if ranking.shape != (model.graph.n_edges,) or bool(torch.isnan(ranking).any()):
        raise ValueError(
            f"method {cell.method.name!r}: score_edges must return {model.graph.n_edges} floats "
            f"with no NaN, got shape {tuple(ranking.shape)} with "
            f"{int(torch.isnan(ranking).sum()) if ranking.numel() else 0} NaN"
        )
    return ranking


def _circuit_entry(circuit: Circuit, pruned: torch.Tensor, budget: int) -> dict:
    info = {
        k: v
        for k, v in circuit.info.items()
        if k != "seconds" and (v is None or isinstance(v, bool | int | float | str))
    }
    size = int(pruned.sum())
    return {
        "budget": budget,
        "n_kept": circuit.n_kept,
        "size": size,
        "fits": size <= budget,
        "edges": scores.pack(pruned),
        "info": info,
    }


@contextlib.contextmanager
def _seeded(seed: int):
    """Global RNGs seeded for the cell and restored after, so a cell never depends on order."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _Meter:
    """Wall time and peak memory of the method's run.

    On CUDA: the peak of ``torch.cuda.max_memory_allocated``. On CPU: the largest rise of the
    process's resident memory above its level at the start, sampled every 10 ms.
    """

    def __init__(self, device) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.device = device

    def __enter__(self) -> _Meter:
        self.peak = 0
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.start = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss() - self.base)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss() - self.base)
        self.seconds = time.perf_counter() - self.start

    def cost(self, circuits: list[Circuit]) -> dict:
        """Wall time, peak memory, and the passes the method counted in ``info["cost"]``.

        Methods record one running total shared by all their circuits, so the largest count
        over the circuits is the run's count.
        """
        counts: dict[str, int] = {}
        for c in circuits:
            for name, value in (c.info.get("cost") or {}).items():
                if isinstance(value, int | float):
                    counts[name] = max(counts.get(name, 0), value)
        return {
            "seconds": self.seconds,
            "peak_memory_bytes": int(self.peak),
            "peak_memory_kind": "cuda_allocated" if self.cuda else "rss_rise_sampled",
            "forward": counts.get("forward"),
            "backward": counts.get("backward"),
            "examples": counts.get("examples"),
        }


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
