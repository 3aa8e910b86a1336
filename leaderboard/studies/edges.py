"""``edges-for-faithfulness``: the edges each method needs to reach a faithfulness level.

Bhaskar et al. (2024) claim that Edge Pruning needs far fewer edges than ACDC or EAP for the
same faithfulness. This study reads that comparison off the board: for every method and task
(and model and ablation), the edges needed to reach each level (default 0.8, 0.9, 0.95) by
rule 7 of ``circuitboard.scoring`` (the smallest budget whose at-most-budget faithfulness
reaches the level; "not reached" when none does, never a number), the fraction of the graph
that is, a bootstrap interval over test examples, and each method's count over the best
method's count with a paired interval (``crossings``).

Its cells are board cells: by default the study reads the reference board shipped in the
package (nothing is computed); ``--board DIR`` reads another results directory; ``--methods``
/ ``--tasks`` run those cells into the study's directory first (resumable, as ``run``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from tabulate import tabulate

from circuitboard import scoring
from circuitboard.leaderboard import runner, store
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.studies import crossings, defaults, plumbing

NAME = defaults.EDGES_NAME
DEFAULT_LEVELS = defaults.EDGES_LEVELS


def plan(
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: int = 1,
    ablations: Sequence[str] | None = None,
    *,
    params: dict | None = None,
    n_boot: int = 1000,
    threads: int | None = 1,
    problems: list[str] | None = None,
):
    """Board cells for the study (no robustness controls: only the curves are read)."""
    names = methods or runner.default_methods()
    specs = [MethodSpec(m, params=plumbing.method_params(m, params)) for m in names]
    return runner.plan(
        specs,
        tasks,
        seeds,
        ablations,
        robustness=False,
        n_boot=n_boot,
        threads=threads,
        problems=problems,
    )


def groups_of(records: Sequence[dict], degenerate: list | None = None) -> dict:
    """``{(task, model, ablation): {method: [PerExample per seed]}}``. A result whose task is
    degenerate under its ablation has no curve: it is named in ``degenerate`` instead."""
    out: dict[tuple, dict[str, list]] = {}
    for r in sorted(records, key=lambda r: (r["key"]["method"], r["key"]["seed"])):
        data = crossings.per_example(r)
        if data is None:
            if degenerate is not None:
                degenerate.append(store.Key.from_dict(r["key"]))
            continue
        k = r["key"]
        out.setdefault((k["task"], k["model"], k["ablation"]), {}).setdefault(
            k["method"], []
        ).append(data)
    return out


def summarize(
    records: Sequence[dict],
    levels: Sequence[float],
    n_boot: int = scoring.N_BOOT,
    degenerate: list | None = None,
):
    """One row per (task, model, ablation, method, level)."""
    rows = []
    for (task, model, ablation), methods in sorted(groups_of(records, degenerate).items()):
        needs = {m: crossings.edges_needed(runs, levels, n_boot) for m, runs in methods.items()}
        for level in levels:
            reached = {m: n[level] for m, n in needs.items() if n[level].reached}
            best_edges = min((n.edges for n in reached.values()), default=math.inf)
            best = sorted(m for m, n in reached.items() if n.edges == best_edges)
            for method in sorted(methods):
                need = needs[method][level]
                ratio = crossings.ratio(need, needs[best[0]][level]) if best else None
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "ablation": ablation,
                        "method": method,
                        "n_seeds": len(methods[method]),
                        **need.to_dict(),
                        "text": need.text(),
                        "best": method in best,
                        "best_methods": best,
                        "ratio_to_best": ratio,
                        "ratio_text": "-" if ratio is None else crossings.ratio_text(ratio, need),
                    }
                )
    return rows


def wins(rows: Sequence[dict], levels: Sequence[float]) -> dict[float, dict[str, int]]:
    """Per level, how many (task, model, ablation) groups each method needs the fewest edges in
    (ties count for each tied method), out of the groups where some method reached it."""
    out = {}
    for level in levels:
        counts: dict[str, int] = {}
        for r in rows:
            if r["level"] == level:
                counts.setdefault(r["method"], 0)
                counts[r["method"]] += int(r["best"])
        out[level] = counts
    return out


def headline(rows: Sequence[dict], levels: Sequence[float]) -> str:
    table = {}
    for r in rows:
        key = (r["task"], r["model"], r["ablation"], r["method"])
        entry = table.setdefault(key, list(key))
        fraction = "" if r["fraction"] is None else f" ({r['fraction']:.1%})"
        mark = " *" if r["best"] else ""
        entry.append(f"{r['text']}{fraction}{mark}")
        entry.append(r["ratio_text"])
    headers = ["task", "model", "ablation", "method"]
    for level in levels:
        headers += [f"edges for f>={level} [95% CI]", f"x best ({level})"]
    return tabulate(list(table.values()), headers=headers, tablefmt="github")


def wins_text(rows, levels) -> str:
    lines = []
    for level, counts in wins(rows, levels).items():
        groups = len({(r["task"], r["model"], r["ablation"]) for r in rows if r["level"] == level})
        reached = len(
            {
                (r["task"], r["model"], r["ablation"])
                for r in rows
                if r["level"] == level and r["best"]
            }
        )
        parts = ", ".join(f"{m} {c}" for m, c in sorted(counts.items(), key=lambda x: -x[1]))
        lines.append(
            f"fewest edges for f>={level} ({reached} of {groups} tasks reached by some method): "
            f"{parts}"
        )
    return "\n".join(lines)


def figure(rows: Sequence[dict], levels: Sequence[float], directory: str) -> str | None:
    """One panel per level: edges needed per task and method (log axis), 95% intervals;
    a method that does not reach the level is drawn as an open marker at the top, "n.r."."""
    if not rows:
        return None
    plt = plumbing.pyplot()
    groups = sorted({(r["task"], r["model"], r["ablation"]) for r in rows})
    methods = sorted({r["method"] for r in rows})
    width = max(6.0, 0.55 * len(groups) * max(1, len(methods)) / 2)
    fig, axes = plt.subplots(len(levels), 1, figsize=(width, 2.8 * len(levels)), dpi=100)
    axes = [axes] if len(levels) == 1 else axes
    top = max(r["n_edges"] for r in rows) * 1.6
    for ax, level in zip(axes, levels):
        for j, method in enumerate(methods):
            offset = (j - (len(methods) - 1) / 2) * 0.8 / max(1, len(methods))
            for i, g in enumerate(groups):
                row = next(
                    (
                        r
                        for r in rows
                        if (r["task"], r["model"], r["ablation"]) == g
                        and r["method"] == method
                        and r["level"] == level
                    ),
                    None,
                )
                if row is None:
                    continue
                x = i + offset
                color = f"C{j}"
                label = method if i == 0 else None
                if row["reached"]:
                    hi = row["ci_high"] if row["ci_high"] is not None else top
                    lo = row["ci_low"] if row["ci_low"] is not None else row["edges"]
                    ax.errorbar(
                        x,
                        row["edges"],
                        yerr=[[row["edges"] - lo], [hi - row["edges"]]],
                        fmt="o",
                        color=color,
                        ms=4,
                        capsize=2,
                        label=label,
                    )
                else:
                    ax.plot(x, top, marker="v", mfc="none", color=color, ms=5, label=label)
        ax.set_yscale("log")
        ax.set_ylim(0.8, top * 1.3)
        ax.axhline(top, color="grey", lw=0.4, ls=":")
        ax.text(len(groups) - 0.5, top, "not reached", fontsize=6, va="bottom", ha="right")
        ax.set_xticks(range(len(groups)), [_short(g) for g in groups], rotation=35, ha="right")
        ax.set_ylabel(f"edges for f >= {level}")
        ax.tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=7, ncol=min(len(methods), 6))
    axes[0].set_title("edges needed to reach a faithfulness level (at-most-budget curve)")
    fig.tight_layout()
    name = "edges_for_faithfulness.png"
    plumbing.save_figure(fig, os.path.join(directory, name))
    return name


def _short(group) -> str:
    task, model, ablation = group
    return task if task == model else f"{task} ({model.split('/')[-1]})"


def report(
    records: Sequence[dict],
    directory: str,
    levels: Sequence[float] = DEFAULT_LEVELS,
    *,
    source: str,
    missing: Sequence[str] = (),
    n_boot: int = scoring.N_BOOT,
) -> dict:
    """Summary JSON, REPORT.md and the figure, from board records."""
    degenerate: list = []
    rows = summarize(records, levels, n_boot, degenerate)
    fig = figure(rows, levels, directory)
    settings = method_settings(records)
    summary = {
        "study": NAME,
        "source": source,
        "levels": list(levels),
        "rows": rows,
        "wins": {str(k): v for k, v in wins(rows, levels).items()},
        "method_settings": settings,
        "degenerate": [str(k) for k in degenerate],
        "missing": list(missing),
    }
    plumbing.write_summary(directory, NAME, summary)
    lines = [
        "# Edges needed to reach a faithfulness level",
        "",
        f"Results: {source}. For each method, the smallest budget whose at-most-budget "
        "faithfulness (mean over seeds) reaches the level, with its fraction of the graph and a "
        f"95% bootstrap interval over test examples ({n_boot} resamples); 'not reached' where no "
        "budget reaches it. `x best`: the method's count over the best method's (`*`), with a "
        "paired interval.",
        "",
        headline(rows, levels),
        "",
        wins_text(rows, levels),
        "",
    ]
    if fig:
        lines += [f"![edges for faithfulness]({fig})", ""]
    lines += ["Method settings (from the results):", ""]
    lines += [f"- `{m}`: `{p}`" for m, p in settings.items()] + [""]
    if degenerate:
        lines += [
            "Left out, degenerate under their ablation (the full model and the empty "
            "circuit score the same, so faithfulness is undefined):",
            "",
        ]
        lines += [f"- {k}" for k in degenerate] + [""]
    if missing:
        lines += ["## Cells without a result", ""] + [f"- {m}" for m in missing] + [""]
    plumbing.write_report(directory, "\n".join(lines))
    return summary


def method_settings(records: Sequence[dict]) -> dict[str, dict]:
    """Each method's parameters as its results record them (one entry per distinct setting)."""
    out: dict[str, dict] = {}
    for r in records:
        name, params = r["key"]["method"], (r.get("method") or {}).get("params", {})
        if name in out and out[name] != params:
            name = f"{name} ({len([k for k in out if k.startswith(name)])})"
        out.setdefault(name, params)
    return out


def board_source(board: str | None) -> str:
    """``reference`` (or None) is the board shipped in the package."""
    return store.REFERENCE_DIR if board in (None, "reference") else board
