"""Ground truth at node granularity, so that node-level methods are also judged natively.

The node ground truth of an edge ground truth is the set of nodes that carry its edges
(``circuitboard.nodes.NodeGraph.nodes_on``): for every edge, each residual channel that can
carry it, that channel's write and read nodes, and the units of the source and of the reader
with a non-zero weight onto or from it. On Tracr models, whose weights are sparse in the
residual basis, this is the compiled computation's channels, neurons and head channels.

The closure is structural: it also holds channels that carry the truth's edges but nothing that
varies under the ablation (BOS or Tracr's ``one`` direction under resample or mean ablation).
Its projection back onto edges is then the edge ground truth or a superset of it: on ``hist``,
``dup_frac`` and ``sort_unique`` a head's key reads the constant BOS channel, so the closure
keeps the embedding's BOS write, which the head's value reads too, adding ``input->a0.h0<v>``.
``node_truth`` reports such extra edges. A node circuit can avoid them (removing the BOS write
costs nothing under resample), so they do not cap a node method's edge scores.

Native scores compare node sets (and, where given, a score per node) with it: precision,
recall and F1 of each node set, the ROC AUC through the node sets (one (FPR, TPR) point per set
plus (0, 0) and (1, 1), a trapezoid through the points sorted by (FPR, TPR), as for edges), and
the full-ranking AUC of node scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from circuitboard.graph import Circuit
from circuitboard.metrics import precision_recall_f1, roc_from_scores
from circuitboard.nodes import NodeGraph


def node_truth(model, circuit: Circuit) -> dict:
    """The nodes carrying ``circuit`` (after pruning) on ``model``: ``keep`` (``[n_nodes]``
    booleans in ``NodeGraph(model).names`` order), ``names``, and ``extra_edges``, the edges
    their projection adds beyond the circuit."""
    nodes = NodeGraph(model)
    graph = model.graph
    truth = graph.prune(circuit.keep)
    keep = nodes.nodes_on(truth)
    projected = graph.prune(nodes.project(keep))
    extra = torch.nonzero(projected & ~truth).flatten().tolist()
    return {
        "keep": keep,
        "names": [nodes.names[i] for i in torch.nonzero(keep).flatten().tolist()],
        "extra_edges": [graph.edge_names[i] for i in extra],
        "n_nodes": nodes.n_nodes,
    }


def node_sets(model, names_per_set: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """Node sets given by name (``circuit.native["nodes"]``) as boolean vectors; an unknown
    name raises, naming it."""
    nodes = NodeGraph(model)
    out = []
    for names in names_per_set:
        keep = torch.zeros(nodes.n_nodes, dtype=torch.bool)
        for name in names:
            if name not in nodes.name_index:
                raise KeyError(
                    f"unknown node {name!r} for this model; nodes look like 'a0.read[3]', "
                    f"'a1.h2.q[0]', 'm0.n[17]', 'input.write[5]', 'logits.read[0]'"
                )
            keep[nodes.name_index[name]] = True
        out.append(keep)
    return out


def native_scores(
    truth: torch.Tensor, kept: Sequence[torch.Tensor], scores: torch.Tensor | None = None
) -> dict:
    """Node-level scores against the node ground truth ``truth``.

    ``kept``: node sets (one per returned circuit); ``scores``: optionally one score per node
    (higher kept first). Returns per-set precision/recall/F1, the AUC through the sets and, with
    scores, the full-ranking AUC; AUCs are None when the truth is empty or everything.
    """
    truth = torch.as_tensor(truth).bool()
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    per_set = [precision_recall_f1(k, truth) for k in kept]
    out: dict = {"size": n_pos, "n_nodes": len(truth), "per_set": per_set}
    if n_pos == 0 or n_neg == 0:
        out.update(auc_sets=None, auc_scores=None)
        return out
    points = {(0.0, 0.0), (1.0, 1.0)}
    for keep in kept:
        keep = torch.as_tensor(keep).bool()
        points.add((int((keep & ~truth).sum()) / n_neg, int((keep & truth).sum()) / n_pos))
    pts = sorted(points)
    out["auc_sets"] = sum(
        (b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:], strict=False)
    )
    out["auc_scores"] = None if scores is None else roc_from_scores(scores, truth)[2]
    return out
