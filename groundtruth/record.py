"""Derive every ground truth of one model and check it: the record cached as ``NAME.circuits.json``.

A record lists, for the structural ground truth and for each ablation's functional one, its edges
and the edges recorded as redundant (in the circuit, but not necessary given the rest). For the
structural circuit, redundancy is judged under zero ablation: those are edges that carry
dimensions (often ``one`` or BOS) whose removal changes no output on the data.
"""

from __future__ import annotations

import torch

from circuitboard.graph import Circuit
from circuitboard.groundtruth import derive

FORMAT = "circuitboard-tracr-groundtruth"
FORMAT_VERSION = 1
KINDS = ("structural",) + derive.ABLATIONS
STRUCTURAL_CHECK_ABLATION = "zero"


def derive_record(model, data: derive.Data) -> dict:
    """Compute all four ground truths and their checks on ``data``."""
    graph = model.graph
    structural = derive.structural(model)
    circuits = {
        "structural": {
            "edges": structural.edges,
            "redundant": derive.check(model, data, structural, STRUCTURAL_CHECK_ABLATION).redundant,
        }
    }
    for ablation in derive.ABLATIONS:
        circuit, added = derive.functional(
            model, data, ablation, candidates=structural.keep, exact_effects=True
        )
        res = derive.check(model, data, circuit, ablation)
        inside = circuit.scores[circuit.keep]
        outside = circuit.scores[~circuit.keep]
        names = graph.edge_names
        circuits[ablation] = {
            "edges": circuit.edges,
            "redundant": res.redundant,
            "added_for_joint_effect": added,
            "smallest_effect_in": float(inside.min()) if len(inside) else None,
            "largest_effect_out": float(outside.max()) if len(outside) else None,
            # Largest output change when the edge alone is ablated, for every structural edge.
            "effects": {
                names[i]: float(circuit.scores[i])
                for i in torch.nonzero(structural.keep).flatten().tolist()
            },
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "program": model.program["name"],
        "tolerance": derive.TOL,
        "resample_seeds": list(derive.RESAMPLE_SEEDS),
        "n_inputs": data.n_examples,
        "n_nodes": graph.n_nodes,
        "n_edges": graph.n_edges,
        "dead": sorted(graph.dead),
        "circuits": circuits,
    }


def check_record(record: dict, path: str = "ground-truth record") -> None:
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file; recompile it")
    missing = [k for k in KINDS if k not in record.get("circuits", {})]
    if missing:
        raise ValueError(f"{path}: no ground truth for {missing}; recompile it")


def circuit_of(graph, record: dict, kind: str) -> Circuit:
    return Circuit.from_edges(graph, record["circuits"][kind]["edges"])


def same_circuits(a: dict, b: dict) -> list[str]:
    """Which kinds differ between two records in edges or redundant edges (empty: identical)."""
    out = []
    for kind in KINDS:
        x, y = a["circuits"][kind], b["circuits"][kind]
        if sorted(x["edges"]) != sorted(y["edges"]) or sorted(x["redundant"]) != sorted(
            y["redundant"]
        ):
            out.append(kind)
    return out


def run_checks(model, data: derive.Data, record: dict) -> list[dict]:
    """Both checks for every ground truth of ``record``; one row per ground truth."""
    graph = model.graph
    rows = []
    for kind in KINDS:
        circuit = circuit_of(graph, record, kind)
        recorded = sorted(record["circuits"][kind]["redundant"])
        if kind == "structural":
            outside = max(
                derive.joint_effect(model, data, a, circuit.keep) for a in derive.ABLATIONS
            )
            res = derive.check(model, data, circuit, STRUCTURAL_CHECK_ABLATION)
        else:
            res = derive.check(model, data, circuit, kind)
            outside = res.outside_effect
        rows.append(
            {
                "kind": kind,
                "size": circuit.size,
                "n_kept": circuit.n_kept,
                "outside_effect": outside,
                "sufficient": outside <= derive.TOL,
                "redundant": sorted(res.redundant),
                "redundant_as_recorded": sorted(res.redundant) == recorded,
            }
        )
    return rows


def effect_scores(graph, record: dict, kind: str) -> torch.Tensor | None:
    """Per-edge single-edge effects (0 off the structural circuit); zero ablation's for
    ``structural``."""
    effects = record["circuits"]["zero" if kind == "structural" else kind].get("effects")
    if effects is None:
        return None
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    scores[graph.index_of(list(effects))] = torch.tensor(
        list(effects.values()), dtype=torch.float64
    )
    return scores
