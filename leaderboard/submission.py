"""Submissions: a method as code, or its output as data. Validated in full before anything runs.

Code: ``pkg.module:Class`` (an import path) or an entry-point name in the group
``circuitboard.methods``. The class is built with no arguments (or ``--param key=value``) and
must have ``find_circuits(model, task, sizes, ablation, seed)``.

Data (runs no code, and nothing is ever unpickled): EAP-IG / MIB graph JSON
(``circuitboard.graph.Circuit.from_json_dict``), either

- one file, for the task named by ``--task``; or
- a manifest ``{"tasks": {"TASK": "file.json", ...}}`` with paths relative to the manifest.

A graph file holds either edge *scores* (every edge has a finite ``score``; circuits are the
top-k by |score|, or by signed score with ``"ranking": "signed"`` in the file) or *circuits*
(``in_graph`` flags; one graph, or ``{"circuits": [graph, ...]}``). For a budget of k edges a
circuits submission is scored with its largest circuit of at most k edges after pruning (the
empty circuit if none fits). Validation reports every problem it finds, each with its file and
what to do: unknown edge names, duplicate keys (which ``json.load`` would silently collapse),
NaN or infinite scores, missing edges, a graph of another model, a bad shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field

import torch

from circuitboard.graph import Circuit

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_PROBLEMS = 20


class SubmissionError(ValueError):
    """A malformed submission; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        text = "submission refused, nothing was written:\n" + "\n".join(f"  - {p}" for p in shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(text)


def check_name(name: str, taken: list[str]) -> list[str]:
    problems = []
    if not NAME_PATTERN.match(name or ""):
        problems.append(
            f"name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit"
        )
    if name in taken:
        problems.append(f"name {name!r} is already a registered method; choose another --name")
    return problems


# ----------------------------------------------------------------------------- strict JSON
MAX_FILE_BYTES = 1 << 30  # no submission file is read past this, whatever the model
BYTES_PER_EDGE = 4096  # room for dozens of full graphs of a model, indented


def size_limit(graph) -> int:
    """The most bytes a graph file for ``graph`` may hold: about 30 indented full graphs."""
    return min(MAX_FILE_BYTES, (1 << 20) + BYTES_PER_EDGE * graph.n_edges)


def check_file(path: str, limit: int = MAX_FILE_BYTES) -> list[str]:
    """Problems with reading ``path`` at all: missing, not a regular file, too large."""
    if not os.path.exists(path):
        return [f"{path}: no such file"]
    if not os.path.isfile(path):
        return [f"{path}: not a regular file (a directory or a device); give a JSON file"]
    size = os.path.getsize(path)
    if size > limit:
        return [
            f"{path}: {size} bytes, more than a submission for this model may hold ({limit}); "
            f"a graph JSON lists each edge once"
        ]
    return []


def strict_load(path: str, limit: int = MAX_FILE_BYTES) -> tuple[object | None, list[str]]:
    """Parse JSON, reporting duplicate keys and NaN/Infinity literals instead of hiding them.

    The file is checked (a regular file of at most ``limit`` bytes) before it is read, and
    hostile JSON (nesting deeper than Python's parser goes, integers of thousands of digits)
    is refused with a reason, never a traceback.
    """
    problems = check_file(path, limit)
    if problems:
        return None, problems

    def pairs(items):
        seen, out = set(), {}
        for key, value in items:
            if key in seen:
                problems.append(
                    f"{path}: duplicate key {key!r} (JSON readers keep only the last one); "
                    f"give every edge exactly once"
                )
            seen.add(key)
            out[key] = value
        return out

    def constant(text):
        return float(text)  # NaN, Infinity: caught with the edge's name by the graph checks

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=pairs, parse_constant=constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, [f"{path}: not valid JSON ({err})"]
    except RecursionError:
        return None, [f"{path}: JSON nested too deeply; a graph JSON is a few levels deep"]
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        return None, [f"{path}: not usable JSON ({err})"]
    return data, problems


# --------------------------------------------------------------------------- graph checks
@dataclass
class SubmittedGraph:
    """A validated data submission for one task: edge scores or circuits (edge keep lists)."""

    kind: str  # "scores" or "circuits"
    scores: list[float] | None = None
    circuits: list[list[bool]] = field(default_factory=list)
    signed: bool = False
    file: str = ""
    sha256: str = ""

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "file": os.path.basename(self.file),
            "sha256": self.sha256,
            "ranking": "signed" if self.signed else "absolute",
        }


def check_graph(graph, data, source: str) -> tuple[SubmittedGraph | None, list[str]]:
    """Validate one graph JSON (scores or circuits) against ``graph``; every problem is named."""
    if isinstance(data, dict) and "circuits" in data:
        items = data["circuits"]
        if not isinstance(items, list) or not items:
            return None, [f"{source}: 'circuits' must be a non-empty list of graph objects"]
        circuits, problems = [], []
        for i, item in enumerate(items):
            circuit, found = _check_one(graph, item, f"{source} circuit {i}", need_scores=False)
            problems += found
            if circuit is not None:
                circuits.append(circuit.keep.tolist())
        if problems:
            return None, problems
        return SubmittedGraph("circuits", circuits=circuits), []
    circuit, problems = _check_one(graph, data, source, need_scores=None)
    if problems:
        return None, problems
    signed = isinstance(data, dict) and data.get("ranking") == "signed"
    if circuit.scores is not None:
        return SubmittedGraph("scores", scores=circuit.scores.tolist(), signed=signed), []
    return SubmittedGraph("circuits", circuits=[circuit.keep.tolist()]), []


def _check_one(graph, data, source: str, need_scores: bool | None):
    if not isinstance(data, dict) or not isinstance(data.get("edges"), dict):
        return None, [
            f"{source}: expected an object with an 'edges' mapping (EAP-IG/MIB graph JSON)"
        ]
    problems = []
    cfg = data.get("cfg")
    if isinstance(cfg, dict):
        if cfg.get("model") and graph.model and cfg["model"] != graph.model:
            problems.append(
                f"{source}: cfg.model is {cfg['model']!r} but the task's model is {graph.model!r}; "
                f"this graph was made for another model"
            )
        for name in ("n_layers", "n_heads"):
            mine = getattr(graph, name)
            if name in cfg and cfg[name] != mine:
                problems.append(
                    f"{source}: cfg.{name} is {cfg[name]} but the task's model has {mine}; this "
                    f"graph was made for another model"
                )
    edges = data["edges"]
    unknown = [n for n in edges if n not in graph.edge_index]
    for name in unknown[:5]:
        problems.append(f"{source}: {graph._unknown_edge_message(name)}")
    if len(unknown) > 5:
        problems.append(f"{source}: {len(unknown) - 5} more unknown edge names")
    has_score = False
    for name, entry in edges.items():
        if not isinstance(entry, dict):
            problems.append(
                f"{source}: edge {name!r} must map to {{'score': ..., 'in_graph': ...}}"
            )
            continue
        score = entry.get("score")
        if score is not None:
            has_score = True
            if isinstance(score, bool) or not isinstance(score, int | float):
                problems.append(f"{source}: edge {name!r} has a non-numeric score {score!r:.40}")
            elif isinstance(score, int) and abs(score) > 1e300:
                problems.append(
                    f"{source}: edge {name!r} has a score of {len(str(abs(score)))} digits, too "
                    f"large for a float; scores must be finite numbers"
                )
            elif not math.isfinite(score):
                problems.append(
                    f"{source}: edge {name!r} has a non-finite score {score}; "
                    f"scores must be finite numbers"
                )
        flag = entry.get("in_graph", False)
        if not isinstance(flag, bool):
            problems.append(f"{source}: edge {name!r} has in_graph {flag!r}; use true or false")
    absent = [n for n in graph.edge_names if n not in edges]
    if has_score or need_scores:
        missing = [
            n
            for n in graph.edge_names
            if n not in edges or not isinstance(edges[n], dict) or edges[n].get("score") is None
        ]
        if missing:
            problems.append(
                f"{source}: {len(missing)} of the model's {graph.n_edges} edges have no score "
                f"(first: {missing[0]!r}); a scores submission scores every edge "
                f"(got {len(edges)} edge entries)"
            )
    elif absent:
        problems.append(
            f"{source}: {len(absent)} of the model's {graph.n_edges} edges are missing (first: "
            f"{absent[0]!r}); a graph JSON lists every edge with its in_graph flag"
        )
    if problems:
        return None, problems
    try:
        return Circuit.from_json_dict(graph, data, source=source), []
    except ValueError as err:
        return None, [str(err)]


def load_data(path: str, graph, task_hint: str | None) -> tuple[SubmittedGraph | None, list[str]]:
    data, problems = strict_load(path, size_limit(graph))
    if data is None:
        return None, problems
    submitted, found = check_graph(graph, data, path)
    problems += found
    if problems:
        return None, problems
    submitted.file = path
    with open(path, "rb") as f:
        submitted.sha256 = hashlib.sha256(f.read()).hexdigest()
    return submitted, []


MAX_MANIFEST_BYTES = 1 << 20


def read_manifest(path: str) -> tuple[dict[str, str] | None, list[str]]:
    """``{task: graph file}`` from a manifest (a small file; graph files are named in it and
    must lie inside its folder)."""
    data, problems = strict_load(path, MAX_MANIFEST_BYTES)
    if data is None or problems:
        if problems and "more than a submission" in problems[0]:
            problems = [
                f"{path}: {os.path.getsize(path)} bytes is no manifest; a single graph file "
                f"needs --task TASK"
            ]
        return None, problems
    if isinstance(data, dict) and "edges" in data:
        return None, [
            f"{path}: a single graph file needs --task TASK (or use a manifest "
            f'{{"tasks": {{TASK: file}}}})'
        ]
    if not (isinstance(data, dict) and "tasks" in data):
        return None, [
            f'{path}: expected a manifest {{"tasks": {{TASK: file}}}} or, with --task, a graph'
        ]
    tasks = data["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        return None, [f"{path}: 'tasks' must map task names to graph files"]
    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    out, problems = {}, []
    for task, file in tasks.items():
        if not isinstance(file, str) or not file:
            problems.append(f"{path}: the file for task {task!r} must be a path string")
            continue
        resolved = os.path.realpath(os.path.join(base, file))
        if os.path.isabs(file) or os.path.commonpath([base, resolved]) != base:
            problems.append(
                f"{path}: the file for task {task!r} ({file!r}) lies outside the manifest's "
                f"folder; give paths relative to the manifest, inside its folder"
            )
            continue
        out[task] = resolved
    return (out, []) if not problems else (None, problems)


# ---------------------------------------------------------------------------- the method
class DataMethod:
    """Serves a data submission through the Method interface. It runs no code of the submitter.

    ``reruns`` is False: submitted output cannot be recomputed on a random model or on shuffled
    labels, so those controls are marked not applicable.
    """

    name = "data"
    reruns = False

    def __init__(self, submitted: SubmittedGraph) -> None:
        self.submitted = submitted

    def params(self) -> dict:
        return {}

    def _scores(self) -> torch.Tensor:
        scores = torch.tensor(self.submitted.scores, dtype=torch.float64)
        return scores if self.submitted.signed else scores.abs()

    @property
    def score_edges(self):
        if self.submitted.kind != "scores":
            return None  # a circuits submission has no ranking; its ROC comes from its circuits
        return lambda model, task, ablation, seed: self._scores()

    def find_circuits(self, model, task, sizes, ablation, seed):
        graph = model.graph
        if self.submitted.kind == "scores":
            scores = self._scores()
            return [Circuit.top_k(graph, scores, int(k), absolute=False) for k in sizes]
        given = [Circuit(graph, torch.tensor(keep)) for keep in self.submitted.circuits]
        realised = [c.size for c in given]
        out = []
        for k in sizes:
            fits = [i for i, s in enumerate(realised) if s <= k]
            if fits:
                best = max(fits, key=lambda i: (realised[i], -i))
                out.append(Circuit(graph, given[best].keep.clone()))
            else:
                out.append(Circuit.empty(graph))
        return out
