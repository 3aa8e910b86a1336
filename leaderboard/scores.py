"""How circuits and per-example metrics are stored in results, and seed-to-seed agreement.

Circuits are stored as packed bit strings (one bit per edge, graph edge order), so a result for
a 32k-edge model stays small and the robustness table can compare seeds without rerunning
anything. Per-example metrics (what ``circuitboard.scoring`` ranks from) are stored as
zlib-compressed float64 arrays, so ranks computed from stored results equal those computed in
memory bit for bit. Every verdict itself lives in ``circuitboard.scoring``.
"""

from __future__ import annotations

import base64
import itertools
import zlib

import numpy as np
import torch

from circuitboard import scoring


def pack(keep: torch.Tensor) -> str:
    """A boolean edge vector as base64 of its packed bits."""
    bits = np.packbits(torch.as_tensor(keep).bool().cpu().numpy().astype(np.uint8))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack(text: str, n_edges: int) -> torch.Tensor:
    """The inverse of ``pack``; the length check catches a circuit of another graph."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8)
    if len(raw) != (n_edges + 7) // 8:
        raise ValueError(f"packed circuit holds {len(raw) * 8} bits, not {n_edges} edges")
    return torch.from_numpy(np.unpackbits(raw)[:n_edges].astype(bool))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b|, 1 for two empty circuits."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mean_pairwise_jaccard(keeps: list[torch.Tensor]) -> float | None:
    pairs = list(itertools.combinations(keeps, 2))
    if not pairs:
        return None
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs)


def pack_floats(values: torch.Tensor) -> dict:
    """A float array as ``{"shape", "data"}``: base64 of zlib-compressed little-endian float64."""
    array = np.ascontiguousarray(torch.as_tensor(values).double().cpu().numpy(), dtype="<f8")
    data = base64.b64encode(zlib.compress(array.tobytes(), 6)).decode("ascii")
    return {"shape": list(array.shape), "data": data}


MAX_PACKED_BYTES = 256 * 2**20  # a stored array may not inflate beyond this


def unpack_floats(packed: dict) -> torch.Tensor:
    """The inverse of ``pack_floats``; a malformed or oversized entry is a ``ValueError``."""
    try:
        shape = [int(n) for n in packed["shape"]]
        raw = base64.b64decode(packed["data"].encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, MAX_PACKED_BYTES + 1)
    except (KeyError, TypeError, AttributeError, ValueError, zlib.error) as err:
        raise ValueError(f"malformed packed array ({err})") from None
    if len(data) > MAX_PACKED_BYTES or inflater.unconsumed_tail:
        raise ValueError(f"packed array inflates beyond {MAX_PACKED_BYTES} bytes")
    if any(n < 0 for n in shape) or int(np.prod(shape)) * 8 != len(data):
        raise ValueError(f"packed array holds {len(data)} bytes, not the shape {shape}")
    return torch.from_numpy(np.frombuffer(data, dtype="<f8").reshape(shape).copy())


def pack_per_example(data: scoring.PerExample) -> dict:
    return {
        "circuit": pack_floats(data.circuit),
        "empty": pack_floats(data.empty),
        "full": pack_floats(data.full),
        "sizes": list(data.sizes),
        "budgets": list(data.budgets),
        "own": list(data.own),
        "n_edges": data.n_edges,
        "digest": data.digest,
    }


def unpack_per_example(packed: dict) -> scoring.PerExample:
    """A stored ``per_example`` section back as ``scoring.PerExample``; ValueError if malformed."""
    try:
        return scoring.PerExample(
            circuit=unpack_floats(packed["circuit"]),
            empty=unpack_floats(packed["empty"]),
            full=unpack_floats(packed["full"]),
            sizes=[int(v) for v in packed["sizes"]],
            budgets=[int(v) for v in packed["budgets"]],
            own=[None if v is None else int(v) for v in packed["own"]],
            n_edges=int(packed["n_edges"]),
            digest=str(packed.get("digest", "")),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed per-example section ({err!r})") from None
