"""Result files: where they live, what they hold, how they are written and read back.

One JSON file per cell, that is per (method, task, model, ablation, seed). A file is written
through ``circuitboard.graph.write_json_atomic``, so a crash never leaves half a result behind;
a run resumes by skipping the cells whose file loads. ``load_results`` turns the directory into a
pandas DataFrame. A file that is corrupt, of another schema or of an unknown schema version is
named in a warning and in ``DataFrame.attrs["skipped"]``, and left out of the frame; it is never
dropped without a word.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass

from circuitboard import atomic

SCHEMA = "circuitboard-result"
# 2: at-most-budget curves on the budget grid of circuitboard.scoring, per-example metrics.
SCHEMA_VERSION = 2
ENV_VAR = "CIRCUITBOARD_RESULTS"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The reference board shipped with the package; ``circuitboard run`` compares with it.
REFERENCE_DIR = os.path.join(PACKAGE_DIR, "results")
DEFAULT_RESULTS_DIR = "circuitboard-results"  # relative to where ``circuitboard run`` runs
MAX_RESULT_BYTES = 64 * 2**20
KEY_FIELDS = ("method", "task", "model", "ablation", "seed")
# Fields that vary from run to run on the same inputs; everything else is fixed by the seed.
VOLATILE_FIELDS = ("cost", "environment", "created")


def results_dir(path: str | os.PathLike | None = None) -> str:
    """The results directory: ``path``, else ``$CIRCUITBOARD_RESULTS``, else
    ``./circuitboard-results`` (the user's own board; the shipped reference board is
    ``REFERENCE_DIR`` and is written only when named)."""
    if path is not None:
        return os.fspath(path)
    return os.environ.get(ENV_VAR) or DEFAULT_RESULTS_DIR


@dataclass(frozen=True)
class Key:
    """The identity of one result; one file per key."""

    method: str
    task: str
    model: str
    ablation: str
    seed: int

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in KEY_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> Key:
        return cls(*(data[f] for f in KEY_FIELDS))

    def filename(self) -> str:
        """Readable, and unique: a short hash of the exact key follows the slugs."""
        exact = json.dumps(self.as_dict(), sort_keys=True)
        digest = hashlib.sha1(exact.encode()).hexdigest()[:8]
        parts = [_slug(self.method), _slug(self.task), _slug(self.model), _slug(self.ablation)]
        return "__".join(parts) + f"__seed{self.seed}__{digest}.json"

    def __str__(self) -> str:
        return f"{self.method} | {self.task} | {self.model} | {self.ablation} | seed {self.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-")[:60] or "x"


def path_for(key: Key, results: str | os.PathLike | None = None) -> str:
    return os.path.join(results_dir(results), key.filename())


def json_safe(value):
    """Plain JSON: non-finite floats become ``None`` (JSON has no NaN), tuples become lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy and torch scalars
        return json_safe(value.item())
    return str(value)


def write_result(record: dict, results: str | os.PathLike | None = None) -> str:
    """Write one record atomically under its key's file name; returns the path."""
    problem = check_record(record)
    if problem:
        raise ValueError(f"refusing to write a malformed result: {problem}")
    path = path_for(Key.from_dict(record["key"]), results)
    atomic.write_text(path, json.dumps(json_safe(record), indent=1, allow_nan=False))
    return path


def check_record(record) -> str | None:
    """``None`` if ``record`` is a result of this schema, else what is wrong with it."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema") != SCHEMA:
        return f"not a circuitboard result (schema {record.get('schema')!r}, expected {SCHEMA!r})"
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        return (
            f"unknown schema version {version!r} (this circuitboard reads version "
            f"{SCHEMA_VERSION}); rerun the cell or upgrade circuitboard"
        )
    key = record.get("key")
    if not isinstance(key, dict) or any(f not in key for f in KEY_FIELDS):
        return f"missing or incomplete 'key' (needs {', '.join(KEY_FIELDS)})"
    if not isinstance(key["seed"], int):
        return "key.seed must be an integer"
    for section in ("method", "model", "evaluation", "circuits", "cost", "environment"):
        if section not in record:
            return f"missing section {section!r}"
    evaluation = record["evaluation"]
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("points"), list):
        return "evaluation has no list of points"
    return None


def read_result(path: str | os.PathLike) -> dict:
    """One result file; ``ValueError`` says why a file is unusable."""
    if not os.path.isfile(path):
        raise ValueError("not a regular file")
    size = os.path.getsize(path)
    if size > MAX_RESULT_BYTES:
        raise ValueError(f"{size} bytes, more than a result may hold ({MAX_RESULT_BYTES})")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"not text ({err})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to be a result") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"not a usable JSON value ({err})") from None
    problem = check_record(record)
    if problem:
        raise ValueError(problem)
    return record


def stored(key: Key, results: str | os.PathLike | None = None) -> bool:
    """Whether ``key`` already has a readable result of this schema (a corrupt one does not)."""
    path = path_for(key, results)
    if not os.path.exists(path):
        return False
    try:
        return Key.from_dict(read_result(path)["key"]) == key
    except (ValueError, OSError):
        return False


def result_files(results: str | os.PathLike | None = None) -> list[str]:
    """Every ``*.json`` in the results directory, sorted; hidden files (temporaries) excluded."""
    directory = results_dir(results)
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, n)
        for n in os.listdir(directory)
        if n.endswith(".json") and not n.startswith(".")
    )


def read_all(results: str | os.PathLike | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """``(records, skipped)``; ``skipped`` holds ``(file name, reason)``, each one also warned."""
    records, skipped = [], []
    for path in result_files(results):
        try:
            record = read_result(path)
        except (ValueError, OSError) as err:
            reason = str(err)
            skipped.append((os.path.basename(path), reason))
            warnings.warn(f"skipping result file {path}: {reason}", stacklevel=3)
            continue
        record["_file"] = os.path.basename(path)
        records.append(record)
    return records, skipped


def comparable(record: dict) -> dict:
    """The record without what varies between runs of the same cell (timing, cost, machine)."""
    return {
        k: _without_seconds(v)
        for k, v in record.items()
        if k not in VOLATILE_FIELDS and not k.startswith("_")
    }


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value
