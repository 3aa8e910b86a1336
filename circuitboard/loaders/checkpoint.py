"""Our own checkpoints: a ``config.json`` (a ModelConfig) beside a ``model.safetensors``.

safetensors holds tensors only, so loading a checkpoint never runs code from it. torch is imported
only by ``save`` and ``load``: reading a card (``read_config``) needs none of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from circuitboard.model import PatchableTransformer

FORMAT = "circuitboard-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(model: PatchableTransformer, path: str | os.PathLike, card: dict | None = None) -> None:
    """Write ``model`` to the directory ``path``; each file appears whole or not at all."""
    from safetensors.torch import save_file

    from circuitboard.graph import write_json_atomic

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the weights private
        os.replace(tmp, os.path.join(path, WEIGHTS_FILE))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "card": card or {},
    }
    write_json_atomic(os.path.join(path, CONFIG_FILE), config)


def read_config(path: str | os.PathLike) -> dict:
    file = os.path.join(os.fspath(path), CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path} is not a circuitboard checkpoint: it has no {CONFIG_FILE}; "
            f"write one with circuitboard.loaders.save(model, path)"
        )
    with open(file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON ({err})") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{file}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{file}: format_version {data.get('format_version')!r} is not supported "
            f"(this circuitboard reads version {FORMAT_VERSION})"
        )
    return data


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> PatchableTransformer:
    """Load a checkpoint; the weights must match the config name for name and shape.

    ``device``: where the model goes (default: it stays on the CPU, where it is read)."""
    from safetensors.torch import load_file

    from circuitboard.model import ModelConfig, PatchableTransformer

    data = read_config(path)
    cfg = ModelConfig.from_dict(data["config"])
    weights_file = os.path.join(os.fspath(path), WEIGHTS_FILE)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} beside {CONFIG_FILE}")
    tensors = load_file(weights_file, device="cpu")
    model = PatchableTransformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k}: config says {tuple(expected[k].shape)}, weights have {tuple(tensors[k].shape)}"
        for k in set(expected) & set(tensors)
        if expected[k].shape != tensors[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing weights {missing[:5]}")
        if unexpected:
            parts.append(f"weights the config has no place for {unexpected[:5]}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:5]}")
        raise ValueError(f"{path}: config and weights disagree: " + "; ".join(parts))
    model.load_state_dict(tensors)
    return (model if device is None else model.to(device)).eval()
