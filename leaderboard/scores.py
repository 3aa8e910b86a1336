"""Scores a result needs beyond ``circuitboard.evaluate``: against ground truth, between seeds.

Circuits are stored in results as packed bit strings (one bit per edge, graph edge order), so a
result for a 32k-edge model stays small and the robustness table can compare seeds without
rerunning anything.
"""

from __future__ import annotations

import base64
import itertools

import numpy as np
import torch

from circuitboard import metrics


def pack(keep: torch.Tensor) -> str:
    """A boolean edge vector as base64 of its packed bits."""
    bits = np.packbits(torch.as_tensor(keep).bool().cpu().numpy().astype(np.uint8))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack(text: str, n_edges: int) -> torch.Tensor:
    """The inverse of ``pack``; the length check catches a circuit of another graph."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8)
    if len(raw) != (n_edges + 7) // 8:
        raise ValueError(f"packed circuit holds {len(raw) * 8} bits, not {n_edges} edges")
    return torch.from_numpy(np.unpackbits(raw)[:n_edges].astype(bool))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b|, 1 for two empty circuits."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mean_pairwise_jaccard(keeps: list[torch.Tensor]) -> float | None:
    pairs = list(itertools.combinations(keeps, 2))
    if not pairs:
        return None
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs)


def groundtruth_scores(
    pruned: list[torch.Tensor],
    truth: torch.Tensor,
    at_truth_size: int,
    scores: torch.Tensor | None = None,
) -> dict:
    """ROC/AUC, precision/recall/F1 at the ground truth's size, and exact recovery.

    An empty ground truth (no edge matters under the ablation, as for ``length`` under resample)
    has no ROC and no precision or recall; only exact recovery (the empty circuit) is defined.

    - ``pruned``: the method's circuits after pruning (boolean edge vectors);
    - ``truth``: the ground truth after pruning;
    - ``at_truth_size``: which circuit was requested at the ground truth's size;
    - ``scores``: the method's edge scores, when it ranks edges. The ROC is then the ranking's
      (``metrics.roc_from_scores``); otherwise it is the upper envelope of the circuits
      (``metrics.roc_from_circuits``).
    """
    truth = torch.as_tensor(truth).bool()
    out: dict = {"size": int(truth.sum())}
    try:
        if bool(truth.all()) or not bool(truth.any()):
            raise ValueError(
                f"an ROC needs at least one true and one false edge; the ground truth has "
                f"{int(truth.sum())} of {len(truth)} edges"
            )
        if scores is not None:
            fpr, tpr, auc = metrics.roc_from_scores(scores, truth)
            out["roc_from"] = "scores"
        else:
            fpr, tpr, auc = metrics.roc_from_circuits(pruned, truth)
            out["roc_from"] = "circuits"
        out.update(auc=auc, roc={"fpr": fpr, "tpr": tpr})
    except ValueError as err:  # a ground truth with no true or no false edge has no ROC
        out.update(auc=None, roc=None, roc_from=None, roc_problem=str(err))
    if bool(truth.any()):
        out.update(metrics.precision_recall_f1(pruned[at_truth_size], truth))
    else:  # no edge matters under this ablation: precision and recall are 0/0
        out.update(precision=None, recall=None, f1=None, empty_truth=True)
    out["f1_circuit_size"] = int(pruned[at_truth_size].sum())
    exact = [i for i, keep in enumerate(pruned) if torch.equal(keep, truth)]
    out["exact_recovery"] = bool(exact)
    out["exact_circuits"] = exact  # indices into the result's circuits
    return out
