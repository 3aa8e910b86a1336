"""Greater-than (Hanna et al. 2023).

"The war lasted from the year 1732 to the year 17" -> a year greater than 32. The answer is the
set of two-digit tokens above YY and the distractor the set at or below it; the metric is the
probability difference between the two sets. The counterfactual sets YY to 01, which leaves
(almost) every year above it a valid answer. YY runs from 02 to 98, as in the paper, so both
sets are never empty.
"""

from __future__ import annotations

import random

from circuitboard.tasks import vocab
from circuitboard.tasks.base import Example, TaskSpec

TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"
YEARS = range(2, 99)


def pools(tokenizer) -> dict:
    years = [y for y in range(100) if _year_splits(tokenizer, y)]
    missing = sorted(set(range(1, 100)) - set(years))
    if missing:
        raise ValueError(
            f"greater-than needs ' 17YY' to be ' 17' + 'YY' for every YY in 01..99 with the "
            f"{tokenizer.name} tokenizer; it is not for {missing[:5]}"
        )
    return {"nouns": vocab.pool(tokenizer, vocab.EVENTS), "years": years}


def _year_splits(tokenizer, yy: int) -> bool:
    try:
        return tokenizer.encode(f" 17{yy:02d}") == tokenizer.encode(" 17") + tokenizer.encode(
            f"{yy:02d}"
        )
    except ValueError:
        return False


def sample(rng: random.Random, pools: dict, variant: str = "main") -> Example:
    noun, yy = rng.choice(pools["nouns"]), rng.choice(YEARS)
    return Example(
        clean=TEMPLATE.format(noun=noun, yy=f"{yy:02d}"),
        counterfactual=TEMPLATE.format(noun=noun, yy="01"),
        answer=tuple(f"{y:02d}" for y in range(yy + 1, 100)),
        distractor=tuple(f"{y:02d}" for y in range(0, yy + 1)),
    )


SPEC = TaskSpec(
    name="greater-than",
    metric="prob_diff",
    description="Greater-than (Hanna et al. 2023): P(year > YY) - P(year <= YY); "
    "counterfactual YY = 01",
    pools=pools,
    sample=sample,
    min_pool={"nouns": 1},
)
