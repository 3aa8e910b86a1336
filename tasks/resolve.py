"""Which tokeniser a task uses for a model, and loading the models the tasks name.

Zoo models use the toy vocabulary. GPT-2-family models use GPT-2's BPE, read from a local
directory only: a GPT-2 name without ``model_path`` is an error that says what to pass.
"""

from __future__ import annotations

import os

from circuitboard.tasks import vocab

GPT2_PREFIXES = ("gpt2", "distilgpt2")


def _is_gpt2_name(name: str) -> bool:
    return name.lower().startswith(GPT2_PREFIXES)


def _need_path(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"model {name!r} is GPT-2-family and is never downloaded: pass model_path= a local "
        f"directory holding it (config.json, weights and tokenizer files, as written by "
        f"save_pretrained)"
    )


def _zoo_name(name: str) -> str | None:
    from circuitboard.tasks import zoo

    bare = name.removeprefix("zoo/")
    return bare if bare in zoo.names() else None


def resolve_tokenizer(model=None, *, model_path: str | None = None, tokenizer=None):
    """``(tokenizer, models)``; ``models`` is None when no model was named (toy vocabulary)."""
    named = model if isinstance(model, str) else getattr(getattr(model, "cfg", None), "name", "")
    if tokenizer is not None:
        if not hasattr(tokenizer, "bos_id") and hasattr(tokenizer, "convert_tokens_to_ids"):
            tokenizer = vocab.GPT2Tokenizer(tokenizer)  # a bare HF GPT-2 tokenizer
        for attr in ("encode", "bos_id", "name"):
            if not hasattr(tokenizer, attr):
                raise TypeError(
                    f"tokenizer must have encode(text) -> list[int], bos_id and name (see "
                    f"circuitboard.tasks.vocab); it has no {attr!r}"
                )
        return tokenizer, ((named,) if named else ())
    if model is None:
        if model_path is not None:
            return vocab.GPT2Tokenizer.from_directory(model_path), (model_path,)
        return vocab.ToyTokenizer(), None
    if isinstance(model, str):
        zoo_name = _zoo_name(model)
        if zoo_name is not None:
            return vocab.ToyTokenizer(), (f"zoo/{zoo_name}",)
        if _is_gpt2_name(model):
            if model_path is None:
                raise _need_path(model)
            return vocab.GPT2Tokenizer.from_directory(model_path), (model_path,)
        if os.path.isdir(model):
            return vocab.GPT2Tokenizer.from_directory(model), (model,)
        from circuitboard.tasks import zoo

        raise KeyError(
            f"unknown model {model!r}: give a zoo model ({', '.join(zoo.names())}), 'gpt2' with "
            f"model_path=, or a local GPT-2 directory"
        )
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"model must be a name or a PatchableTransformer, got {type(model)}")
    if cfg.d_vocab == len(vocab.toy_vocabulary()):
        return vocab.ToyTokenizer(), ((cfg.name,) if cfg.name else ())
    if model_path is not None:
        return vocab.GPT2Tokenizer.from_directory(model_path), (model_path,)
    raise ValueError(
        f"this model's vocabulary (d_vocab={cfg.d_vocab}) is not the zoo's toy vocabulary "
        f"({len(vocab.toy_vocabulary())} words); pass model_path= the local directory with its "
        f"tokenizer files, or tokenizer="
    )


def load_model(name: str, model_path: str | None = None):
    """A model a task can name: a zoo model, or GPT-2 from ``model_path`` (never downloaded)."""
    zoo_name = _zoo_name(name)
    if zoo_name is not None:
        from circuitboard.tasks import zoo

        return zoo.load(zoo_name)
    if _is_gpt2_name(name) or model_path is not None:
        if model_path is None:
            raise _need_path(name)
        from circuitboard.loaders import from_hf

        return from_hf(model_path)
    if os.path.isdir(name):
        import circuitboard

        return circuitboard.load_model(name)
    raise KeyError(f"unknown model {name!r}; give a zoo name, or 'gpt2' with model_path=")
