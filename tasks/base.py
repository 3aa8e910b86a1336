"""Turning a task's text generator into a checked ``Task`` of token batches.

Every standard task is a ``TaskSpec``: a name, a metric, the word pools it draws from and a
``sample`` function that writes one example as text. This module does the rest, the same way for
every task, so the checks cannot differ between tasks:

- **Splits that cannot overlap.** A prompt belongs to the test split or the train split by a
  hash of its text (``in_test_bucket``), whatever the seed. Train and test are therefore disjoint
  for every seed, and the zoo models, which train only on train-bucket prompts, never saw a test
  prompt of any seed.
- **Same data for the same seed.** Sampling uses ``random.Random`` seeded with a string (stable
  across runs and machines).
- **Single-token answers, equal-length pairs.** Every answer and distractor must encode to one
  token, and a counterfactual to as many tokens as its clean prompt; otherwise an error names the
  example.
- **Batches of one length.** Examples are grouped by length, one ``Batch`` per length.
- **Declared groupings.** A spec lists its groupings and their levels (IOI: ``order`` ABBA/BABA,
  ``template``); every example names its level in each, and a level the spec does not declare
  is an error. Labelling an example draws nothing from the random stream, so the prompts of a
  seed are the same with or without groupings.

torch is imported only where batches are built, so that the specs (a task's name and metric, for
``circuitboard tasks``) are read without it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from circuitboard.task import Batch, Task

TEST_BUCKETS = 4  # one prompt in four (by hash) may go to the test split


@dataclass(frozen=True)
class Example:
    """One example as text. ``answer`` and ``distractor`` hold one or more one-token strings.

    ``groups`` names the example's level in each of its task's groupings (``{"order": "ABBA"}``).
    """

    clean: str
    counterfactual: str
    answer: tuple[str, ...]
    distractor: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass
class TaskSpec:
    """What makes a standard task; ``sample(rng, pools, variant)`` writes one Example.

    ``pools(tokenizer)`` returns the word pools, filtered to words that are one token for this
    tokenizer. ``variant`` is ``"main"`` (train and test) or ``"off"`` (the off-distribution
    split, for tasks that have one). ``groupings`` declares the task's groupings (name -> level
    names, in order); ``sample`` labels each example with one level of each.
    """

    name: str
    metric: str
    description: str
    pools: Callable[[object], dict]
    sample: Callable[[random.Random, dict, str], Example]
    has_off_distribution: bool = False
    min_pool: dict[str, int] = field(default_factory=dict)
    groupings: dict[str, tuple[str, ...]] = field(default_factory=dict)


def in_test_bucket(task_name: str, text: str) -> bool:
    digest = hashlib.sha256(f"{task_name}\x00{text}".encode()).digest()
    return digest[0] % TEST_BUCKETS == 0


def checked_pools(spec: TaskSpec, tokenizer) -> dict:
    pools = spec.pools(tokenizer)
    for key, need in spec.min_pool.items():
        if len(pools[key]) < need:
            raise ValueError(
                f"task {spec.name!r}: only {len(pools[key])} of the {key} are single tokens for "
                f"the {tokenizer.name} tokenizer; the task needs at least {need}"
            )
    return pools


def draw(
    spec: TaskSpec,
    pools: dict,
    n: int,
    rng: random.Random,
    bucket: str,
    variant: str = "main",
    exclude: set[str] | None = None,
) -> list[Example]:
    """``n`` examples with distinct clean prompts from one hash bucket (``"train"``/``"test"``)."""
    want_test = bucket == "test"
    seen: set[str] = set(exclude or ())
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(
                f"task {spec.name!r}: could only draw {len(out)} distinct {bucket} prompts of the "
                f"{n} asked for; ask for fewer (n_train/n_test)"
            )
        ex = spec.sample(rng, pools, variant)
        if ex.clean in seen or in_test_bucket(spec.name, ex.clean) != want_test:
            continue
        seen.add(ex.clean)
        out.append(ex)
    return out


def _one_token(tokenizer, text: str, what: str, example: Example, cache: dict) -> int:
    if text not in cache:
        cache[text] = tokenizer.encode(text)
    ids = cache[text]
    if len(ids) != 1:
        raise ValueError(
            f"{what} {text!r} is {len(ids)} tokens for the {tokenizer.name} tokenizer, not one "
            f"(prompt {example.clean!r}); answers and distractors must be single tokens"
        )
    return ids[0]


def _id_sets(rows: list[list[int]]) -> torch.Tensor:
    """``[n]`` when every row has one id, else ``[n, k]`` padded with -1."""
    import torch

    if all(len(r) == 1 for r in rows):
        return torch.tensor([r[0] for r in rows], dtype=torch.long)
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def encode_example(
    ex: Example,
    tokenizer,
    prepend_bos: bool = True,
    equal_lengths: bool = True,
    cache: dict | None = None,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """``(clean, counterfactual, answer ids, distractor ids)``, checked.

    ``cache`` maps answer texts to their ids across calls (greater-than has ~100 per prompt).
    """
    cache = {} if cache is None else cache
    bos = [tokenizer.bos_id] if prepend_bos else []
    clean = bos + tokenizer.encode(ex.clean)
    counter = bos + tokenizer.encode(ex.counterfactual)
    if len(clean) == 0:
        raise ValueError("a prompt is empty")
    if equal_lengths and len(clean) != len(counter):
        raise ValueError(
            f"clean and counterfactual prompts must have the same number of tokens: "
            f"{ex.clean!r} is {len(clean)} tokens, {ex.counterfactual!r} is {len(counter)}"
        )
    if not ex.answer or not ex.distractor:
        raise ValueError(f"prompt {ex.clean!r} has no answer or no distractor")
    answer = [_one_token(tokenizer, a, "answer", ex, cache) for a in ex.answer]
    distractor = [_one_token(tokenizer, d, "distractor", ex, cache) for d in ex.distractor]
    if set(answer) & set(distractor):
        raise ValueError(f"prompt {ex.clean!r}: a token is both an answer and a distractor")
    return clean, counter, answer, distractor


def group_codes(ex: Example, groupings: dict[str, tuple[str, ...]]) -> list[int]:
    """The example's level code in each declared grouping, in declaration order; checked."""
    if set(ex.groups) != set(groupings):
        raise ValueError(
            f"prompt {ex.clean!r} is labelled for groupings {sorted(ex.groups)}, but the task "
            f"declares {sorted(groupings)}; label every example with one level of each"
        )
    codes = []
    for key, levels in groupings.items():
        label = ex.groups[key]
        if label not in levels:
            raise ValueError(
                f"prompt {ex.clean!r}: level {label!r} of grouping {key!r} is not one of the "
                f"declared levels {list(levels)}"
            )
        codes.append(levels.index(label))
    return codes


def tokenize(
    examples: Sequence[Example],
    tokenizer,
    prepend_bos: bool = True,
    equal_lengths: bool = True,
    groupings: dict[str, tuple[str, ...]] | None = None,
) -> list[Batch]:
    """Encode examples and group them into one Batch per prompt length (shortest first).

    With ``groupings``, each batch carries every example's level codes (``Batch.groups``).
    """
    import torch

    from circuitboard.task import Batch

    by_length: dict[int, list] = {}
    cache: dict = {}
    for ex in examples:
        row = encode_example(ex, tokenizer, prepend_bos, equal_lengths, cache)
        codes = group_codes(ex, groupings or {}) if groupings or ex.groups else None
        by_length.setdefault(len(row[0]), []).append((*row, codes))
    batches = []
    for length in sorted(by_length):
        rows = by_length[length]
        batches.append(
            Batch(
                clean=torch.tensor([r[0] for r in rows], dtype=torch.long),
                counterfactual=torch.tensor([r[1] for r in rows], dtype=torch.long),
                answer=_id_sets([r[2] for r in rows]),
                distractor=_id_sets([r[3] for r in rows]),
                groups=torch.tensor([r[4] for r in rows], dtype=torch.long) if groupings else None,
            )
        )
    return batches


def prompt_set(batches: Sequence[Batch]) -> set[tuple[int, ...]]:
    return {tuple(row) for b in batches for row in b.clean.tolist()}


def check_disjoint(name: str, train: Sequence[Batch], test: Sequence[Batch]) -> None:
    shared = prompt_set(train) & prompt_set(test)
    if shared:
        raise ValueError(
            f"task {name!r}: {len(shared)} prompts are in both train and test, e.g. "
            f"{list(next(iter(shared)))}; every prompt must be in one split only"
        )


def build_task(
    spec: TaskSpec,
    tokenizer,
    *,
    seed: int = 0,
    n_train: int = 256,
    n_test: int = 256,
    n_off: int = 256,
    models: Sequence[str] = (),
) -> Task:
    """The checked Task of ``spec`` for ``tokenizer``; the same seed gives the same data."""
    from circuitboard.task import Task

    for key, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    pools = checked_pools(spec, tokenizer)
    rng = random.Random(f"{spec.name}|{seed}")
    test = draw(spec, pools, n_test, rng, "test")
    train = draw(spec, pools, n_train, rng, "train")
    off = []
    if spec.has_off_distribution and n_off:
        off = draw(spec, pools, n_off, rng, "test", variant="off")
    groupings = spec.groupings
    train_b = tokenize(train, tokenizer, groupings=groupings)
    test_b = tokenize(test, tokenizer, groupings=groupings)
    check_disjoint(spec.name, train_b, test_b)
    return Task(
        name=spec.name,
        train=train_b,
        test=test_b,
        metric=spec.metric,
        positions="last",
        models=tuple(models),
        off_distribution=tokenize(off, tokenizer, groupings=groupings) if off else [],
        description=spec.description,
        groupings=dict(groupings),
    )
