"""A planted model's ground truths, stated twice, and the checks that decide whether it ships.

- **planted**: the aligned components and the edges the high-level graph implies
  (``alignment``), fixed before training.
- **zero**, **resample**, **mean**: the functional ground truth measured on the trained weights
  under that ablation (``functional``), with the gap between the smallest effect in it and the
  largest left out.

The checks (every one must pass for a program to ship):

1. **behaviour**: the model's accuracy against the program is at least ``MIN_IIA``;
2. **IIA**: the interchange-intervention accuracy of every aligned node is at least ``MIN_IIA``;
3. **outside**: with every edge outside the planted circuit resample-ablated (the worst of the
   three seeds), the accuracy is within ``MAX_ACCURACY_DROP`` of the full model's;
4. **necessity**: every planted edge is necessary (removing it from the planted circuit costs
   more than ``functional.TOL`` of the empty circuit's squared change), or it is listed as
   redundant.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

import torch

from circuitboard.graph import Circuit
from circuitboard.groundtruth import data as gt_data
from circuitboard.groundtruth import programs
from circuitboard.groundtruth.planted import functional, siit, store
from circuitboard.groundtruth.planted.alignment import Alignment
from circuitboard.groundtruth.truth import CircuitsByKind
from circuitboard.task import Task

KINDS = ("planted",) + functional.ABLATIONS
FORMAT = "circuitboard-planted-groundtruth"
FORMAT_VERSION = 1
MIN_IIA = 0.95
MAX_ACCURACY_DROP = 0.02


def necessity(model, groups, keep: torch.Tensor, ablation: str = "resample") -> torch.Tensor:
    """For each kept edge: the squared change (as a share of the empty circuit's) that removing
    it from the circuit adds; 0 for edges not kept."""
    n = model.graph.n_edges
    idx = torch.nonzero(keep).flatten()
    masks = keep.float()[None].repeat(len(idx) + 2, 1)
    masks[torch.arange(len(idx)), idx] = 0
    masks[len(idx) + 1] = 0  # the empty circuit; row len(idx) is the circuit itself
    change = functional.squared_change(model, groups, ablation, masks)
    out = torch.zeros(n, dtype=torch.float64)
    out[idx] = (change[: len(idx)] - change[len(idx)]) / change[len(idx) + 1]
    return out


def run_checks(model, hl, alignment: Alignment, groups, readout: siit.Readout) -> dict:
    """The four checks of the module docstring, on every input of the program."""
    names = model.graph.edge_names
    planted = alignment.planted()
    accuracy = siit.accuracy(model, hl, groups, readout)
    iia = siit.interchange_accuracy(model, hl, alignment, groups, readout)
    outside = float(
        functional.masked_accuracy(model, hl, planted.keep.float()[None], groups, readout)
    )
    need = necessity(model, groups, planted.keep)
    idx = torch.nonzero(planted.keep).flatten().tolist()
    return {
        "behaviour": {"accuracy": accuracy, "min": MIN_IIA, "pass": accuracy >= MIN_IIA},
        "iia": {"per_node": iia, "min": MIN_IIA, "pass": min(iia.values()) >= MIN_IIA},
        "outside": {
            "accuracy": accuracy,
            "accuracy_outside_ablated": outside,
            "max_drop": MAX_ACCURACY_DROP,
            "pass": outside >= accuracy - MAX_ACCURACY_DROP,
        },
        "necessity": {
            "per_edge": {names[i]: float(need[i]) for i in idx},
            "redundant": [names[i] for i in idx if need[i] <= functional.TOL],
            "pass": True,  # a planted edge that is not necessary is listed, not failed
        },
    }


def functional_circuits(model, hl, groups, readout: siit.Readout, planted: Circuit) -> dict:
    """The functional ground truth under each ablation, with its gap and joint check."""
    names = model.graph.edge_names
    out = {}
    for ablation in functional.ABLATIONS:
        keep, info = functional.functional(model, groups, ablation)
        joint = functional.masked_accuracy(model, hl, keep.float()[None], groups, readout, ablation)
        out[ablation] = {
            "edges": [names[i] for i in torch.nonzero(keep).flatten().tolist()],
            "redundant": [],
            "smallest_effect_in": info["smallest_effect_in"],
            "largest_effect_out": info["largest_effect_out"],
            "accuracy_outside_ablated": float(joint),
            "equals_planted": bool(torch.equal(keep, planted.keep)),
            "effects": [float(x) for x in info["effects"]],
        }
    return out


def derive_record(model, hl, alignment: Alignment, groups, readout: siit.Readout) -> dict:
    """Every ground truth of a trained planted model, and the four checks."""
    graph = model.graph
    planted = alignment.planted()
    checks = run_checks(model, hl, alignment, groups, readout)
    circuits = {
        "planted": {
            "edges": planted.edges,
            "redundant": checks["necessity"]["redundant"],
        },
        **functional_circuits(model, hl, groups, readout, planted),
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "program": hl.program["name"],
        "tolerance": functional.TOL,
        "readout": readout.to_dict(),
        "n_inputs": sum(len(g) for g in groups),
        "n_nodes": graph.n_nodes,
        "n_edges": graph.n_edges,
        "alignment": alignment.to_dict(),
        "circuits": circuits,
        "checks": checks,
        "pass": all(c["pass"] for c in checks.values()),
    }


def check_record(record: dict, where: str = "planted ground-truth record") -> None:
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where}: not a {FORMAT} v{FORMAT_VERSION} file; retrain it with "
            f"`circuitboard groundtruth train NAME`"
        )
    missing = [k for k in KINDS if k not in record.get("circuits", {})]
    if missing:
        raise ValueError(f"{where}: no ground truth for {missing}; retrain it")


def failures(checks: dict) -> list[str]:
    """One line per failed check (empty: the program may ship)."""
    out = []
    if not checks["behaviour"]["pass"]:
        out.append(f"accuracy {checks['behaviour']['accuracy']:.4f} < {MIN_IIA}")
    if not checks["iia"]["pass"]:
        low = {k: round(v, 4) for k, v in checks["iia"]["per_node"].items() if v < MIN_IIA}
        out.append(f"IIA below {MIN_IIA}: {low}")
    if not checks["outside"]["pass"]:
        c = checks["outside"]
        out.append(
            f"accuracy with every edge outside the planted circuit ablated "
            f"{c['accuracy_outside_ablated']:.4f}, more than {MAX_ACCURACY_DROP} below the "
            f"full model's {c['accuracy']:.4f}"
        )
    return out


# --------------------------------------------------------------------------- the interface
def make_task(model, name: str) -> Task:
    """The planted program's Task: the Tracr program's data and split, metric ``l2`` after BOS
    against the trained model's own outputs (plus argmax accuracy for categorical outputs)."""
    spec = programs.PROGRAMS.get(model.program["name"])
    task = gt_data.make_task(model, spec.valid if spec is not None else None)
    kind = "categorical" if model.program["categorical"] else "numerical"
    return replace(
        task,
        name=f"planted/{name}",
        models=(f"planted/{name}",),
        description=f"{model.program['description']} Trained by SIIT with a planted circuit "
        f"({kind} output; L2 to the trained model's outputs after BOS"
        f"{', argmax accuracy' if model.program['categorical'] else ''})",
    )


class PlantedGroundTruth(CircuitsByKind):
    """``.model``, ``.task`` and ``.circuit(kind)`` for kind in planted, zero, resample, mean:
    the same interface as a Tracr ``GroundTruth``, so the leaderboard scores both alike.

    ``circuit("resample")`` is the functional ground truth measured on the trained weights (what
    a resample-ablation score should be compared with); ``circuit("planted")`` is the circuit
    that training put there. Scores are the single-edge effects under that ablation (resample
    for ``planted``).
    """

    KINDS = KINDS

    def __init__(self, name: str, model, record: dict, card: dict | None = None) -> None:
        check_record(record, f"planted/{name}")
        self.name = name
        self.model = model
        self.record = record
        self.card = card or {}

    @cached_property
    def task(self) -> Task:
        return make_task(self.model, self.name)

    def groups(self) -> list[torch.Tensor]:
        """Every input of the program, one tensor per length (what the truths were measured on)."""
        spec = programs.PROGRAMS.get(self.model.program["name"])
        return gt_data.token_groups(self.model, spec.valid if spec is not None else None)

    def circuit(self, kind: str) -> Circuit:
        if kind not in KINDS:
            raise ValueError(
                f"no {kind!r} ground truth for planted/{self.name}; choose one of "
                f"{', '.join(KINDS)} (a task's counterfactuals are same-length resamples: use "
                f"'resample')"
            )
        graph = self.model.graph
        rec = self.record["circuits"][kind]
        effects = self.record["circuits"]["resample" if kind == "planted" else kind]["effects"]
        return Circuit.from_edges(
            graph,
            rec["edges"],
            scores=torch.tensor(effects, dtype=torch.float64),
            info={
                "ground_truth": kind,
                "program": f"planted/{self.name}",
                "redundant": list(rec.get("redundant", [])),
            },
        )


def load(name: str, directory: str | None = None) -> PlantedGroundTruth:
    """A shipped planted ground truth: weights, card and circuits; torch and safetensors only."""
    if name.startswith("planted/"):
        name = name.split("/", 1)[1]
    model = store.load_model(name, directory)
    return PlantedGroundTruth(
        name, model, store.read_record(name, directory), store.card(name, directory)
    )
