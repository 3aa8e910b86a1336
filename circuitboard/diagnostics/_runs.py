"""Batched patched runs shared by the diagnostics: many edge masks over many examples.

Every diagnostic asks the same question many times: the task metric of the model under some edge
mask, on every example of a split. A *row* is one (mask, example) pair; rows are laid out into
passes of the engine with per-example masks (``[rows, n_edges]``) and the examples' tokens and
ablated values tiled to match, so there is never a Python loop over masks x examples. Passes
are sized by tokens (``max_tokens`` rows x positions), which keeps each one in cache.

The ablated values of a batch come from ``circuitboard.ablation.for_batch`` with the task's
train prompts as the reference and ``seed + i`` for the ``i``-th batch, as ``cb.evaluate``
builds them, so a diagnostic scores a circuit exactly where the evaluation does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from circuitboard.ablation import Prepared, check_ablation, for_batch
from circuitboard.task import Batch

MAX_TOKENS = 2048  # tokens per pass; 512 to 4096 ran within noise of each other on toy-lm


def prepare(model, task, ablation: str, split, seed: int) -> list[Prepared]:
    """The split's batches with their ablated values, built as ``cb.evaluate`` builds them."""
    check_ablation(ablation)
    reference = [b.clean for b in task.train]
    out = []
    for i, batch in enumerate(task.batches(split)):
        with torch.no_grad():
            ablated = for_batch(model, ablation, batch, reference=reference, seed=seed + i)
        out.append(Prepared(batch, ablated))
    return out


def subsample(prepared: list[Prepared], max_examples: int | None, seed: int) -> list[Prepared]:
    """At most ``max_examples`` examples of the split, a seeded choice kept in split order."""
    total = sum(p.n for p in prepared)
    if max_examples is None or max_examples >= total:
        return prepared
    if max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples}")
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_examples]
    keep = torch.zeros(total, dtype=torch.bool)
    keep[chosen] = True
    out, start = [], 0
    for p in prepared:
        rows = torch.nonzero(keep[start : start + p.n]).flatten()
        start += p.n
        if len(rows):
            ablated = p.ablated if p.ablated.shape[0] == 1 else p.ablated[rows.to(p.ablated.device)]
            out.append(Prepared(p.batch.select(rows), ablated))
    return out


def n_scored(task, length: int) -> int:
    """Scored positions per example: 1 for ``"last"``, ``length - 1`` for ``"after_bos"``."""
    return 1 if task.positions == "last" else length - 1


def scored_metric(task, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The task metric at each scored position, ``[n, n_scored]``.

    ``"last"`` tasks score one position, so this is ``task.score`` as a column. For
    ``"after_bos"`` tasks each position ``p >= 1`` is scored on its own by handing the task's own
    metric the two-position slice ``[0, p]`` (a BOS slot and ``p``), so the one definition of the
    metric in ``circuitboard.metrics`` is what is read, position by position.
    """
    if task.positions == "last":
        return task.score(logits, batch)[:, None]
    n, pos = batch.clean.shape
    p = pos - 1
    cols = torch.stack([torch.zeros(p, dtype=torch.long), torch.arange(1, pos)], dim=1)  # [p, 2]

    def pairs(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t[:, cols.to(t.device)].reshape(n * p, 2, *t.shape[2:])

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.repeat_interleave(p, dim=0)

    sliced = Batch(
        clean=pairs(batch.clean),
        counterfactual=pairs(batch.counterfactual),
        answer=rows(batch.answer),
        distractor=rows(batch.distractor),
        target=pairs(batch.target),
    )
    return task.score(pairs(logits), sliced).view(n, p)


def _chunks(n_rows: int, length: int, max_tokens: int) -> Iterator[slice]:
    step = max(1, max_tokens // max(1, length))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


@torch.no_grad()
def run_rows(
    model,
    task,
    prep: Prepared,
    masks: torch.Tensor,
    mask_index: torch.Tensor,
    example_index: torch.Tensor,
    *,
    per_position: bool = True,
    max_tokens: int = MAX_TOKENS,
) -> torch.Tensor:
    """The metric of each row, row ``r`` being example ``example_index[r]`` under the edge mask
    ``masks[mask_index[r]]`` (1 keeps an edge).

    ``per_position``: ``[rows, n_scored]``, the metric at each scored position
    (``scored_metric``); else ``[rows]``, the task's metric per example (``task.score``).
    """
    batch, ablated = prep.batch, prep.ablated
    masks = masks.to(device=model.device, dtype=model.dtype)
    out = []
    for part in _chunks(len(mask_index), batch.length, max_tokens):
        ex = example_index[part]
        rows = batch.select(ex)
        abl = ablated if ablated.shape[0] == 1 else ablated[ex.to(ablated.device)]
        logits = model(rows.clean.to(model.device), masks[mask_index[part]], abl)
        value = scored_metric(task, logits, rows) if per_position else task.score(logits, rows)
        out.append(value.double().cpu())
    return torch.cat(out)


def _grid(model, task, prep: Prepared, masks: torch.Tensor, per_position: bool, max_tokens: int):
    k = masks.shape[0]
    mask_index = torch.arange(k).repeat_interleave(prep.n)
    example_index = torch.arange(prep.n).repeat(k)
    values = run_rows(
        model,
        task,
        prep,
        masks,
        mask_index,
        example_index,
        per_position=per_position,
        max_tokens=max_tokens,
    )
    return values.view(k, prep.n, *values.shape[1:])


def per_example(
    model, task, prepared: list[Prepared], masks: torch.Tensor, *, max_tokens: int = MAX_TOKENS
) -> torch.Tensor:
    """Each mask's task metric (``task.score``) on every example of the split, ``[k, n]``."""
    return torch.cat([_grid(model, task, p, masks, False, max_tokens) for p in prepared], dim=1)


def per_pair(
    model, task, prep: Prepared, masks: torch.Tensor, *, max_tokens: int = MAX_TOKENS
) -> torch.Tensor:
    """Each mask's metric at each scored position of one batch: ``[k, n, n_scored]``."""
    return _grid(model, task, prep, masks, True, max_tokens)


def edges_from(graph, sources: list[int]) -> torch.Tensor:
    """Boolean ``[n_edges]``: the edges leaving any of ``sources`` (indices into graph.sources)."""
    return torch.isin(graph.edge_src, torch.as_tensor(sources, dtype=torch.long))


def edges_into_logits(graph, sources: list[int]) -> torch.Tensor:
    """Boolean ``[n_edges]``: the edges from ``sources`` straight into the logits reader."""
    return edges_from(graph, sources) & (graph.edge_reader == graph.n_readers - 1)
