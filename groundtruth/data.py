"""Data for a Tracr program: every valid input, BOS first, grouped by length, never padded.

Tracr does not mask PAD, so a padded input would change the outputs; each length is its own batch
instead. Targets are the compiled model's own outputs (tracr's numerical MLPs are approximate, so
the RASP evaluator's values would not be the model's). A counterfactual is another example of the
same length, so resample and counterfactual ablations stay in distribution. The split is
deterministic: a seeded shuffle per length, alternate examples to train and test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from circuitboard.ablation import derangement
from circuitboard.groundtruth.derive import single_thread
from circuitboard.loaders.tracr import encode
from circuitboard.task import Batch, Task

MAX_PER_LENGTH = 1024  # exhaustive up to this many inputs of one length, else a seeded sample
MIN_SPLIT = 4  # a length with fewer inputs goes to train only (test needs two to resample)


def raw_inputs(
    vocab, length: int, valid: Callable | None = None, limit: int = MAX_PER_LENGTH, seed: int = 0
) -> list[tuple]:
    """Inputs of one length (no BOS): all of them, or a seeded sample of ``limit``."""
    vocab = list(vocab)
    total = len(vocab) ** length
    if total <= 8 * limit:
        seqs = [s for s in itertools.product(vocab, repeat=length) if valid is None or valid(s)]
        if len(seqs) <= limit:
            return seqs
        gen = torch.Generator().manual_seed(seed * 1009 + length)
        pick = torch.randperm(len(seqs), generator=gen)[:limit].sort().values
        return [seqs[i] for i in pick.tolist()]
    gen = torch.Generator().manual_seed(seed * 1009 + length)
    seen, out = set(), []
    for _ in range(50 * limit):
        s = tuple(vocab[i] for i in torch.randint(len(vocab), (length,), generator=gen).tolist())
        if s not in seen and (valid is None or valid(s)):
            seen.add(s)
            out.append(s)
            if len(out) == limit:
                break
    return sorted(out, key=lambda s: [vocab.index(t) for t in s])


def token_groups(model, valid: Callable | None = None, lengths=None) -> list[torch.Tensor]:
    """Token ids ``[n, 1 + L]`` for every input length ``L`` (1 .. max_seq_len)."""
    info, program = model.tracr_info, model.program
    lengths = lengths or range(1, program["max_seq_len"] + 1)
    groups = []
    for length in lengths:
        seqs = raw_inputs(program["vocab"], length, valid)
        if seqs:
            groups.append(encode(info, seqs))
    return groups


@torch.no_grad()
def make_batch(model, tokens: torch.Tensor, seed: int) -> Batch:
    counterfactual = tokens[derangement(len(tokens), seed)]
    with single_thread():
        target = model(tokens).float()
    return Batch(clean=tokens, counterfactual=counterfactual, target=target)


def split(tokens: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seeded shuffle, then alternate examples to train and test."""
    n = len(tokens)
    if n < MIN_SPLIT:
        return tokens, None
    gen = torch.Generator().manual_seed(seed + 7919 * tokens.shape[1])
    order = torch.randperm(n, generator=gen)
    return tokens[order[0::2]], tokens[order[1::2]]


def make_task(model, valid: Callable | None = None, seed: int = 0) -> Task:
    """The program's Task: metric ``l2`` after BOS against the model's own outputs."""
    program = model.program
    train, test = [], []
    for tokens in token_groups(model, valid):
        tr, te = split(tokens, seed)
        train.append(make_batch(model, tr, seed))
        if te is not None:
            test.append(make_batch(model, te, seed + 1))
    kind = "categorical" if program["categorical"] else "numerical"
    return Task(
        name=f"tracr/{program['name']}",
        train=train,
        test=test,
        metric="l2",
        positions="after_bos",
        models=(f"tracr/{program['name']}",),
        description=f"{program['description']} ({kind} output; L2 to the compiled model's "
        f"outputs after BOS{', argmax accuracy' if program['categorical'] else ''})",
        categorical=bool(program["categorical"]),
    )
