"""Small randomly initialised models and tasks for the method tests (no tests of its own)."""

from __future__ import annotations

import pytest
import torch

from circuitboard.model import ModelConfig, PatchableTransformer
from circuitboard.task import Batch, Task


def random_model(
    seed: int = 0,
    *,
    n_layers: int = 2,
    n_heads: int = 2,
    d_model: int = 8,
    d_head: int = 4,
    d_mlp: int | None = 16,
    d_vocab: int = 10,
    d_vocab_out: int | None = None,
    n_ctx: int = 8,
    normalization: str | None = "LN",
    attn_only: bool = False,
    dtype: torch.dtype = torch.float64,
    scale: float = 0.5,
) -> PatchableTransformer:
    """A PatchableTransformer with every weight drawn from a seeded normal distribution."""
    cfg = ModelConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=None if attn_only else d_mlp,
        d_vocab=d_vocab,
        d_vocab_out=d_vocab_out,
        n_ctx=n_ctx,
        normalization=normalization,
        attn_only=attn_only,
        act_fn="gelu_new",
    )
    model = PatchableTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):  # LayerNorm gains near one
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()


def random_task(
    model: PatchableTransformer,
    seed: int = 0,
    *,
    n: int = 6,
    lengths: tuple[int, ...] = (5,),
    metric: str = "logit_diff",
    n_batches_per_length: int = 1,
    name: str = "random",
) -> Task:
    """Clean and counterfactual token batches with answer and distractor (or L2 targets)."""
    gen = torch.Generator().manual_seed(seed)
    vocab, out = model.cfg.d_vocab, model.cfg.d_vocab_out

    def batch(length: int) -> Batch:
        clean = torch.randint(0, vocab, (n, length), generator=gen)
        counterfactual = torch.randint(0, vocab, (n, length), generator=gen)
        if metric == "l2":
            with torch.no_grad():
                target = model(clean).detach() + 0.1 * torch.randn(
                    n, length, out, generator=gen, dtype=model.dtype
                )
            return Batch(clean, counterfactual, target=target)
        answer = torch.randint(0, out, (n,), generator=gen)
        distractor = (answer + 1 + torch.randint(0, out - 1, (n,), generator=gen)) % out
        return Batch(clean, counterfactual, answer, distractor)

    train = [batch(length) for length in lengths for _ in range(n_batches_per_length)]
    test = [batch(length) for length in lengths]
    positions = "after_bos" if metric == "l2" else "last"
    return Task(name, train, test, metric=metric, positions=positions, categorical=metric != "l2")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared 2-core machine run far faster (and steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch_loss(model, task, prep, obj, mask: torch.Tensor, ablated=None) -> torch.Tensor:
    """Minus the objective summed over the batch, for one edge mask."""
    ablated = prep.ablated if ablated is None else ablated
    return -obj(model.run(prep.batch.clean, mask, ablated).logits).sum()
