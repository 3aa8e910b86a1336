"""The edge universe shared by every method, score and ground truth.

A transformer is viewed as a DAG of *sources* (``input``, heads ``a{l}.h{h}``, MLPs ``m{l}``) that
write to the residual stream and *readers* that read from it (``a{l}.h{h}<q|k|v>``, ``m{l}``,
``logits``). An edge joins a source to every reader of a later node. This is the convention of
EAP-IG and the MIB circuit track, so circuits move between those tools and circuitboard unchanged.

Which readers exist, for every decoder family the engine runs:

* every attention head has three readers, ``<q>``, ``<k>`` and ``<v>``, also under grouped-query
  attention (Llama, Qwen2, Gemma-2): ``<k>`` and ``<v>`` are per *query* head, as
  TransformerLens's split-qkv inputs (``ungroup_grouped_query_attention``) and the MIB circuit
  track define them. The query heads that share a key/value head share its weights, not its
  input: under patching each projects what its own ``<k>``/``<v>`` reader reads. The edge count
  therefore does not depend on the number of key/value heads; with this convention
  Qwen-2.5-0.5B (24 layers x 14 heads) has 179,749 edges, Gemma-2-2B (26 x 8) 74,218 and
  Llama-3.1-8B (32 x 32) 1,592,881, MIB's counts.
* a *parallel* block (Pythia/GPT-NeoX, ``parallel_attn_mlp``) computes attention and MLP from the
  same layer input, so its MLP reads the sources before the layer (``input`` and earlier
  layers), not the layer's own heads: there is no edge ``a{l}.h{h} -> m{l}``. Its heads still
  reach ``m{l+1}`` and later readers. This is EAP-IG's ``parallel_attn_mlp``.
* a sequential block's MLP reads every source before it, its own layer's heads included.

Two orders are fixed here and used everywhere else:

* the *dense* layout: sources along rows and readers along columns, which is what the engine
  multiplies by;
* the *edge* order: readers in topological order, and each reader's sources in topological order.
  A circuit or a score vector is a 1-D tensor in this order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from circuitboard import atomic

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """Nodes, readers and edges of one model shape.

    ``dead`` names nodes (heads or MLPs) that carry no edges, such as the zero-weight padding of a
    Tracr model. Dead nodes keep their slot in the dense layout so that indices never shift.
    ``parallel_attn_mlp``: each MLP reads its layer's input rather than its layer's heads (see
    the module docstring); the node and reader lists are the same either way.
    ``model`` names the model the graph belongs to (its config's name): two models of one shape
    have graphs that are not equal, so a circuit found on one is refused by the other.
    """

    n_layers: int
    n_heads: int
    attn_only: bool = False
    dead: frozenset[str] = frozenset()
    parallel_attn_mlp: bool = False
    model: str = ""

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(
                f"a graph needs n_layers >= 1 and n_heads >= 1, got {self.n_layers}, {self.n_heads}"
            )
        if self.parallel_attn_mlp and self.attn_only:
            raise ValueError("an attention-only graph has no MLPs to run in parallel")
        object.__setattr__(self, "dead", frozenset(self.dead))
        unknown = sorted(set(self.dead) - set(self.sources[1:]))
        if unknown:
            raise ValueError(
                f"dead nodes {unknown} are not heads or MLPs of this graph; "
                f"use names like 'a0.h1' or 'm2'"
            )

    # ----------------------------------------------------------------- nodes and readers
    @cached_property
    def sources(self) -> tuple[str, ...]:
        """Every node that writes to the residual stream, in topological order."""
        out = ["input"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            if not self.attn_only:
                out.append(f"m{layer}")
        return tuple(out)

    @cached_property
    def nodes(self) -> tuple[str, ...]:
        """All nodes, ``logits`` last, dead ones included."""
        return self.sources + ("logits",)

    @cached_property
    def live_nodes(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in self.dead)

    @cached_property
    def readers(self) -> tuple[str, ...]:
        """Every reader in topological order; per layer q of all heads, then k, then v, then m."""
        out = []
        for layer in range(self.n_layers):
            for t in QKV:
                out += [f"a{layer}.h{h}<{t}>" for h in range(self.n_heads)]
            if not self.attn_only:
                out.append(f"m{layer}")
        out.append("logits")
        return tuple(out)

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_readers(self) -> int:
        return len(self.readers)

    @property
    def n_nodes(self) -> int:
        """Live nodes, the count that EAP-IG and MIB report (158 for GPT-2 small)."""
        return len(self.live_nodes)

    @property
    def sources_per_layer(self) -> int:
        return self.n_heads + (0 if self.attn_only else 1)

    def attn_sources_before(self, layer: int) -> int:
        """Number of sources an attention reader of ``layer`` may read."""
        return 1 + layer * self.sources_per_layer

    def mlp_sources_before(self, layer: int) -> int:
        """Number of sources the MLP of ``layer`` may read: its own heads too, unless parallel."""
        if self.parallel_attn_mlp:
            return self.attn_sources_before(layer)
        return self.attn_sources_before(layer) + self.n_heads

    def attn_reader_slice(self, layer: int) -> slice:
        start = layer * (3 * self.n_heads + (0 if self.attn_only else 1))
        return slice(start, start + 3 * self.n_heads)

    def mlp_reader_index(self, layer: int) -> int:
        return self.attn_reader_slice(layer).stop

    @staticmethod
    def reader_node(reader: str) -> str:
        """``a1.h2<k>`` -> ``a1.h2``; MLP and logits readers are their own node."""
        return reader.split("<", 1)[0]

    @cached_property
    def _reader_n_sources(self) -> list[int]:
        out = []
        for layer in range(self.n_layers):
            out += [self.attn_sources_before(layer)] * (3 * self.n_heads)
            if not self.attn_only:
                out.append(self.mlp_sources_before(layer))
        out.append(self.n_sources)
        return out

    # ----------------------------------------------------------------------------- edges
    @cached_property
    def _edge_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        src, rdr = [], []
        source_dead = np.array([s in self.dead for s in self.sources])
        for r, (reader, n_src) in enumerate(zip(self.readers, self._reader_n_sources)):
            if self.reader_node(reader) in self.dead:
                continue
            live = np.flatnonzero(~source_dead[:n_src])
            src.append(live)
            rdr.append(np.full(len(live), r))
        return np.concatenate(src).astype(np.int64), np.concatenate(rdr).astype(np.int64)

    @property
    def n_edges(self) -> int:
        return len(self._edge_arrays[0])

    @cached_property
    def edge_src(self) -> torch.Tensor:
        """Source index (into ``sources``) of every edge."""
        return torch.from_numpy(self._edge_arrays[0])

    @cached_property
    def edge_reader(self) -> torch.Tensor:
        """Reader index (into ``readers``) of every edge."""
        return torch.from_numpy(self._edge_arrays[1])

    @cached_property
    def dense_index(self) -> torch.Tensor:
        """Flat index of every edge into a ``[n_sources, n_readers]`` matrix."""
        return self.edge_src * self.n_readers + self.edge_reader

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        s, r = self._edge_arrays
        return tuple(f"{self.sources[i]}->{self.readers[j]}" for i, j in zip(s, r))

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edge_names)}

    def index_of(self, names: Iterable[str]) -> torch.Tensor:
        """Edge indices for ``names``; an unknown name raises with the closest valid form."""
        out = []
        for name in names:
            try:
                out.append(self.edge_index[name])
            except KeyError:
                raise KeyError(self._unknown_edge_message(name)) from None
        return torch.tensor(out, dtype=torch.long)

    def _unknown_edge_message(self, name: str) -> str:
        hint = "edges look like 'input->a0.h0<q>', 'a0.h1->m0' or 'm1->logits'"
        if "->" in name:
            src, reader = name.split("->", 1)
            node = self.reader_node(reader)
            if src in self.dead or node in self.dead:
                return f"edge {name!r} touches a dead node of this model; dead: {sorted(self.dead)}"
            if src not in self.sources:
                return f"unknown edge {name!r}: no source node {src!r} in this graph; {hint}"
            if reader not in self.readers:
                return f"unknown edge {name!r}: no reader {reader!r} in this graph; {hint}"
            return f"unknown edge {name!r}: {src!r} does not come before {reader!r}; {hint}"
        return f"unknown edge {name!r}; {hint}"

    # ------------------------------------------------------------------- dense <-> edges
    def to_dense(self, edge_values: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        """Scatter ``[..., n_edges]`` values into ``[..., n_sources, n_readers]``.

        Entries that are not edges get ``fill``; with the default of 1 they are "kept", so the
        engine never patches them.
        """
        lead = edge_values.shape[:-1]
        dense = edge_values.new_full((*lead, self.n_sources * self.n_readers), fill)
        dense[..., self.dense_index.to(edge_values.device)] = edge_values
        return dense.view(*lead, self.n_sources, self.n_readers)

    def from_dense(self, dense: torch.Tensor) -> torch.Tensor:
        """Gather ``[..., n_sources, n_readers]`` back into ``[..., n_edges]``."""
        flat = dense.reshape(*dense.shape[:-2], self.n_sources * self.n_readers)
        return flat[..., self.dense_index.to(dense.device)]

    # ---------------------------------------------------------------------- connectivity
    def prune(self, keep: torch.Tensor) -> torch.Tensor:
        """Drop kept edges that do not lie on some path from ``input`` to ``logits``.

        A node is *reached* if a kept edge from a reached node enters any of its readers, and it
        is *useful* if a kept edge leaves it to a useful node. An edge survives when its source
        is reached and its reader's node is useful. One pass each way over the nodes, in
        topological order, with vector operations per node; no loop over edges.
        """
        keep = _as_bool_vector(keep, self.n_edges)
        dense = torch.zeros(self.n_sources, self.n_readers, dtype=torch.bool)
        dense.view(-1)[self.dense_index] = keep
        reader_owner = self._reader_owner  # reader -> node position in ``nodes``
        n_nodes = len(self.nodes)
        # Forward: reached[node].
        reached = torch.zeros(n_nodes, dtype=torch.bool)
        reached[0] = True
        for node_pos in range(1, n_nodes):
            cols = self._node_reader_cols[node_pos]
            srcs = reached[: self.n_sources]
            reached[node_pos] = bool((dense[:, cols] & srcs[:, None]).any())
        useful = self._useful(dense)
        return keep & reached[self.edge_src] & useful[reader_owner[self.edge_reader]]

    def useful_nodes(self, keep: torch.Tensor) -> torch.Tensor:
        """Per node (``nodes`` order): whether a path of kept edges leads from it to ``logits``.

        An edge into a reader of a node that is not useful cannot change the output.
        """
        keep = _as_bool_vector(keep, self.n_edges)
        dense = torch.zeros(self.n_sources, self.n_readers, dtype=torch.bool)
        dense.view(-1)[self.dense_index] = keep
        return self._useful(dense)

    def _useful(self, dense: torch.Tensor) -> torch.Tensor:
        """Backward pass: useful[node] if a kept edge leaves it to a useful node."""
        reader_owner = self._reader_owner
        useful = torch.zeros(len(self.nodes), dtype=torch.bool)
        useful[-1] = True
        for node_pos in range(self.n_sources - 1, -1, -1):
            row = dense[node_pos]
            useful[node_pos] = bool((row & useful[reader_owner]).any())
        return useful

    @cached_property
    def _reader_owner(self) -> torch.Tensor:
        pos = {n: i for i, n in enumerate(self.nodes)}
        return torch.tensor([pos[self.reader_node(r)] for r in self.readers], dtype=torch.long)

    @cached_property
    def _node_reader_cols(self) -> list[torch.Tensor]:
        owner = self._reader_owner
        return [torch.nonzero(owner == i).flatten() for i in range(len(self.nodes))]

    # --------------------------------------------------------------------------- helpers
    def describe(self) -> str:
        return (
            (f"{self.model}: " if self.model else "")
            + f"{self.n_layers} layers x {self.n_heads} heads"
            f"{' (attention only)' if self.attn_only else ''}"
            f"{' (parallel attention + MLP)' if self.parallel_attn_mlp else ''}: "
            f"{self.n_nodes} nodes, {self.n_edges} edges"
            + (f", {len(self.dead)} dead nodes" if self.dead else "")
        )

    def cfg(self) -> dict:
        """The ``cfg`` block of the EAP-IG / MIB graph JSON."""
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "parallel_attn_mlp": self.parallel_attn_mlp,
            "attn_only": self.attn_only,
            "dead": sorted(self.dead),
            "model": self.model,
        }


def _as_bool_vector(keep: torch.Tensor | Sequence[bool], n_edges: int) -> torch.Tensor:
    keep = torch.as_tensor(keep)
    if keep.shape != (n_edges,):
        raise ValueError(
            f"an edge vector must have shape ({n_edges},), one entry per edge in "
            f"graph.edge_names order; got {tuple(keep.shape)}"
        )
    if keep.dtype != torch.bool and not bool(((keep == 0) | (keep == 1)).all()):
        odd = keep[~((keep == 0) | (keep == 1))][0].item()
        raise ValueError(
            f"a circuit keeps an edge (1) or not (0); got the value {odd!r}. Threshold a float "
            f"mask yourself (mask > 0.5), or use Circuit.top_k on scores"
        )
    return keep.bool().cpu()


class Circuit:
    """A set of edges of one graph, optionally with a score per edge.

    ``size`` counts edges after pruning the ones not connected from ``input`` to ``logits``;
    ``n_kept`` counts them as given. ``native`` carries a method's own granularity (for example
    kept neurons) alongside the projection onto this edge universe.
    """

    def __init__(
        self,
        graph: Graph,
        keep: torch.Tensor | Sequence[bool],
        scores: torch.Tensor | None = None,
        *,
        native: dict | None = None,
        info: dict | None = None,
    ) -> None:
        self.graph = graph
        self.keep = _as_bool_vector(keep, graph.n_edges)
        if scores is not None:
            scores = torch.as_tensor(scores, dtype=torch.float64).cpu()
            if scores.shape != (graph.n_edges,):
                raise ValueError(
                    f"scores must have shape ({graph.n_edges},); got {tuple(scores.shape)}"
                )
        self.scores = scores
        self.native = dict(native or {})
        self.info = dict(info or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(cls, graph: Graph, names: Iterable[str], **kwargs) -> Circuit:
        keep = torch.zeros(graph.n_edges, dtype=torch.bool)
        keep[graph.index_of(list(names))] = True
        return cls(graph, keep, **kwargs)

    @classmethod
    def full(cls, graph: Graph) -> Circuit:
        return cls(graph, torch.ones(graph.n_edges, dtype=torch.bool))

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        return cls(graph, torch.zeros(graph.n_edges, dtype=torch.bool))

    @classmethod
    def top_k(cls, graph: Graph, scores: torch.Tensor, k: int, absolute: bool = True) -> Circuit:
        """The ``k`` highest-scoring edges; ties go to the earlier edge, deterministically."""
        scores = torch.as_tensor(scores, dtype=torch.float64).cpu()
        if not 0 <= k <= graph.n_edges:
            raise ValueError(f"k must be between 0 and {graph.n_edges}, got {k}")
        if scores.shape != (graph.n_edges,) or bool(torch.isnan(scores).any()):
            bad = int(torch.isnan(scores).sum()) if scores.numel() else 0
            raise ValueError(
                f"top_k needs {graph.n_edges} scores, one per edge, none NaN (-inf is allowed: "
                f"an edge ranked last); got shape {tuple(scores.shape)} with {bad} NaN"
            )
        key = scores.abs() if absolute else scores
        order = torch.sort(key, descending=True, stable=True).indices
        keep = torch.zeros(graph.n_edges, dtype=torch.bool)
        keep[order[:k]] = True
        return cls(graph, keep, scores)

    # ------------------------------------------------------------------------- views
    @property
    def edges(self) -> list[str]:
        names = self.graph.edge_names
        return [names[i] for i in torch.nonzero(self.keep).flatten().tolist()]

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def pruned(self) -> Circuit:
        return Circuit(
            self.graph, self.graph.prune(self.keep), self.scores, native=self.native, info=self.info
        )

    @property
    def size(self) -> int:
        return int(self.graph.prune(self.keep).sum())

    def mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float edge mask the engine reads (1 keeps the edge)."""
        return self.keep.to(dtype)

    # ------------------------------------------------------------------ set operations
    def _check_same(self, other: Circuit) -> None:
        if not isinstance(other, Circuit):
            return NotImplemented
        if other.graph != self.graph:
            raise ValueError(
                f"set operations need two circuits of the same graph; got "
                f"{self.graph.describe()} and {other.graph.describe()}"
            )

    def __and__(self, other: Circuit) -> Circuit:
        self._check_same(other)
        return Circuit(self.graph, self.keep & other.keep)

    def __or__(self, other: Circuit) -> Circuit:
        self._check_same(other)
        return Circuit(self.graph, self.keep | other.keep)

    def __sub__(self, other: Circuit) -> Circuit:
        self._check_same(other)
        return Circuit(self.graph, self.keep & ~other.keep)

    def __xor__(self, other: Circuit) -> Circuit:
        self._check_same(other)
        return Circuit(self.graph, self.keep ^ other.keep)

    def __invert__(self) -> Circuit:
        return Circuit(self.graph, ~self.keep)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Circuit)
            and other.graph == self.graph
            and torch.equal(self.keep, other.keep)
        )

    def __len__(self) -> int:
        return self.n_kept

    def __contains__(self, edge: str) -> bool:
        return bool(self.keep[self.graph.index_of([edge])[0]])

    def __repr__(self) -> str:
        return f"Circuit({self.n_kept} of {self.graph.n_edges} edges, {self.size} after pruning)"

    def jaccard(self, other: Circuit) -> float:
        self._check_same(other)
        union = int((self.keep | other.keep).sum())
        return 1.0 if union == 0 else int((self.keep & other.keep).sum()) / union

    # ------------------------------------------------------------------- JSON I/O
    def to_json_dict(self) -> dict:
        """The EAP-IG / MIB graph JSON: ``cfg``, ``nodes`` and ``edges`` with score and in_graph."""
        pruned = self.graph.prune(self.keep)
        in_graph_nodes = {"input", "logits"} if bool(pruned.any()) else set()
        for i in torch.nonzero(pruned).flatten().tolist():
            in_graph_nodes.add(self.graph.sources[int(self.graph.edge_src[i])])
        scores = self.scores
        edges = {}
        for i, name in enumerate(self.graph.edge_names):
            score = None if scores is None else float(scores[i])
            edges[name] = {"score": score, "in_graph": bool(self.keep[i])}
        nodes = {n: n in in_graph_nodes for n in self.graph.live_nodes}
        return {"cfg": self.graph.cfg(), "nodes": nodes, "edges": edges}

    def to_json(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json_dict())

    @classmethod
    def from_json_dict(cls, graph: Graph, data: dict, *, source: str = "graph JSON") -> Circuit:
        """Read an EAP-IG / MIB graph JSON into ``graph``; every problem is named."""
        if not isinstance(data, dict) or not isinstance(data.get("edges"), dict):
            raise ValueError(f"{source}: expected an object with an 'edges' mapping")
        edges = data["edges"]
        unknown = [n for n in edges if n not in graph.edge_index]
        if unknown:
            raise ValueError(
                f"{source}: {len(unknown)} unknown edge name(s), first: "
                f"{graph._unknown_edge_message(unknown[0])}"
            )
        keep = torch.zeros(graph.n_edges, dtype=torch.bool)
        scores = torch.full((graph.n_edges,), float("nan"), dtype=torch.float64)
        has_scores = False
        for name, entry in edges.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{source}: edge {name!r} must map to {{'score', 'in_graph'}}")
            i = graph.edge_index[name]
            keep[i] = bool(entry.get("in_graph", False))
            score = entry.get("score")
            if score is not None:
                score = float(score)
                if not np.isfinite(score):
                    raise ValueError(f"{source}: edge {name!r} has a non-finite score {score}")
                scores[i] = score
                has_scores = True
        if has_scores and torch.isnan(scores).any():
            missing = graph.edge_names[int(torch.nonzero(torch.isnan(scores))[0])]
            raise ValueError(f"{source}: scores are given for some edges but not for {missing!r}")
        return cls(graph, keep, scores if has_scores else None)

    @classmethod
    def from_json(cls, graph: Graph, path: str | os.PathLike) -> Circuit:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_json_dict(graph, data, source=str(path))


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write JSON through a temporary file and a rename (``circuitboard.atomic``), so no reader
    sees half a file and the file gets the user's umask."""
    atomic.write_text(path, json.dumps(data, indent=1, allow_nan=False))
