"""Every way a PatchableTransformer comes into being, each exact against its source."""

from circuitboard.loaders.checkpoint import load, save
from circuitboard.loaders.hf import from_hf


def from_tracr(assembled_model, **kwargs):
    """Convert a compiled tracr ``AssembledTransformerModel`` (imports tracr's module lazily)."""
    from circuitboard.loaders.tracr import from_tracr as convert

    return convert(assembled_model, **kwargs)


__all__ = ["from_hf", "from_tracr", "load", "save"]
