"""Which tokeniser a task uses for a model, and loading the models the tasks name.

Zoo models use the toy vocabulary. HF-family models (GPT-2, Pythia, Llama, Qwen2, Gemma-2) use
the tokenizer in their local directory, read from disk only: a family name such as ``"gpt2"`` or
``"llama-3.1-8b"`` without ``model_path`` is an error that says what to pass; the directory alone
(``model="/path/to/model"``) works too.
"""

from __future__ import annotations

import os

from circuitboard.tasks import vocab

# Names that mean "an HF model you must have on disk"; matched case-insensitively as prefixes.
HF_PREFIXES = ("gpt2", "distilgpt2", "pythia", "llama", "meta-llama", "qwen", "gemma")


def _is_hf_name(name: str) -> bool:
    return name.lower().startswith(HF_PREFIXES)


def _need_path(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"model {name!r} is an HF model and is never downloaded: pass model_path= a local "
        f"directory holding it (config.json, *.safetensors and tokenizer files, as written by "
        f"save_pretrained)"
    )


def _zoo_name(name: str) -> str | None:
    from circuitboard.tasks import zoo

    bare = name.removeprefix("zoo/")
    return bare if bare in zoo.names() else None


def _from_directory(path: str):
    """GPT-2's BPE (with its ``<|endoftext|>`` check) for GPT-2 directories, else the
    directory's own tokenizer."""
    import json

    model_type = None
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            try:
                model_type = json.load(f).get("model_type")
            except json.JSONDecodeError as err:
                raise ValueError(f"{config}: not valid JSON ({err})") from None
    if model_type in (None, "gpt2"):
        return vocab.GPT2Tokenizer.from_directory(path)
    return vocab.HFTokenizer.from_directory(path)


def resolve_tokenizer(model=None, *, model_path: str | None = None, tokenizer=None):
    """``(tokenizer, models)``; ``models`` is None when no model was named (toy vocabulary)."""
    named = model if isinstance(model, str) else getattr(getattr(model, "cfg", None), "name", "")
    if tokenizer is not None:
        if not hasattr(tokenizer, "bos_id") and hasattr(tokenizer, "convert_tokens_to_ids"):
            tokenizer = vocab.HFTokenizer(tokenizer, name=named or "hf")  # a bare HF tokenizer
        for attr in ("encode", "bos_id", "name"):
            if not hasattr(tokenizer, attr):
                raise TypeError(
                    f"tokenizer must have encode(text) -> list[int], bos_id and name (see "
                    f"circuitboard.tasks.vocab); it has no {attr!r}"
                )
        return tokenizer, ((named,) if named else ())
    if model is None:
        if model_path is not None:
            return _from_directory(model_path), (model_path,)
        return vocab.ToyTokenizer(), None
    if isinstance(model, str):
        zoo_name = _zoo_name(model)
        if zoo_name is not None:
            return vocab.ToyTokenizer(), (f"zoo/{zoo_name}",)
        if model_path is not None:
            return _from_directory(model_path), (model_path,)
        if os.path.isdir(model):
            return _from_directory(model), (model,)
        if _is_hf_name(model):
            raise _need_path(model)
        from circuitboard.tasks import zoo

        raise KeyError(
            f"unknown model {model!r}: give a zoo model ({', '.join(zoo.names())}), an HF model "
            f"name with model_path=, or a local model directory"
        )
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"model must be a name or a PatchableTransformer, got {type(model)}")
    if model_path is not None:
        return _from_directory(model_path), (model_path,)
    if cfg.d_vocab == len(vocab.toy_vocabulary()):
        return vocab.ToyTokenizer(), ((cfg.name,) if cfg.name else ())
    raise ValueError(
        f"this model's vocabulary (d_vocab={cfg.d_vocab}) is not the zoo's toy vocabulary "
        f"({len(vocab.toy_vocabulary())} words); pass model_path= the local directory with its "
        f"tokenizer files, or tokenizer="
    )


def load_model(name: str, model_path: str | None = None, device=None):
    """A model a task can name: a zoo model, or an HF model from ``model_path`` or from the
    directory ``name`` (never downloaded)."""
    zoo_name = _zoo_name(name)
    if zoo_name is not None:
        from circuitboard.tasks import zoo

        return zoo.load(zoo_name) if device is None else zoo.load(zoo_name).to(device)
    path = model_path if model_path is not None else (name if os.path.isdir(name) else None)
    if path is None:
        if _is_hf_name(name):
            raise _need_path(name)
        raise KeyError(f"unknown model {name!r}; give a zoo name, or an HF name with model_path=")
    import circuitboard

    model = circuitboard.load_model(path)
    return model if device is None else model.to(device)
