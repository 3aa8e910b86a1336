"""Indirect object identification (Wang et al. 2022).

"When Mary and John went to the store, John gave a drink to" -> " Mary". Two names are
introduced; one (the subject, S) is repeated, and the model must name the other (the indirect
object, IO). Both orders appear: ABBA (IO first) and BABA (S first). The counterfactual is the
ABC prompt: the repeated subject is replaced by a third name, so nothing marks which of the
first two names is the answer. Metric: logit difference IO - S at the last position.

Groupings: ``order`` (ABBA: the IO comes first; BABA: the subject does) and ``template`` (the
index of the template in ``TEMPLATES``), the two splits along which Wang et al. and later work
found IOI circuits to behave differently.
"""

from __future__ import annotations

import random

from circuitboard.tasks import vocab
from circuitboard.tasks.base import Example, TaskSpec

# {A} and {B} are the first two names, {S2} the repeated subject, {place} and {obj} fillers.
TEMPLATES = (
    "When {A} and {B} went to the {place}, {S2} gave a {obj} to",
    "Then, {A} and {B} went to the {place}. {S2} gave a {obj} to",
    "After {A} and {B} went to the {place}, {S2} gave a {obj} to",
    "While {A} and {B} were working at the {place}, {S2} gave a {obj} to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S2} gave a {obj} to",
    "When {A} and {B} went to the {place}, {S2} handed the {obj} to",
)


def pools(tokenizer) -> dict:
    return {
        "names": vocab.pool(tokenizer, vocab.MALE_NAMES + vocab.FEMALE_NAMES),
        "places": vocab.pool(tokenizer, vocab.PLACES),
        "objects": vocab.pool(tokenizer, vocab.OBJECTS),
    }


def sample(rng: random.Random, pools: dict, variant: str = "main") -> Example:
    io, s, c = rng.sample(pools["names"], 3)
    template = rng.choice(TEMPLATES)
    abba = rng.random() < 0.5
    first, second = (io, s) if abba else (s, io)
    fill = {"A": first, "B": second, "place": rng.choice(pools["places"])}
    fill["obj"] = rng.choice(pools["objects"])
    return Example(
        clean=template.format(S2=s, **fill),
        counterfactual=template.format(S2=c, **fill),
        answer=(f" {io}",),
        distractor=(f" {s}",),
        groups={"order": "ABBA" if abba else "BABA", "template": str(TEMPLATES.index(template))},
    )


SPEC = TaskSpec(
    name="ioi",
    metric="logit_diff",
    description="Indirect object identification (Wang et al. 2022); counterfactual: ABC prompts",
    pools=pools,
    sample=sample,
    min_pool={"names": 3, "places": 1, "objects": 1},
    groupings={"order": ("ABBA", "BABA"), "template": tuple(str(i) for i in range(len(TEMPLATES)))},
)
