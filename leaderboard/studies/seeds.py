"""``seeds``: the seed population of a circuit-finding method, on and off distribution (Drori).

Drori (2026, "Weight-sparse circuits may be interpretable yet unfaithful") ran Gao et al.'s
pruning 100 times on a pronoun task, each run with another mask initialisation and data order,
kept the runs that reached the target loss, and found that many of the circuits were right on
opposite-gender prompts (the training distribution) and wrong on same-gender prompts, although
the full model gets both right; and that zero ablation gives smaller circuits than mean
ablation. This study reruns that on any method, model and task with an off-distribution split.

One unit is one seed of one method on one (task, model, ablation):

1. **What the seed changes.** The method gets ``seed`` (its own randomness: mask
   initialisation, gate samples, minibatch order) and a seeded subsample of the training data
   (``seeded_train``): in each training batch a seeded permutation of the examples, of which the
   first ``train_fraction`` are kept, and the batches themselves in a seeded order. For a method
   that is deterministic given its data (EAP, EAP-IG, ACDC; ``DETERMINISTIC``), the subsample is
   all the seed changes, and the report says so.
2. **Its circuit.** The method is asked for one circuit per budget (``scoring.budget_grid``, or
   ``budgets``). Each circuit is scored on the data the method trained on (the subsample, the
   subsample as the mean reference), by ``circuitboard.evaluate``, giving the at-most-budget
   curve of training faithfulness. The seed's circuit is the one credited at the smallest
   budget whose training faithfulness reaches ``target`` (``scoring.edges_to_reach``): the
   smallest circuit that reaches the target on the data the method saw, as Gao et al.'s
   pruning reports the smallest circuit at a target loss.
3. **Kept or not.** A run is *kept* when it reaches the target at a budget below the whole
   graph (a circuit that must be the whole model is no circuit). Drori dropped the runs that
   missed the target loss; the report says how many of the N seeds were kept.
4. **Scores.** The seed's circuit is scored on the test split and on the off-distribution split
   of the original task (full training data as the mean reference, so every seed is scored
   alike): faithfulness with its bootstrap interval, top-1 agreement with the full model, and,
   for a logit-difference task with one answer and one distractor token (the pronoun task), the
   probability of the right answer restricted to the two (``two_way_probability``, Drori's
   score), with the full model's value beside it.

The report, per (method, model, ablation): seeds run and kept; the share of kept seeds whose
circuit is faithful on distribution (>= ``FAITHFUL_ON``) but not off it (< ``UNFAITHFUL_OFF``);
circuit size across seeds (edges, and native size where the method has one); the mean edge
Jaccard between seeds; histograms of every score on and off distribution with the full model's
value marked; the on/off faithfulness of each seed; the pairwise Jaccard matrix.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import torch
from tabulate import tabulate

from circuitboard import scoring
from circuitboard.evaluate import evaluate
from circuitboard.leaderboard import catalog, scores
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.cell import _seeded, check_circuits
from circuitboard.leaderboard.studies import defaults, plumbing

NAME = defaults.SEEDS_NAME
SCHEMA = "circuitboard-study-seeds"
SCHEMA_VERSION = 1

DEFAULT_METHODS = defaults.SEEDS_METHODS
DEFAULT_TASK = defaults.SEEDS_TASK
DEFAULT_MODELS = defaults.SEEDS_MODELS
DEFAULT_ABLATIONS = defaults.SEEDS_ABLATIONS
DEFAULT_SEEDS = defaults.SEEDS_COUNT
DEFAULT_TARGET = defaults.SEEDS_TARGET
FAITHFUL_ON = 0.9
UNFAITHFUL_OFF = 0.5
DATA_SEED_OFFSET = 7919  # the data subsample's generator: seeded apart from the method's own
# The training data each seed sees (a seeded subsample) and the methods' settings, sized so
# that a 20-seed study of one method on one model, both ablations, fits the speed target on a
# 2-core CPU with the methods as they are now (see benchmarks/studies.py). Faster methods need
# none of this: ``--train-fraction 1 --param steps=...`` gives them the full data and schedule.
DEFAULT_TRAIN_FRACTION = defaults.SEEDS_TRAIN_FRACTION
STUDY_PARAMS = {
    "node-pruning": {"steps": 100},
    "edge-pruning": {"per_size": False, "steps": 100},
}
# What the seed changes besides the data subsample, for the built-in methods.
DETERMINISTIC = ("eap", "eap-ig", "acdc", "full", "groundtruth")
SEED_CHANGES = {
    "node-pruning": "mask initialisation (and the data subsample)",
    "edge-pruning": "gate initialisation, gate samples, minibatch order (and the data subsample)",
    "random": "the random circuits (and the data subsample, which it does not read)",
}


def seed_changes(method: str) -> str:
    if method in DETERMINISTIC:
        return "only the data subsample and order: the method is deterministic given its data"
    return SEED_CHANGES.get(method, "the method's own randomness, and the data subsample")


# --------------------------------------------------------------------------------- data
def seeded_train(task, seed: int, fraction: float):
    """``task`` whose training split is a seeded subsample, in a seeded order.

    In each training batch the examples are permuted with a generator seeded by ``seed`` and
    the first ``round(fraction * n)`` (at least one) are kept; the batches are then put in a
    seeded order. Test and off-distribution splits are untouched.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must lie in (0, 1], got {fraction!r}")
    gen = torch.Generator().manual_seed(DATA_SEED_OFFSET + int(seed))
    batches = []
    for batch in task.train:
        n = len(batch)
        order = torch.randperm(n, generator=gen)
        batches.append(batch.select(order[: max(1, round(fraction * n))]))
    order = torch.randperm(len(batches), generator=gen).tolist()
    return replace(task, train=[batches[i] for i in order])


def two_way_probability(logit_difference: torch.Tensor) -> torch.Tensor:
    """P(answer) among {answer, distractor}: the softmax over the two logits, which is
    ``sigmoid(logit(answer) - logit(distractor))`` (Drori's score on the pronoun task)."""
    return torch.sigmoid(logit_difference.double())


def _single_token_logit_diff(task, split: str) -> bool:
    if task.metric != "logit_diff":
        return False
    for b in getattr(task, split):
        for t in (b.answer, b.distractor):
            if t is None or (t.dim() == 2 and (t.shape[1] != 1 or bool((t < 0).any()))):
                return False
    return True


# --------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class SeedRun:
    """One seed of one method on one (task, model, ablation), with the study's settings."""

    method: MethodSpec
    task: str
    model: str
    ablation: str
    seed: int
    target: float = DEFAULT_TARGET
    train_fraction: float = DEFAULT_TRAIN_FRACTION
    budgets: tuple[int, ...] | None = None
    n_boot: int = 1000
    threads: int | None = 1

    @property
    def key(self) -> plumbing.UnitKey:
        shown = {
            "method": self.method.name,
            "task": self.task,
            "model": self.model,
            "ablation": self.ablation,
            "seed": f"seed{self.seed}",
        }
        return plumbing.UnitKey.of(NAME, self, shown)

    @property
    def group(self) -> tuple[str, str, str, str]:
        return (self.method.name, self.task, self.model, self.ablation)


def plan(
    methods: Sequence[str | MethodSpec] = DEFAULT_METHODS,
    task: str = DEFAULT_TASK,
    models: Sequence[str] | None = None,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    ablations: Sequence[str] = DEFAULT_ABLATIONS,
    *,
    target: float = DEFAULT_TARGET,
    train_fraction: float = DEFAULT_TRAIN_FRACTION,
    params: dict | None = None,
    budgets: Sequence[int] | None = None,
    n_boot: int = 1000,
    threads: int | None = 1,
) -> list[SeedRun]:
    """The units of a seed study; a method given by name gets ``STUDY_PARAMS`` and ``params``."""
    if not 0 < target <= 1:
        raise ValueError(f"the target training faithfulness must lie in (0, 1], got {target!r}")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must lie in (0, 1], got {train_fraction!r}")
    if models is None:
        models = DEFAULT_MODELS if task == DEFAULT_TASK else catalog.task_models(task)
    for model in models:
        if not catalog.load_bundle(task, model).task.off_distribution:
            raise ValueError(
                f"task {task!r} has no off-distribution split on {model!r}; the seeds study "
                f"scores each circuit on and off distribution (gendered-pronoun has one: "
                f"same-gender prompts)"
            )
    specs = [
        m
        if isinstance(m, MethodSpec)
        else MethodSpec(m, params={**STUDY_PARAMS.get(m, {}), **plumbing.method_params(m, params)})
        for m in methods
    ]
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    grid = None if budgets is None else tuple(sorted({int(b) for b in budgets}))
    return [
        SeedRun(spec, task, model, ablation, seed, target, train_fraction, grid, n_boot, threads)
        for spec in specs
        for model in models
        for ablation in ablations
        for seed in seed_list
    ]


# ---------------------------------------------------------------------------------- work
def run_seed(unit: SeedRun, progress=None) -> dict:
    """The record of one seed (plain JSON data); a pure function of ``unit``."""
    before = torch.get_num_threads()
    if unit.threads:
        torch.set_num_threads(unit.threads)
    try:
        return _run_seed(unit, progress or (lambda stage: None))
    finally:
        torch.set_num_threads(before)


def _run_seed(unit: SeedRun, step) -> dict:
    started = time.perf_counter()
    bundle = catalog.load_bundle(unit.task, unit.model)
    model, task = bundle.model, bundle.task
    if not task.off_distribution:
        raise ValueError(
            f"task {unit.task!r} has no off-distribution split; the seeds study scores each "
            f"circuit on and off distribution (gendered-pronoun has one: same-gender prompts)"
        )
    graph = model.graph
    budgets = list(unit.budgets) if unit.budgets else scoring.budget_grid(graph.n_edges)
    budgets = scoring.check_budgets(budgets, graph.n_edges)
    seeded = seeded_train(task, unit.seed, unit.train_fraction)
    method = unit.method.build()
    with _seeded(unit.seed):
        circuits = method.find_circuits(model, seeded, list(budgets), unit.ablation, unit.seed)
    circuits = check_circuits(circuits, budgets, graph, unit.method.name)
    method_seconds = time.perf_counter() - started
    step("method")

    train = evaluate(
        model,
        seeded,
        circuits,
        unit.ablation,
        budgets=budgets,
        split="train",
        seed=unit.seed,
        n_boot=unit.n_boot,
    )
    values = [p["faithfulness"] for p in train.curve]
    needed = float(scoring.edges_to_reach(train.budgets, values, unit.target))
    step("select")

    selection: dict = {"target": unit.target, "edges_needed": None, "kept": False}
    record_circuit = on = off = None
    if math.isfinite(needed):
        point = train.curve[train.budgets.index(int(needed))]
        index = point["credited"]
        selection.update(
            edges_needed=int(needed),
            kept=int(needed) < graph.n_edges,
            credited=index,
            train_faithfulness=point["faithfulness"],
        )
        chosen = circuits[index] if index is not None else None
        if chosen is not None:
            pruned = chosen.pruned()
            record_circuit = {
                "edges": scores.pack(pruned.keep),
                "size": pruned.n_kept,
                "returned_for": budgets[index],
                "native": _native(chosen),
                "info": _scalars(chosen.info),
            }
            on = _score(model, task, chosen, int(needed), unit, "test")
            step("on distribution")
            off = _score(model, task, chosen, int(needed), unit, "off_distribution")
            step("off distribution")
    if not selection["kept"]:
        selection["why"] = (
            "no budget reaches the target training faithfulness"
            if selection["edges_needed"] is None
            else "only the whole graph reaches the target training faithfulness"
        )
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "key": unit.key.as_dict(),
        "unit": plumbing.plain(unit),
        "method": unit.method.describe(method),
        "model": {"name": unit.model, "n_edges": graph.n_edges, "n_nodes": graph.n_nodes},
        "task": {
            "name": task.name,
            "metric": task.metric,
            "n_train": task.n_examples("train"),
            "n_test": task.n_examples("test"),
            "n_off": task.n_examples("off_distribution"),
        },
        "data": {
            "train_fraction": unit.train_fraction,
            "n_train_used": seeded.n_examples("train"),
            "digest": scoring.examples_digest(seeded.train),
        },
        "budgets": budgets,
        "train_curve": [
            {"budget": p["budget"], "faithfulness": p["faithfulness"], "size": p["size"]}
            for p in train.curve
        ],
        "selection": selection,
        "circuit": record_circuit,
        "on": on,
        "off": off,
        "cost": {"method_seconds": method_seconds, "seconds": time.perf_counter() - started},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


VOLATILE = ("cost", "created")


def comparable(record: dict) -> dict:
    """A record without what varies between runs of the same unit (timing)."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


def _score(model, task, circuit, budget: int, unit: SeedRun, split: str) -> dict:
    """One circuit's scores on ``split`` of the original task (full train as mean reference)."""
    ev = evaluate(
        model,
        task,
        [circuit],
        unit.ablation,
        budgets=[budget],
        split=split,
        seed=unit.seed,
        n_boot=unit.n_boot,
    )
    p, data = ev.points[0], ev.per_example
    out = {
        "faithfulness": p.faithfulness,
        "ci_low": p.ci_low,
        "ci_high": p.ci_high,
        "top1": p.top1,
        "kl": p.kl,
        "metric": p.metric,
        "full_metric": ev.full_metric,
        "empty_metric": ev.empty_metric,
        "two_way_probability": None,
        "full_two_way_probability": None,
    }
    if _single_token_logit_diff(task, split):
        out["two_way_probability"] = float(two_way_probability(data.circuit[0]).mean())
        out["full_two_way_probability"] = float(two_way_probability(data.full).mean())
    return out


def _native(circuit) -> dict | None:
    native = getattr(circuit, "native", None)
    if not isinstance(native, dict):
        return None
    return {k: v for k, v in native.items() if isinstance(v, bool | int | float | str)}


def _scalars(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if k == "seconds":
            continue
        if v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        elif isinstance(v, dict) and all(
            x is None or isinstance(x, bool | int | float | str) for x in v.values()
        ):
            out[k] = dict(v)
    return out


# -------------------------------------------------------------------------------- report
def records_for(units: Sequence[SeedRun], directory: str) -> tuple[list[dict], list[str]]:
    records, missing = [], []
    for unit in units:
        record = plumbing.stored_record(unit.key, directory, SCHEMA, SCHEMA_VERSION)
        if record is None:
            missing.append(str(unit.key))
        else:
            records.append(record)
    return records, missing


def faithful_on_not_off(record: dict) -> bool:
    """The seed's circuit is faithful on distribution (>= 0.9) but not off it (< 0.5)."""
    on, off = record["on"]["faithfulness"], record["off"]["faithfulness"]
    return on is not None and off is not None and on >= FAITHFUL_ON and off < UNFAITHFUL_OFF


def _median_range(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per (method, task, model, ablation): every number the report shows."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        u = r["unit"]
        groups.setdefault((u["method"]["name"], u["task"], u["model"], u["ablation"]), []).append(r)
    rows = []
    for (method, task, model, ablation), part in groups.items():
        part = sorted(part, key=lambda r: r["unit"]["seed"])
        kept = [r for r in part if r["selection"]["kept"]]
        n_edges = part[0]["model"]["n_edges"]
        keeps = [scores.unpack(r["circuit"]["edges"], n_edges) for r in kept]
        pairs = [scores.jaccard(a, b) for a, b in itertools.combinations(keeps, 2)]
        bad = [r["unit"]["seed"] for r in kept if faithful_on_not_off(r)]
        first_on = next((r["on"] for r in part if r["on"]), None)
        first_off = next((r["off"] for r in part if r["off"]), None)

        def values(split, name, rs=kept):
            return [r[split][name] for r in rs if r[split] is not None]

        native = [
            (r["circuit"]["native"] or {}).get("n_nodes")
            for r in kept
            if r["circuit"]["native"] is not None
        ]
        rows.append(
            {
                "method": method,
                "task": task,
                "model": model,
                "ablation": ablation,
                "seed_changes": seed_changes(method),
                "n_seeds": len(part),
                "n_reached": sum(r["selection"]["edges_needed"] is not None for r in part),
                "n_kept": len(kept),
                "kept_seeds": [r["unit"]["seed"] for r in kept],
                "n_faithful_on_not_off": len(bad),
                "share_faithful_on_not_off": len(bad) / len(kept) if kept else None,
                "faithful_on_not_off_seeds": bad,
                "n_faithful_on": sum(r["on"]["faithfulness"] >= FAITHFUL_ON for r in kept),
                "n_faithful_off": sum(r["off"]["faithfulness"] >= FAITHFUL_ON for r in kept),
                "size_edges": _median_range([r["circuit"]["size"] for r in kept]),
                "size_native": _median_range(native),
                "native_granularity": next(
                    (
                        (r["circuit"]["native"] or {}).get("granularity")
                        for r in kept
                        if r["circuit"]["native"]
                    ),
                    None,
                ),
                "jaccard_mean": sum(pairs) / len(pairs) if pairs else None,
                "n_edges": n_edges,
                "per_seed": [
                    {
                        "seed": r["unit"]["seed"],
                        "kept": r["selection"]["kept"],
                        "edges_needed": r["selection"]["edges_needed"],
                        "size": (r["circuit"] or {}).get("size"),
                        "on": r["on"],
                        "off": r["off"],
                    }
                    for r in part
                ],
                "on": {
                    name: _mean(values("on", name))
                    for name in ("faithfulness", "top1", "two_way_probability")
                },
                "off": {
                    name: _mean(values("off", name))
                    for name in ("faithfulness", "top1", "two_way_probability")
                },
                "full": {
                    "on_two_way_probability": (first_on or {}).get("full_two_way_probability"),
                    "off_two_way_probability": (first_off or {}).get("full_two_way_probability"),
                },
                "method_seconds_per_seed": _mean([r["cost"]["method_seconds"] for r in part]),
                "seconds_per_seed": _mean([r["cost"]["seconds"] for r in part]),
            }
        )
    return rows


def _size_text(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['median']:g} [{entry['min']:g}, {entry['max']:g}]"


def headline(rows: Sequence[dict]) -> str:
    """The report's main table, as the command prints it."""
    table = []
    for r in rows:
        share = r["share_faithful_on_not_off"]
        table.append(
            [
                r["method"],
                r["model"],
                r["ablation"],
                f"{r['n_kept']}/{r['n_seeds']}",
                "-"
                if share is None
                else f"{r['n_faithful_on_not_off']}/{r['n_kept']} ({share:.0%})",
                _size_text(r["size_edges"]),
                _size_text(r["size_native"]),
                plumbing.fmt(r["jaccard_mean"]),
                plumbing.fmt(r["on"]["two_way_probability"]),
                plumbing.fmt(r["off"]["two_way_probability"]),
                plumbing.fmt(r["full"]["off_two_way_probability"]),
                plumbing.fmt(r["on"]["top1"]),
                plumbing.fmt(r["off"]["top1"]),
            ]
        )
    headers = [
        "method",
        "model",
        "ablation",
        "kept",
        "faithful on, not off",
        "edges (median [min, max])",
        "native size",
        "Jaccard",
        "P2 on",
        "P2 off",
        "P2 off, full model",
        "top-1 on",
        "top-1 off",
    ]
    return tabulate(table, headers=headers, tablefmt="github")


def markdown(rows: Sequence[dict], figures: dict, settings: dict, missing: list[str]) -> str:
    lines = [
        "# Seed population study",
        "",
        f"Task `{settings['task']}`; {settings['seeds']} seeds per method, model and ablation. "
        f"Each seed's circuit is the smallest on its at-most-budget curve of training "
        f"faithfulness reaching {settings['target']} (on the seed's training subsample, "
        f"{settings['train_fraction']:.0%} of the training data in a seeded order); a seed is "
        f"*kept* when that circuit is smaller than the whole graph. Scores are on the test split "
        f"(on distribution) and the off-distribution split. *Faithful on, not off*: faithfulness "
        f">= {FAITHFUL_ON} on distribution and < {UNFAITHFUL_OFF} off it, among kept seeds. "
        f"P2: the probability of the right answer among the answer and the distractor "
        f"(Drori's score), mean over kept seeds. Jaccard: mean edge Jaccard over pairs of kept "
        f"seeds.",
        "",
        headline(rows),
        "",
        "What each seed changes:",
        "",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        lines.append(f"- `{method}`: {seed_changes(method)}.")
    lines.append("")
    params = {r["method"]: r.get("params") for r in rows}
    if any(params.values()):
        lines += ["Method settings:", ""]
        lines += [f"- `{m}`: `{p}`" for m, p in params.items()]
        lines.append("")
    for r in rows:
        lines += [
            f"## {r['method']} on {r['model']}, {r['ablation']} ablation",
            "",
            f"- seeds kept: {r['n_kept']} of {r['n_seeds']} "
            f"({r['n_reached']} reached the target at some budget)",
            f"- faithful (>= {FAITHFUL_ON}) on distribution: {r['n_faithful_on']}, off "
            f"distribution: {r['n_faithful_off']}; faithful on but not off (< {UNFAITHFUL_OFF}): "
            f"{r['n_faithful_on_not_off']} (seeds {r['faithful_on_not_off_seeds']})",
            f"- time per seed: {plumbing.fmt(r['seconds_per_seed'])} s "
            f"(method {plumbing.fmt(r['method_seconds_per_seed'])} s)",
            "",
        ]
    for title, path in figures.items():
        lines += [f"![{title}]({path})", ""]
    if missing:
        lines += ["## Units without a record", ""] + [f"- {m}" for m in missing] + [""]
    return "\n".join(lines)


def figures(rows: Sequence[dict], directory: str) -> dict[str, str]:
    """Histograms on/off, on-vs-off faithfulness, sizes and Jaccard; ``{title: file name}``."""
    import os

    plt = plumbing.pyplot()
    out = {}
    by_pair: dict[tuple, list[dict]] = {}
    for r in rows:
        by_pair.setdefault((r["method"], r["model"]), []).append(r)
    for (method, model), part in by_pair.items():
        stem = "__".join(plumbing.slug(v) for v in (method, model))
        scores_shown = [
            ("two_way_probability", "P(right pronoun | two pronouns)", "off_two_way_probability"),
            ("top1", "top-1 agreement with the full model", None),
            ("faithfulness", "faithfulness", None),
        ]
        fig, axes = plt.subplots(
            len(part), len(scores_shown), figsize=(4 * len(scores_shown), 2.8 * len(part)), dpi=100
        )
        axes = [axes] if len(part) == 1 else axes
        for row_axes, r in zip(axes, part):
            kept = [s for s in r["per_seed"] if s["kept"]]
            for ax, (name, label, _) in zip(row_axes, scores_shown):
                on = [s["on"][name] for s in kept if s["on"][name] is not None]
                off = [s["off"][name] for s in kept if s["off"][name] is not None]
                if not on and not off:
                    why = "not defined for this task" if kept else "no seed kept"
                    ax.text(0.5, 0.5, why, ha="center", transform=ax.transAxes)
                    ax.set_axis_off()
                    continue
                lo = min(on + off + [0.0])
                hi = max(on + off + [1.0])
                bins = torch.linspace(lo, hi, 21).tolist()
                ax.hist([on, off], bins=bins, label=["on distribution", "off distribution"])
                full_on, full_off = 1.0, 1.0
                if name == "two_way_probability":
                    full_on = r["full"]["on_two_way_probability"]
                    full_off = r["full"]["off_two_way_probability"]
                ax.axvline(full_on, color="C0", ls="--", lw=1, label="full model, on")
                ax.axvline(full_off, color="C1", ls=":", lw=1.5, label="full model, off")
                ax.set_xlabel(label, fontsize=8)
                ax.set_ylabel("kept seeds", fontsize=8)
                ax.set_title(f"{r['ablation']} ablation ({len(kept)} kept)", fontsize=9)
            row_axes[0].legend(fontsize=6)
        fig.suptitle(f"{method} on {model}: seed population", fontsize=10)
        fig.tight_layout()
        name = f"histograms__{stem}.png"
        plumbing.save_figure(fig, os.path.join(directory, name))
        out[f"{method} on {model}: scores across seeds"] = name

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
        on_all, off_all, size_all = [], [], []
        for i, r in enumerate(part):
            kept = [s for s in r["per_seed"] if s["kept"]]
            on = [s["on"]["faithfulness"] for s in kept]
            off = [s["off"]["faithfulness"] for s in kept]
            ax1.scatter(on, off, label=f"{r['ablation']} ablation", alpha=0.7, s=18)
            sizes = [s["size"] for s in kept]
            jitter = torch.linspace(-0.15, 0.15, max(2, len(sizes)))[: len(sizes)].tolist()
            ax2.scatter([i + j for j in jitter], sizes, alpha=0.6, s=18)
            on_all, off_all, size_all = on_all + on, off_all + off, size_all + sizes
        left = min(on_all + [FAITHFUL_ON]) - 0.05
        bottom = min(off_all + [0.0]) - 0.05
        top = max(off_all + [1.0]) + 0.05
        ax1.axvspan(
            FAITHFUL_ON,
            1.05,
            ymin=0,
            ymax=(UNFAITHFUL_OFF - bottom) / (top - bottom),
            color="C3",
            alpha=0.08,
            lw=0,
        )
        ax1.axvline(FAITHFUL_ON, color="grey", lw=0.6, ls="--")
        ax1.axhline(UNFAITHFUL_OFF, color="grey", lw=0.6, ls="--")
        ax1.set_xlim(left, 1.05)
        ax1.set_ylim(bottom, top)
        ax1.set_xlabel("faithfulness on distribution (test)")
        ax1.set_ylabel("faithfulness off distribution")
        ax1.set_title("each kept seed (shaded: faithful on, not off)", fontsize=9)
        ax1.legend(fontsize=7)
        ax2.set_xticks(range(len(part)), [f"{r['ablation']}" for r in part])
        ax2.set_xlim(-0.5, len(part) - 0.5)
        if size_all and max(size_all) >= 20 * max(1, min(size_all)):
            ax2.set_yscale("log")
        ax2.set_ylabel("circuit size (edges, after pruning)")
        ax2.set_title("circuit size across kept seeds", fontsize=9)
        fig.tight_layout()
        name = f"on_off_sizes__{stem}.png"
        plumbing.save_figure(fig, os.path.join(directory, name))
        out[f"{method} on {model}: on vs off faithfulness, and sizes"] = name

        fig, axes = plt.subplots(1, len(part), figsize=(3.6 * len(part), 3.2), dpi=100)
        axes = [axes] if len(part) == 1 else axes
        for ax, r in zip(axes, part):
            matrix = r.get("_jaccard")
            if matrix is None or len(matrix) < 2:
                ax.text(0.5, 0.5, "fewer than two kept seeds", ha="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{r['ablation']}: mean {plumbing.fmt(r['jaccard_mean'])}", fontsize=9)
            ax.set_xlabel("kept seed")
            ax.set_ylabel("kept seed")
            if len(r["kept_seeds"]) <= 25:
                ticks = range(len(r["kept_seeds"]))
                ax.set_xticks(ticks, r["kept_seeds"], fontsize=6)
                ax.set_yticks(ticks, r["kept_seeds"], fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046)
        fig.suptitle(f"{method} on {model}: edge Jaccard between seeds", fontsize=10)
        fig.tight_layout()
        name = f"jaccard__{stem}.png"
        plumbing.save_figure(fig, os.path.join(directory, name))
        out[f"{method} on {model}: edge Jaccard between seeds"] = name
    return out


def jaccard_matrix(records: Sequence[dict]) -> list[list[float]]:
    n_edges = records[0]["model"]["n_edges"] if records else 0
    keeps = [scores.unpack(r["circuit"]["edges"], n_edges) for r in records]
    return [[scores.jaccard(a, b) for b in keeps] for a in keeps]


def report(units: Sequence[SeedRun], directory: str) -> dict:
    """Summary JSON, REPORT.md and figures from the stored records of ``units``."""
    records, missing = records_for(units, plumbing.cells_dir(directory))
    rows = summarize(records)
    for row in rows:
        kept = [
            r
            for r in records
            if r["selection"]["kept"]
            and (r["unit"]["method"]["name"], r["unit"]["task"], r["unit"]["model"])
            == (row["method"], row["task"], row["model"])
            and r["unit"]["ablation"] == row["ablation"]
        ]
        kept.sort(key=lambda r: r["unit"]["seed"])
        row["_jaccard"] = jaccard_matrix(kept)
        row["params"] = next(
            (
                r["method"]["params"]
                for r in records
                if r["unit"]["method"]["name"] == row["method"]
            ),
            None,
        )
    first = units[0] if units else None
    settings = {
        "task": first.task if first else None,
        "seeds": len({u.seed for u in units}),
        "target": first.target if first else None,
        "train_fraction": first.train_fraction if first else None,
        "faithful_on": FAITHFUL_ON,
        "unfaithful_off": UNFAITHFUL_OFF,
    }
    figs = figures(rows, directory) if rows else {}
    clean_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    for row, r in zip(clean_rows, rows):
        row["jaccard_matrix"] = r["_jaccard"]
    summary = {"study": NAME, "settings": settings, "rows": clean_rows, "missing": missing}
    plumbing.write_summary(directory, NAME, summary)
    plumbing.write_report(directory, markdown(rows, figs, settings, missing))
    return summary


def run(
    units: Sequence[SeedRun],
    directory: str,
    **options,
) -> tuple[plumbing.Summary, dict]:
    """Run the units without a record, then write the report."""
    ran = plumbing.run_units(
        units, plumbing.cells_dir(directory), run_seed, SCHEMA, SCHEMA_VERSION, **options
    )
    return ran, report(units, directory)
