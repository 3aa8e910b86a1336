"""Compile RASP programs with tracr into PatchableTransformers (needs ``circuitboard[tracr]``).

Only ``circuitboard groundtruth compile`` and users compiling their own programs come here; the
committed models load from ``compiled/`` without tracr.
"""

from __future__ import annotations

import functools
import itertools

import torch

from circuitboard.groundtruth.programs import Program
from circuitboard.loaders.tracr import from_tracr

COMPILER_BOS = "BOS"


def _tracr():
    try:
        from tracr.compiler import compiling
        from tracr.rasp import rasp
    except ImportError as err:
        raise ImportError(
            "compiling RASP programs needs tracr: pip install 'circuitboard[tracr]' "
            f"(tracr-pypi); the committed models load without it ({err})"
        ) from err
    return compiling, rasp


def reset_label_counter() -> None:
    """Restart tracr's global expression counter, so unnamed expressions get the same labels."""
    _, rasp = _tracr()
    rasp.RASPExpr._ids = itertools.count(1)


def compile_program(
    program, vocab, max_seq_len: int, name: str = "", causal: bool = False, mlp_exactness: int = 100
):
    """Compile a user's RASP program (an ``SOp``) and convert it; ``model.tracr_info`` has its I/O.

    The residual labels follow tracr's global counter as the program left it; build the program
    right after ``reset_label_counter()`` to make them reproducible.
    """
    compiling, rasp = _tracr()
    if not isinstance(program, rasp.SOp):
        raise TypeError(f"program must be a RASP SOp, got {type(program).__name__}")
    vocab = set(vocab)
    if COMPILER_BOS in vocab:
        raise ValueError(f"the vocabulary must not contain the BOS token {COMPILER_BOS!r}")
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ValueError(f"max_seq_len must be a positive integer, got {max_seq_len!r}")
    torch.set_flush_denormal(True)
    assembled = compiling.compile_rasp_to_model(
        program,
        vocab=vocab,
        max_seq_len=max_seq_len,
        causal=causal,
        compiler_bos=COMPILER_BOS,
        mlp_exactness=mlp_exactness,
    )
    model = from_tracr(assembled, name=f"tracr/{name}" if name else "tracr")
    model.assembled = assembled  # tracr's own model, for comparisons; never stored
    model.program = {
        "name": name or "program",
        "vocab": sorted(vocab, key=lambda v: (type(v).__name__, v)),
        "max_seq_len": max_seq_len,
        "categorical": model.tracr_info["categorical"],
        "causal": bool(causal),
        "description": "",
    }
    return model


def compile_registered(spec: Program):
    """Compile one of ``programs.PROGRAMS`` with reproducible labels; checks its declaration."""
    reset_label_counter()
    sop = spec.build()
    model = compile_program(sop, spec.vocab, spec.max_seq_len, name=spec.name, causal=spec.causal)
    if model.tracr_info["categorical"] != spec.categorical:
        kind = "categorical" if model.tracr_info["categorical"] else "numerical"
        raise ValueError(
            f"program {spec.name!r} is declared otherwise but compiles to a {kind} "
            f"output; fix its declaration in programs.py"
        )
    model.program = describe(spec)
    return model


def describe(spec: Program) -> dict:
    """The JSON-able declaration stored beside the weights."""
    return {
        "name": spec.name,
        "vocab": list(spec.vocab),
        "max_seq_len": spec.max_seq_len,
        "categorical": spec.categorical,
        "causal": spec.causal,
        "description": spec.description,
    }


@functools.cache
def compiled(name: str):
    """``compile_registered`` once per process (tracr's compile takes seconds); do not mutate."""
    from circuitboard.groundtruth.programs import get

    return compile_registered(get(name))
