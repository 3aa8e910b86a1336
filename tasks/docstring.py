"""Docstring (Heimersheim & Janiak 2023): predict the next ``:param`` name.

A function signature lists its arguments, and the docstring documents them in order; after two
documented parameters the model must name the third (in a shorter variant, after one the
second), as in the paper's prompt ``def port(self, load, size, files, last)``. The
counterfactual corrupts the argument names in the signature (fresh names, none of
the clean ones), so the signature no longer tells which name comes next. The distractors are
the signature's other arguments; the metric is the logit difference between the answer and
their mean.

Grouping: ``variant``, ``4-2`` (four arguments, two documented, the paper's prompt) or ``3-1``.
"""

from __future__ import annotations

import random

from circuitboard.tasks import vocab
from circuitboard.tasks.base import Example, TaskSpec


def _render(func: str, signature: list[str], documented: list[str], desc: list[str]) -> str:
    """The prompt: ``signature`` in the def line, ``documented`` in the :param lines."""
    head = f'def {func}(self, {", ".join(signature)}):\n    """{desc[0]} {desc[1]} {desc[2]}\n'
    lines = "".join(
        f"\n    :param {a}: {desc[3 + 2 * i]} {desc[4 + 2 * i]}" for i, a in enumerate(documented)
    )
    return head + lines + "\n    :param"


def pools(tokenizer) -> dict:
    return {
        "args": vocab.pool(tokenizer, vocab.ARG_NAMES),
        # the first description word follows '\"\"\"' with no space
        "desc": vocab.pool(tokenizer, vocab.DESC_WORDS, forms=(" {}", "{}")),
        "funcs": vocab.pool(tokenizer, vocab.FUNC_NAMES),
    }


def sample(rng: random.Random, pools: dict, variant: str = "main") -> Example:
    n_args, n_doc = rng.choice(((4, 2), (3, 1)))
    names = rng.sample(pools["args"], 2 * n_args)
    args, fresh = names[:n_args], names[n_args:]
    desc = [rng.choice(pools["desc"]) for _ in range(3 + 2 * n_doc)]
    func = rng.choice(pools["funcs"])
    answer = args[n_doc]
    return Example(
        clean=_render(func, args, args[:n_doc], desc),
        counterfactual=_render(func, fresh, args[:n_doc], desc),
        answer=(f" {answer}",),
        distractor=tuple(f" {a}" for a in args if a != answer),
        groups={"variant": f"{n_args}-{n_doc}"},
    )


SPEC = TaskSpec(
    name="docstring",
    metric="logit_diff",
    description="Docstring (Heimersheim & Janiak 2023): the next :param name; counterfactual: "
    "corrupted signature argument names",
    pools=pools,
    sample=sample,
    min_pool={"args": 10, "desc": 1, "funcs": 1},
    groupings={"variant": ("4-2", "3-1")},
)
