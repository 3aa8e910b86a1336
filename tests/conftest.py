"""Shared fixtures: small models built in memory, never downloaded."""

from __future__ import annotations

import pytest
import torch

from circuitboard.model import ModelConfig, PatchableTransformer

torch.set_flush_denormal(True)


def random_model(seed: int = 0, dtype=torch.float32, **overrides) -> PatchableTransformer:
    """A small PatchableTransformer with every weight drawn from a seeded normal."""
    spec = dict(
        n_layers=2, n_heads=3, d_model=16, d_head=4, d_mlp=32, d_vocab=20, n_ctx=12, name="tiny"
    )
    spec.update(overrides)
    model = PatchableTransformer(ModelConfig(**spec))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1.0 if name.endswith(".w") else 0.25
            base = 1.0 if name.endswith(".w") else 0.0
            param.copy_(base + scale * torch.randn(param.shape, generator=gen))
    return model.to(dtype).eval()


@pytest.fixture
def tiny():
    return random_model()


@pytest.fixture
def tokens():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 20, (4, 7), generator=gen)


@pytest.fixture
def counterfactual():
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, 20, (4, 7), generator=gen)
