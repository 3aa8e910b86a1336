"""Controls a method must beat: random circuits, a random model, shuffled labels.

Each control yields circuits that are scored on the real model and task, exactly as the method's
own circuits are. A method that reads the model and the task should find circuits more faithful
than:

- random circuits at the same edge budgets (seeded uniform scores, top-k, then pruned like every
  circuit);
- its own circuits found on a randomly initialised model of the same shape (weights as GPT-2
  initialises them: normal with std 0.02, LayerNorm weights 1, biases 0; dead nodes stay silent),
  which tests that it uses the trained weights;
- its own circuits found on the task with shuffled labels (answers and distractors, or targets,
  permuted across the examples of each batch by a seeded derangement), which tests that it uses
  the labels.

A control applies only where it can tell something (``applies``): a method that never reads the
labels (ACDC or Edge Pruning fitting the full model's outputs) returns the same circuits with
shuffled labels, so "failing" that control says nothing; likewise a random model for a method
that never reads the model (the random baseline), and any rerun of submitted data. Methods say
so through ``reads_labels`` and ``reads_model`` (both default True, the cautious reading) and
``reruns`` (default True).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from circuitboard.ablation import derangement
from circuitboard.graph import Circuit
from circuitboard.model import PatchableTransformer

INIT_STD = 0.02
CONTROLS = ("random_circuits", "random_model", "shuffled_labels")


def applies(method, control: str) -> tuple[bool, str]:
    """``(whether control applies to method, why not)``."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; controls: {', '.join(CONTROLS)}")
    if control == "random_circuits":
        return True, ""
    if not getattr(method, "reruns", True):
        return False, "not applicable: submitted data cannot be rerun on another model or task"
    if control == "random_model" and not getattr(method, "reads_model", True):
        return False, "not applicable: the method does not read the model's weights"
    if control == "shuffled_labels" and not getattr(method, "reads_labels", True):
        return False, "not applicable: the method does not read the task's labels"
    return True, ""


def random_circuits(graph, sizes: list[int], seed: int) -> list[Circuit]:
    gen = torch.Generator().manual_seed(10_007 + seed)
    scores = torch.rand(graph.n_edges, generator=gen, dtype=torch.float64)
    return [Circuit.top_k(graph, scores, k) for k in sizes]


def random_model(model: PatchableTransformer, seed: int) -> PatchableTransformer:
    """A fresh model of ``model``'s shape (same config, same graph), seeded."""
    fresh = PatchableTransformer(model.cfg)
    gen = torch.Generator().manual_seed(20_011 + seed)
    dead = set(model.cfg.dead)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w":  # LayerNorm gain
                param.fill_(1.0)
            elif leaf == "b" or leaf.startswith("b_"):
                param.zero_()
            else:
                param.copy_(INIT_STD * torch.randn(param.shape, generator=gen, dtype=param.dtype))
        for layer, block in enumerate(fresh.blocks):
            for head in range(model.cfg.n_heads):
                if f"a{layer}.h{head}" in dead:
                    block.attn.W_O[head].zero_()
            if block.mlp is not None and f"m{layer}" in dead:
                block.mlp.W_out.zero_()
    return fresh.to(device=model.device, dtype=model.dtype).eval()


def shuffled_labels(task, seed: int):
    """``task`` with labels permuted across examples, batch by batch (inputs unchanged)."""

    def shuffle(batch, i: int):
        order = derangement(len(batch), 30_011 + 97 * seed + i)
        changes = {}
        for name in ("answer", "distractor", "target"):
            value = getattr(batch, name)
            if value is not None:
                changes[name] = value[order.to(value.device)]
        return replace(batch, **changes)

    # The name stays: methods may key on it (a Tracr task is recognised by its name).
    return replace(
        task,
        train=[shuffle(b, i) for i, b in enumerate(task.train)],
        test=[shuffle(b, 1000 + i) for i, b in enumerate(task.test)],
    )
