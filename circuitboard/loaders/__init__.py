"""Every way a PatchableTransformer comes into being, each exact against its source.

Importing this package imports no torch (``checkpoint`` imports it when it reads or writes weights,
``from_hf`` loads on first use), so that the listings read checkpoint cards at once.
"""

import importlib

from circuitboard.loaders.checkpoint import load, save


def from_tracr(assembled_model, **kwargs):
    """Convert a compiled tracr ``AssembledTransformerModel`` (imports tracr's module lazily)."""
    from circuitboard.loaders.tracr import from_tracr as convert

    return convert(assembled_model, **kwargs)


def __getattr__(attr: str):
    if attr == "from_hf":  # ``hf`` needs torch at import
        return importlib.import_module("circuitboard.loaders.hf").from_hf
    raise AttributeError(f"module 'circuitboard.loaders' has no attribute {attr!r}")


__all__ = ["from_hf", "from_tracr", "load", "save"]
