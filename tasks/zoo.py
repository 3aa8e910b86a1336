"""The model zoo: small models trained here, shipped as safetensors plus a JSON card.

Each model lives in ``tasks/zoo/NAME/`` as written by ``circuitboard.loaders.save``; the card
(``config.json``'s ``"card"``) records the command, seed, data hash, training time and the
accuracy and metric measured on every task's test split. ``circuitboard zoo train NAME``
rebuilds a model; ``circuitboard zoo list`` shows them. Listing the models and reading their
cards imports no torch; ``load`` does.
"""

from __future__ import annotations

import os
from functools import cache

from circuitboard import loaders
from circuitboard.tasks import vocab
from circuitboard.tasks.zoo_specs import SPECS

ZOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")


def names() -> list[str]:
    """Every zoo model that can be trained, in ``zoo_specs.SPECS`` order."""
    return list(SPECS)


def path(name: str) -> str:
    if name not in names():
        raise KeyError(f"unknown zoo model {name!r}; the zoo has {', '.join(names())}")
    return os.path.join(ZOO_DIR, name)


def available() -> list[str]:
    """The zoo models whose weights are present."""
    weights = loaders.checkpoint.WEIGHTS_FILE
    return [n for n in names() if os.path.isfile(os.path.join(path(n), weights))]


def _missing(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"zoo model {name!r} has not been trained in this checkout ({path(name)} is missing); "
        f"build it with: circuitboard zoo train {name}"
    )


@cache
def _card(name: str, mtime: float) -> dict:
    return loaders.checkpoint.read_config(path(name)).get("card", {})


def card(name: str) -> dict:
    """The model's card: command, seed, data hash, training time, metrics per task."""
    config = os.path.join(path(name), loaders.checkpoint.CONFIG_FILE)
    if not os.path.isfile(config):
        raise _missing(name)
    return _card(name, os.path.getmtime(config))


def load(name: str, device: str = "cpu"):
    """The zoo model ``name`` as a PatchableTransformer (toy vocabulary)."""
    if name not in available():
        raise _missing(name)
    expected = vocab.vocabulary_hash()
    found = card(name).get("vocab_hash")
    if found != expected:
        raise ValueError(
            f"zoo model {name!r} was trained on toy vocabulary {found}, but this circuitboard's "
            f"is {expected}; retrain it with: circuitboard zoo train {name}"
        )
    return loaders.load(path(name), device=device)


def models_for(task_name: str) -> tuple[str, ...]:
    """The zoo models whose card accuracy on ``task_name`` clears the leaderboard bar."""
    from circuitboard.tasks.evaluation import on_leaderboard

    out = []
    for name in available():
        entry = card(name).get("metrics", {}).get(task_name)
        if entry is not None and on_leaderboard(entry["accuracy"]):
            out.append(f"zoo/{name}")
    return tuple(out)
