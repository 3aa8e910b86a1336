"""Plan cells, run the ones without a result, write each result as it arrives, render tables.

A run is resumable: a cell whose result file loads is skipped (unless ``force``), and every
finished cell is on disk the moment it finishes, so a crash or Ctrl-C loses at most the cells
that were in flight. ``atomic=True`` (used by ``submit``) instead writes nothing unless every
cell succeeded.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from circuitboard.leaderboard import catalog, claims, store
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.cell import Cell
from circuitboard.leaderboard.executors import execute
from circuitboard.leaderboard.suite import (  # noqa: F401
    ALL_METHODS,
    DEFAULT_METHODS,
    DEFAULT_SEEDS,
    DEFAULT_STANDARD_MODEL,
)


def default_methods() -> list[str]:
    import circuitboard as cb

    try:
        names = cb.method_names()
    except ImportError:
        return []
    return [n for n in DEFAULT_METHODS if n in names]


def default_tasks() -> list[str]:
    """The default board's tasks: every Tracr and planted program, and the standard tasks.

    The standard tasks run on ``DEFAULT_STANDARD_MODEL`` only (see ``plan``); ``--tasks
    standard`` runs them on every zoo model that does them.
    """
    return catalog.groundtruth_names() + catalog.standard_names()


def expand_tasks(tasks: Sequence[str]) -> list[str]:
    """``standard``, ``tracr`` and ``planted`` stand for every task of that kind
    (``catalog.TASK_GROUPS``)."""
    out = []
    for name in tasks:
        lister = catalog.TASK_GROUPS.get(name)
        out += lister() if lister else [name]
    return out


def as_spec(method: str | MethodSpec) -> MethodSpec:
    return method if isinstance(method, MethodSpec) else MethodSpec(method)


def plan(
    methods: Sequence[str | MethodSpec] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    ablations: Sequence[str] | None = None,
    *,
    robustness: bool = True,
    n_boot: int = 1000,
    device: str | None = None,
    threads: int | None = None,
    problems: list[str] | None = None,
    diagnostics: bool = True,
) -> list[Cell]:
    """The cells of a sweep, grouped by task so each task's model loads once per worker.

    ``ablations`` ``None`` means each task's default (``catalog.default_ablation``). A task whose
    model cannot load is left out and named in ``problems``.
    """
    specs = [as_spec(m) for m in (default_methods() if methods is None else methods)]
    default_board = tasks is None
    task_names = default_tasks() if default_board else expand_tasks(tasks)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    cells = []
    for task in task_names:
        try:
            models = catalog.task_models(task)
            if default_board and not catalog.has_groundtruth(task):
                models = [m for m in models if m == DEFAULT_STANDARD_MODEL]
                if not models and problems is not None:
                    problems.append(
                        f"task {task!r} is not done by {DEFAULT_STANDARD_MODEL} (the default "
                        f"board's model); skipped (`--tasks {task}` runs it on its own models)"
                    )
                    continue
        except (ImportError, KeyError, ValueError, FileNotFoundError, AttributeError) as err:
            if problems is None:
                raise
            problems.append(f"task {task!r} cannot run here: {err}")
            continue
        if not models and problems is not None:
            problems.append(f"task {task!r} has no model that does it (yet); skipped")
        for model in models:
            if ablations:
                chosen = list(ablations)
            elif catalog.has_groundtruth(task):
                chosen = ["resample"]
            else:
                chosen = [catalog.default_ablation(catalog.load_bundle(task, model))]
            for spec in specs:
                for ablation in chosen:
                    for seed in seed_list:
                        cells.append(
                            Cell(
                                spec,
                                task,
                                model,
                                ablation,
                                seed,
                                robustness,
                                n_boot,
                                device,
                                threads,
                                diagnostics,
                            )
                        )
    return cells


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0
    written: list[str] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    busy: list[Cell] = field(default_factory=list)  # being computed by another run

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        lines = [
            f"{self.planned} cells: {self.skipped} already stored, {len(self.written)} written, "
            f"{len(self.failed)} failed"
            + (f", {len(self.busy)} being computed by another run" if self.busy else "")
        ]
        for cell, error in self.failed:
            last = error.strip().splitlines()[-1] if error.strip() else "error"
            lines.append(f"  FAILED {cell.key}: {last}")
        return "\n".join(lines)


class Progress:
    """One bar over the cells, naming the cell and stage at hand.

    On a terminal: a tqdm bar whose clock keeps ticking during long stages (refreshed every
    second from a daemon thread). Without one (a log, CI): one plain line per finished cell, so
    no escape codes end up in the log.
    """

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.enabled, self.total, self.count = enabled, total, done
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self._stop = threading.Event()
        if self.tty:
            self.bar = tqdm(
                total=total, initial=done, desc="cells", file=sys.stderr, dynamic_ncols=True
            )
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.bar.refresh()

    def stage(self, cell: Cell, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cell.key} [{name}]", refresh=False)

    def finished(self, cell: Cell, ok: bool, seconds: float, note: str = "") -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            status = note or ("done" if ok else "FAILED")
            print(
                f"[{self.count}/{self.total}] {cell.key}: {status} ({seconds:.1f} s)",
                file=sys.stderr,
            )

    def write(self, text: str) -> None:
        if self.bar is not None:
            tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()


def run(
    cells: Sequence[Cell],
    results: str | None = None,
    *,
    force: bool = False,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    atomic: bool = False,
) -> RunSummary:
    """Run the cells that have no stored result (all with ``force``); write each result."""
    directory = store.results_dir(results)
    summary = RunSummary(planned=len(cells))
    todo = [c for c in cells if force or not store.stored(c.key, directory)]
    summary.skipped = len(cells) - len(todo)
    if not todo:
        return summary
    bar = Progress(len(cells), summary.skipped, progress)
    held_claims: dict = {}

    def claim(cell: Cell) -> bool:
        taken = claims.acquire(cell.key, directory)
        if taken is not None:
            held_claims[cell.key] = taken
        return taken is not None

    started = time.perf_counter()
    held = []
    try:
        for outcome in execute(
            todo, executor, workers=workers, address=address, stage=bar.stage, claim=claim
        ):
            if outcome.busy:
                summary.busy.append(outcome.cell)
                bar.finished(outcome.cell, True, 0.0, "computed by another run")
                continue
            ok = outcome.record is not None
            if not ok:
                summary.failed.append((outcome.cell, outcome.error or "unknown error"))
                bar.write(f"cell failed: {outcome.cell.key}\n{outcome.error}")
            elif atomic:
                held.append(outcome.record)
            else:
                summary.written.append(store.write_result(outcome.record, directory))
            if not atomic:
                held_claims.pop(outcome.cell.key).release()
            bar.finished(outcome.cell, ok, time.perf_counter() - started)
            started = time.perf_counter()
        if atomic and not summary.failed:
            for record in held:
                summary.written.append(store.write_result(record, directory))
    finally:
        bar.close()
        for taken in held_claims.values():
            taken.release()
    return summary
