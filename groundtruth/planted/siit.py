"""Strict interchange intervention training (SIIT), as InterpBench (Gupta et al. 2024) defines it.

Three losses, each on the outputs after BOS, against the high-level (HL) model, here the
compiled Tracr model (see ``alignment``):

- **behaviour**: the low-level (LL) model's output on an input must be the HL output on it;
- **IIT**: interchange an HL node's output with its value on another input (the *source*) and
  its aligned LL nodes' outputs likewise; the LL output must be the HL output under that
  intervention;
- **strictness**: interchange a component the alignment does not name; the output must not
  change, i.e. stay the HL output on the input itself.

Every interchange is a resample ablation of the interchanged nodes' outgoing edges with the
source input's activations, one per-example edge mask per row of one patched pass
(``PatchableTransformer.run(tokens, mask, ablated)``), so a step runs the IIT and strictness
losses in one LL forward. Source activations are detached, as in InterpBench's default.

Categorical outputs are trained with cross-entropy on the HL output's argmax at positions
where the HL output holds a value (a Tracr output with no entry of at least 0.5 holds none);
numerical ones with the squared error. *Agreement* decodes both sides the same way: the argmax
for categorical outputs, the nearest of the values the program outputs for numerical ones.

This project's unit is the edge, and InterpBench's strictness interchanges whole nodes only,
which leaves free the edges between aligned nodes (and from ``input``) that the HL graph does
not have: a trained head may read token content through a query the HL graph says reads only
positions. ``edge_share`` of the strictness rows therefore resample-ablate edges outside the
planted circuit instead of one unaligned node: all of them, or a random half (InterpBench's
``all`` and ``sample_all`` modes, at edge granularity); the output must not change either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuitboard.ablation import derangement
from circuitboard.groundtruth.planted import functional
from circuitboard.groundtruth.planted.alignment import Alignment, interchange_mask

DEFINED = 0.5  # a categorical Tracr output holds a value iff some entry is at least this


@dataclass(frozen=True)
class Readout:
    """How outputs are read: categorical (argmax) or numerical (the nearest of ``values``, the
    values the program outputs)."""

    categorical: bool
    values: tuple[float, ...] = ()

    def defined(self, hl_out: torch.Tensor) -> torch.Tensor:
        """``[..., pos]`` bool: positions where the HL output holds a value (after BOS)."""
        if self.categorical:
            return hl_out[..., 1:, :].max(-1).values >= DEFINED
        return torch.ones(hl_out.shape[:-1], dtype=torch.bool)[..., 1:]

    def loss(self, ll_out: torch.Tensor, hl_out: torch.Tensor) -> torch.Tensor:
        """Mean loss over rows and positions after BOS where the HL output is defined."""
        ll, hl = ll_out[..., 1:, :], hl_out[..., 1:, :].to(ll_out.dtype)
        if self.categorical:
            keep = self.defined(hl_out)
            if not bool(keep.any()):
                return ll.sum() * 0
            return F.cross_entropy(ll[keep], hl[keep].argmax(-1))
        return F.mse_loss(ll, hl)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """``[..., pos]`` after BOS: the argmax, or the index of the nearest program value."""
        out = out[..., 1:, :]
        if self.categorical:
            return out.argmax(-1)
        values = torch.tensor(self.values, dtype=torch.float64)
        return (out.double() - values).abs().argmin(-1)

    def agree(self, ll_out: torch.Tensor, hl_out: torch.Tensor) -> torch.Tensor:
        """``[..., pos]`` bool after BOS: the same decoded value (undefined HL positions agree)."""
        same = self.decode(ll_out) == self.decode(hl_out)
        return same | ~self.defined(hl_out) if self.categorical else same

    def interchange_hits(self, agree: torch.Tensor) -> torch.Tensor:
        """Per example, from ``agree [..., pos]``: InterpBench's IIA counts a categorical
        example right only if every position agrees, and a numerical one by its share of
        positions that agree."""
        return agree.all(-1).float() if self.categorical else agree.float().mean(-1)

    def to_dict(self) -> dict:
        return {"categorical": self.categorical, "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict) -> Readout:
        return cls(bool(data["categorical"]), tuple(float(v) for v in data.get("values", ())))


def readout_for(hl_model, groups) -> Readout:
    """The readout of an HL model; a numerical one reads the values it outputs on ``groups``
    (rounded to 4 decimals: Tracr's numerical MLPs are approximate)."""
    if hl_model.cfg.d_vocab_out > 1:
        return Readout(True)
    with torch.no_grad():
        outs = torch.cat([hl_model(g)[:, 1:].flatten() for g in groups]).double()
    values = torch.unique((outs * 1e4).round() / 1e4)
    return Readout(False, tuple(float(v) for v in values))


# ----------------------------------------------------------------------- interchanges
class Interchanges:
    """Per-example edge masks of every interchange SIIT makes, as row tables.

    ``hl[i]`` and ``ll_iit[i]`` interchange HL node ``i`` and its LL nodes; ``ll_strict[j]``
    interchanges unaligned LL node ``j``; ``outside`` marks the edges outside the planted
    circuit.
    """

    def __init__(self, alignment: Alignment) -> None:
        self.alignment = alignment
        hl_nodes = alignment.hl_nodes
        self.hl = torch.stack([interchange_mask(alignment.hl, [n]) for n in hl_nodes])
        self.ll_iit = torch.stack(
            [interchange_mask(alignment.ll, alignment.nodes[n]) for n in hl_nodes]
        )
        unaligned = alignment.unaligned
        self.ll_strict = (
            torch.stack([interchange_mask(alignment.ll, [n]) for n in unaligned])
            if unaligned
            else torch.ones(0, alignment.ll.n_edges)
        )
        self.outside = ~alignment.planted().keep

    def strict_rows(
        self, n: int, edge_share: float, gen: torch.Generator, all_share: float = 0.5
    ) -> torch.Tensor:
        """``[n, n_edges]`` strictness masks: one unaligned node each, or (a share
        ``edge_share`` of rows, and all rows if no node is unaligned) edges outside the planted
        circuit: every one of them (InterpBench's ``all``, a share ``all_share`` of those rows)
        or a random half (``sample_all``)."""
        n_nodes = len(self.ll_strict)
        by_edges = torch.rand(n, generator=gen) < edge_share
        pick = torch.randint(max(n_nodes, 1), (n,), generator=gen)
        every = torch.rand(n, 1, generator=gen) < all_share
        half = torch.rand(n, len(self.outside), generator=gen) < 0.5
        drop = (every | half) & self.outside
        edge_rows = (~drop).float()
        if n_nodes == 0:
            return edge_rows
        return torch.where(by_edges[:, None], edge_rows, self.ll_strict[pick])


def other_examples(n: int, gen: torch.Generator, base: torch.Tensor) -> torch.Tensor:
    """For each index in ``base``, a different example of the ``n`` (uniformly drawn)."""
    if n < 2:
        return base.clone()
    return (base + torch.randint(1, n, base.shape, generator=gen)) % n


@torch.no_grad()
def hl_interchanged(hl_model, masks: torch.Tensor, base: torch.Tensor, source: torch.Tensor):
    """HL outputs on ``base`` with the rows' interchanges (masks ``[n, hl_edges]``) from
    ``source``."""
    return hl_model(base, masks, hl_model.source_outputs(source))


def siit_losses(
    ll_model,
    hl_model,
    interchanges: Interchanges,
    readout: Readout,
    base: torch.Tensor,
    source: torch.Tensor,
    hl_clean: torch.Tensor,
    gen: torch.Generator,
    edge_share: float,
    all_share: float = 0.5,
) -> dict[str, torch.Tensor]:
    """The three SIIT losses on one batch of interchange pairs, in one LL pass.

    ``base``, ``source`` are ``[b, pos]`` tokens of one length, ``hl_clean`` the HL outputs on
    ``base``. Each row draws its HL node (IIT) and its unaligned node or edge set (strictness);
    the IIT and strictness rows share one pass with per-example masks, the behaviour rows run
    unpatched.
    """
    b = len(base)
    node = torch.randint(len(interchanges.hl), (b,), generator=gen)
    hl_iit = hl_interchanged(hl_model, interchanges.hl[node], base, source)
    strict = interchanges.strict_rows(b, edge_share, gen, all_share)
    masks = torch.cat([interchanges.ll_iit[node], strict])
    ablated = ll_model.source_outputs(source).detach()
    out = ll_model(base.repeat(2, 1), masks, ablated.repeat(2, 1, 1, 1))
    return {
        "behaviour": readout.loss(ll_model(base), hl_clean),
        "iit": readout.loss(out[:b], hl_iit),
        "strict": readout.loss(out[b:], hl_clean),
    }


def iit_loss(
    ll_model, hl_model, alignment: Alignment, readout: Readout, base, source
) -> torch.Tensor:
    """The IIT loss of every HL node on every pair (``base[i]``, ``source[i]``), averaged."""
    inter = Interchanges(alignment)
    k, n = len(inter.hl), len(base)
    rows = base.repeat(k, 1)
    hl_out = hl_interchanged(hl_model, inter.hl.repeat_interleave(n, 0), rows, source.repeat(k, 1))
    ablated = ll_model.source_outputs(source).repeat(k, 1, 1, 1)
    ll_out = ll_model(rows, inter.ll_iit.repeat_interleave(n, 0), ablated)
    return readout.loss(ll_out, hl_out)


# ------------------------------------------------------------------------- measurement
def pairs(groups, seeds) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Interchange pairs: each input with a seeded derangement of its length group, per seed."""
    return [(g, g[derangement(len(g), s)]) for g in groups for s in seeds]


@torch.no_grad()
def accuracy(ll_model, hl_model, groups, readout: Readout) -> float:
    """Share of output positions (after BOS, over all inputs) that agree with the HL model."""
    agree = [readout.agree(ll_model(g), hl_model(g)) for g in groups]
    return float(torch.cat([a.flatten() for a in agree]).float().mean())


@torch.no_grad()
def interchange_accuracy(
    ll_model, hl_model, alignment: Alignment, groups, readout: Readout, seeds=(0, 1, 2)
) -> dict[str, float]:
    """IIA per HL node: the share of (input, source) pairs on which the LL output under the
    aligned interchange equals the HL output under the HL interchange (``interchange_hits``)."""
    inter = Interchanges(alignment)
    k = len(inter.hl)
    hits, total = torch.zeros(k), 0
    for base, source in pairs(groups, seeds):
        n = len(base)
        hl_out = hl_interchanged(
            hl_model, inter.hl.repeat_interleave(n, 0), base.repeat(k, 1), source.repeat(k, 1)
        ).view(k, n, *base.shape[1:], -1)
        ll_out = functional.masked_outputs(
            ll_model, base, inter.ll_iit, ll_model.source_outputs(source)
        )
        hits += readout.interchange_hits(readout.agree(ll_out, hl_out)).sum(1)
        total += n
    return {node: float(hits[i] / total) for i, node in enumerate(alignment.hl_nodes)}


def strict_accuracy(ll_model, hl_model, alignment: Alignment, groups, readout) -> dict:
    """Per unaligned node: accuracy against the HL's clean outputs when it is interchanged."""
    inter = Interchanges(alignment)
    if not len(inter.ll_strict):
        return {}
    acc = functional.masked_accuracy(ll_model, hl_model, inter.ll_strict, groups, readout)
    return {node: float(acc[i]) for i, node in enumerate(alignment.unaligned)}
