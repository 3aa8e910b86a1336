"""Induction: continue a repeated sequence of random tokens.

The prompt is L random words (all different) followed by the first k of them again; the answer
is word k + 1, which only the earlier occurrence predicts ("... A B ... A" -> "B"). The
counterfactual replaces the repeated part by fresh words, which breaks the repeat at the same
length. The distractor is another word of the first part; the metric is the logit difference.

Grouping: ``length``, the length L of the random sequence (8 or 10).
"""

from __future__ import annotations

import random

from circuitboard.tasks import vocab
from circuitboard.tasks.base import Example, TaskSpec

LENGTHS = (8, 10)  # L, the length of the random sequence


def words(tokenizer) -> list[str]:
    """The random-token pool: every content word of the toy vocabulary that is one token."""
    pool = (
        vocab.MALE_NAMES
        + vocab.FEMALE_NAMES
        + vocab.PLACES
        + vocab.OBJECTS
        + vocab.EVENTS
        + vocab.ARG_NAMES
        + vocab.DESC_WORDS
        + vocab.ADJECTIVES
        + vocab.ANIMALS
    )
    return vocab.pool(tokenizer, list(dict.fromkeys(pool)))


def pools(tokenizer) -> dict:
    return {"words": words(tokenizer)}


def _text(ws: list[str]) -> str:
    return "".join(f" {w}" for w in ws)


def sample(rng: random.Random, pools: dict, variant: str = "main") -> Example:
    length = rng.choice(LENGTHS)
    k = rng.randint(2, length - 1)
    chosen = rng.sample(pools["words"], length + k)
    first, fresh = chosen[:length], chosen[length:]
    answer = first[k]
    distractor = rng.choice([w for w in first if w != answer])
    return Example(
        clean=_text(first + first[:k]),
        counterfactual=_text(first + fresh),
        answer=(f" {answer}",),
        distractor=(f" {distractor}",),
        groups={"length": str(length)},
    )


SPEC = TaskSpec(
    name="induction",
    metric="logit_diff",
    description="Induction on repeated random tokens; counterfactual: the repeat broken",
    pools=pools,
    sample=sample,
    min_pool={"words": 30},
    groupings={"length": tuple(str(n) for n in LENGTHS)},
)
