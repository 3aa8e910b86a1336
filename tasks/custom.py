"""Custom tasks from token ids or from a JSON file of prompts, checked like the built-ins.

``from_tokens`` takes token ids; ``from_json`` takes text and tokenises it for a model. Both
refuse empty input, unequal clean/counterfactual lengths, answers that are not single tokens,
and a prompt given twice (it could land in both train and test). The answer is read at the
last position of the prompt. Examples are split into train and test by a seeded shuffle and
grouped into one batch per length.

JSON schema (``from_json``)::

    {
      "name": "my-task",                 # optional; default: the file's name
      "metric": "logit_diff",            # optional: logit_diff | prob_diff | accuracy
      "description": "...",              # optional
      "test_fraction": 0.5,              # optional, in (0, 1)
      "prepend_bos": true,               # optional: start every prompt with the BOS token
      "examples": [
        {"clean": "When John and Mary went to the store, John gave a drink to",
         "counterfactual": "When John and Mary went to the store, Tom gave a drink to",
         "answer": " Mary",              # a string, or a list of strings (an answer set)
         "distractor": " John"}          # likewise
      ]
    }

A bare list of examples is accepted too. Text is tokenised with the model's tokenizer
(``model=``/``model_path=``/``tokenizer=``, as for ``circuitboard.tasks.load``; the default is the
zoo's toy vocabulary). Mind the leading space: in GPT-2, ``" Mary"`` is one token and ``"Mary"``
another.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

import torch

from circuitboard import metrics
from circuitboard.task import Batch, Task
from circuitboard.tasks.base import Example, check_disjoint, encode_example

CUSTOM_METRICS = ("logit_diff", "prob_diff", "accuracy")


def _split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    if n < 2:
        raise ValueError(f"a task needs at least 2 examples (one to train, one to test), got {n}")
    order = list(range(n))
    random.Random(f"custom|{seed}").shuffle(order)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    return sorted(order[n_test:]), sorted(order[:n_test])


def _check_metric(metric: str) -> None:
    if metric not in CUSTOM_METRICS:
        known = ", ".join(CUSTOM_METRICS)
        raise ValueError(
            f"metric {metric!r} does not fit a prompt/answer task; choose one of {known}"
            + (" (l2 needs float targets)" if metric in metrics.TASK_METRICS else "")
        )


def _as_rows(values, what: str) -> list[list[int]]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    rows = []
    for i, row in enumerate(values):
        if isinstance(row, torch.Tensor):
            row = row.tolist()
        if isinstance(row, int):
            row = [row]
        if not isinstance(row, Sequence) or not all(isinstance(t, int) for t in row):
            raise TypeError(f"{what}[{i}] must be a token id or a list of token ids, got {row!r}")
        rows.append(list(row))
    return rows


def from_tokens(
    clean,
    counterfactual,
    answer,
    distractor,
    metric: str = "logit_diff",
    name: str = "custom",
    *,
    test_fraction: float = 0.5,
    seed: int = 0,
    vocab_size: int | None = None,
    description: str = "",
    models: Sequence[str] = (),
) -> Task:
    """A Task from token ids; the answer is read at the last position of each prompt.

    - ``clean``, ``counterfactual``: ``n`` prompts, each a list of token ids (or ``[n, pos]``
      tensors); each counterfactual must be as long as its clean prompt.
    - ``answer``, ``distractor``: ``n`` token ids, or ``n`` lists of ids (an answer set, as for
      ``prob_diff``); a list is a *set* of alternatives, never a multi-token answer.
    - ``vocab_size``: if given, every id must lie in ``[0, vocab_size)``.
    """
    _check_metric(metric)
    clean, counter = _as_rows(clean, "clean"), _as_rows(counterfactual, "counterfactual")
    answer, distractor = _as_rows(answer, "answer"), _as_rows(distractor, "distractor")
    n = len(clean)
    if n == 0:
        raise ValueError(f"task {name!r}: no examples were given")
    for what, rows in (("counterfactual", counter), ("answer", answer), ("distractor", distractor)):
        if len(rows) != n:
            raise ValueError(f"task {name!r}: {n} clean prompts but {len(rows)} {what} entries")
    seen: dict[tuple[int, ...], int] = {}
    for i in range(n):
        if not clean[i]:
            raise ValueError(f"task {name!r}: clean prompt {i} is empty")
        if len(clean[i]) != len(counter[i]):
            raise ValueError(
                f"task {name!r}: example {i}: the clean prompt has {len(clean[i])} tokens and the "
                f"counterfactual {len(counter[i])}; they must be equally long"
            )
        if not answer[i] or not distractor[i]:
            raise ValueError(f"task {name!r}: example {i} has an empty answer or distractor")
        ids = clean[i] + counter[i] + answer[i] + distractor[i]
        if min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size):
            raise ValueError(
                f"task {name!r}: example {i} has token ids outside [0, {vocab_size or 'vocab'})"
            )
        key = tuple(clean[i])
        if key in seen:
            raise ValueError(
                f"task {name!r}: examples {seen[key]} and {i} have the same clean prompt; "
                f"a repeated prompt could land in both train and test"
            )
        seen[key] = i
    train_idx, test_idx = _split(n, test_fraction, seed)

    def batches(index: list[int]) -> list[Batch]:
        groups: dict[int, list[int]] = {}
        for i in index:
            groups.setdefault(len(clean[i]), []).append(i)
        out = []
        for length in sorted(groups):
            rows = groups[length]
            out.append(
                Batch(
                    clean=torch.tensor([clean[i] for i in rows]),
                    counterfactual=torch.tensor([counter[i] for i in rows]),
                    answer=_pad([answer[i] for i in rows]),
                    distractor=_pad([distractor[i] for i in rows]),
                )
            )
        return out

    train, test = batches(train_idx), batches(test_idx)
    check_disjoint(name, train, test)
    return Task(name, train, test, metric=metric, models=tuple(models), description=description)


def _pad(rows: list[list[int]]) -> torch.Tensor:
    if all(len(r) == 1 for r in rows):
        return torch.tensor([r[0] for r in rows])
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows])


def _texts(value, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{where} must be a string or a non-empty list of strings, got {value!r}")
    return tuple(items)


def from_json(
    path: str | os.PathLike,
    model=None,
    *,
    model_path: str | None = None,
    tokenizer=None,
    seed: int = 0,
) -> Task:
    """A Task from a JSON file of text prompts (schema in the module docstring)."""
    from circuitboard.tasks.resolve import resolve_tokenizer

    path = os.fspath(path)
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, list):
        data = {"examples": data}
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise ValueError(f"{path}: expected an object with an 'examples' list (or a bare list)")
    known = {"name", "metric", "description", "test_fraction", "prepend_bos", "examples"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known keys: {sorted(known)}")
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]
    metric = data.get("metric", "logit_diff")
    _check_metric(metric)
    if not data["examples"]:
        raise ValueError(f"{path}: 'examples' is empty")
    examples = []
    for i, item in enumerate(data["examples"]):
        where = f"{path}: examples[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        missing = [k for k in ("clean", "counterfactual", "answer", "distractor") if k not in item]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        if not isinstance(item["clean"], str) or not isinstance(item["counterfactual"], str):
            raise ValueError(f"{where}: 'clean' and 'counterfactual' must be strings")
        examples.append(
            Example(
                item["clean"],
                item["counterfactual"],
                _texts(item["answer"], f"{where}.answer"),
                _texts(item["distractor"], f"{where}.distractor"),
            )
        )
    tok, models = resolve_tokenizer(model, model_path=model_path, tokenizer=tokenizer)
    bos = bool(data.get("prepend_bos", True))
    rows = []
    for i, ex in enumerate(examples):
        try:
            rows.append(encode_example(ex, tok, prepend_bos=bos))
        except ValueError as err:
            raise ValueError(f"{path}: examples[{i}]: {err}") from None
    return from_tokens(
        clean=[r[0] for r in rows],
        counterfactual=[r[1] for r in rows],
        answer=[r[2] for r in rows],
        distractor=[r[3] for r in rows],
        metric=metric,
        name=name,
        test_fraction=float(data.get("test_fraction", 0.5)),
        seed=seed,
        description=data.get("description", ""),
        models=models or (),
    )
