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

from circuitboard import loaders
from circuitboard.ablation import ABLATIONS, ablated_values
from circuitboard.evaluate import evaluate  # the function; the module stays importable by path
from circuitboard.graph import Circuit, Graph
from circuitboard.model import ModelConfig, PatchableTransformer
from circuitboard.registry import Registry, import_object
from circuitboard.task import Batch, Task

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


def load_model(name: str, **kwargs) -> PatchableTransformer:
    """A registered model (``tracr/reverse``, ``zoo/toy-lm``) or a local directory.

    A directory holding a circuitboard checkpoint loads as one; any other directory is read as a
    GPT-2-family model through HF transformers.
    """
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


def load_task(name: str, **kwargs) -> Task:
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


def __getattr__(attr: str):
    # Subpackages load on first use: cb.groundtruth, cb.methods, cb.tasks, cb.leaderboard, ...
    if attr in {"groundtruth", "methods", "tasks", "leaderboard"}:
        return importlib.import_module(f"circuitboard.{attr}")
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
