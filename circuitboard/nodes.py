"""Node universe of neuron-level circuits, and its exact projection onto the edge universe.

Node-level methods (Gao et al. 2025's pruning) keep or remove single channels rather than edges.
A *node* is one channel at one location of the forward pass, following the locations of
openai/circuit_sparsity (``act_in``, ``q``, ``k``, ``v``, ``resid_delta`` of each attention
block; ``act_in``, ``post_act``, ``resid_delta`` of each MLP):

    input.write[c]   residual channel c of the embedding (token + position) the input writes
    a{l}.read[c]     residual channel c as layer l's attention reads it (after its LayerNorm)
    a{l}.h{h}.q[e]   query channel e of head h (likewise .k and .v)
    a{l}.write[c]    residual channel c of what layer l's attention writes
    m{l}.read[c]     residual channel c as layer l's MLP reads it (after its LayerNorm)
    m{l}.n[j]        MLP neuron j (after the activation)
    m{l}.write[c]    residual channel c of what the MLP writes
    logits.read[c]   residual channel c as the unembedding reads it (after the final LayerNorm)

The embedding's write and the unembedding's read are nodes too (ours; the released circuits prune
the blocks' reads and writes), so that every edge, ``input->logits`` included, needs a kept
channel. Nodes of dead heads and MLPs (Tracr's zero-weight padding) are not nodes: they carry
nothing and are never pruned.

**Projection, exactly.** An edge ``src -> reader`` is in the projection of a node set iff some
residual channel ``c`` carries from one to the other through kept nodes: the source writes ``c``
(its layer's write node ``c`` is kept and a kept unit of the source has a non-zero weight onto
``c``: a value channel of the head through ``W_O``, a neuron of the MLP through ``W_out``, the
embedding through ``W_E`` or ``W_pos``) and the reader reads ``c`` (its layer's read node ``c``
is kept and a kept unit of the reader has a non-zero weight from ``c``: a query, key or value
channel of the head through ``W_Q``, ``W_K`` or ``W_V``, a neuron of the MLP through ``W_in``,
the unembedding through ``W_U``). A LayerNorm between the stream and a read is taken as channel
preserving (its statistics mix channels; their effect is not an edge). ``thresholds`` gives
every edge the value of ``tau`` at which it enters the projection of ``{tau > theta}``, so a
ranking of nodes by ``tau`` projects onto a ranking of edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

NONZERO = 1e-7  # relative to a weight matrix's largest entry: smaller weights count as zero


@dataclass(frozen=True)
class Location:
    """One activation whose channels are nodes.

    ``hooks``: the HookPoints the node gates apply to (the same gate to each); ``record``: the
    HookPoint whose activation is the value a removed node carries (same layout, or ``[b, p, d]``
    for a read gated on per-head inputs, ``per_head_read``); ``shape``: the gates' shape,
    broadcast over the activation's trailing dimensions.
    """

    name: str
    kind: str  # "write", "read", "q", "k", "v", "neuron"
    layer: int | None
    hooks: tuple[str, ...]
    record: str
    shape: tuple[int, ...]
    per_head_read: bool = False

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _locations(model) -> list[Location]:
    cfg = model.cfg
    d, heads, e = cfg.d_model, cfg.n_heads, cfg.d_head
    norm = cfg.normalization is not None
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    out = [
        Location(
            "input.write",
            "write",
            None,
            ("blocks.0.hook_resid_pre",),
            "blocks.0.hook_resid_pre",
            (d,),
        )
    ]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        if norm:
            read = Location(
                f"a{layer}.read",
                "read",
                layer,
                (f"{b}.ln1.hook_normalized",),
                f"{b}.ln1.hook_normalized",
                (d,),
            )
        else:  # no LayerNorm: gate the three per-head inputs, record the stream they copy
            hooks = tuple(f"{b}.hook_{t}_input" for t in "qkv")
            read = Location(
                f"a{layer}.read", "read", layer, hooks, f"{b}.hook_resid_pre", (d,), True
            )
        out.append(read)
        for t in "qkv":
            hook = f"{b}.attn.hook_{t}"
            out.append(Location(f"a{layer}.{t}", t, layer, (hook,), hook, (heads, e)))
        out.append(
            Location(
                f"a{layer}.write",
                "write",
                layer,
                (f"{b}.hook_attn_out",),
                f"{b}.hook_attn_out",
                (d,),
            )
        )
        if cfg.attn_only:
            continue
        read_hook = f"{b}.ln2.hook_normalized" if norm else f"{b}.hook_mlp_in"
        out.append(Location(f"m{layer}.read", "read", layer, (read_hook,), read_hook, (d,)))
        hook = f"{b}.mlp.hook_post"
        out.append(Location(f"m{layer}.n", "neuron", layer, (hook,), hook, (cfg.d_mlp,)))
        out.append(
            Location(
                f"m{layer}.write", "write", layer, (f"{b}.hook_mlp_out",), f"{b}.hook_mlp_out", (d,)
            )
        )
    final = "ln_final.hook_normalized" if norm else last
    out.append(Location("logits.read", "read", None, (final,), final, (d,)))
    return out


class NodeGraph:
    """The nodes of one model, their names and the exact projection of node sets onto edges.

    Node vectors (a kept set, or a score per node) are ``[n_nodes]`` in ``names`` order: the
    locations in forward order, each location's channels in order (per head, head-major).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.graph = model.graph
        self.cfg = model.cfg
        self.locations = _locations(model)
        self.offsets = [0]
        for loc in self.locations:
            self.offsets.append(self.offsets[-1] + loc.size)
        self.by_name = {loc.name: i for i, loc in enumerate(self.locations)}
        full_live = torch.ones(self.offsets[-1], dtype=torch.bool)
        for i, loc in enumerate(self.locations):
            full_live[self.offsets[i] : self.offsets[i + 1]] = self._live(loc).flatten()
        self.live = full_live  # over the full layout
        self.index = torch.nonzero(full_live).flatten()  # live node -> full-layout position

    # ------------------------------------------------------------------ the node set
    def _live(self, loc: Location) -> torch.Tensor:
        """Which of a location's channels are nodes: none of a dead head or MLP."""
        dead, heads = self.graph.dead, self.cfg.n_heads
        if loc.layer is None:
            return torch.ones(loc.shape, dtype=torch.bool)
        head_live = torch.tensor([f"a{loc.layer}.h{h}" not in dead for h in range(heads)])
        if loc.kind in ("q", "k", "v"):
            return head_live[:, None].expand(loc.shape).clone()
        if loc.name.startswith("a"):  # attention read / write: live if any head is
            return torch.full(loc.shape, bool(head_live.any()))
        return torch.full(loc.shape, f"m{loc.layer}" not in dead)

    @property
    def n_nodes(self) -> int:
        return len(self.index)

    @cached_property
    def names(self) -> tuple[str, ...]:
        out = []
        for loc in self.locations:
            if len(loc.shape) == 2:  # per head: a0.q -> a0.h{h}.q[e]
                layer, t = loc.name.split(".")
                out += [
                    f"{layer}.h{h}.{t}[{c}]"
                    for h in range(loc.shape[0])
                    for c in range(loc.shape[1])
                ]
            else:
                out += [f"{loc.name}[{c}]" for c in range(loc.shape[0])]
        return tuple(out[i] for i in self.index.tolist())

    @cached_property
    def name_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def full(self, values: torch.Tensor, fill) -> torch.Tensor:
        """A live-node vector spread over the full layout, ``fill`` at the non-nodes."""
        values = torch.as_tensor(values).cpu()
        if values.shape != (self.n_nodes,):
            raise ValueError(
                f"a node vector must have shape ({self.n_nodes},), one entry per node in "
                f"NodeGraph.names order; got {tuple(values.shape)}"
            )
        out = torch.full((self.offsets[-1],), fill, dtype=values.dtype)
        out[self.index] = values
        return out

    def full_gate(self, gate: torch.Tensor) -> torch.Tensor:
        """Gates ``[n_nodes]`` spread over the full layout, 1 (kept) at the non-nodes; keeps
        the autograd history of ``gate``."""
        ones = gate.new_ones(self.offsets[-1])
        return ones.index_copy(0, self.index.to(gate.device), gate)

    def view(self, full: torch.Tensor, name: str) -> torch.Tensor:
        """The part of a full-layout vector at location ``name``, in its gate shape."""
        i = self.by_name[name]
        return full[self.offsets[i] : self.offsets[i + 1]].view(self.locations[i].shape)

    # ------------------------------------------------------------- structural weights
    @cached_property
    def _weights(self) -> dict:
        """Which weights are non-zero, per layer: the carriers of the projection."""
        m, cfg = self.model, self.cfg

        def nz(w: torch.Tensor) -> torch.Tensor:
            w = w.detach().cpu().double()
            top = float(w.abs().max()) if w.numel() else 0.0
            return w.abs() > NONZERO * top if top > 0 else torch.zeros(w.shape, dtype=torch.bool)

        embed = nz(m.embed.W_E).any(0) | nz(m.pos_embed.W_pos).any(0)
        out = {"embed": embed, "unembed": nz(m.unembed.W_U).any(1), "layers": []}
        for block in m.blocks:
            attn = block.attn
            layer = {
                "q": nz(attn.W_Q),  # [H, d, e]
                "k": nz(attn.W_K),
                "v": nz(attn.W_V),
                "o": nz(attn.W_O),  # [H, e, d]
            }
            if not cfg.attn_only:
                layer["in"] = nz(block.mlp.W_in)  # [d, m]
                layer["out"] = nz(block.mlp.W_out)  # [m, d]
            out["layers"].append(layer)
        return out

    # --------------------------------------------------------------------- projection
    def _ends(self, full: torch.Tensor, inner, outer, empty):
        """Per source and per reader, per residual channel, the value of the carrying path.

        ``full`` is a full-layout vector (kept flags or scores); ``inner(values, nonzero)``
        combines a unit vector with a weight pattern into a per-channel value (any / max over
        the units with a non-zero weight), ``outer(a, b)`` combines that with the channel's
        read or write node (and / min), ``empty`` is the value of no path.
        """
        cfg, graph, w = self.cfg, self.graph, self._weights
        d, heads = cfg.d_model, cfg.n_heads
        writes = full.new_full((graph.n_sources, d), empty)
        reads = full.new_full((graph.n_readers, d), empty)
        writes[0] = outer(self.view(full, "input.write"), _where(w["embed"], full, empty))
        for layer, lw in enumerate(w["layers"]):
            a_write = self.view(full, f"a{layer}.write")
            a_read = self.view(full, f"a{layer}.read")
            first = graph.attn_sources_before(layer)
            v = self.view(full, f"a{layer}.v")
            for h in range(heads):
                writes[first + h] = outer(a_write, inner(v[h][:, None], lw["o"][h], 0))
            readers = graph.attn_reader_slice(layer).start
            for t_i, t in enumerate("qkv"):
                units = self.view(full, f"a{layer}.{t}")
                for h in range(heads):
                    reads[readers + t_i * heads + h] = outer(
                        a_read, inner(units[h][None, :], lw[t][h], 1)
                    )
            if cfg.attn_only:
                continue
            neurons = self.view(full, f"m{layer}.n")
            m_write, m_read = self.view(full, f"m{layer}.write"), self.view(full, f"m{layer}.read")
            writes[first + heads] = outer(m_write, inner(neurons[:, None], lw["out"], 0))
            reads[graph.mlp_reader_index(layer)] = outer(
                m_read, inner(neurons[None, :], lw["in"], 1)
            )
        reads[-1] = outer(self.view(full, "logits.read"), _where(w["unembed"], full, empty))
        return writes, reads

    def project(self, keep_nodes: torch.Tensor) -> torch.Tensor:
        """Edge keep vector ``[n_edges]`` of a node keep vector ``[n_nodes]`` (see the module
        docstring); nothing else is added, ``input->logits`` included."""
        full = self.full(torch.as_tensor(keep_nodes).bool(), True)

        def inner(units, nonzero, dim):
            return (units & nonzero).any(dim)

        writes, reads = self._ends(full, inner, torch.logical_and, False)
        pairs = (writes.double() @ reads.double().T) > 0  # [n_sources, n_readers]
        return pairs[self.graph.edge_src, self.graph.edge_reader]

    def thresholds(self, tau: torch.Tensor) -> torch.Tensor:
        """Per edge, the largest ``theta`` with the edge in ``project(tau > theta)`` (``-inf``
        where no path can carry it): thresholding these is projecting thresholded ``tau``."""
        tau = torch.as_tensor(tau, dtype=torch.float64).detach().cpu()
        full = self.full(tau, float("inf"))
        neg = float("-inf")

        def inner(units, nonzero, dim):
            return torch.where(
                nonzero, units, torch.full_like(units.expand(nonzero.shape), neg)
            ).amax(dim)

        writes, reads = self._ends(full, inner, torch.minimum, neg)
        src, rdr = self.graph.edge_src, self.graph.edge_reader
        return torch.minimum(writes[src], reads[rdr]).amax(1)

    # ------------------------------------------------------------------ node circuits
    def nodes_on(self, edge_keep: torch.Tensor) -> torch.Tensor:
        """The nodes that carry a set of edges: for every edge, each residual channel that can
        carry it (a non-zero write of the source meeting a non-zero read of the reader), that
        channel's write and read nodes, and the units of the source and of the reader with a
        non-zero weight onto or from it. ``[n_nodes]`` booleans."""
        graph, cfg, w = self.graph, self.cfg, self._weights
        edge_keep = torch.as_tensor(edge_keep).bool().cpu()
        all_kept = torch.ones(self.offsets[-1], dtype=torch.bool)

        def inner(units, nonzero, dim):
            return (units & nonzero).any(dim)

        writes, reads = self._ends(all_kept, inner, torch.logical_and, False)
        src, rdr = graph.edge_src[edge_keep], graph.edge_reader[edge_keep]
        carry = writes[src] & reads[rdr]  # [kept edges, d]
        used_w = torch.zeros(writes.shape).index_add_(0, src, carry.float()) > 0
        used_r = torch.zeros(reads.shape).index_add_(0, rdr, carry.float()) > 0
        out = torch.zeros(self.offsets[-1], dtype=torch.bool)
        heads = cfg.n_heads

        def mark(name: str, values: torch.Tensor) -> None:
            view = self.view(out, name)
            view |= values.view(view.shape)

        mark("input.write", used_w[0])
        for layer, lw in enumerate(w["layers"]):
            first = graph.attn_sources_before(layer)
            readers = graph.attn_reader_slice(layer).start
            a_write = used_w[first : first + heads].any(0)
            mark(f"a{layer}.write", a_write)
            v_out = torch.stack(
                [(lw["o"][h] & used_w[first + h][None, :]).any(1) for h in range(heads)]
            )
            a_read = torch.zeros(cfg.d_model, dtype=torch.bool)
            units = {"v": v_out}
            for t_i, t in enumerate("qkv"):
                rows = used_r[readers + t_i * heads : readers + (t_i + 1) * heads]  # [H, d]
                a_read |= rows.any(0)
                used = torch.stack([(lw[t][h] & rows[h][:, None]).any(0) for h in range(heads)])
                units[t] = units.get(t, torch.zeros_like(used)) | used
            mark(f"a{layer}.read", a_read)
            for t in "qkv":
                mark(f"a{layer}.{t}", units[t])
            if cfg.attn_only:
                continue
            m_w, m_r = used_w[first + heads], used_r[graph.mlp_reader_index(layer)]
            mark(f"m{layer}.write", m_w)
            mark(f"m{layer}.read", m_r)
            neurons = (lw["out"] & m_w[None, :]).any(1) | (lw["in"] & m_r[:, None]).any(0)
            mark(f"m{layer}.n", neurons)
        mark("logits.read", used_r[-1])
        return out[self.index] & self.live[self.index]


def _where(nonzero: torch.Tensor, like: torch.Tensor, empty):
    """A per-channel pattern as a value: ``True``/``inf`` where non-zero, ``empty`` elsewhere."""
    if like.dtype == torch.bool:
        return nonzero
    return torch.where(
        nonzero, torch.tensor(float("inf"), dtype=like.dtype), torch.tensor(empty, dtype=like.dtype)
    )
