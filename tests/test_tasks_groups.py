"""Task groupings (IOI order and template, pronoun pairing and gender, custom groups) and the
custom-task checks on token ids."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import random_model

import circuitboard as cb
from circuitboard import tasks
from circuitboard.tasks import ioi, pronoun, vocab
from circuitboard.tasks.base import Example, group_codes

TOY = vocab.ToyTokenizer()


def _texts(batch) -> list[list[str]]:
    return [[TOY.words[i] for i in row] for row in batch.clean.tolist()]


def test_ioi_labels_match_the_prompts():
    task = tasks.load("ioi", n_train=8, n_test=64)
    assert task.groupings == {"order": ("ABBA", "BABA"), "template": tuple("012345")}
    labels = task.group_labels("test")
    assert len(labels["order"]) == task.n_examples("test") == 64
    seen_orders, seen_templates, row = set(), set(), 0
    for batch in task.test:
        for words, answer in zip(_texts(batch), batch.answer.tolist()):
            names = [w for w in words if w in vocab.MALE_NAMES + vocab.FEMALE_NAMES]
            io = TOY.words[answer]
            # ABBA: the indirect object is the first name; BABA: the subject is.
            assert labels["order"][row] == ("ABBA" if names[0] == io else "BABA")
            template = ioi.TEMPLATES[int(labels["template"][row])]
            pattern = re.escape(template).replace(r"\{A\}", r"\w+").replace(r"\{B\}", r"\w+")
            for slot in ("S2", "place", "obj"):
                pattern = pattern.replace(re.escape("{" + slot + "}"), r"\w+")
            text = "".join(f" {w}" if w.isalnum() else w for w in words[1:]).strip()
            assert re.fullmatch(pattern, text), (text, template)
            seen_orders.add(labels["order"][row])
            seen_templates.add(labels["template"][row])
            row += 1
    assert seen_orders == {"ABBA", "BABA"} and len(seen_templates) == 6


def test_pronoun_labels_gender_and_pairing_across_splits():
    task = tasks.load("gendered-pronoun", n_train=8, n_test=32, n_off=32)
    assert task.groupings["pairing"] == ("opposite", "same")
    both = task.group_labels(("test", "off_distribution"))
    assert both["pairing"] == ["opposite"] * 32 + ["same"] * 32
    row = 0
    for batch in task.batches(("test", "off_distribution")):
        for answer in batch.answer.tolist():
            gender = both["gender"][row]
            assert TOY.words[answer] == pronoun.PRONOUN[gender].strip()
            row += 1
    assert set(both["gender"]) == {"male", "female"}


# sha256 of the token ids of these tasks, computed on the commit before groupings existed.
PROMPTS_BEFORE_GROUPINGS = "238fad85d889f8e1d95fef53f77b97eada49dcd1d01d6a138798f7147674eb88"


def test_groupings_leave_the_prompts_of_a_seed_unchanged():
    """Labelling draws nothing from the random stream: the zoo's train/test prompts stay put."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("ioi", "gendered-pronoun", "docstring", "induction"):
        task = tasks.load(name, n_train=8, n_test=16, n_off=8)
        for split in ("train", "test", "off_distribution"):
            for b in getattr(task, split):
                for ids in (b.clean, b.counterfactual, b.answer, b.distractor):
                    digest.update(ids.numpy().tobytes())
    assert digest.hexdigest() == PROMPTS_BEFORE_GROUPINGS


def test_every_standard_task_declares_its_groupings_consistently():
    for name in tasks.names():
        task = tasks.load(name, n_train=4, n_test=16, n_off=4)
        for split in ("train", "test", "off_distribution"):
            for batch in getattr(task, split):
                if task.groupings:
                    assert batch.groups.shape == (len(batch), len(task.groupings))
                else:
                    assert batch.groups is None


def test_select_keeps_groups_with_their_rows():
    task = tasks.load("ioi", n_train=4, n_test=32)
    batch = task.test[0]
    index = torch.tensor([3, 0, 2])
    picked = batch.select(index)
    assert torch.equal(picked.groups, batch.groups[index])
    assert torch.equal(picked.clean, batch.clean[index])
    assert torch.equal(batch.swap().groups, batch.groups)


def test_group_codes_reject_undeclared_levels_and_groupings():
    ex = Example("a", "b", ("x",), ("y",), {"order": "ABAB"})
    with pytest.raises(ValueError, match="level 'ABAB' of grouping 'order'"):
        group_codes(ex, {"order": ("ABBA", "BABA")})
    with pytest.raises(ValueError, match="declares \\['order', 'template'\\]"):
        group_codes(ex, {"order": ("ABAB",), "template": ("0",)})


def _batch(groups=None, n=3):
    clean = torch.arange(n * 4).view(n, 4) % 20
    return cb.Batch(
        clean, clean.flip(1), torch.zeros(n, dtype=torch.long), torch.ones(n).long(), groups=groups
    )


def test_task_checks_groups_against_its_groupings():
    ok = _batch(torch.tensor([[0], [1], [0]]))
    task = cb.Task("t", [ok], [ok], groupings={"g": ("x", "y")})
    assert task.group_labels() == {"g": ["x", "y", "x"]}
    with pytest.raises(ValueError, match="code 2 for grouping 'g'"):
        cb.Task("t", [ok], [_batch(torch.tensor([[0], [2], [0]]))], groupings={"g": ("x", "y")})
    with pytest.raises(ValueError, match="has no groups"):
        cb.Task("t", [ok], [_batch()], groupings={"g": ("x", "y")})
    with pytest.raises(ValueError, match="declares no groupings"):
        cb.Task("t", [ok], [ok])
    with pytest.raises(ValueError, match="2 columns"):
        cb.Task("t", [ok], [_batch(torch.zeros(3, 2).long())], groupings={"g": ("x", "y")})
    with pytest.raises(ValueError, match="groups has 2 rows"):
        _batch(torch.zeros(2, 1).long())
    with pytest.raises(ValueError, match="unknown split"):
        task.batches("validation")


def _rows(n=8):
    clean = torch.arange(n * 3).view(n, 3) % 20
    clean[:, 0] = torch.arange(n)
    answer = torch.arange(n) % 10
    return clean, clean.flip(1), answer, answer + 10


def test_from_tokens_group_labels_follow_their_examples():
    clean, counter, answer, distractor = _rows()
    labels = ["low" if int(a) < 4 else "high" for a in answer]
    task = tasks.from_tokens(clean, counter, answer, distractor, group=labels)
    assert task.groupings == {"group": ("high", "low")}
    for split in ("train", "test"):
        got = task.group_labels(split)["group"]
        want = ["low" if a < 4 else "high" for b in getattr(task, split) for a in b.answer.tolist()]
        assert got == want
    named = tasks.from_tokens(clean, counter, answer, distractor, group={"a": labels, "b": [1] * 8})
    assert named.groupings == {"a": ("high", "low"), "b": ("1",)}
    with pytest.raises(ValueError, match="has 7 labels for 8 examples"):
        tasks.from_tokens(clean, counter, answer, distractor, group=labels[:-1])


def test_from_json_groups(tmp_path):
    rows = [
        {"clean": "When Mary and John went to the store, John gave a drink to",
         "counterfactual": "When Mary and John went to the store, Tom gave a drink to",
         "answer": " Mary", "distractor": " John", "group": "ABBA"},
        {"clean": "When John and Mary went to the store, John gave a drink to",
         "counterfactual": "When John and Mary went to the store, Tom gave a drink to",
         "answer": " Mary", "distractor": " John", "group": "BABA"},
        {"clean": "When Amy and Tom went to the park, Tom gave a ring to",
         "counterfactual": "When Amy and Tom went to the park, Dan gave a ring to",
         "answer": " Amy", "distractor": " Tom", "group": "ABBA"},
    ]  # fmt: skip
    path = tmp_path / "t.json"
    path.write_text(json.dumps(rows))
    task = tasks.from_json(path)
    assert task.groupings == {"group": ("ABBA", "BABA")}
    labels = task.group_labels(("train", "test"))["group"]
    assert sorted(labels) == ["ABBA", "ABBA", "BABA"]
    del rows[1]["group"]
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"examples\[1\] has no 'group'"):
        tasks.from_json(path)
    rows[1]["group"], rows[1]["weight"] = "BABA", 2
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"unknown keys \['weight'\]"):
        tasks.from_json(path)


def test_from_tokens_rejects_ids_outside_the_models_vocabulary():
    model = random_model(d_vocab=20, d_vocab_out=12)
    clean, counter, answer, distractor = _rows()
    task = tasks.from_tokens(clean, counter, answer, answer + 1, model=model)
    assert task.n_examples("train") + task.n_examples("test") == 8
    bad = answer.clone()
    bad[5] = 12  # a prompt id, but past the model's 12 outputs
    with pytest.raises(
        ValueError,
        match="example 5: answer token id 12 is outside the model's output vocabulary \\[0, 12\\)",
    ):
        tasks.from_tokens(clean, counter, bad, answer + 1, model=model)
    with pytest.raises(ValueError, match="example 2: distractor token id 12"):
        tasks.from_tokens(clean, counter, answer, distractor, model=model)  # distractor = a + 10
    wide = counter.clone()
    wide[0, 1] = 20
    with pytest.raises(
        ValueError, match="example 0: counterfactual token id 20 is outside the model's input"
    ):
        tasks.from_tokens(clean, wide, answer, answer + 1, model=model)
    with pytest.raises(ValueError, match="example 3: answer token id 13"):
        tasks.from_tokens(clean, counter, answer + 10, answer, vocab_size=13)
    with pytest.raises(ValueError, match="not both"):
        tasks.from_tokens(clean, counter, answer, distractor, model=model, vocab_size=20)


def test_from_tokens_rejects_an_answer_equal_to_its_distractor():
    clean, counter, answer, distractor = _rows()
    distractor[4] = answer[4]
    with pytest.raises(ValueError, match="example 4: token 4 is both an answer and a distractor"):
        tasks.from_tokens(clean, counter, answer, distractor)
    sets = [[int(a), 19] for a in answer]
    with pytest.raises(ValueError, match="token 19 is both"):
        tasks.from_tokens(clean, counter, sets, [[19]] * 8, metric="prob_diff")
