"""Tokenisers for the standard tasks: the zoo's word-level toy vocabulary, and the tokenizer of
any local HF model directory (GPT-2's BPE, Pythia, Llama, Qwen2, Gemma-2).

Why a toy vocabulary that copies GPT-2's pre-tokenisation: a prompt written once as text then
has the same token positions under both vocabularies (``" John"`` is one token in each, and so
are ``","``, ``" 17"`` and ``"32"``). Circuits found on a zoo model and on GPT-2 then talk about
the same positions, and a test can check the two tokenisations against each other.

The toy tokeniser splits text with GPT-2's pre-tokenisation pattern, then
- drops the single leading space of a word (``" John"`` and ``"John"`` are one token);
- splits a run of digits into pairs (``" 1732"`` -> ``"17"``, ``"32"``, as GPT-2's BPE does);
- splits whitespace into newline runs and single spaces (GPT-2 has no merges for runs of
  spaces, so ``"\\n    "`` is ``"\\n"`` and three ``" "``).
A piece that is not in the vocabulary is an error that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from functools import cache

BOS = "<|endoftext|>"

# --- word pools. Each is used by a task generator; together they make the toy vocabulary. ---
MALE_NAMES = (
    "John Tom James Dan Sid Michael David Robert William Richard Thomas Charles Daniel Mark "
    "Paul Steven Andrew Kevin George Edward Ryan Eric Frank Jack Sam Ben Adam Peter"
).split()
FEMALE_NAMES = (
    "Mary Amy Lisa Jessica Sarah Kate Anna Emma Rachel Laura Helen Susan Karen Nancy Linda "
    "Elizabeth Jennifer Maria Julia Grace Alice Rose Emily Sophie Jane Lucy Hannah Olivia"
).split()
PLACES = (
    "store garden restaurant school hospital office station house park market library beach "
    "church museum airport hotel"
).split()
OBJECTS = "drink ring kiss bone ball computer necklace snack apple book letter gift".split()
EVENTS = (
    "war dispute siege journey trial treaty reign marriage voyage project study tour trip "
    "plague riot deal campaign attack conflict program contract alliance expedition "
    "occupation rebellion crisis"
).split()
# argument names and description words of the docstring task (short, code-like words)
ARG_NAMES = (
    "load size files last name data value key item path mode text line count index start "
    "end step user type field label node port host token query limit page color shape"
).split()
DESC_WORDS = (
    "oil column piece crime population unit dark board sense fire gold rock tree wind "
    "bank ship paper glass water stone light sound"
).split()
FUNC_NAMES = "run get set check update create parse build read write".split()
# filler grammar
ADJECTIVES = "big small old new red blue happy quiet tall good".split()
ANIMALS = "cat dog bird horse fish cow".split()
VERBS_PAST = "saw liked found took made left moved kept".split()
YEARS = [f"{y:02d}" for y in range(100)]

FIXED_WORDS = (
    "The the When Then After While At and went to gave a were working at had long argument "
    "afterwards said handed lot of fun lasted from year So is really great friend isn met "
    "saw good nice he she def self param it in on with they this that was very".split()
)
PUNCTUATION = [",", ".", "(", "):", '"""', ":", "'t"]
WHITESPACE = ["\n", "\n\n", " "]


@cache
def toy_vocabulary() -> tuple[str, ...]:
    """The shared toy vocabulary, in a fixed order (its hash is stored on every zoo card)."""
    groups = [
        [BOS],
        WHITESPACE,
        PUNCTUATION,
        YEARS,
        ["17"],
        FIXED_WORDS,
        MALE_NAMES,
        FEMALE_NAMES,
        PLACES,
        OBJECTS,
        EVENTS,
        ARG_NAMES,
        DESC_WORDS,
        FUNC_NAMES,
        ADJECTIVES,
        ANIMALS,
        VERBS_PAST,
    ]
    seen: dict[str, None] = {}
    for group in groups:
        for word in group:
            seen.setdefault(word, None)
    return tuple(seen)


def vocabulary_hash(words: Sequence[str] | None = None) -> str:
    words = toy_vocabulary() if words is None else words
    return hashlib.sha256(json.dumps(list(words)).encode()).hexdigest()[:16]


# GPT-2's pre-tokenisation pattern, written for Python's re (\p{L} -> [^\W\d_], \p{N} -> \d).
_PRETOKEN = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)


class ToyTokenizer:
    """Word-level tokeniser over ``toy_vocabulary()``; see the module docstring for the rules."""

    kind = "toy"

    def __init__(self, words: Sequence[str] | None = None) -> None:
        self.words = tuple(toy_vocabulary() if words is None else words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise ValueError("the toy vocabulary holds a word twice")
        self.bos_id = self.ids[BOS]
        self.name = "toy"

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def pieces(text: str) -> list[str]:
        out: list[str] = []
        for piece in _PRETOKEN.findall(text):
            if piece.isspace():
                out += re.findall(r"\n+| |\t", piece)
            elif piece.lstrip(" ").isdigit():
                digits = piece.lstrip(" ")
                out += [digits[i : i + 2] for i in range(0, len(digits), 2)]
            else:
                out.append(piece[1:] if piece.startswith(" ") else piece)
        return out

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in self.pieces(text):
            if piece not in self.ids:
                raise ValueError(
                    f"{piece!r} (in {text!r}) is not in the toy vocabulary; the zoo models "
                    f"know only the words in circuitboard.tasks.vocab.toy_vocabulary()"
                )
            out.append(self.ids[piece])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids)


class HFTokenizer:
    """The tokenizer in a local HF model directory (GPT-2, Pythia, Llama, Qwen2, Gemma-2, ...).

    Prompts are encoded without special tokens; the task prepends ``bos_id``: the tokenizer's
    BOS token, or, for tokenizers that have none (Qwen2), its end-of-text token, which is the
    document separator such models are trained with. Answers and distractors are checked to be
    one token under *this* tokenizer by the task builder, which names any that are not.
    """

    kind = "hf"

    def __init__(self, hf_tokenizer, name: str = "hf") -> None:
        self.hf = hf_tokenizer
        bos = getattr(hf_tokenizer, "bos_token_id", None)
        if bos is None:
            bos = getattr(hf_tokenizer, "eos_token_id", None)
        if bos is None:
            raise ValueError(
                f"the tokenizer of {name} has neither a BOS nor an end-of-text token to start "
                f"prompts with; pass tokenizer= an object with encode, bos_id and name"
            )
        self.bos_id = int(bos)
        self.name = name

    @classmethod
    def from_directory(cls, path: str) -> HFTokenizer:
        """From a local model directory (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``,
        or a SentencePiece ``tokenizer.model``); never from the hub."""
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{path} is not a directory; give model_path= a local model directory holding "
                f"its tokenizer files (tokenizer.json, or vocab.json and merges.txt)"
            )
        files = set(os.listdir(path))
        if not (
            "tokenizer.json" in files
            or "tokenizer.model" in files
            or {"vocab.json", "merges.txt"} <= files
        ):
            raise FileNotFoundError(
                f"{path} holds no tokenizer: expected tokenizer.json, tokenizer.model, or "
                f"vocab.json and merges.txt (as written by tokenizer.save_pretrained)"
            )
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path, local_files_only=True), name=path)

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids))


class GPT2Tokenizer(HFTokenizer):
    """GPT-2's BPE through HF ``transformers``, from local files only; BOS is ``<|endoftext|>``."""

    kind = "gpt2"

    def __init__(self, hf_tokenizer, name: str = "gpt2") -> None:
        super().__init__(hf_tokenizer, name)
        self.bos_id = hf_tokenizer.convert_tokens_to_ids(BOS)
        if self.bos_id is None or hf_tokenizer.convert_ids_to_tokens(self.bos_id) != BOS:
            raise ValueError(f"the GPT-2 tokenizer has no {BOS} token")

    @classmethod
    def from_files(cls, vocab_file: str, merges_file: str, name: str = "gpt2") -> GPT2Tokenizer:
        """From ``encoder.json``/``vocab.json`` and ``vocab.bpe``/``merges.txt``."""
        from transformers import GPT2TokenizerFast

        for path in (vocab_file, merges_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"GPT-2 tokenizer file {path} does not exist")
        # positional: transformers 4 names these vocab_file/merges_file, 5 names them vocab/merges
        hf = GPT2TokenizerFast(vocab_file, merges_file)
        if len(hf) < 256:
            raise ValueError(f"{vocab_file} and {merges_file} did not load as a GPT-2 tokenizer")
        return cls(hf, name)


def single_token(tokenizer, text: str) -> bool:
    """Whether ``text`` is exactly one token (GPT-2 filters the word pools with this)."""
    try:
        return len(tokenizer.encode(text)) == 1
    except ValueError:
        return False


def pool(tokenizer, words: Sequence[str], forms: Sequence[str] = (" {}",)) -> list[str]:
    """The words that are one token in every form (``" {}"``: with a leading space)."""
    return [w for w in words if all(single_token(tokenizer, f.format(w)) for f in forms)]
