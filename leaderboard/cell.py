"""One cell of the benchmark: a method on a (task, model) under one ablation with one seed.

``run_cell`` is a pure function of its ``Cell`` (plain data), so it runs the same in this
process, a process pool or a Ray worker, and returns the result record (plain JSON data) for
the driver to write. Same cell, same record, except the fields ``store.VOLATILE_FIELDS`` names
(timing, cost, machine).

A cell:
1. asks the method for one circuit per size: the MIB budgets (``evaluate.budget_sizes``), plus
   the ground truth's size when the task has a ground truth;
2. scores every circuit with ``circuitboard.evaluate.evaluate`` on the test split; the area
   scores are recomputed over the MIB budget points only, so the extra ground-truth-size point
   never changes CPR or CMD;
3. scores the circuits against the ground truth (``scores.groundtruth_scores``);
4. optionally computes the robustness report (``robustness.report``).
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

from circuitboard.evaluate import BUDGETS, budget_sizes, curve_areas, evaluate
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
    sizes = budget_sizes(graph.n_edges)
    budgets: list[float | None] = list(BUDGETS)
    if truth is not None and int(truth.sum()) not in sizes:
        sizes.append(int(truth.sum()))
        budgets.append(None)

    with _seeded(cell.seed), _Meter(model.device) as meter:
        circuits = method.find_circuits(model, task, list(sizes), cell.ablation, cell.seed)
    circuits = check_circuits(circuits, sizes, graph, cell.method.name)
    for c, k, b in zip(circuits, sizes, budgets):
        c.info = {**c.info, "budget": b, "n_requested": k}
    step("method")

    evaluation = evaluate(model, task, circuits, cell.ablation, seed=cell.seed, n_boot=cell.n_boot)
    on_budget = [p for p, b in zip(evaluation.points, budgets) if b is not None]
    evaluation.areas = curve_areas(on_budget)
    step("evaluate")

    pruned = [c.pruned().keep for c in circuits]
    gt = None
    if truth is not None:
        edge_scores = _edge_scores(method, circuits, model, task, cell)
        gt = scores.groundtruth_scores(pruned, truth, sizes.index(int(truth.sum())), edge_scores)
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
        "evaluation": evaluation.to_dict(),
        "circuits": [_circuit_entry(c, keep, b) for c, keep, b in zip(circuits, pruned, budgets)],
        "groundtruth": gt,
        "cost": meter.cost(circuits),
        "environment": environment(model.device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cell.robustness:
        on_budget_circuits = [c for c, b in zip(circuits, budgets) if b is not None]
        with _seeded(cell.seed):
            record["robustness"] = robustness.report(
                method, bundle, cell, on_budget_circuits, evaluation, step
            )
    return json_safe(record)


def check_circuits(circuits, sizes: list[int], graph, name: str) -> list[Circuit]:
    """One Circuit of the model's graph per requested size, or an error that says what is off."""
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
    return circuits


def _edge_scores(method, circuits, model, task, cell):
    """The method's edge scores, for methods that rank edges (``score_edges``); else None."""
    if not callable(getattr(method, "score_edges", None)):
        return None
    for c in circuits:
        if c.scores is not None and bool(torch.isfinite(c.scores).all()):
            return c.scores
    with _seeded(cell.seed):
        return method.score_edges(model, task, cell.ablation, cell.seed).detach().cpu()


def _circuit_entry(circuit: Circuit, pruned: torch.Tensor, budget) -> dict:
    info = {
        k: v
        for k, v in circuit.info.items()
        if k != "seconds" and (v is None or isinstance(v, bool | int | float | str))
    }
    return {
        "role": "budget" if budget is not None else "groundtruth_size",
        "budget": budget,
        "n_requested": circuit.info.get("n_requested"),
        "n_kept": circuit.n_kept,
        "size": int(pruned.sum()),
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
