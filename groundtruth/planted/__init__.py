"""circuitboard.groundtruth.planted: transformers trained here by SIIT with a planted circuit.

    gt = circuitboard.groundtruth.planted.load("hist")   # or cb.groundtruth.load("planted/hist")
    gt.model, gt.task, gt.circuit("planted" | "zero" | "resample" | "mean")

For a Tracr program of ``circuitboard.groundtruth``, the compiled model is the high-level causal
graph (``alignment``); a small LayerNorm/GELU transformer with a dense residual stream is trained
by strict interchange intervention training (``siit``, ``train``) so that its aligned heads and
MLPs compute the program's operations and nothing else matters; its ground truths are stated
twice, planted and measured (``truth``, ``functional``), and checked. The shipped models live in
``trained/`` (``store``); ``circuitboard groundtruth train NAME`` retrains one. Importing this
package imports no torch (``truth`` loads on first use), so that ``names`` answers at once.
"""

from __future__ import annotations

import importlib

from circuitboard.groundtruth.planted import store
from circuitboard.groundtruth.planted.specs import SPECS

_LAZY = {"KINDS", "PlantedGroundTruth", "load"}  # from ``truth``, which needs torch


def __getattr__(attr: str):
    if attr in _LAZY:
        return getattr(importlib.import_module("circuitboard.groundtruth.planted.truth"), attr)
    raise AttributeError(f"module 'circuitboard.groundtruth.planted' has no attribute {attr!r}")


def names() -> list[str]:
    """The planted programs that are shipped, in ``SPECS`` order."""
    have = set(store.shipped())
    return [n for n in SPECS if n in have]


# Registry hooks: cb.load_model("planted/NAME"), cb.load_task("planted/NAME").
def model_names() -> list[str]:
    return names()


def load_model(name: str):
    _known(name)
    return store.load_model(name)


def task_names() -> list[str]:
    return names()


def load_task(name: str):
    from circuitboard.groundtruth.planted.truth import load

    _known(name)
    return load(name).task


def _known(name: str) -> None:
    if name not in names():
        known = ", ".join(names()) or "none"
        raise KeyError(
            f"unknown planted program {name!r}; shipped: {known} (train one with "
            f"`circuitboard groundtruth train NAME`)"
        )


__all__ = [
    "KINDS",
    "SPECS",
    "PlantedGroundTruth",
    "load",
    "load_model",
    "load_task",
    "model_names",
    "names",
    "task_names",
]
