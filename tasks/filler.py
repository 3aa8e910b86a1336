"""Filler text from a small grammar, in the toy vocabulary.

The zoo's language models see it beside the task prompts so that they model ordinary word order
too, not only five templates. Sentences such as "the old cat saw a red ball at the park ." or
"Mary found a dog and she liked the bird ." are drawn from word pools; none of them has the
shape of a task prompt.
"""

from __future__ import annotations

import random

from circuitboard.tasks import vocab

_NAMES = vocab.MALE_NAMES + vocab.FEMALE_NAMES
_THINGS = vocab.ANIMALS + vocab.OBJECTS


def _noun_phrase(rng: random.Random) -> str:
    det = rng.choice(("the", "a"))
    if rng.random() < 0.5:
        return f"{det} {rng.choice(vocab.ADJECTIVES)} {rng.choice(_THINGS)}"
    return f"{det} {rng.choice(_THINGS)}"


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.5:  # a name taken up by its pronoun: "Mary saw a dog and she ..."
        gender = rng.choice(("he", "she"))
        name = rng.choice(vocab.MALE_NAMES if gender == "he" else vocab.FEMALE_NAMES)
        first, second = rng.sample(vocab.VERBS_PAST, 2)
        return f"{name} {first} {_noun_phrase(rng)} and {gender} {second} {_noun_phrase(rng)} ."
    subject = rng.choice(_NAMES) if rng.random() < 0.4 else _noun_phrase(rng)
    verb = rng.choice(vocab.VERBS_PAST)
    obj = _noun_phrase(rng)
    if rng.random() < 0.5:
        prep = rng.choice(("at", "in", "on", "with"))
        return f"{subject} {verb} {obj} {prep} the {rng.choice(vocab.PLACES)} ."
    return f"{subject} {verb} {obj} ."


def text(rng: random.Random, min_words: int = 16) -> str:
    """Sentences joined until at least ``min_words`` words."""
    out: list[str] = []
    while sum(len(s.split()) for s in out) < min_words:
        out.append(sentence(rng))
    return " ".join(out)
