"""What every study shares: its directory, its records, running its units, writing its report.

A study runs many *units* and reports a distribution. Two kinds of unit exist:

- a board cell (``leaderboard.cell.Cell``), for studies that read at-most-budget curves
  (``sparse-vs-dense``, ``edges-for-faithfulness``): these run through ``runner.run`` into a
  results directory exactly as ``circuitboard run`` does, so a study's cells are board results
  and a board's results can feed a study;
- a study's own unit (``seeds``: one seed of one method), a frozen dataclass with a ``key``,
  run by a module-level ``work(unit, progress)`` on the run executors (``executors.execute``
  with ``work=``), one JSON record per unit.

Records are written atomically (temporary file + rename) under a name that holds a hash of the
whole unit, settings included, so a study resumes by skipping units whose record loads and never
reuses a record made with other settings. Two studies sharing a directory never compute one unit
at once (the run's claims, ``leaderboard.claims``).

A study's directory holds ``cells/`` (the raw records), ``NAME.json`` (every number of the
report), ``REPORT.md`` (tabulate) and PNG figures (matplotlib), each written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass

from circuitboard import atomic
from circuitboard.graph import write_json_atomic
from circuitboard.leaderboard import claims, runner, store
from circuitboard.leaderboard.executors import execute

DEFAULT_ROOT = "circuitboard-studies"  # relative to where ``circuitboard study`` runs
MAX_RECORD_BYTES = 16 * 2**20


def study_dir(name: str, out: str | os.PathLike | None = None) -> str:
    """``out``, else ``./circuitboard-studies/NAME``."""
    return os.fspath(out) if out is not None else os.path.join(DEFAULT_ROOT, name)


def cells_dir(directory: str) -> str:
    return os.path.join(directory, "cells")


# ------------------------------------------------------------------------------ keys
def plain(value):
    """A unit as plain JSON data (dataclasses, tuples), for hashing and records."""
    if is_dataclass(value):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-")[:60] or "x"


@dataclass(frozen=True)
class UnitKey:
    """The identity of one study unit: readable fields and a hash of the whole unit.

    ``filename`` is all ``claims`` needs, so a study's units take the run's claims.
    """

    study: str
    fields: tuple[tuple[str, object], ...]
    digest: str

    @classmethod
    def of(cls, study: str, unit, shown: dict) -> UnitKey:
        """The key of ``unit`` (a dataclass): ``shown`` names it, the digest covers all of it."""
        exact = json.dumps({"study": study, **plain(unit)}, sort_keys=True, default=str)
        digest = hashlib.sha1(exact.encode()).hexdigest()[:10]
        return cls(study, tuple(shown.items()), digest)

    def as_dict(self) -> dict:
        return {"study": self.study, **dict(self.fields), "digest": self.digest}

    def filename(self) -> str:
        parts = [slug(self.study)] + [slug(v) for _, v in self.fields]
        return "__".join(parts) + f"__{self.digest}.json"

    def __str__(self) -> str:
        return " | ".join(str(v) for _, v in self.fields)


# --------------------------------------------------------------------------- records
def write_record(record: dict, key: UnitKey, directory: str) -> str:
    """Write one unit's record atomically under its key's file name; returns the path."""
    if (record.get("key") or {}).get("digest") != key.digest:
        raise ValueError(f"refusing to write a record under another unit's key ({key})")
    path = os.path.join(directory, key.filename())
    write_json_atomic(path, store.json_safe(record))
    return path


def read_record(path: str, schema: str, version: int) -> dict:
    """One record of ``schema``; ``ValueError`` says why a file is unusable."""
    if not os.path.isfile(path):
        raise ValueError("not a regular file")
    if os.path.getsize(path) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than a study record may be ({MAX_RECORD_BYTES} bytes)")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("schema") != schema:
        raise ValueError(f"not a {schema} record")
    if record.get("schema_version") != version:
        raise ValueError(
            f"schema version {record.get('schema_version')!r}, this circuitboard reads "
            f"{version}; rerun the study with --force"
        )
    return record


def stored_record(key: UnitKey, directory: str, schema: str, version: int) -> dict | None:
    path = os.path.join(directory, key.filename())
    if not os.path.exists(path):
        return None
    try:
        record = read_record(path, schema, version)
    except (ValueError, OSError):
        return None
    return record if record.get("key", {}).get("digest") == key.digest else None


# ------------------------------------------------------------------------------ params
def method_params(method: str, params: dict | None) -> dict:
    """``--param KEY=VALUE`` applies to every method, ``--param METHOD.KEY=VALUE`` to one
    (``edge-pruning.per_size=false``), so one study can set each method its own way."""
    params = params or {}
    out = {k: v for k, v in params.items() if "." not in k}
    prefix = f"{method}."
    out.update({k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)})
    return out


# ------------------------------------------------------------------------------ running
@dataclass
class Summary:
    """What a study's run did: units planned, found stored, written, failed."""

    planned: int = 0
    skipped: int = 0
    written: list[str] = field(default_factory=list)
    failed: list[tuple[object, str]] = field(default_factory=list)
    busy: list[object] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        lines = [
            f"{self.planned} units: {self.skipped} already stored, {len(self.written)} written, "
            f"{len(self.failed)} failed"
            + (f", {len(self.busy)} being computed by another run" if self.busy else "")
        ]
        for unit, error in self.failed:
            last = error.strip().splitlines()[-1] if error.strip() else "error"
            lines.append(f"  FAILED {unit.key}: {last}")
        return "\n".join(lines)

    @classmethod
    def of_run(cls, summary: runner.RunSummary) -> Summary:
        return cls(summary.planned, summary.skipped, summary.written, summary.failed, summary.busy)


def run_units(
    units: Sequence,
    directory: str,
    work: Callable,
    schema: str,
    version: int,
    *,
    force: bool = False,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> Summary:
    """Run the units without a stored record (all with ``force``); write each as it arrives.

    A killed study loses only the units in flight: every finished one is on disk, and the next
    run skips it.
    """
    os.makedirs(directory, exist_ok=True)
    summary = Summary(planned=len(units))
    todo = [u for u in units if force or stored_record(u.key, directory, schema, version) is None]
    summary.skipped = len(units) - len(todo)
    if not todo:
        return summary
    bar = runner.Progress(len(units), summary.skipped, progress)
    held: dict = {}

    def claim(unit) -> bool:
        taken = claims.acquire(unit.key, directory)
        if taken is None:
            return False
        if not force and stored_record(unit.key, directory, schema, version) is not None:
            taken.release()  # another run finished it while we looked
            return False
        held[unit.key] = taken
        return True

    started = time.perf_counter()
    try:
        for outcome in execute(
            todo,
            executor,
            workers=workers,
            address=address,
            stage=bar.stage,
            claim=claim,
            work=work,
        ):
            if outcome.busy:
                summary.busy.append(outcome.cell)
                bar.finished(outcome.cell, True, 0.0, "computed by another run or stored")
                continue
            ok = outcome.record is not None
            if ok:
                summary.written.append(write_record(outcome.record, outcome.cell.key, directory))
            else:
                summary.failed.append((outcome.cell, outcome.error or "unknown error"))
                bar.write(f"unit failed: {outcome.cell.key}\n{outcome.error}")
            held.pop(outcome.cell.key).release()
            bar.finished(outcome.cell, ok, time.perf_counter() - started)
            started = time.perf_counter()
    finally:
        bar.close()
        for taken in held.values():
            taken.release()
    return summary


def run_board_cells(cells, directory: str, **options) -> Summary:
    """Board cells into a results directory, as ``circuitboard run`` computes them."""
    return Summary.of_run(runner.run(cells, directory, **options))


def board_records(cells, directory: str) -> tuple[list[dict], list[str]]:
    """The stored result of each cell, and a note for each cell that has none."""
    records, missing = [], []
    for cell in cells:
        path = store.path_for(cell.key, directory)
        try:
            records.append(store.read_result(path))
        except (ValueError, OSError) as err:
            missing.append(f"{cell.key}: no usable result ({err})")
    return records, missing


# ------------------------------------------------------------------------------ output
def write_summary(directory: str, name: str, data: dict) -> str:
    path = os.path.join(directory, f"{name}.json")
    write_json_atomic(path, store.json_safe(data))
    return path


def write_report(directory: str, text: str) -> str:
    return atomic.write_text(os.path.join(directory, "REPORT.md"), text)


def save_figure(fig, path: str) -> str:
    """A matplotlib figure as PNG, atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return atomic.write_bytes(path, buffer.getvalue())


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(value, digits: int = 3) -> str:
    """A number for a table; ``None`` and NaN print as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
