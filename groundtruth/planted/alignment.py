"""The high-level causal graph of a Tracr program and its alignment to a trained model.

The high-level (HL) model is the compiled Tracr model itself (``circuitboard.groundtruth``): its
live heads and MLPs are the program's operations, laid out by the compiler, and an interchange
on one of them is exact, because Tracr gives every RASP variable its own residual subspace.

**Which operations.** Only those whose value varies between inputs of one length: the nodes of
the Tracr model's *resample* ground truth. The others (the input length, BOS defaults and what
follows from them, such as ``reverse``'s ``length - index - 1`` chain) are constant under every
interchange this project makes, since a counterfactual is always another input of the same
length (``circuitboard.ablation``); no interchange could tell where a trained model computes
them, so they are not planted. The trained model is free to compute them anywhere, and since
their values survive resample ablation, no resample ground truth can contain them.

**Where.** HL node ``a{l}.h{h}`` is aligned to the low-level (LL) head ``a{l}.h{h}`` and
``m{l}`` to the LL MLP ``m{l}``, the correspondence InterpBench uses; the LL model has the
program's layers and more heads per layer, so every layer also holds components with no role.

**The planted circuit** is the HL graph's edges (the Tracr resample ground truth) with each node
replaced by its aligned LL node: ``input->a0.h0<q>`` stays ``input->a0.h0<q>``. An interchange of
a node's output is a resample ablation of all its outgoing edges with the other input's
activations (``interchange_mask``), in the HL and the LL model alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from circuitboard.graph import Circuit, Graph


@dataclass(frozen=True)
class Alignment:
    """HL nodes, the LL node(s) each is aligned to, and the HL graph's edges.

    ``hl_edges`` are edge names of the HL (Tracr) graph; ``ll`` is the LL model's graph.
    """

    hl: Graph
    ll: Graph
    hl_edges: tuple[str, ...]
    nodes: dict  # HL node -> tuple of LL nodes

    def __post_init__(self) -> None:
        unknown = [e for e in self.hl_edges if e not in self.hl.edge_index]
        if unknown:
            raise ValueError(f"HL edges {unknown[:3]} are not edges of the HL graph")
        for hl_node, ll_nodes in self.nodes.items():
            if hl_node not in self.hl.sources[1:]:
                raise ValueError(f"HL node {hl_node!r} is not a head or MLP of the HL graph")
            missing = [n for n in ll_nodes if n not in self.ll.sources[1:] or n in self.ll.dead]
            if missing:
                raise ValueError(
                    f"HL node {hl_node!r} is aligned to {missing}, which are not live heads or "
                    f"MLPs of the LL model ({self.ll.describe()}); give the LL model at least "
                    f"the HL model's layers and heads per layer"
                )
        ll_edges = self.planted_edges  # maps every HL edge, or raises naming it
        if not ll_edges:
            raise ValueError("the HL graph has no edges: nothing to plant")

    @property
    def hl_nodes(self) -> tuple[str, ...]:
        """HL nodes in topological order."""
        return tuple(n for n in self.hl.sources if n in self.nodes)

    @cached_property
    def ll_nodes(self) -> tuple[str, ...]:
        """Aligned LL nodes in topological order."""
        aligned = {n for nodes in self.nodes.values() for n in nodes}
        return tuple(n for n in self.ll.sources if n in aligned)

    @cached_property
    def unaligned(self) -> tuple[str, ...]:
        """Live LL heads and MLPs aligned to nothing: the strictness loss interchanges them."""
        aligned = set(self.ll_nodes)
        return tuple(n for n in self.ll.sources[1:] if n not in aligned and n not in self.ll.dead)

    def _map_node(self, node: str) -> str:
        if node in ("input", "logits"):
            return node
        ll_nodes = self.nodes.get(node)
        if ll_nodes is None:
            raise ValueError(f"HL node {node!r} has an edge but no alignment")
        if len(ll_nodes) != 1:
            raise ValueError(f"HL node {node!r} must map to one LL node to map its edges")
        return ll_nodes[0]

    @cached_property
    def planted_edges(self) -> tuple[str, ...]:
        """The HL edges with every node replaced by its LL node, in LL edge order."""
        names = []
        for edge in self.hl_edges:
            src, reader = edge.split("->")
            node, sep, rest = reader.partition("<")
            names.append(f"{self._map_node(src)}->{self._map_node(node)}{sep}{rest}")
        unknown = [n for n in names if n not in self.ll.edge_index]
        if unknown:
            raise ValueError(f"planted edges {unknown[:3]} are not edges of the LL graph")
        order = self.ll.index_of(names).sort().values
        return tuple(self.ll.edge_names[i] for i in order.tolist())

    def planted(self) -> Circuit:
        return Circuit.from_edges(self.ll, self.planted_edges)

    def to_dict(self) -> dict:
        return {
            "hl_nodes": list(self.hl_nodes),
            "nodes": {k: list(v) for k, v in self.nodes.items()},
            "hl_edges": list(self.hl_edges),
            "planted_edges": list(self.planted_edges),
            "unaligned": list(self.unaligned),
        }


def outgoing(graph: Graph, nodes) -> torch.Tensor:
    """``[n_edges]`` bool: the edges leaving any of ``nodes``."""
    index = {s: i for i, s in enumerate(graph.sources)}
    unknown = [n for n in nodes if n not in index]
    if unknown:
        raise ValueError(f"{unknown} are not source nodes of this graph")
    rows = torch.zeros(graph.n_sources, dtype=torch.bool)
    rows[[index[n] for n in nodes]] = True
    return rows[graph.edge_src]


def interchange_mask(graph: Graph, nodes) -> torch.Tensor:
    """The float edge mask of an interchange of ``nodes``: every edge out of them removed.

    With the other input's source outputs as the ablated values, each reader then reads the
    other input's value of those nodes, and everything downstream is recomputed: the
    interchange intervention of causal abstraction, written as a resample ablation.
    """
    return (~outgoing(graph, nodes)).float()


def from_tracr(hl_model, hl_edges, ll_graph: Graph) -> Alignment:
    """The alignment of a Tracr model's resample ground truth ``hl_edges`` (edge names) onto
    ``ll_graph``: each HL head or MLP to the LL node of the same name."""
    hl = hl_model.graph
    nodes = {}
    for edge in hl_edges:
        src, reader = edge.split("->")
        for node in (src, Graph.reader_node(reader)):
            if node not in ("input", "logits"):
                nodes[node] = (node,)
    ordered = {n: nodes[n] for n in hl.sources if n in nodes}
    return Alignment(hl, ll_graph, tuple(hl_edges), ordered)
