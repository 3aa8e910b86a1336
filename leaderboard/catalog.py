"""Names -> the things a cell runs: methods, and (model, task, ground truth) bundles.

Everything a cell needs is named by plain strings, so a cell travels to a process pool or a Ray
worker as data and is rebuilt there the same way:

- a method is a registry name (``eap``), an import path (``pkg.mod:Class``) or an entry point,
  with its parameters; a data submission carries its submitted graphs instead;
- a task is ``tracr/NAME`` (a Tracr program: model, task and ground truth from
  ``circuitboard.groundtruth.load``), a standard task name run on one of its models
  (``circuitboard.tasks``), or an import path ``pkg.mod:factory`` whose factory returns an object
  with ``.model`` and ``.task`` (and, to be scored against a ground truth, ``.circuit(ablation)``;
  ``.model_name`` names the model in results).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from circuitboard.registry import import_object

# Ablations that have a Tracr ground truth, and the ground truth a run's ablation is judged by:
# a Tracr task's counterfactual is another input of the same length, i.e. a resample.
GROUNDTRUTH_ABLATIONS = ("zero", "resample", "mean")
GROUNDTRUTH_FOR = {
    "zero": "zero",
    "resample": "resample",
    "mean": "mean",
    "counterfactual": "resample",
}


@dataclass(frozen=True)
class MethodSpec:
    """How to build a method: ``target`` is a registry name or import path (default ``name``).

    ``name`` is what results and tables call it; ``data`` is a submitted graph (scores or
    circuits) for a data submission, which runs no code.
    """

    name: str
    target: str | None = None
    params: dict = field(default_factory=dict)
    data: object | None = None

    def build(self):
        if self.data is not None:
            from circuitboard.leaderboard.submission import DataMethod

            return DataMethod(self.data)
        target = self.target or self.name
        if ":" in target:
            factory = import_object(target)
            return factory(**self.params)
        methods = importlib.import_module("circuitboard.methods")
        return methods.get(target, **self.params)

    def describe(self, method=None) -> dict:
        """Name, target and parameters for the results file (the built method's, if given)."""
        params = dict(self.params)
        if method is not None and callable(getattr(method, "params", None)):
            try:
                params = dict(method.params())
            except TypeError:
                pass
        out = {"name": self.name, "target": self.target or self.name, "params": params}
        if self.data is not None:
            out["submission"] = self.data.describe()
        return out


@dataclass
class Bundle:
    """A model, a task on it, and the task's ground truth where there is one."""

    model: object
    task: object
    groundtruth: object | None = None
    model_name: str = ""

    def truth(self, ablation: str):
        """The ground-truth Circuit for ``ablation``, or ``None`` with no ground truth for it."""
        if self.groundtruth is None or not hasattr(self.groundtruth, "circuit"):
            return None
        gt_ablation = GROUNDTRUTH_FOR.get(ablation)
        if gt_ablation is None:
            return None
        return self.groundtruth.circuit(gt_ablation)


def is_import_path(spec: str) -> bool:
    return ":" in spec


def tracr_names() -> list[str]:
    """Tracr programs with a ground truth, as task names ``tracr/NAME`` (none if not built)."""
    try:
        groundtruth = importlib.import_module("circuitboard.groundtruth")
        return [f"tracr/{n}" for n in groundtruth.names()]
    except (ImportError, AttributeError):
        return []


def planted_names() -> list[str]:
    """Planted-circuit programs trained here (``planted/NAME``), where they are shipped."""
    try:
        planted = importlib.import_module("circuitboard.groundtruth.planted")
        return [f"planted/{n}" for n in planted.names()]
    except (ImportError, AttributeError):
        return []


def family(task: str) -> str:
    """Which kind of ground truth a task has: ``tracr`` (compiled weights), ``planted`` (weights
    trained here), or ``none``."""
    prefix = task.split("/", 1)[0] if "/" in task else ""
    return prefix if prefix in ("tracr", "planted") else "none"


def has_groundtruth(task: str) -> bool:
    """Tasks whose model and ground truth come together (Tracr and planted programs)."""
    return family(task) != "none"


def groundtruth_names() -> list[str]:
    """Every program with a ground truth: the Tracr programs, then the planted ones."""
    return tracr_names() + planted_names()


def standard_names() -> list[str]:
    """Standard (non-Tracr) tasks, where circuitboard.tasks provides them."""
    try:
        tasks = importlib.import_module("circuitboard.tasks")
        return list(tasks.names())
    except (ImportError, AttributeError):
        return []


def task_models(task: str) -> list[str]:
    """The model names a task runs on."""
    if has_groundtruth(task):
        return [task]
    if is_import_path(task):
        return [load_bundle(task).model_name]
    importlib.import_module("circuitboard.tasks").spec(task)  # an unknown task is named
    zoo = importlib.import_module("circuitboard.tasks.zoo")
    return list(zoo.models_for(task))  # what tasks.load(task).models holds, without the data


def model_graph(task: str, model: str | None = None):
    """The edge universe of a task's model, without generating the task's data."""
    if has_groundtruth(task) or is_import_path(task):
        return load_bundle(task, model).model.graph
    import circuitboard as cb

    return cb.load_model(model or task_models(task)[0]).graph


_CACHE: dict[tuple[str, str | None], Bundle] = {}


def load_bundle(task: str, model: str | None = None) -> Bundle:
    """The model, task and ground truth of a cell; cached per process (they are read-only)."""
    key = (task, model)
    if key not in _CACHE:
        _CACHE.clear()  # one bundle at a time: cells are grouped by task, models can be large
        _CACHE[key] = _load(task, model)
    return _CACHE[key]


def _load(task: str, model: str | None) -> Bundle:
    import torch

    if task.startswith("tracr/"):
        torch.set_flush_denormal(True)
        groundtruth = importlib.import_module("circuitboard.groundtruth")
        gt = groundtruth.load(task.split("/", 1)[1])
        return Bundle(gt.model, gt.task, gt, task)
    if task.startswith("planted/"):
        torch.set_flush_denormal(True)
        groundtruth = importlib.import_module("circuitboard.groundtruth")
        gt = groundtruth.load(task)
        return Bundle(gt.model, gt.task, gt, task)
    if is_import_path(task):
        made = import_object(task)
        made = made() if callable(made) else made
        if not hasattr(made, "model") or not hasattr(made, "task"):
            raise ValueError(
                f"task factory {task!r} must return an object with .model and .task "
                f"(and .circuit(ablation) for a ground truth); got {type(made).__name__}"
            )
        name = getattr(made, "model_name", None) or made.model.cfg.name or "model"
        gt = made if hasattr(made, "circuit") else None
        return Bundle(made.model, made.task, gt, name)
    import circuitboard as cb

    tasks = importlib.import_module("circuitboard.tasks")
    if model is None:
        model = task_models(task)[0]
    loaded = cb.load_model(model)
    return Bundle(loaded, tasks.load(task, model=model), None, model)


def default_ablation(bundle: Bundle) -> str:
    """``resample`` where a ground truth exists (so it can be compared), else ``counterfactual``
    when every batch has counterfactual inputs, else ``resample``."""
    if bundle.groundtruth is not None:
        return "resample"
    batches = list(bundle.task.train) + list(bundle.task.test)
    if all(b.counterfactual is not None for b in batches):
        return "counterfactual"
    return "resample"


# Names that stand for every task of a kind (``--tasks tracr``), in the order they list.
TASK_GROUPS = {"standard": standard_names, "tracr": tracr_names, "planted": planted_names}
