"""GroundTruth: a Tracr model, its task, and its ground-truth circuit for each ablation."""

from __future__ import annotations

from functools import cached_property

from circuitboard.graph import Circuit
from circuitboard.groundtruth import data as gt_data
from circuitboard.groundtruth import derive, programs, record, store
from circuitboard.task import Task

KINDS = record.KINDS


class CircuitsByKind:
    """What every ground truth offers once it has ``circuit(kind)`` for each of ``KINDS``: its
    redundant edges, sizes and a one-line description (Tracr and planted alike)."""

    KINDS: tuple[str, ...] = KINDS

    def redundant(self, kind: str) -> list[str]:
        return list(self.circuit(kind).info["redundant"])

    def sizes(self) -> dict[str, int]:
        return {kind: self.circuit(kind).size for kind in self.KINDS}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"{type(self).__name__}({self.name!r}, {self.model.graph.describe()}; {sizes})"


class GroundTruth(CircuitsByKind):
    """``.model``, ``.task`` and ``.circuit(kind)`` for kind in structural, zero, resample, mean.

    The functional ground truth depends on the ablation: under resample or mean ablation, what is
    the same across inputs of one length (the length itself, BOS, the ``one`` direction) carries
    no signal, so the circuit is smaller than under zero ablation (Miller et al. 2024).
    """

    def __init__(self, name: str, model, rec: dict) -> None:
        record.check_record(rec, name)
        self.name = name
        self.model = model
        self.record = rec

    @cached_property
    def valid(self):
        spec = programs.PROGRAMS.get(self.name)
        return spec.valid if spec is not None else None

    @cached_property
    def task(self) -> Task:
        return gt_data.make_task(self.model, self.valid)

    def data(self) -> derive.Data:
        """Every input the ground truths were derived on (train and test), grouped by length."""
        return derive.Data(gt_data.token_groups(self.model, self.valid))

    def circuit(self, kind: str) -> Circuit:
        """The ground truth ``kind``; its ``scores`` are the single-edge effects under that
        ablation (zero ablation's for ``structural``), 0 for edges outside the structural one."""
        if kind not in KINDS:
            raise ValueError(
                f"no {kind!r} ground truth; choose one of {', '.join(KINDS)} (the task's "
                f"counterfactuals are same-length resamples: use 'resample')"
            )
        rec = self.record["circuits"][kind]
        graph = self.model.graph
        keep = Circuit.from_edges(graph, rec["edges"]).keep
        return Circuit(
            graph,
            keep,
            record.effect_scores(graph, self.record, kind),
            info={"ground_truth": kind, "program": self.name, "redundant": rec["redundant"]},
        )


def load(name: str, directory: str | None = None) -> GroundTruth:
    """A committed ground truth: compiled model and circuits from ``compiled/``, no tracr."""
    model = store.load_model(name, directory)
    rec = store.read_circuits(name, directory)
    if rec is None:
        raise FileNotFoundError(
            f"no cached ground truth for {name!r}; run `circuitboard groundtruth compile {name}`"
        )
    return GroundTruth(name, model, rec)


def from_model(model, valid=None) -> GroundTruth:
    """Derive every ground truth of a compiled model (e.g. from ``compile_program``) now."""
    if not hasattr(model, "program") or not hasattr(model, "tracr_info"):
        raise ValueError(
            "from_model needs a model from compile_program (with .program and .tracr_info)"
        )
    rec = record.derive_record(model, derive.Data(gt_data.token_groups(model, valid)))
    gt = GroundTruth(model.program["name"], model, rec)
    gt.__dict__["valid"] = valid
    return gt
