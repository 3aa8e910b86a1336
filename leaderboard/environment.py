"""Where a result was computed: package versions, git commit, hardware.

A number on the leaderboard is only as good as the ability to recompute it, so every result
records the software and machine that produced it. Looked up once per process.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = ("circuitboard", "torch", "numpy", "transformer-lens", "pandas", "tracr-pypi", "ray")


@functools.lru_cache(maxsize=1)
def _static() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git": git_state(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def environment(device=None) -> dict:
    """Versions, git commit and hardware; ``device`` is the model's device."""
    import torch

    info = dict(_static())
    info["torch_threads"] = torch.get_num_threads()
    kind = getattr(device, "type", str(device or "cpu"))
    info["device"] = kind
    if kind == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_state() -> dict:
    """The commit of the checkout circuitboard runs from, and whether it has local changes."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", here, *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or sys.platform
