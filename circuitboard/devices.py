"""Which device a command runs its models on: one rule, used by every ``--device`` option.

The default is CUDA when torch sees a GPU, else the CPU. Nothing else in circuitboard names a
device: models carry theirs (``model.to(device)``) and every tensor follows the model.
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a torch device (None: ``default_device()``), checked to be usable here."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: torch sees no CUDA device here (torch {torch.__version__}); "
            f"use --device cpu, or install a CUDA build of torch"
        )
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices"
            )
    return device


def add_device_argument(parser) -> None:
    """``--device DEVICE`` with the default stated in its help."""
    parser.add_argument(
        "--device",
        default=None,
        help="run models on this device (cpu, cuda, cuda:1); default: cuda when available, "
        "else cpu",
    )
