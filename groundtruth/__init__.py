"""circuitboard.groundtruth: Tracr programs, their compiled models and their ground-truth circuits.

    gt = circuitboard.groundtruth.load("reverse")
    gt.model, gt.task, gt.circuit("structural" | "zero" | "resample" | "mean")
    gt = circuitboard.groundtruth.load("planted/hist")   # a model trained here by SIIT
    gt.model, gt.task, gt.circuit("planted" | "zero" | "resample" | "mean")

The committed models and circuits load from ``compiled/`` with torch and safetensors only; jax and
tracr are needed only to compile (``compile_program``, ``circuitboard groundtruth compile``).
Importing this package imports no torch (``truth`` loads on first use), so that the registry
listings (``names``) answer at once.
"""

from __future__ import annotations

import importlib

from circuitboard.groundtruth import programs, store

_LAZY = {"KINDS", "GroundTruth", "from_model"}  # from ``truth``, which needs torch


def __getattr__(attr: str):
    if attr in _LAZY:
        return getattr(importlib.import_module("circuitboard.groundtruth.truth"), attr)
    raise AttributeError(f"module 'circuitboard.groundtruth' has no attribute {attr!r}")


def load(name: str, directory: str | None = None):
    """A committed ground truth: ``NAME`` (or ``tracr/NAME``) for a compiled Tracr program,
    ``planted/NAME`` for a model trained here with a planted circuit
    (``circuitboard.groundtruth.planted``)."""
    prefix, sep, rest = name.partition("/")
    if sep and prefix == "planted":
        from circuitboard.groundtruth import planted

        return planted.load(rest, directory)
    if sep and prefix == "tracr":
        name = rest
    from circuitboard.groundtruth import truth

    return truth.load(name, directory)


def names() -> list[str]:
    """Programs with a committed compiled model, in declaration order."""
    have = set(store.compiled_names())
    return [n for n in programs.PROGRAMS if n in have]


def compile_program(program, vocab, max_seq_len: int, name: str = "", causal: bool = False):
    """Compile your own RASP program into a PatchableTransformer (needs tracr).

    ``circuitboard.groundtruth.from_model(model)`` then derives its ground truths.
    """
    from circuitboard.groundtruth.compile import compile_program as _compile

    return _compile(program, vocab, max_seq_len, name=name, causal=causal)


# Registry hooks: cb.load_model("tracr/NAME"), cb.load_task("tracr/NAME").
def model_names() -> list[str]:
    return names()


def load_model(name: str):
    _known(name)
    return store.load_model(name)


def task_names() -> list[str]:
    return names()


def load_task(name: str):
    _known(name)
    return load(name).task


def _known(name: str) -> None:
    if name not in names():
        raise KeyError(f"unknown Tracr program {name!r}; known: {', '.join(names()) or 'none'}")


__all__ = [
    "KINDS",
    "GroundTruth",
    "compile_program",
    "from_model",
    "load",
    "load_model",
    "load_task",
    "model_names",
    "names",
    "task_names",
]
