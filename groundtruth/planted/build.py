"""One planted program from scratch: train it, derive its ground truths, check them, write a card.

``build`` is what ``circuitboard groundtruth train NAME`` runs; the card records the command, the
seed, the spec, a hash of every training draw, the losses, the accuracies, the IIA and the time,
as the zoo's cards do (``circuitboard.tasks.train``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitboard.groundtruth.planted import store, truth
from circuitboard.groundtruth.planted.specs import SPECS
from circuitboard.groundtruth.planted.train import TrainResult, groups_of, hl_model, train

FIRST_LOSSES = 5  # steps whose losses the card keeps exactly, for the fast retrain test


@dataclass
class Built:
    result: TrainResult
    record: dict
    card: dict

    @property
    def passed(self) -> bool:
        return bool(self.record["pass"])


def spec_of(name: str):
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(
            f"unknown planted program {name!r}; the planted programs are {', '.join(SPECS)}"
        ) from None


def command(name: str, seed: int | None = None, steps: int | None = None, threads: int = 1):
    parts = ["circuitboard", "groundtruth", "train", name]
    if seed is not None:
        parts += ["--seed", str(seed)]
    if steps is not None:
        parts += ["--steps", str(steps)]
    if threads != 1:
        parts += ["--threads", str(threads)]
    return " ".join(parts)


def build(
    name: str,
    *,
    seed: int | None = None,
    steps: int | None = None,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Built:
    """Train ``name`` (``SPECS``), then derive and check its ground truths on every input."""
    spec = spec_of(name)
    result = train(spec, seed=seed, steps=steps, threads=threads, log=log, progress=progress)
    hl = hl_model(result.spec)
    groups = groups_of(hl)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        record = truth.derive_record(result.model, hl, result.alignment, groups, result.readout)
    finally:
        torch.set_num_threads(old)
    derive = (time.perf_counter() - start, time.process_time() - cpu_start)
    card = make_card(name, result, record, command(name, seed, steps, threads), threads, derive)
    return Built(result, record, card)


def _curve(losses: list[dict], every: int = 100) -> dict[str, list[float]]:
    keys = list(losses[0]) if losses else []
    out = {}
    for k in keys:
        out[k] = [
            round(sum(x[k] for x in losses[i : i + every]) / len(losses[i : i + every]), 6)
            for i in range(0, len(losses), every)
        ]
    return out


def make_card(
    name: str, result: TrainResult, record: dict, cmd: str, threads: int, derive=(0.0, 0.0)
) -> dict:
    from dataclasses import asdict

    spec = result.spec
    checks = record["checks"]
    circuits = record["circuits"]
    model = result.model
    last = result.losses[-50:]
    return {
        "name": f"planted/{name}",
        "program": spec.program,
        "description": f"{model.program['description']} Trained by SIIT: "
        f"{len(record['alignment']['hl_nodes'])} planted nodes, "
        f"{len(circuits['planted']['edges'])} planted edges of {model.graph.n_edges}.",
        "command": cmd,
        "seed": spec.seed,
        "spec": asdict(spec),
        "input_tokens": model.tracr_info["input_tokens"],
        "data_hash": result.data_hash,
        "train_time_s": round(result.seconds, 1),
        "train_cpu_s": round(result.cpu_seconds, 1),
        "derive_time_s": round(derive[0], 1),  # the ground truths and checks, after training
        "derive_cpu_s": round(derive[1], 1),
        "threads": threads,
        "first_losses": result.losses[:FIRST_LOSSES],
        "final_losses": {k: sum(x[k] for x in last) / len(last) for k in last[0]},
        "loss_curve": _curve(result.losses),
        "evals": result.evals,
        "accuracy": checks["behaviour"]["accuracy"],
        "iia": checks["iia"]["per_node"],
        "accuracy_outside_planted_ablated": checks["outside"]["accuracy_outside_ablated"],
        "sizes": {k: len(v["edges"]) for k, v in circuits.items()},
        "checks_pass": bool(record["pass"]),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def save(built: Built, name: str, directory: str | None = None) -> str:
    """Write a built program; refuses one that failed a check (it is not shipped)."""
    fails = truth.failures(built.record["checks"])
    if fails:
        raise ValueError(f"planted/{name} fails its checks and is not written: {'; '.join(fails)}")
    return store.save(built.result.model, built.card, built.record, name, directory)
