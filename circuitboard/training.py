"""What every model trained in this repo shares: its initialisation and its learning-rate schedule.

The model zoo (``circuitboard.tasks.train``) and the planted-circuit models
(``circuitboard.groundtruth.planted.train``) are both small transformers trained from scratch on a
CPU; one definition of each keeps their cards comparable and their retrains bit for bit.
"""

from __future__ import annotations

import math

import torch

from circuitboard.model import ModelConfig, PatchableTransformer


def init_model(cfg: ModelConfig, seed: int) -> PatchableTransformer:
    """GPT-2-style initialisation: normal(0, 0.02), output projections (``W_O``, ``W_out``)
    scaled by ``1 / sqrt(2 n_layers)``, norms at identity, biases zero; seeded by ``seed``."""
    model = PatchableTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    out_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".w"):
                param.fill_(1.0)
            elif param.dim() == 1 or name.split(".")[-1].startswith("b_"):
                param.zero_()
            else:
                std = out_std if name.endswith(("W_O", "W_out")) else 0.02
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model


def lr_at(lr: float, warmup: int, steps: int, step: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to a tenth of ``lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
