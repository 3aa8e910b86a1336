"""The standard task generators: what each prompt says, single-token answers, equal-length
pairs, disjoint splits, determinism, and the model/tokeniser resolution."""

from __future__ import annotations

import re

import pytest
import torch

from circuitboard import tasks
from circuitboard.tasks import base, vocab
from circuitboard.tasks.base import prompt_set

TOY = vocab.ToyTokenizer()
SMALL = dict(n_train=48, n_test=48, n_off=48)


@pytest.fixture(scope="module")
def toy_tasks():
    return {name: tasks.load(name, **SMALL) for name in tasks.names()}


def words(ids) -> list[str]:
    return [TOY.words[i] for i in ids if i >= 0]


def rows(task, split="test"):
    for batch in getattr(task, split):
        for i in range(len(batch)):
            answer = batch.answer[i].reshape(-1).tolist()
            distractor = batch.distractor[i].reshape(-1).tolist()
            yield (
                words(batch.clean[i].tolist()),
                words(batch.counterfactual[i].tolist()),
                words(answer),
                words(distractor),
            )


def test_names_and_registry():
    import circuitboard as cb

    assert tasks.names() == ["ioi", "greater-than", "docstring", "induction", "gendered-pronoun"]
    task = cb.load_task("ioi", n_train=8, n_test=8)
    assert task.name == "ioi" and task.metric == "logit_diff" and task.higher_is_better
    with pytest.raises(KeyError, match="standard tasks"):
        tasks.load("nope")


@pytest.mark.parametrize("name", tasks.names())
def test_batches_are_well_formed(toy_tasks, name):
    task = toy_tasks[name]
    for split in ("train", "test", "off_distribution"):
        for batch in getattr(task, split):
            assert batch.counterfactual.shape == batch.clean.shape
            assert (batch.clean[:, 0] == TOY.bos_id).all()
            for ids in (batch.answer, batch.distractor):  # one token id each (or a padded set)
                assert ids.dtype == torch.long and ids.shape[0] == len(batch)
                assert ((ids >= 0) | (ids == -1)).all() and (
                    ids.reshape(len(batch), -1)[:, 0] >= 0
                ).all()
    assert task.n_examples("train") == 48 and task.n_examples("test") == 48


@pytest.mark.parametrize("name", tasks.names())
def test_splits_are_disjoint_and_seeded(toy_tasks, name):
    task = toy_tasks[name]
    train, test = prompt_set(task.train), prompt_set(task.test)
    assert len(train) == 48 and len(test) == 48  # no prompt twice within a split
    assert not train & test
    if task.off_distribution:
        assert not prompt_set(task.off_distribution) & (train | test)
    again = tasks.load(name, **SMALL)
    for a, b in zip(task.test + task.train, again.test + again.train, strict=True):
        assert torch.equal(a.clean, b.clean) and torch.equal(a.counterfactual, b.counterfactual)
        assert torch.equal(a.answer, b.answer) and torch.equal(a.distractor, b.distractor)
    other = tasks.load(name, seed=1, **SMALL)
    assert prompt_set(other.test) != prompt_set(task.test)
    # a prompt's split is fixed by its text, whatever the seed: seed 1's train never meets
    # seed 0's test
    assert not prompt_set(other.train) & test


def test_ioi_prompts(toy_tasks):
    orders = set()
    for clean, counter, (io,), (s,) in rows(toy_tasks["ioi"]):
        names = [w for w in clean if w in vocab.MALE_NAMES + vocab.FEMALE_NAMES]
        assert names.count(io) == 1 and names.count(s) == 2 and len(names) == 3
        assert names[2] == s  # the subject is repeated last
        orders.add("ABBA" if names[0] == io else "BABA")
        cf_names = [w for w in counter if w in vocab.MALE_NAMES + vocab.FEMALE_NAMES]
        assert cf_names[:2] == names[:2] and cf_names[2] not in (io, s)  # ABC
        assert [w for w in counter if w not in cf_names] == [w for w in clean if w not in names]
    assert orders == {"ABBA", "BABA"}


def test_greater_than_prompts(toy_tasks):
    for clean, counter, answer, distractor in rows(toy_tasks["greater-than"]):
        assert clean[-4:] == ["to", "the", "year", "17"]
        yy = int(clean[clean.index("17") + 1])
        assert 2 <= yy <= 98
        assert [int(a) for a in answer] == list(range(yy + 1, 100))
        assert [int(d) for d in distractor] == list(range(0, yy + 1))
        assert counter[clean.index("17") + 1] == "01"
        assert [w for i, w in enumerate(counter) if i != clean.index("17") + 1] == [
            w for i, w in enumerate(clean) if i != clean.index("17") + 1
        ]


def _signature(prompt: list[str]) -> list[str]:
    inside = prompt[prompt.index("(") + 1 : prompt.index("):")]
    return [w for w in inside if w not in (",", "self")]


def test_docstring_prompts(toy_tasks):
    for clean, counter, (answer,), distractor in rows(toy_tasks["docstring"]):
        args = _signature(clean)
        documented = [clean[i + 1] for i, w in enumerate(clean[:-1]) if w == "param"]
        assert documented == args[: len(documented)]  # documented in order
        assert answer == args[len(documented)]  # the next one is the answer
        assert sorted(distractor) == sorted(a for a in args if a != answer)
        fresh = _signature(counter)
        assert len(fresh) == len(args) and not set(fresh) & set(args)
        assert [clean[i + 1] for i, w in enumerate(counter[:-1]) if w == "param"] == documented


def test_induction_prompts(toy_tasks):
    for clean, counter, (answer,), (distractor,) in rows(toy_tasks["induction"]):
        seq = clean[1:]
        r = seq.index(seq[0], 1)  # where the repeat starts: the first half has no repeats
        k = len(seq) - r
        assert len(set(seq[:r])) == r and seq[r:] == seq[:k] and 2 <= k < r
        assert answer == seq[k]  # ... A B ... A -> B
        assert distractor != answer and distractor in seq[:r]
        cf = counter[1:]
        assert cf[:r] == seq[:r] and len(set(cf)) == len(cf)  # same start, repeat broken


def test_pronoun_prompts(toy_tasks):
    task = toy_tasks["gendered-pronoun"]
    gender = {n: "he" for n in vocab.MALE_NAMES} | {n: "she" for n in vocab.FEMALE_NAMES}
    for split, same in (("test", False), ("train", False), ("off_distribution", True)):
        for clean, counter, (answer,), (distractor,) in rows(task, split):
            names = [w for w in clean if w in gender]
            right = clean[clean.index("So") + 1]
            assert answer == gender[right] and distractor != answer
            other = [n for n in names if n != right]
            assert len(other) == 1 and (gender[other[0]] == gender[right]) is same
            cf_right = counter[counter.index("So") + 1]
            assert gender[cf_right] == distractor  # the counterfactual flips the answer


def test_gpt2_name_needs_a_path():
    with pytest.raises(FileNotFoundError, match="model_path"):
        tasks.load("ioi", model="gpt2")
    with pytest.raises(FileNotFoundError, match="model_path"):
        tasks.load_model("gpt2")
    with pytest.raises(KeyError, match="unknown model"):
        tasks.load("ioi", model="not-a-model")


def test_toy_tokenizer_rules():
    assert TOY.pieces(" The war lasted from the year 1732") == [
        "The",
        "war",
        "lasted",
        "from",
        "the",
        "year",
        "17",
        "32",
    ]
    assert TOY.pieces('):\n    """oil isn\'t') == [
        "):",
        "\n",
        " ",
        " ",
        " ",
        '"""',
        "oil",
        "isn",
        "'t",
    ]
    with pytest.raises(ValueError, match="'Zebra'.*not in the toy vocabulary"):
        TOY.encode("the Zebra")
    assert len(set(vocab.toy_vocabulary())) == len(vocab.toy_vocabulary())


def _spec(name, make_example):
    """A TaskSpec whose sample() is ``make_example(rng)``."""
    pools = tasks.spec("ioi").pools
    return base.TaskSpec(name, "logit_diff", "", pools, lambda rng, p, v: make_example(rng))


def _varied(rng) -> str:
    return f"the {rng.choice(vocab.ANIMALS)} saw {rng.choice(vocab.MALE_NAMES)}"


def test_build_rejects_bad_generators():
    def two_token_answer(rng):
        text = _varied(rng)
        return base.Example(text, text + "", (" John Mary",), (" Tom",))

    def longer_counterfactual(rng):
        text = _varied(rng)
        return base.Example(text, text + " Tom", (" John",), (" Tom",))

    def answer_is_distractor(rng):
        text = _varied(rng)
        return base.Example(text, text, (" John",), (" John",))

    def two_prompts(rng):
        return base.Example(rng.choice(["the cat", "the dog"]), "the cow", (" John",), (" Tom",))

    with pytest.raises(ValueError, match="' John Mary' is 2 tokens .* not one"):
        base.build_task(_spec("a", two_token_answer), TOY, n_train=1, n_test=1)
    with pytest.raises(ValueError, match="same number of tokens"):
        base.build_task(_spec("b", longer_counterfactual), TOY, n_train=1, n_test=1)
    with pytest.raises(ValueError, match="both an answer and a distractor"):
        base.build_task(_spec("c", answer_is_distractor), TOY, n_train=1, n_test=1)
    with pytest.raises(ValueError, match="could only draw"):
        base.build_task(_spec("d", two_prompts), TOY, n_train=5, n_test=5)


def test_text_round_trip():
    task = tasks.load("ioi", n_train=4, n_test=4)
    text = TOY.decode(task.test[0].clean[0, 1:].tolist())
    assert re.fullmatch(r"[A-Za-z ,.]+", text)
