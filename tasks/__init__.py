"""circuitboard.tasks: the standard tasks, custom tasks, and the toy model zoo.

    names()                      -> ["ioi", "greater-than", "docstring", "induction",
                                     "gendered-pronoun"]
    load("ioi")                  -> Task in the zoo's toy vocabulary (for zoo/toy-lm etc.)
    load("ioi", model="zoo/toy-lm")
    load("ioi", model="gpt2", model_path="/path/to/gpt2")   -> Task in GPT-2's BPE
    evaluate(model, task)        -> top-1 accuracy and the task metric on the test split
    catalog()                    -> each task with its models and their accuracy on it
    from_tokens(...), from_json(path)                        -> custom tasks, checked alike

The same seed gives the same data; train and test never share a prompt (see ``base``).
Importing this package imports no torch (``Task`` and the custom tasks load on first use, the
rest when a task is built), so that ``names`` and ``catalog`` answer at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from circuitboard.tasks.evaluation import LEADERBOARD_MIN_ACCURACY, evaluate, on_leaderboard
from circuitboard.tasks.resolve import load_model, resolve_tokenizer

if TYPE_CHECKING:
    from circuitboard.task import Task

# name -> the module that defines it, which needs torch
_LAZY = {
    "Task": "circuitboard.task",
    "from_json": "circuitboard.tasks.custom",
    "from_tokens": "circuitboard.tasks.custom",
}


def __getattr__(attr: str):
    if attr in _LAZY:
        return getattr(importlib.import_module(_LAZY[attr]), attr)
    raise AttributeError(f"module 'circuitboard.tasks' has no attribute {attr!r}")


TASKS = {
    "ioi": "circuitboard.tasks.ioi",
    "greater-than": "circuitboard.tasks.greater_than",
    "docstring": "circuitboard.tasks.docstring",
    "induction": "circuitboard.tasks.induction",
    "gendered-pronoun": "circuitboard.tasks.pronoun",
}


def names() -> list[str]:
    return list(TASKS)


def spec(name: str):
    """The ``TaskSpec`` (generator, pools, metric) of a standard task."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; standard tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).SPEC


def load(
    name: str,
    model=None,
    *,
    model_path: str | None = None,
    tokenizer=None,
    seed: int = 0,
    n_train: int = 256,
    n_test: int = 256,
    n_off: int = 256,
) -> Task:
    """A standard task, tokenised for ``model``.

    - ``model=None`` or a zoo name (``"zoo/toy-lm"``, ``"toy-lm"``): the zoo's toy vocabulary.
      ``Task.models`` lists the zoo models that do the task well enough for the leaderboard.
    - ``model="gpt2"`` (any GPT-2-family name) with ``model_path`` a local directory, or
      ``model`` that directory itself: GPT-2's BPE from the directory's tokenizer files.
    - ``tokenizer``: any object with ``encode``, ``bos_id`` and ``name`` (see ``vocab``).
    """
    from circuitboard.tasks.base import build_task

    task_spec = spec(name)
    tok, models = resolve_tokenizer(model, model_path=model_path, tokenizer=tokenizer)
    if models is None:  # the toy vocabulary with no model named: the zoo models that pass
        from circuitboard.tasks import zoo

        models = zoo.models_for(name)
    return build_task(
        task_spec, tok, seed=seed, n_train=n_train, n_test=n_test, n_off=n_off, models=models
    )


def catalog() -> list[dict]:
    """Every task with each model's accuracy on it, for ``circuitboard tasks``.

    One row per (task, model): ``{"task", "model", "accuracy", "metric", "metric_name",
    "on_leaderboard"}``. Zoo numbers come from the model cards (measured when the model was
    trained; a test re-measures them). GPT-2 needs a local copy, so its row has no numbers:
    measure it with ``evaluate(load_model("gpt2", model_path=...), load(task, "gpt2",
    model_path=...))``.
    """
    from circuitboard.tasks import zoo

    rows = []
    for task_name in names():
        for model_name in zoo.available():
            entry = zoo.card(model_name).get("metrics", {}).get(task_name)
            if entry is None:
                continue
            rows.append(
                {
                    "task": task_name,
                    "model": f"zoo/{model_name}",
                    "accuracy": entry["accuracy"],
                    "metric": entry["metric"],
                    "metric_name": entry["metric_name"],
                    "on_leaderboard": on_leaderboard(entry["accuracy"]),
                }
            )
        rows.append(
            {
                "task": task_name,
                "model": "gpt2",
                "accuracy": None,
                "metric": None,
                "metric_name": spec(task_name).metric,
                "on_leaderboard": None,
            }
        )
    return rows


__all__ = [
    "LEADERBOARD_MIN_ACCURACY",
    "TASKS",
    "catalog",
    "evaluate",
    "from_json",
    "from_tokens",
    "load",
    "load_model",
    "names",
    "spec",
]
