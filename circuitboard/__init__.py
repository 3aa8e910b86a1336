"""circuitboard: one edge universe, one patchable forward pass, every circuit-finding method.

The public API:

    model = cb.load_model("tracr/reverse")
    task = cb.load_task("tracr/reverse")
    method = cb.get_method("eap")
    circuits = method.find_circuits(model, task, sizes=[10, 20], ablation="resample", seed=0)

Registries resolve lazily: importing circuitboard imports none of its methods, tasks or ground
truths until they are asked for.
"""

from __future__ import annotations

import importlib
import os

from circuitboard.registry import Registry, import_object

__version__ = "0.1.0"

MODELS = Registry("model")
MODELS.add_namespace(
    "tracr", "circuitboard.groundtruth:model_names", "circuitboard.groundtruth:load_model"
)
MODELS.add_namespace(
    "planted",
    "circuitboard.groundtruth.planted:model_names",
    "circuitboard.groundtruth.planted:load_model",
)
MODELS.add_namespace("zoo", "circuitboard.tasks.zoo:names", "circuitboard.tasks.zoo:load")

TASKS = Registry("task")
TASKS.add_namespace(
    "tracr", "circuitboard.groundtruth:task_names", "circuitboard.groundtruth:load_task"
)
TASKS.add_namespace(
    "planted",
    "circuitboard.groundtruth.planted:task_names",
    "circuitboard.groundtruth.planted:load_task",
)
TASKS.add_namespace("std", "circuitboard.tasks:names", "circuitboard.tasks:load")


def load_model(name: str, **kwargs):
    """A registered model (``tracr/reverse``, ``zoo/toy-lm``) or a local directory.

    A directory holding a circuitboard checkpoint loads as one; any other directory is read as an
    HF model (GPT-2, Pythia, Llama, Qwen2, Gemma-2) by ``loaders.from_hf``.
    """
    loaders = importlib.import_module("circuitboard.loaders")
    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, loaders.checkpoint.CONFIG_FILE)):
            try:
                loaders.checkpoint.read_config(name)
                return loaders.load(name, **kwargs)
            except ValueError as err:
                if "'format'" not in str(err):
                    raise
        return loaders.from_hf(name, **kwargs)
    return MODELS.load(name, **kwargs)


def load_task(name: str, **kwargs):
    """A registered task: ``tracr/NAME`` or a standard task name such as ``ioi``."""
    if "/" not in name:
        name = f"std/{name}"
    return TASKS.load(name, **kwargs)


def get_method(name: str, **params):
    """A registered method by name, or any class by import path ``pkg.mod:Class``."""
    if ":" in name:
        return import_object(name)(**params)
    return import_object("circuitboard.methods:get")(name, **params)


def method_names() -> list[str]:
    return import_object("circuitboard.methods:names")()


# Everything that needs torch loads on first use, so that `circuitboard --help` and the
# listings start in a fraction of a second: name -> module that defines it.
_LAZY = {
    "ABLATIONS": "circuitboard.ablation",
    "ablated_values": "circuitboard.ablation",
    "Circuit": "circuitboard.graph",
    "Graph": "circuitboard.graph",
    "ModelConfig": "circuitboard.model",
    "PatchableTransformer": "circuitboard.model",
    "Batch": "circuitboard.task",
    "Task": "circuitboard.task",
}
_SUBMODULES = {
    "groundtruth",
    "methods",
    "tasks",
    "leaderboard",
    "loaders",
    "scoring",
    "evaluate",
    "diagnostics",
}


def __getattr__(attr: str):
    # ``cb.evaluate`` is the module circuitboard.evaluate, which is callable as its function
    # ``evaluate`` (importing a submodule makes it the package's attribute, so a function of the
    # same name could not stay there).
    if attr in _SUBMODULES:
        return importlib.import_module(f"circuitboard.{attr}")
    if attr in _LAZY:
        return getattr(importlib.import_module(_LAZY[attr]), attr)
    raise AttributeError(f"module 'circuitboard' has no attribute {attr!r}")


__all__ = [
    "ABLATIONS",
    "Batch",
    "Circuit",
    "Graph",
    "ModelConfig",
    "PatchableTransformer",
    "Task",
    "ablated_values",
    "evaluate",
    "get_method",
    "load_model",
    "load_task",
    "method_names",
    "loaders",
]
