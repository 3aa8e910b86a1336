"""``sparse-vs-dense``: circuit sizes at equal faithfulness in a weight-sparse and a dense model.

Gao et al. (2025) claim that weight-sparse transformers have much smaller circuits than dense
ones. The zoo holds both kinds with one shape and one training set: ``zoo/toy-lm`` (dense) and
``zoo/toy-lm-sparse`` (trained weight-sparse, as Gao et al. do), so their graphs have the same
edges and their tasks the same examples. For every method and every standard task both models
solve (both clear the leaderboard's accuracy bar), the study runs the board cells on each model
and reports the edges needed to reach faithfulness 0.8 and 0.9 on each (rule 7 of
``circuitboard.scoring``, with bootstrap intervals, ``crossings``), their ratio dense / sparse
with a paired interval (same test examples), a paired bar chart, and per task one figure with
every method's at-most-budget curve on both models. For node pruning the native size (neurons)
of the credited circuit is shown beside its edges, which is the size Gao et al. count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from tabulate import tabulate

from circuitboard import scoring
from circuitboard.leaderboard import catalog, runner, store
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.studies import crossings, defaults, edges, plumbing

NAME = defaults.SPARSE_DENSE_NAME
DEFAULT_DENSE = defaults.SPARSE_DENSE_DENSE
DEFAULT_SPARSE = defaults.SPARSE_DENSE_SPARSE
DEFAULT_LEVELS = defaults.SPARSE_DENSE_LEVELS


def solved_by_both(dense: str, sparse: str) -> list[str]:
    """The standard tasks whose models (those clearing the accuracy bar) include both."""
    out = []
    for task in catalog.standard_names():
        models = catalog.task_models(task)
        if dense in models and sparse in models:
            out.append(task)
    return out


def plan(
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    dense: str = DEFAULT_DENSE,
    sparse: str = DEFAULT_SPARSE,
    seeds: int = 1,
    ablation: str | None = None,
    *,
    params: dict | None = None,
    n_boot: int = 1000,
    threads: int | None = 1,
) -> list:
    """Board cells: every method on every task, on both models (no robustness controls)."""
    from circuitboard.leaderboard.cell import Cell

    task_names = list(tasks) if tasks else solved_by_both(dense, sparse)
    names = methods or runner.ALL_METHODS
    specs = [MethodSpec(m, params=plumbing.method_params(m, params)) for m in names]
    cells = []
    for task in task_names:
        chosen = ablation or catalog.default_ablation(catalog.load_bundle(task, dense))
        for model in (dense, sparse):
            for spec in specs:
                for seed in range(seeds):
                    cells.append(
                        Cell(spec, task, model, chosen, seed, False, n_boot, None, threads)
                    )
    return cells


def _native_at(record: dict, data: scoring.PerExample, budget: float):
    """The native size (e.g. neurons) of the circuit credited at ``budget``, where recorded."""
    if not math.isfinite(budget):
        return None
    f = data.faithfulness()
    chosen, _ = scoring.credit(data.sizes, f, data.budgets, data.own)
    index = chosen[data.budgets.index(int(budget))]
    if index is None:
        return None
    return (record["circuits"][index].get("info") or {}).get("native_size")


def summarize(records, dense: str, sparse: str, levels: Sequence[float], degenerate=None):
    """One row per (task, ablation, method, level): both models' counts and their ratio.
    Results without a curve (a degenerate task) are named in ``degenerate``."""
    by: dict[tuple, dict[str, list]] = {}
    for r in sorted(records, key=lambda r: r["key"]["seed"]):
        data = crossings.per_example(r)
        if data is None:
            if degenerate is not None:
                degenerate.append(str(store.Key.from_dict(r["key"])))
            continue
        k = r["key"]
        by.setdefault((k["task"], k["ablation"], k["method"]), {}).setdefault(
            k["model"], []
        ).append((r, data))
    rows, curves = [], []
    for (task, ablation, method), models in sorted(by.items()):
        if dense not in models or sparse not in models:
            continue
        needs = {
            m: crossings.edges_needed([d for _, d in models[m]], levels) for m in (dense, sparse)
        }
        for m in (dense, sparse):
            runs = [d for _, d in models[m]]
            curves.append(
                {
                    "task": task,
                    "ablation": ablation,
                    "method": method,
                    "model": m,
                    "budgets": runs[0].budgets,
                    "faithfulness": crossings.curve_values(runs).tolist(),
                    "n_edges": runs[0].n_edges,
                }
            )
        for level in levels:
            a, b = needs[dense][level], needs[sparse][level]
            paired = a.digest == b.digest and len(a.draws) == len(b.draws)
            if paired:
                ratio = crossings.ratio(a, b)
            else:
                value = a.edges / b.edges if b.reached else math.inf
                ratio = {"ratio": value if math.isfinite(value) else None}
                ratio.update(ci_low=None, ci_high=None, unpaired=True)
            rows.append(
                {
                    "task": task,
                    "ablation": ablation,
                    "method": method,
                    "level": level,
                    "dense": {
                        **a.to_dict(),
                        "text": a.text(),
                        "native": _native_at(*models[dense][0], a.edges),
                    },
                    "sparse": {
                        **b.to_dict(),
                        "text": b.text(),
                        "native": _native_at(*models[sparse][0], b.edges),
                    },
                    "ratio_dense_over_sparse": ratio,
                    "ratio_text": crossings.ratio_text(ratio, a) if b.reached else "-",
                }
            )
    return rows, curves


def headline(rows: Sequence[dict]) -> str:
    table = []
    for r in rows:

        def cell(side):
            native = side.get("native")
            return side["text"] + ("" if native is None else f" ({native} nodes)")

        table.append(
            [
                r["task"],
                r["method"],
                r["level"],
                cell(r["dense"]),
                cell(r["sparse"]),
                r["ratio_text"],
            ]
        )
    headers = ["task", "method", "f >=", "dense: edges [95% CI]", "sparse: edges [95% CI]"]
    headers.append("dense / sparse [95% CI]")
    return tabulate(table, headers=headers, tablefmt="github")


def tally(rows: Sequence[dict]) -> str:
    """How often the sparse model needs fewer, as many, or more edges (where both reach)."""
    lines = []
    for level in sorted({r["level"] for r in rows}):
        part = [r for r in rows if r["level"] == level]
        both = [r for r in part if r["dense"]["reached"] and r["sparse"]["reached"]]
        smaller = sum(r["sparse"]["edges"] < r["dense"]["edges"] for r in both)
        equal = sum(r["sparse"]["edges"] == r["dense"]["edges"] for r in both)
        ratios = [r["dense"]["edges"] / r["sparse"]["edges"] for r in both]
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None
        lines.append(
            f"f>={level}: both models reach it in {len(both)} of {len(part)} (task, method) "
            f"pairs; the sparse model needs fewer edges in {smaller}, as many in {equal}, more "
            f"in {len(both) - smaller - equal}; geometric mean dense/sparse "
            f"{plumbing.fmt(geo)}"
        )
    return "\n".join(lines)


def figures(rows, curves, dense: str, sparse: str, directory: str) -> dict[str, str]:
    plt = plumbing.pyplot()
    out = {}
    if not rows:
        return out
    levels = sorted({r["level"] for r in rows})
    pairs = sorted({(r["task"], r["method"]) for r in rows})
    n_edges = max(c["n_edges"] for c in curves)
    top = n_edges * 1.6
    fig, axes = plt.subplots(
        len(levels), 1, figsize=(max(7, 0.75 * len(pairs) + 2), 3.2 * len(levels)), dpi=100
    )
    axes = [axes] if len(levels) == 1 else axes
    for ax, level in zip(axes, levels):
        for side, (model, color, shift) in enumerate([(dense, "C0", -0.2), (sparse, "C1", 0.2)]):
            key = "dense" if side == 0 else "sparse"
            for i, pair in enumerate(pairs):
                r = next(
                    (x for x in rows if (x["task"], x["method"]) == pair and x["level"] == level),
                    None,
                )
                if r is None:
                    continue
                s = r[key]
                label = model if i == 0 else None
                if s["reached"]:
                    hi = s["ci_high"] if s["ci_high"] is not None else top
                    lo = s["ci_low"] if s["ci_low"] is not None else s["edges"]
                    ax.bar(i + shift, s["edges"], width=0.4, color=color, label=label)
                    ax.errorbar(
                        i + shift,
                        s["edges"],
                        yerr=[[s["edges"] - lo], [hi - s["edges"]]],
                        color="k",
                        lw=0.8,
                        capsize=2,
                    )
                else:
                    ax.bar(i + shift, top, width=0.4, color="none", edgecolor=color, hatch="//")
                    ax.text(i + shift, top, "n.r.", fontsize=6, ha="center", va="bottom")
        ax.set_yscale("log")
        ax.set_ylim(0.8, top * 1.5)
        ax.set_ylabel(f"edges for f >= {level}")
        labels = [f"{t} / {m}" for t, m in pairs]
        ax.set_xticks(range(len(pairs)), labels, fontsize=7, rotation=30, ha="right")
        ax.legend(fontsize=7)
    axes[0].set_title("sparse vs dense: edges needed (hatched: not reached)", fontsize=10)
    fig.tight_layout()
    name = "sparse_vs_dense.png"
    plumbing.save_figure(fig, os.path.join(directory, name))
    out["edges needed, dense vs sparse"] = name

    for task in sorted({c["task"] for c in curves}):
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
        methods = sorted({c["method"] for c in curves if c["task"] == task})
        for j, method in enumerate(methods):
            for c in curves:
                if c["task"] != task or c["method"] != method:
                    continue
                n = c["n_edges"]
                x = [1 / n] + [b / n for b in c["budgets"]] + [1.0]
                y = [0.0] + c["faithfulness"] + [c["faithfulness"][-1]]
                dashed = c["model"] == sparse
                ax.step(
                    x,
                    y,
                    where="post",
                    color=f"C{j}",
                    ls="--" if dashed else "-",
                    lw=1.2,
                    label=f"{method} ({'sparse' if dashed else 'dense'})",
                )
        for level in levels:
            ax.axhline(level, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("edge budget (fraction of the graph; circuits at most the budget)")
        ax.set_ylabel("faithfulness")
        ax.set_title(f"{task}: {dense} (solid) vs {sparse} (dashed)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        name = f"pareto__{plumbing.slug(task)}.png"
        plumbing.save_figure(fig, os.path.join(directory, name))
        out[f"{task}: at-most-budget curves on both models"] = name
    return out


def report(records, directory, dense, sparse, levels=DEFAULT_LEVELS, missing=()) -> dict:
    degenerate: list[str] = []
    rows, curves = summarize(records, dense, sparse, levels, degenerate)
    figs = figures(rows, curves, dense, sparse, directory)
    settings = edges.method_settings(records)
    summary = {
        "method_settings": settings,
        "degenerate": degenerate,
        "study": NAME,
        "dense": dense,
        "sparse": sparse,
        "levels": list(levels),
        "rows": rows,
        "curves": curves,
        "missing": list(missing),
    }
    plumbing.write_summary(directory, NAME, summary)
    lines = [
        "# Weight-sparse vs dense: edges needed for faithfulness",
        "",
        f"Dense `{dense}`, sparse `{sparse}` (same shape, data and edge universe). Edges needed: "
        "the smallest budget whose at-most-budget faithfulness (mean over seeds) reaches the "
        "level, 95% bootstrap interval over test examples; the ratio's interval is paired (both "
        "models are scored on the same examples).",
        "",
        headline(rows),
        "",
        tally(rows),
        "",
    ]
    lines += [f"![{t}]({p})\n" for t, p in figs.items()]
    lines += ["Method settings (from the results):", ""]
    lines += [f"- `{m}`: `{p}`" for m, p in settings.items()] + [""]
    if degenerate:
        lines += ["Left out, degenerate under their ablation:", ""]
        lines += [f"- {k}" for k in degenerate] + [""]
    if missing:
        lines += ["## Cells without a result", ""] + [f"- {m}" for m in missing] + [""]
    plumbing.write_report(directory, "\n".join(lines))
    return summary
