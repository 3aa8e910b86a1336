"""The shipped planted models: ``trained/NAME/`` holds ``model.safetensors`` and ``config.json``
(a circuitboard checkpoint whose ``card`` records how it was trained) beside ``truth.json`` (its
ground truths and checks).

The model reads and writes the compiled Tracr program's tokens and outputs, so its encoding
(``tracr_info``) and declaration (``program``) come from the committed Tracr model at load time;
the card keeps the input tokens it was trained on and loading checks that they still match.
Loading needs torch and safetensors only. Files are written through a temporary name and a
rename.
"""

from __future__ import annotations

import json
import os

from circuitboard import loaders
from circuitboard.groundtruth import store as tracr_store

PLANTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained")
TRUTH_FILE = "truth.json"


def path(name: str, directory: str | None = None) -> str:
    return os.path.join(directory or PLANTED_DIR, name)


def shipped(directory: str | None = None) -> list[str]:
    """Program names with weights, card and ground truth present, sorted."""
    root = directory or PLANTED_DIR
    if not os.path.isdir(root):
        return []
    needed = (loaders.checkpoint.WEIGHTS_FILE, loaders.checkpoint.CONFIG_FILE, TRUTH_FILE)
    return sorted(
        n for n in os.listdir(root) if all(os.path.isfile(os.path.join(root, n, f)) for f in needed)
    )


def _missing(name: str, directory: str | None) -> FileNotFoundError:
    return FileNotFoundError(
        f"no planted model {name!r} at {path(name, directory)}; train it with "
        f"`circuitboard groundtruth train {name}`"
    )


def save(model, card: dict, record: dict, name: str, directory: str | None = None) -> str:
    """Write weights, card and ground truth; each file appears whole or not at all."""
    from circuitboard.graph import write_json_atomic  # needs torch: not imported to list names

    out = path(name, directory)
    loaders.save(model, out, card=card)
    write_json_atomic(os.path.join(out, TRUTH_FILE), record)
    for file in (loaders.checkpoint.WEIGHTS_FILE, loaders.checkpoint.CONFIG_FILE, TRUTH_FILE):
        os.chmod(os.path.join(out, file), 0o644)  # shipped files: readable by all
    return out


def card(name: str, directory: str | None = None) -> dict:
    if name not in shipped(directory):
        raise _missing(name, directory)
    return loaders.checkpoint.read_config(path(name, directory)).get("card", {})


def read_record(name: str, directory: str | None = None) -> dict:
    if name not in shipped(directory):
        raise _missing(name, directory)
    with open(os.path.join(path(name, directory), TRUTH_FILE)) as f:
        return json.load(f)


def load_model(name: str, directory: str | None = None):
    """The trained model, with the Tracr program's ``tracr_info`` and ``program`` attached."""
    if name not in shipped(directory):
        raise _missing(name, directory)
    model = loaders.load(path(name, directory))
    program = card(name, directory).get("program", name)
    description = tracr_store.read_description(program)
    trained_on = card(name, directory).get("input_tokens")
    if trained_on != description["tracr_info"]["input_tokens"]:
        raise ValueError(
            f"planted model {name!r} was trained on input tokens {trained_on}, but the "
            f"compiled Tracr program {program!r} now encodes "
            f"{description['tracr_info']['input_tokens']}; retrain it with "
            f"`circuitboard groundtruth train {name}`"
        )
    model.tracr_info = description["tracr_info"]
    model.program = description["program"]
    return model
