"""Custom tasks: from_tokens and from_json, checked like the built-in tasks."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import torch
from conftest import random_model

from circuitboard import tasks
from circuitboard.tasks import vocab
from circuitboard.tasks.base import prompt_set

TOY = vocab.ToyTokenizer()
DATA = os.path.join(os.path.dirname(__file__), "data")


def _rows(n=6, length=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 20, (n, length), generator=gen)
    clean[:, 0] = torch.arange(n)  # all prompts distinct
    counter = torch.randint(0, 20, (n, length), generator=gen)
    answer = torch.randint(0, 20, (n,), generator=gen)
    distractor = (answer + 1) % 20
    return clean, counter, answer, distractor


def test_from_tokens_splits_and_scores():
    clean, counter, answer, distractor = _rows()
    task = tasks.from_tokens(clean, counter, answer, distractor, name="mine")
    assert task.name == "mine" and task.metric == "logit_diff"
    assert task.n_examples("train") + task.n_examples("test") == 6
    assert not prompt_set(task.train) & prompt_set(task.test)
    assert prompt_set(task.train) | prompt_set(task.test) == {tuple(r) for r in clean.tolist()}
    model = random_model()
    batch = task.test[0]
    logits = model(batch.clean)
    rows = torch.arange(len(batch))
    expected = logits[rows, -1, batch.answer] - logits[rows, -1, batch.distractor]
    assert torch.allclose(task.score(logits, batch), expected)  # read at the last position
    again = tasks.from_tokens(clean, counter, answer, distractor, name="mine")
    assert torch.equal(again.test[0].clean, batch.clean)


def test_from_tokens_mixed_lengths_and_answer_sets():
    clean = [[1, 2, 3], [4, 5, 6], [7, 8], [9, 10], [1, 1, 1, 1]]
    counter = [[1, 2, 4], [4, 5, 7], [7, 9], [9, 11], [2, 2, 2, 2]]
    answer = [[3, 4], [5], [6, 7, 8], [1], [2]]
    distractor = [0, 1, 2, 3, 4]
    task = tasks.from_tokens(clean, counter, answer, distractor, metric="prob_diff")
    for batch in task.train + task.test:
        assert len({len(r) for r in batch.clean.tolist()}) == 1
    all_answers = torch.cat([b.answer.reshape(len(b), -1)[:, 0] for b in task.train + task.test])
    assert sorted(all_answers.tolist()) == [1, 2, 3, 5, 6]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, cf, a, d: ([], [], [], []), "no examples"),
        (lambda c, cf, a, d: (c, cf[:, :-1], a, d), "equally long"),
        (lambda c, cf, a, d: (torch.cat([c, c[:1]]), torch.cat([cf, cf[:1]]),
                              torch.cat([a, a[:1]]), torch.cat([d, d[:1]])), "same clean prompt"),
        (lambda c, cf, a, d: (c, cf, a[:-1], d), "answer entries"),
        (lambda c, cf, a, d: (c, cf, a - 100, d), "outside"),
    ],
)  # fmt: skip
def test_from_tokens_errors(change, message):
    with pytest.raises(ValueError, match=message):
        tasks.from_tokens(*change(*_rows()))


def test_from_tokens_bad_metric_and_vocab():
    clean, counter, answer, distractor = _rows()
    with pytest.raises(ValueError, match="l2 needs float targets"):
        tasks.from_tokens(clean, counter, answer, distractor, metric="l2")
    with pytest.raises(ValueError, match="outside"):
        tasks.from_tokens(clean, counter, answer, distractor, vocab_size=5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        tasks.from_tokens(clean[:1], counter[:1], answer[:1], distractor[:1])


IOI_EXAMPLES = [
    {
        "clean": f"When {a} and {b} went to the store, {b} gave a drink to",
        "counterfactual": f"When {a} and {b} went to the store, {c} gave a drink to",
        "answer": f" {a}",
        "distractor": f" {b}",
    }
    for a, b, c in [("Mary", "John", "Tom"), ("Anna", "Paul", "Ben"), ("Amy", "Jack", "Sam")]
]


def _write(tmp_path, data, name="mine.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_from_json_toy_vocabulary(tmp_path):
    path = _write(tmp_path, {"metric": "logit_diff", "examples": IOI_EXAMPLES})
    task = tasks.from_json(path)
    assert task.name == "mine" and task.n_examples("train") + task.n_examples("test") == 3
    found = {tuple(r) for b in task.train + task.test for r in b.clean.tolist()}
    expected = {tuple([TOY.bos_id] + TOY.encode(e["clean"])) for e in IOI_EXAMPLES}
    assert found == expected
    for batch in task.train + task.test:
        for row, answer in zip(batch.clean.tolist(), batch.answer.tolist(), strict=True):
            words = [TOY.words[t] for t in row]
            assert words.count(TOY.words[answer]) == 1  # the indirect object, named once


def test_from_json_gpt2_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    for name, target in (("gpt2_encoder.json.gz", "vocab.json"), ("gpt2_vocab.bpe.gz", "m.txt")):
        with gzip.open(os.path.join(DATA, name)) as src:
            (tmp_path / target).write_bytes(src.read())
    gpt2 = vocab.GPT2Tokenizer.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "m.txt"))
    task = tasks.from_json(_write(tmp_path, IOI_EXAMPLES), tokenizer=gpt2)
    assert {b.length for b in task.train + task.test} == {15}
    answers = {gpt2.decode([int(a)]) for b in task.train + task.test for a in b.answer}
    assert answers == {" Mary", " Anna", " Amy"}
    spaced = [dict(IOI_EXAMPLES[0], answer=" Mary Anna")] + IOI_EXAMPLES[1:]
    with pytest.raises(ValueError, match=r"examples\[0\].*' Mary Anna' is 2 tokens"):
        tasks.from_json(_write(tmp_path, spaced), tokenizer=gpt2)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"examples": []}, "'examples' is empty"),
        ([dict(IOI_EXAMPLES[0], answer=" Mary John")] + IOI_EXAMPLES[1:], "2 tokens"),
        ([dict(IOI_EXAMPLES[0], counterfactual="When Mary went")] + IOI_EXAMPLES[1:],
         "same number of tokens"),
        ([{"clean": "the cat"}], "lacks"),
        ({"examples": IOI_EXAMPLES, "colour": "red"}, "unknown keys"),
        ({"examples": IOI_EXAMPLES, "metric": "l2"}, "l2 needs float targets"),
        ([IOI_EXAMPLES[0], IOI_EXAMPLES[0]], "same clean prompt"),
        ([dict(IOI_EXAMPLES[0], clean="When Zebra and")] + IOI_EXAMPLES[1:],
         "not in the toy vocabulary"),
    ],
)  # fmt: skip
def test_from_json_errors(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        tasks.from_json(_write(tmp_path, data))


def test_from_json_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        tasks.from_json(path)
