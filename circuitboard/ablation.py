"""What a removed edge carries instead of its clean value.

``ablated_values`` returns ``[1|batch, 1|pos, n_sources, d_model]``: one ablated output per source,
ready for ``PatchableTransformer.run(tokens, mask, ablated)``.

- ``zero``: zeros.
- ``mean``: the mean source output over a reference set, per position (reference examples of the
  batch's length) or pooled over positions (``mean-pooled``).
- ``resample``: the source outputs on another example of the same length; each example gets a
  different one (a seeded derangement of the reference set).
- ``counterfactual``: the source outputs on the task's corrupted input, example by example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from circuitboard.task import Batch

ABLATIONS = ("zero", "mean", "mean-pooled", "resample", "counterfactual")


def check_ablation(name: str) -> str:
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    return name


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` with no fixed point (identity when n == 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, n, (1,), generator=gen).item()
    order = torch.randperm(n, generator=gen)
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-shift)
    return out


def ablated_values(
    model,
    ablation: str,
    clean: torch.Tensor,
    *,
    counterfactual: torch.Tensor | None = None,
    reference: Sequence[torch.Tensor] | torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Ablated source outputs for the examples ``clean [batch, pos]``.

    ``reference`` is the set that ``mean`` averages over and ``resample`` draws from (token
    tensors, possibly of several lengths); it defaults to ``clean`` itself.
    """
    check_ablation(ablation)
    batch, pos = clean.shape
    graph, d = model.graph, model.cfg.d_model
    if ablation == "zero":
        return torch.zeros(1, 1, graph.n_sources, d, dtype=model.dtype, device=model.device)
    if ablation == "counterfactual":
        if counterfactual is None:
            raise ValueError("counterfactual ablation needs the task's counterfactual tokens")
        if counterfactual.shape != clean.shape:
            raise ValueError(
                f"counterfactual tokens {tuple(counterfactual.shape)} must match clean "
                f"{tuple(clean.shape)}"
            )
        return model.source_outputs(counterfactual)
    refs = [clean] if reference is None else _as_list(reference)
    if ablation == "mean-pooled":
        total, count = 0.0, 0
        for r in refs:
            out = model.source_outputs(r)
            total = total + out.sum(dim=(0, 1))
            count += out.shape[0] * out.shape[1]
        return (total / count)[None, None]
    same = [r for r in refs if r.shape[1] == pos]
    if not same:
        lengths = sorted({r.shape[1] for r in refs})
        raise ValueError(
            f"{ablation} ablation needs reference examples of length {pos}; the reference set "
            f"has lengths {lengths}. Use 'mean-pooled', or give a reference of this length."
        )
    pool = torch.cat(same)
    if ablation == "mean":
        return model.source_outputs(pool).mean(0, keepdim=True)
    # resample: another example of the same length for each row.
    if reference is None:
        index = derangement(batch, seed)
    else:
        gen = torch.Generator().manual_seed(seed)  # a CPU generator: the same draw on any device
        index = torch.randint(0, len(pool), (batch,), generator=gen)
    return model.source_outputs(pool[index.to(pool.device)])


def _as_list(reference) -> list[torch.Tensor]:
    if isinstance(reference, torch.Tensor):
        return [reference]
    return list(reference)


def for_batch(model, ablation: str, batch, *, reference=None, seed: int = 0) -> torch.Tensor:
    """The ablated values a task batch is scored with: one definition for every part.

    Methods, ground truths and scores all call this, so "resample" or "mean" means the same
    thing everywhere: ``resample`` takes another example of the same batch (all one length),
    ``mean`` averages the ``reference`` examples of the batch's length (a task's train split),
    ``counterfactual`` runs the batch's own corrupted input.
    """
    if ablation == "resample":
        return ablated_values(model, "resample", batch.clean, seed=seed)
    return ablated_values(
        model,
        ablation,
        batch.clean,
        counterfactual=batch.counterfactual,
        reference=reference,
        seed=seed,
    )


@dataclass
class Prepared:
    """A batch with the ablated source outputs a removed edge reads for it: what methods train
    on and diagnostics run, built once per batch."""

    batch: Batch
    ablated: torch.Tensor  # [1|n, 1|pos, n_sources, d_model]

    @property
    def n(self) -> int:
        return len(self.batch)
