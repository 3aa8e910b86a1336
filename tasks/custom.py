"""Custom tasks from token ids or from a JSON file of prompts, checked like the built-ins.

``from_tokens`` takes token ids; ``from_json`` takes text and tokenises it for a model. Both
refuse empty input, unequal clean/counterfactual lengths, answers that are not single tokens,
a token that is both an answer and a distractor of one example (the logit difference would be
0 and faithfulness 0/0), token ids outside the model's vocabulary, and a prompt given twice (it
could land in both train and test). The answer is read at the last position of the prompt.
Examples are split into train and test by a seeded shuffle and grouped into one batch per
length.

Each example may carry a ``group`` label (or several, one per named grouping); the task then
declares those groupings, their levels being the labels seen, sorted, so that scores can be
broken down by group (``circuitboard.diagnostics.group_variance``).

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
         "distractor": " John",          # likewise
         "group": "ABBA"}                # optional: a label, or {"grouping": "label", ...};
      ]                                  #   given on every example or on none
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


def _vocabulary(model, vocab_size: int | None) -> tuple[int | None, int | None]:
    """``(input size, output size)`` the ids must fit: the model's, else ``vocab_size`` for both."""
    if model is None:
        return vocab_size, vocab_size
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "d_vocab"):
        raise TypeError(f"model= must be a PatchableTransformer (with .cfg.d_vocab), got {model!r}")
    if vocab_size is not None:
        raise ValueError("give model= or vocab_size=, not both")
    return cfg.d_vocab, cfg.d_vocab_out


def _check_ids(name: str, i: int, what: str, ids: list[int], size: int | None, side: str) -> None:
    for t in ids:
        if t < 0 or (size is not None and t >= size):
            where = (
                f"the model's {side} vocabulary [0, {size})" if size is not None else "[0, vocab)"
            )
            raise ValueError(
                f"task {name!r}: example {i}: {what} token id {t} is outside {where}; "
                f"give ids the model knows (check the tokenizer, or model=/vocab_size=)"
            )


def _group_rows(group, n: int, name: str) -> dict[str, list[str]]:
    """``group`` as ``{grouping: n labels}``: one list of labels is the grouping ``"group"``."""
    if group is None:
        return {}
    if isinstance(group, dict):
        out = dict(group)
    elif isinstance(group, (list, tuple)):
        out = {"group": list(group)}
    else:
        raise TypeError(
            f"task {name!r}: group= must be a list of n labels or a dict of such lists, "
            f"got {type(group).__name__}"
        )
    for key, labels in out.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"task {name!r}: grouping names must be non-empty strings, got {key!r}"
            )
        if len(labels) != n:
            raise ValueError(
                f"task {name!r}: grouping {key!r} has {len(labels)} labels for {n} examples"
            )
        bad = [x for x in labels if not isinstance(x, (str, int)) or isinstance(x, bool)]
        if bad:
            raise ValueError(
                f"task {name!r}: grouping {key!r}: labels must be strings (or ints), got {bad[0]!r}"
            )
        out[key] = [str(x) for x in labels]
    return out


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
    model=None,
    vocab_size: int | None = None,
    group=None,
    description: str = "",
    models: Sequence[str] = (),
) -> Task:
    """A Task from token ids; the answer is read at the last position of each prompt.

    - ``clean``, ``counterfactual``: ``n`` prompts, each a list of token ids (or ``[n, pos]``
      tensors); each counterfactual must be as long as its clean prompt.
    - ``answer``, ``distractor``: ``n`` token ids, or ``n`` lists of ids (an answer set, as for
      ``prob_diff``); a list is a *set* of alternatives, never a multi-token answer. No id may be
      both an answer and a distractor of one example.
    - ``model``: the PatchableTransformer the task is for; prompt ids must lie in
      ``[0, cfg.d_vocab)`` and answer and distractor ids in ``[0, cfg.d_vocab_out)`` (the
      logits they index). Or ``vocab_size``: every id in ``[0, vocab_size)``.
    - ``group``: ``n`` labels (the grouping ``"group"``), or ``{grouping: n labels}``; the task
      declares each grouping with its labels, sorted, as levels.
    """
    _check_metric(metric)
    d_in, d_out = _vocabulary(model, vocab_size)
    clean, counter = _as_rows(clean, "clean"), _as_rows(counterfactual, "counterfactual")
    answer, distractor = _as_rows(answer, "answer"), _as_rows(distractor, "distractor")
    n = len(clean)
    if n == 0:
        raise ValueError(f"task {name!r}: no examples were given")
    for what, rows in (("counterfactual", counter), ("answer", answer), ("distractor", distractor)):
        if len(rows) != n:
            raise ValueError(f"task {name!r}: {n} clean prompts but {len(rows)} {what} entries")
    labels = _group_rows(group, n, name)
    groupings = {key: tuple(sorted(set(values))) for key, values in labels.items()}
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
        _check_ids(name, i, "clean", clean[i], d_in, "input")
        _check_ids(name, i, "counterfactual", counter[i], d_in, "input")
        _check_ids(name, i, "answer", answer[i], d_out, "output")
        _check_ids(name, i, "distractor", distractor[i], d_out, "output")
        shared = sorted(set(answer[i]) & set(distractor[i]))
        if shared:
            raise ValueError(
                f"task {name!r}: example {i}: token {shared[0]} is both an answer and a "
                f"distractor; the metric would not tell them apart (faithfulness 0/0)"
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
                    groups=_codes(labels, groupings, rows),
                )
            )
        return out

    train, test = batches(train_idx), batches(test_idx)
    check_disjoint(name, train, test)
    return Task(
        name,
        train,
        test,
        metric=metric,
        models=tuple(models),
        description=description,
        groupings=groupings,
    )


def _codes(labels: dict[str, list[str]], groupings: dict, rows: list[int]) -> torch.Tensor | None:
    if not labels:
        return None
    return torch.tensor(
        [[groupings[k].index(labels[k][i]) for k in groupings] for i in rows], dtype=torch.long
    )


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
    known_example = {"clean", "counterfactual", "answer", "distractor", "group"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known keys: {sorted(known)}")
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]
    metric = data.get("metric", "logit_diff")
    _check_metric(metric)
    if not data["examples"]:
        raise ValueError(f"{path}: 'examples' is empty")
    examples, group_items = [], []
    for i, item in enumerate(data["examples"]):
        where = f"{path}: examples[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        missing = [k for k in ("clean", "counterfactual", "answer", "distractor") if k not in item]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        extra = sorted(set(item) - known_example)
        if extra:
            raise ValueError(f"{where}: unknown keys {extra}; known keys: {sorted(known_example)}")
        group_items.append(item.get("group"))
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
        group=_json_groups(group_items, path),
        model=model if hasattr(model, "cfg") else None,
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


def _json_groups(items: list, path: str) -> dict[str, list[str]] | None:
    """The examples' ``group`` entries as ``{grouping: labels}``; all or none must have one."""
    given = [g is not None for g in items]
    if not any(given):
        return None
    if not all(given):
        first = given.index(False)
        raise ValueError(
            f"{path}: examples[{first}] has no 'group' but others do; give every example a "
            f"group, or none"
        )
    rows = [g if isinstance(g, dict) else {"group": g} for g in items]
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise ValueError(
                f"{path}: examples[{i}].group names groupings {sorted(row)}, but "
                f"examples[0] names {sorted(keys)}; every example needs the same groupings"
            )
        for key, label in row.items():
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise ValueError(
                    f"{path}: examples[{i}].group[{key!r}] must be a string label, got {label!r}"
                )
    return {key: [row[key] for row in rows] for key in rows[0]}
