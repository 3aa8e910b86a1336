"""The committed compiled models: ``NAME.safetensors`` (weights) beside ``NAME.json``.

The JSON holds the model config, the ``tracr_info`` that encodes inputs and decodes outputs
(residual labels, input tokens, output values) and the program's declaration (vocabulary, longest
input, causal). Reading them needs torch and safetensors only: neither jax nor tracr is imported,
so the benchmark runs where tracr is not installed. Files are written through a temporary name and
a rename. torch is imported only by the functions that read or write weights, so that listing
the compiled names (``circuitboard models``) imports none of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitboard.model import PatchableTransformer

FORMAT = "circuitboard-tracr"
FORMAT_VERSION = 1
COMPILED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compiled")


def paths(name: str, directory: str | None = None) -> dict[str, str]:
    base = os.path.join(directory or COMPILED_DIR, name)
    return {
        "weights": base + ".safetensors",
        "model": base + ".json",
        "circuits": base + ".circuits.json",
    }


def save_model(
    model: PatchableTransformer, name: str, program: dict, directory: str | None = None
) -> None:
    """Write weights and description; each file appears whole or not at all."""
    from safetensors.torch import save_file

    from circuitboard.graph import write_json_atomic

    p = paths(name, directory)
    os.makedirs(os.path.dirname(p["weights"]), exist_ok=True)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(p["weights"]), prefix=".tmp-", suffix=".safetensors"
    )
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, p["weights"])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_json_atomic(
        p["model"],
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "config": model.cfg.to_dict(),
            "tracr_info": model.tracr_info,
            "program": program,
        },
    )


def read_description(name: str, directory: str | None = None) -> dict:
    p = paths(name, directory)
    if not os.path.isfile(p["model"]):
        raise FileNotFoundError(
            f"no compiled Tracr model {name!r} at {p['model']}; build it with "
            f"`circuitboard groundtruth compile {name}` (needs pip install 'circuitboard[tracr]')"
        )
    with open(p["model"]) as f:
        data = json.load(f)
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{p['model']}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
            f"{data.get('format')!r} version {data.get('format_version')!r}; recompile it"
        )
    return data


def load_model(name: str, directory: str | None = None) -> PatchableTransformer:
    """The compiled model with ``tracr_info`` and ``program`` attributes; no jax, no tracr."""
    from safetensors.torch import load_file

    from circuitboard.model import ModelConfig, PatchableTransformer

    data = read_description(name, directory)
    model = PatchableTransformer(ModelConfig.from_dict(data["config"]))
    tensors = load_file(paths(name, directory)["weights"], device="cpu")
    model.load_state_dict(tensors, strict=True)
    model.tracr_info = data["tracr_info"]
    model.program = data["program"]
    return model.eval()


def write_circuits(name: str, data: dict, directory: str | None = None) -> None:
    from circuitboard.graph import write_json_atomic

    write_json_atomic(paths(name, directory)["circuits"], data)


def read_circuits(name: str, directory: str | None = None) -> dict | None:
    file = paths(name, directory)["circuits"]
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)


def compiled_names(directory: str | None = None) -> list[str]:
    directory = directory or COMPILED_DIR
    if not os.path.isdir(directory):
        return []
    return sorted(
        f[: -len(".safetensors")]
        for f in os.listdir(directory)
        if f.endswith(".safetensors") and not f.startswith(".")
    )


def same_weights(a: PatchableTransformer, b: PatchableTransformer) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
