"""Where cells run: in this process, in a process pool, or on Ray. Results come back here.

Every executor yields one ``Outcome`` per cell as cells finish; the driver (``runner``) writes
each record as soon as it arrives, so an interrupted run keeps every finished cell. Workers never
write files. A cell that raises becomes an ``Outcome`` with the error's traceback and the others
go on; Ctrl-C (``KeyboardInterrupt``) stops the whole run, cancelling what is queued.

- ``local`` (default): one cell after another in this process, with a progress bar per cell.
- ``process``: a pool of ``--workers`` fresh interpreters (``spawn``: safe with torch threads).
- ``ray``: ``ray.remote`` tasks on a local Ray instance, or on a cluster given by ``address``
  (circuitboard and the methods' code must be importable on the cluster's workers).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context

from circuitboard.leaderboard.cell import Cell, run_cell

EXECUTORS = ("local", "process", "ray")


@dataclass
class Outcome:
    index: int
    cell: Cell
    record: dict | None = None
    error: str | None = None


def execute(
    cells: Sequence[Cell],
    executor: str = "local",
    *,
    workers: int | None = None,
    address: str | None = None,
    stage: Callable[[Cell, str], None] | None = None,
) -> Iterator[Outcome]:
    """Run ``cells``; yields an ``Outcome`` per cell in the order they finish."""
    if executor == "local":
        return _local(cells, stage)
    if executor == "process":
        return _process(cells, workers)
    if executor == "ray":
        try:
            import ray
        except ImportError:
            raise ImportError(
                "the ray executor needs Ray: pip install ray (CPU-only; it does not pull torch)"
            ) from None
        return _ray(ray, cells, workers, address)
    raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


def _guarded(cell: Cell) -> tuple[dict | None, str | None]:
    """What a worker runs: the record, or the formatted traceback of what went wrong."""
    try:
        return run_cell(cell), None
    except Exception:
        return None, traceback.format_exc()


def _local(cells, stage) -> Iterator[Outcome]:
    for i, cell in enumerate(cells):
        progress = (lambda name, cell=cell: stage(cell, name)) if stage else None
        try:
            yield Outcome(i, cell, record=run_cell(cell, progress))
        except Exception:
            yield Outcome(i, cell, error=traceback.format_exc())


def _process(cells, workers) -> Iterator[Outcome]:
    n = max(1, min(workers or os.cpu_count() or 1, len(cells) or 1))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"))
    try:
        pending = {pool.submit(_guarded, cell): i for i, cell in enumerate(cells)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    record, error = future.result()
                except Exception:  # the worker itself died
                    record, error = None, traceback.format_exc()
                yield Outcome(i, cells[i], record, error)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray(ray, cells, workers, address) -> Iterator[Outcome]:
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
    remote = ray.remote(num_cpus=1, max_retries=0)(_guarded)
    refs = {remote.remote(cell): i for i, cell in enumerate(cells)}
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
