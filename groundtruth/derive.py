"""Ground truths of a compiled Tracr model, and the two checks every ground truth must pass.

*Structural*: an edge is in it iff the residual dimensions its source writes overlap the ones its
reader reads, both read off the effective matrices: ``W_QK = W_Q W_K^T`` (rows for ``<q>``,
columns for ``<k>``), ``W_OV = W_V W_O`` (rows for ``<v>``, columns for what a head writes),
``W_in``/``W_out`` of live hidden units for MLPs, ``W_E`` and ``W_pos`` for ``input`` and ``W_U``
for ``logits``. Declared spaces are not used: tracr declares BOS in value spaces and maps it to
zero. The ``one`` and BOS directions count like any other, so this is the widest honest circuit.

*Functional*, one per ablation (zero, resample, mean): an edge is in it iff ablating that edge
alone moves some output (after BOS) by more than ``TOL`` on the program's data. All single-edge
ablations run batched: one row per (edge, input), each with its own mask row. Only structural
edges are run: any other edge's source writes nothing its reader reads, and a source's clean and
ablated values both lie in the span of what it writes, so its effect is exactly zero.

*Checks*: (1) ablating every edge outside the circuit at once moves no output by more than
``TOL``; (2) every edge in it is necessary, i.e. ablating it too moves an output by more than
``TOL``, or it is recorded as redundant. Should single-edge effects miss a joint effect, check (1)
would fail; ``functional`` then adds edges back, latest reader first, and records them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from circuitboard.ablation import ablated_values
from circuitboard.graph import Circuit

TOL = 1e-4  # an output "moves" if it changes by more than this; Tracr outputs are O(1)
ABLATIONS = ("zero", "resample", "mean")
RESAMPLE_SEEDS = (0, 1, 2)  # three seeded same-length derangements for resample ablation
MAX_ROWS = 16384  # rows per batched pass
CHUNK = 256  # examples per step, so that masks already shown to matter stop early


@contextmanager
def single_thread() -> Iterator[None]:
    """Tracr models are tiny: intra-op threads only add synchronisation, and on a shared CPU
    they can make a pass a hundred times slower. Run on one thread and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- structural
def written_dims(model) -> torch.Tensor:
    """``[n_sources, d_model]``: which residual dims each source can write."""
    cfg, out = model.cfg, []
    with torch.no_grad():
        out.append(model.embed.W_E.ne(0).any(0) | model.pos_embed.W_pos.ne(0).any(0))
        for block in model.blocks:
            a = block.attn
            for h in range(cfg.n_heads):
                ov = a.W_V[h] @ a.W_O[h]
                out.append(ov.ne(0).any(0) | (a.b_V[h] @ a.W_O[h]).ne(0))
            if block.mlp is not None:
                m = block.mlp
                live = m.W_in.ne(0).any(0) | m.b_in.ne(0)
                out.append(m.W_out[live].ne(0).any(0) | m.b_out.ne(0))
    return torch.stack(out)


def read_dims(model) -> torch.Tensor:
    """``[n_readers, d_model]``: which residual dims each reader reads, in reader order."""
    cfg, out = model.cfg, []
    with torch.no_grad():
        for block in model.blocks:
            a = block.attn
            qk = [a.W_Q[h] @ a.W_K[h].T for h in range(cfg.n_heads)]
            out += [m.ne(0).any(1) for m in qk]  # <q>
            out += [m.ne(0).any(0) for m in qk]  # <k>
            out += [(a.W_V[h] @ a.W_O[h]).ne(0).any(1) for h in range(cfg.n_heads)]  # <v>
            if block.mlp is not None:
                m = block.mlp
                used = m.W_out.ne(0).any(1)
                out.append(m.W_in[:, used].ne(0).any(1))
        out.append(model.unembed.W_U.ne(0).any(1))
    return torch.stack(out)


def structural(model) -> Circuit:
    graph = model.graph
    overlap = (written_dims(model).float() @ read_dims(model).float().T) > 0  # [S, R]
    return Circuit(graph, overlap[graph.edge_src, graph.edge_reader]).pruned()


def overlap_labels(model, edge: str) -> list[str]:
    """The residual labels (``model.tracr_info``) an edge carries: why it is structural."""
    with single_thread():
        return _overlap_labels(model, edge)


def _overlap_labels(model, edge: str) -> list[str]:
    graph = model.graph
    i = int(graph.index_of([edge])[0])
    both = written_dims(model)[graph.edge_src[i]] & read_dims(model)[graph.edge_reader[i]]
    labels = model.tracr_info["residual_labels"]
    return [labels[j] for j in torch.nonzero(both).flatten().tolist()]


# ------------------------------------------------------------------------ batched ablation
@dataclass
class Data:
    """Token groups (one length each) and, for counterfactual ablation, their corruptions."""

    groups: list[torch.Tensor]
    counterfactuals: list[torch.Tensor] | None = None
    labels: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return sum(len(g) for g in self.groups)


def _ablations(model, data: Data, ablation: str, index: int) -> list[torch.Tensor]:
    """Ablated source values for group ``index``: one tensor per draw."""
    tokens = data.groups[index]
    if ablation == "counterfactual":
        if data.counterfactuals is None:
            raise ValueError("counterfactual ablation needs Data.counterfactuals")
        cf = data.counterfactuals[index]
        return [ablated_values(model, "counterfactual", tokens, counterfactual=cf)]
    if ablation == "resample":
        return [ablated_values(model, "resample", tokens, seed=s) for s in RESAMPLE_SEEDS]
    return [ablated_values(model, ablation, tokens)]


@torch.no_grad()
def masked_effects(
    model, data: Data, ablation: str, masks: torch.Tensor, stop_above: float | None = None
) -> torch.Tensor:
    """For each mask row of ``[k, n_edges]``: the largest |output change| after BOS on the data.

    Every (mask, example) pair is one row of a batched pass with per-example masks. With
    ``stop_above``, a mask whose change already exceeds it runs on no further examples (its value
    is then a lower bound): showing that an edge matters is cheap, and only showing that it does
    not needs every example.
    """
    with single_thread():
        return _masked_effects(model, data, ablation, masks, stop_above)


def _masked_effects(model, data, ablation, masks, stop_above) -> torch.Tensor:
    k = masks.shape[0]
    worst = torch.zeros(k, dtype=torch.float64)
    for i, tokens in enumerate(data.groups):
        clean_all = model(tokens)
        for ablated_all in _ablations(model, data, ablation, i):
            for lo in range(0, len(tokens), CHUNK):
                active = torch.arange(k)
                if stop_above is not None:
                    active = torch.nonzero(worst <= stop_above).flatten()
                    if not len(active):
                        return worst
                toks, clean = tokens[lo : lo + CHUNK], clean_all[lo : lo + CHUNK]
                ablated = ablated_all
                if ablated.shape[0] > 1:
                    ablated = ablated_all[lo : lo + CHUNK]
                _run_rows(model, toks, clean, ablated, masks, active, worst)
    return worst


def _run_rows(model, toks, clean, ablated, masks, active, worst) -> None:
    n = len(toks)
    per = max(1, MAX_ROWS // n)
    for start in range(0, len(active), per):
        rows_idx = active[start : start + per]
        c = len(rows_idx)
        rows = masks[rows_idx].repeat_interleave(n, dim=0).to(model.dtype)
        abl = ablated if ablated.shape[0] == 1 else ablated.repeat(c, 1, 1, 1)
        out = model(toks.repeat(c, 1), rows, abl)
        change = (out - clean.repeat(c, 1, 1))[:, 1:].abs().reshape(c, -1)
        if change.shape[1]:
            worst[rows_idx] = torch.maximum(worst[rows_idx], change.amax(1).double().cpu())


def _one_off(keep: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One mask row per index in ``idx``: ``keep`` with that edge removed as well."""
    masks = keep.float()[None].repeat(len(idx), 1)
    masks[torch.arange(len(idx)), idx] = 0
    return masks


def single_edge_effects(
    model,
    data: Data,
    ablation: str,
    candidates: torch.Tensor | None = None,
    stop_above: float | None = TOL,
) -> torch.Tensor:
    """``[n_edges]``: the output change when that edge alone is ablated (0 for non-candidates).

    ``candidates`` defaults to the structural ground truth (see the module docstring).
    """
    n = model.graph.n_edges
    if candidates is None:
        candidates = structural(model).keep
    idx = torch.nonzero(candidates).flatten()
    out = torch.zeros(n, dtype=torch.float64)
    if len(idx):
        masks = _one_off(torch.ones(n, dtype=torch.bool), idx)
        out[idx] = masked_effects(model, data, ablation, masks, stop_above)
    return out


def joint_effect(model, data: Data, ablation: str, keep: torch.Tensor) -> float:
    """Largest output change when every edge outside ``keep`` is ablated at once."""
    return float(masked_effects(model, data, ablation, keep.float()[None])[0])


def necessity(model, data: Data, ablation: str, keep: torch.Tensor) -> torch.Tensor:
    """For each kept edge: the output change when it is ablated together with the outside."""
    idx = torch.nonzero(keep).flatten()
    out = torch.zeros(len(keep), dtype=torch.float64)
    if len(idx):
        out[idx] = masked_effects(model, data, ablation, _one_off(keep, idx), stop_above=TOL)
    return out


# ------------------------------------------------------------------------------ functional
def functional(
    model,
    data: Data,
    ablation: str,
    candidates: torch.Tensor | None = None,
    exact_effects: bool = False,
) -> tuple[Circuit, list[str]]:
    """The functional ground truth under ``ablation``, and the edges added for joint effects.

    The circuit's ``scores`` are the single-edge effects: exact maxima over the data with
    ``exact_effects``, otherwise lower bounds for the edges above ``TOL`` (which is all that
    deciding membership needs).
    """
    graph = model.graph
    stop = None if exact_effects else TOL
    effects = single_edge_effects(model, data, ablation, candidates, stop_above=stop)
    keep = effects > TOL
    added: list[str] = []
    if joint_effect(model, data, ablation, keep) > TOL:
        # A joint effect that no single ablation shows: add edges back, latest reader first...
        for e in reversed(torch.nonzero(~keep).flatten().tolist()):
            keep[e] = True
            added.append(graph.edge_names[e])
            if joint_effect(model, data, ablation, keep) <= TOL:
                break
        # ...then drop again those that the final set does not need.
        for name in list(added):
            e = graph.edge_index[name]
            keep[e] = False
            if joint_effect(model, data, ablation, keep) > TOL:
                keep[e] = True
            else:
                added.remove(name)
    return Circuit(graph, keep, effects), added


@dataclass
class CheckResult:
    """Check (1): ``outside_effect <= TOL``. Check (2): ``redundant`` is the recorded list."""

    ablation: str
    outside_effect: float
    necessary: list[str]
    redundant: list[str]

    @property
    def sufficient(self) -> bool:
        return self.outside_effect <= TOL


def check(model, data: Data, circuit: Circuit, ablation: str) -> CheckResult:
    keep = circuit.keep.clone()
    outside = joint_effect(model, data, ablation, keep)
    nec = necessity(model, data, ablation, keep)
    names = circuit.graph.edge_names
    idx = torch.nonzero(keep).flatten().tolist()
    return CheckResult(
        ablation,
        outside,
        necessary=[names[i] for i in idx if nec[i] > TOL],
        redundant=[names[i] for i in idx if nec[i] <= TOL],
    )
