"""Where cells run: in this process, in a process pool, or on Ray. Results come back here.

Every executor yields one ``Outcome`` per cell as cells finish; the driver (``runner``) writes
each record as soon as it arrives, so an interrupted run keeps every finished cell. Workers never
write files. A cell that raises becomes an ``Outcome`` with the error's traceback and the others
go on; Ctrl-C (``KeyboardInterrupt``) stops the whole run, cancelling what is queued.

- ``local`` (default): one cell after another in this process.
- ``process``: a pool of ``--workers`` fresh interpreters (``spawn``: safe with torch threads);
  a cell whose worker dies is run again in a fresh pool.
- ``ray``: ``ray.remote`` tasks on a local Ray instance, or on a cluster given by ``address``
  (circuitboard and the methods' code must be importable on the cluster's workers); Ray retries
  a task whose worker or node is lost.

Every executor gives identical results: a cell is a pure function of its ``Cell``. ``work``
(default ``run_cell``) is what a cell is run with; studies pass their own, a module-level
function ``work(cell, progress=None) -> dict`` so that it pickles to workers.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitboard.leaderboard.cell import Cell

EXECUTORS = ("local", "process", "ray")


MAX_ATTEMPTS = 3  # a cell whose worker dies is run again, this many times in all


@dataclass
class Outcome:
    index: int
    cell: Cell
    record: dict | None = None
    error: str | None = None
    busy: bool = False  # another run holds this cell's claim: not computed here


def execute(
    cells: Sequence[Cell],
    executor: str = "local",
    *,
    workers: int | None = None,
    address: str | None = None,
    stage: Callable[[Cell, str], None] | None = None,
    claim: Callable[[Cell], bool] | None = None,
    work: Callable | None = None,
) -> Iterator[Outcome]:
    """Run ``cells``; yields an ``Outcome`` per cell in the order they finish.

    ``claim(cell)`` is asked before a cell is computed (just before, in this process; when it
    is handed to a worker, otherwise); a cell it refuses comes back as ``busy``.
    """
    claim = claim or (lambda cell: True)
    if executor == "local":
        return _local(cells, stage, claim, work)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    return _pooled(cells, executor, workers, address, claim, work)


def _pooled(cells, executor, workers, address, claim, work=None) -> Iterator[Outcome]:
    todo = []
    for i, cell in enumerate(cells):
        if claim(cell):
            todo.append((i, cell))
        else:
            yield Outcome(i, cell, busy=True)
    if not todo:
        return
    if executor == "process":
        yield from _process(todo, workers, work)
    if executor == "ray":
        try:
            import ray
        except ImportError:
            raise ImportError(
                "the ray executor needs Ray: pip install ray (CPU-only; it does not pull torch)"
            ) from None
        yield from _ray(ray, todo, workers, address, work)


def _work(work: Callable | None) -> Callable:
    """``work``, or ``run_cell`` (imported only when a cell runs: it brings torch)."""
    if work is not None:
        return work
    from circuitboard.leaderboard.cell import run_cell

    return run_cell


def _guarded(cell: Cell, work: Callable | None = None) -> tuple[dict | None, str | None]:
    """What a worker runs: the record, or the formatted traceback of what went wrong."""
    try:
        return _work(work)(cell), None
    except Exception:
        return None, traceback.format_exc()


def _local(cells, stage, claim, work=None) -> Iterator[Outcome]:
    work = _work(work)
    for i, cell in enumerate(cells):
        if not claim(cell):
            yield Outcome(i, cell, busy=True)
            continue
        progress = (lambda name, cell=cell: stage(cell, name)) if stage else None
        try:
            yield Outcome(i, cell, record=work(cell, progress))
        except Exception:
            yield Outcome(i, cell, error=traceback.format_exc())


def _process(todo, workers, work=None) -> Iterator[Outcome]:
    """A spawn pool; if a worker process dies (killed, out of memory), the pool breaks, and the
    cells it held are run again in a fresh pool, up to ``MAX_ATTEMPTS`` times each."""
    attempts = {i: 0 for i, _ in todo}
    cells = dict(todo)
    remaining = [i for i, _ in todo]
    while remaining:
        n = max(1, min(workers or os.cpu_count() or 1, len(remaining)))
        pool = ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"))
        lost = []
        try:
            pending = {}
            for i in remaining:
                attempts[i] += 1
                pending[pool.submit(_guarded, cells[i], work)] = i
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    try:
                        record, error = future.result()
                    except BrokenProcessPool:  # a worker died: this cell goes again
                        if attempts[i] < MAX_ATTEMPTS:
                            lost.append(i)
                            continue
                        record, error = (
                            None,
                            (
                                f"the worker running this cell died {attempts[i]} times:\n"
                                + traceback.format_exc()
                            ),
                        )
                    except Exception:
                        record, error = None, traceback.format_exc()
                    yield Outcome(i, cells[i], record, error)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        remaining = sorted(lost)


def _ray(ray, todo, workers, address, work=None) -> Iterator[Outcome]:
    """Ray tasks; a task whose worker process or node dies is retried by Ray itself
    (``max_retries``), and errors raised by a cell come back as its outcome."""
    started = False
    if not ray.is_initialized():
        kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            # A local instance: workers import what this interpreter can (methods and tasks
            # given as import paths included).
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
            if workers:
                kwargs["num_cpus"] = workers
        ray.init(**kwargs)
        started = True
    remote = ray.remote(num_cpus=1, max_retries=MAX_ATTEMPTS - 1)(_guarded)
    cells = dict(todo)
    refs = {remote.remote(cell, work): i for i, cell in todo}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    record, error = ray.get(ref)
                except Exception:
                    record, error = None, traceback.format_exc()
                yield Outcome(i, cells[i], record, error)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
