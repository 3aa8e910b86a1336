"""Standard tasks on the tokenizers of Pythia, Qwen2, Llama-3 and Gemma-2 model directories.

Real tokenizers cannot be downloaded here, so each directory gets a tokenizer built like its
family's: byte-level BPE (GPT-2's merges, from tests/data) with Pythia's ``<|endoftext|>`` BOS,
with Qwen2's digit-by-digit pre-tokenisation and no BOS, or with Llama-3's added
``<|begin_of_text|>``; and a SentencePiece-style unigram tokenizer with ``▁`` word marks and
Gemma's special-token ids. Beside it, a small random model of that family, so that a task and
its model load from one directory and the task metric can be checked against HF's forward.
"""

from __future__ import annotations

import gzip
import os

import pytest
import torch
from test_loaders_hf_families import family_configs, scaled_init

from circuitboard import tasks
from circuitboard.tasks import vocab

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
DATA = os.path.join(os.path.dirname(__file__), "data")
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def gpt2_backend(tmp_path):
    for name, target in (("gpt2_encoder.json.gz", "vocab.json"), ("gpt2_vocab.bpe.gz", "m.txt")):
        with gzip.open(os.path.join(DATA, name)) as src:
            (tmp_path / target).write_bytes(src.read())
    base = transformers.GPT2TokenizerFast(str(tmp_path / "vocab.json"), str(tmp_path / "m.txt"))
    return base.backend_tokenizer.to_str()


def sentencepiece_like():
    """Unigram pieces: ``▁word`` and ``word`` for the toy words, single characters as fallback;
    special ids as Gemma's (<pad> 0, <eos> 1, <bos> 2, <unk> 3)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    pieces = [("<pad>", 0.0), ("<eos>", 0.0), ("<bos>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;'\"()▁\n"
    words = [(f"▁{w}", -1.0) for w in vocab.toy_vocabulary() if not w.startswith("<|")]
    words += [(w, -2.0) for w in vocab.toy_vocabulary() if not w.startswith("<|")]
    for piece, score in words + [(c, -10.0) for c in chars]:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def family_tokenizer(family: str, backend: str):
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    fast = transformers.PreTrainedTokenizerFast
    if family == "pythia":
        tok = Tokenizer.from_str(backend)
        return fast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    if family == "qwen2":
        tok = Tokenizer.from_str(backend)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        return fast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if family == "llama":
        tok = Tokenizer.from_str(backend)
        return fast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    return sentencepiece_like()


# the id each family's prompts must start with
BOS = {"pythia": "<|endoftext|>", "qwen2": "<|endoftext|>", "llama": "<|begin_of_text|>"}
BOS["gemma2"] = "<bos>"


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    backend = gpt2_backend(tmp_path_factory.mktemp("gpt2-files"))
    out = {}
    for i, (family, config) in enumerate(family_configs().items()):
        tok = family_tokenizer(family, backend)
        config.vocab_size = len(tok)
        config.max_position_embeddings = 64
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        model = scaled_init(model, seed=10 + i)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[family] = (path, model, tok)
    return out


@pytest.mark.parametrize("family", list(BOS))
def test_ioi_on_the_family_tokenizer_matches_transformers(family_dirs, family):
    path, hf_model, hf_tok = family_dirs[family]
    task = tasks.load("ioi", model=str(path), n_train=8, n_test=16)
    assert task.models == (str(path),)
    bos = hf_tok.convert_tokens_to_ids(BOS[family])
    for batch in task.test + task.train:
        assert (batch.clean[:, 0] == bos).all()
        for i in range(len(batch)):
            text = hf_tok.decode(batch.clean[i, 1:].tolist())
            io = hf_tok.decode([int(batch.answer[i])]).strip()
            s = hf_tok.decode([int(batch.distractor[i])]).strip()
            # the answer is one token that names the indirect object, said once
            assert text.split().count(io) == 1 and text.split().count(s) == 2, text
    model = tasks.load_model(str(path))
    result = tasks.evaluate(model, task)
    diffs = []
    with torch.no_grad():
        for batch in task.test:
            last = hf_model(batch.clean).logits[:, -1]
            rows = torch.arange(len(batch))
            diffs.append(last[rows, batch.answer] - last[rows, batch.distractor])
    assert result["n"] == 16
    assert result["metric"] == pytest.approx(float(torch.cat(diffs).mean()), abs=1e-4)


def test_a_task_whose_answers_do_not_tokenise_is_refused_by_name(family_dirs):
    # Qwen2 splits numbers into single digits, so the two-digit year answers are two tokens
    path, _, _ = family_dirs["qwen2"]
    message = rf"answer '\d\d' is 2 tokens for the {path} tokenizer, not one"
    with pytest.raises(ValueError, match=message):
        tasks.load("greater-than", model=str(path), n_train=4, n_test=4)
    llama_path, _, _ = family_dirs["llama"]  # GPT-2's merges do split years in pairs
    task = tasks.load("greater-than", model=str(llama_path), n_train=4, n_test=4)
    assert {b.length for b in task.test} == {13}


def test_hf_names_need_a_local_path():
    with pytest.raises(FileNotFoundError, match="never downloaded: pass model_path="):
        tasks.load("ioi", model="llama-3.1-8b")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        tasks.load_model("qwen2.5-0.5b")
