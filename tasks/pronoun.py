"""Gendered pronoun: the pronoun must match the gender of the right name.

"Then, Mary and John went to the park. So John is a really great friend, isn't" -> " he". Two names
are introduced and one of them is taken up again; the pronoun must agree with that one. In the
main distribution (train and test) the two names differ in gender, so the other name is a
gender cue that points the wrong way. The same-gender prompts are the off-distribution split
(``Task.off_distribution``): circuits are found on the opposite-gender data and their
faithfulness is also reported there. The counterfactual replaces the referred-to name by one of
the other gender, which flips the answer; the metric is the logit difference right - wrong
pronoun.

Groupings: ``pairing`` (``opposite``: the two names differ in gender, the main distribution;
``same``: the off-distribution split), ``gender`` (the referred-to name's gender, hence the
right pronoun) and ``template``. A breakdown by ``pairing`` needs both splits, e.g.
``split=("test", "off_distribution")``.
"""

from __future__ import annotations

import random

from circuitboard.tasks import vocab
from circuitboard.tasks.base import Example, TaskSpec

# {R} is the name the pronoun refers to, {O} the other one.
TEMPLATES = (  # no template starts with a name: a name is one token only after a space
    "Then, {O} and {R} went to the {place}. So {R} is a really great friend, isn't",
    "Then, {R} and {O} went to the {place}. So {R} is a really great friend, isn't",
    "At the {place}, {O} met {R}. So {R} is a really good friend, isn't",
    "At the {place}, {R} met {O}. So {R} is a really nice friend, isn't",
    "Then, {O} and {R} had a lot of fun at the {place}. So {R} is very tall, isn't",
)
PRONOUN = {"male": " he", "female": " she"}


def pools(tokenizer) -> dict:
    return {
        "male": vocab.pool(tokenizer, vocab.MALE_NAMES),
        "female": vocab.pool(tokenizer, vocab.FEMALE_NAMES),
        "places": vocab.pool(tokenizer, vocab.PLACES),
    }


def sample(rng: random.Random, pools: dict, variant: str = "main") -> Example:
    gender = rng.choice(("male", "female"))
    other_gender = "female" if gender == "male" else "male"
    right = rng.choice(pools[gender])
    if variant == "off":  # same gender
        other = rng.choice([n for n in pools[gender] if n != right])
    else:
        other = rng.choice(pools[other_gender])
    swapped = rng.choice([n for n in pools[other_gender] if n != other])
    template, place = rng.choice(TEMPLATES), rng.choice(pools["places"])
    return Example(
        clean=template.format(R=right, O=other, place=place),
        counterfactual=template.format(R=swapped, O=other, place=place),
        answer=(PRONOUN[gender],),
        distractor=(PRONOUN[other_gender],),
        groups={
            "pairing": "same" if variant == "off" else "opposite",
            "gender": gender,
            "template": str(TEMPLATES.index(template)),
        },
    )


SPEC = TaskSpec(
    name="gendered-pronoun",
    metric="logit_diff",
    description="Gendered pronoun: agree with the right name's gender; off-distribution split: "
    "same-gender name pairs",
    pools=pools,
    sample=sample,
    has_off_distribution=True,
    min_pool={"male": 3, "female": 3, "places": 1},
    groupings={
        "pairing": ("opposite", "same"),
        "gender": ("female", "male"),
        "template": tuple(str(i) for i in range(len(TEMPLATES))),
    },
)
