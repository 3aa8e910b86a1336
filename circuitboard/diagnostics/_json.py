"""Reports as plain JSON data: result files are written with ``allow_nan=False``."""

from __future__ import annotations

import math


def json_ready(value):
    """``value`` with every non-finite float replaced by None (tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
