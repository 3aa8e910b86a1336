"""Published Tracr ground truths, mapped to our edge names, with the data each was found on.

Our ``input`` node is the token and position embeddings together, so an edge from either embedding
becomes one edge from ``input``.

- ACDC (Conmy et al. 2023, ``acdc/tracr_task/utils.py``) lists the circuits it recovered with zero
  ablation and an L2 metric: 11 residual-stream edges for reverse and 7 for proportion
  (frac_prevs) with separate token and position embeddings; merged, 10 and 5.
  ACDC's data: reverse is the 6 permutations of the tokens 1, 2, 3 after BOS (length 4); its
  proportion data are strings of 4 tokens from w, x, y, z drawn at random *without* a BOS token,
  so position 0 holds an ordinary token (and no position embedding), and only output 0 of an
  identity unembedding is scored (which happens to be the frac_prevs dimension). We use all 256
  such strings, of which ACDC drew 100 (50 validation, 50 test).
- auto-circuit (Miller et al. 2024, ``metrics/official_circuits/circuits/tracr``) gives the
  circuits for patching with a corrupt input of the same length: all length-5 inputs after BOS,
  each paired with a different random input of length 5.
"""

from __future__ import annotations

import itertools

import torch

from circuitboard.groundtruth.derive import Data
from circuitboard.loaders.tracr import encode

ACDC_ZERO = {
    "reverse": [
        "a3.h0->logits",
        "m2->a3.h0<q>",
        "input->a3.h0<k>",
        "input->a3.h0<v>",
        "m1->m2",
        "m0->m1",
        "input->m1",
        "a0.h0->m0",
        "input->m0",
        "input->a0.h0<v>",
    ],
    "frac_prevs": [
        "a1.h0->logits",
        "input->a1.h0<q>",
        "input->a1.h0<k>",
        "m0->a1.h0<v>",
        "input->m0",
    ],
}
ACDC_UNMERGED_COUNTS = {"reverse": 11, "frac_prevs": 7}

AUTO_CIRCUIT_RESAMPLE = {
    "reverse": ["input->a3.h0<v>", "a3.h0->logits"],
    "frac_prevs": ["input->m0", "m0->a1.h0<v>", "a1.h0->logits"],
}


def acdc_data(model) -> Data:
    """ACDC's inputs for ``reverse`` or ``frac_prevs`` (see the module docstring)."""
    name = model.program["name"]
    info = model.tracr_info
    if name == "reverse":
        perms = list(itertools.permutations([1, 2, 3]))
        return Data([encode(info, perms)], labels={"source": "ACDC reverse: 6 permutations"})
    if name == "frac_prevs":
        ids = {t: i for i, t in enumerate(info["input_tokens"])}
        seqs = list(itertools.product("wxyz", repeat=4))
        tokens = torch.tensor([[ids[t] for t in s] for s in seqs], dtype=torch.long)
        return Data([tokens], labels={"source": "ACDC proportion: 256 strings of 4, no BOS"})
    raise KeyError(f"ACDC has no Tracr data for {name!r}; it has reverse and frac_prevs")


def auto_circuit_data(model, seed: int = 0) -> Data:
    """All length-5 inputs after BOS, each with a different random input as its corruption."""
    program = model.program
    seqs = list(itertools.product(program["vocab"], repeat=5))
    clean = encode(model.tracr_info, seqs)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, len(seqs), (len(seqs),), generator=gen)
    corrupt = clean[(torch.arange(len(seqs)) + shift) % len(seqs)]
    return Data([clean], [corrupt], labels={"source": "auto-circuit: all length-5 inputs"})
