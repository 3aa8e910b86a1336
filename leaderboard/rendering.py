"""Write LEADERBOARD.md, CSVs and Pareto plots from stored results only (no model is run).

Outputs, under ``out`` (default: the results folder itself):

- ``LEADERBOARD.md``: the summary, ground truth per family, per-task tables with plots,
  robustness, and the rules every number follows;
- ``leaderboard.csv``: one row per result (the columns of ``load_results``);
- ``pareto.csv``: every point of every at-most-budget curve;
- ``plots/pareto__TASK__MODEL__ABLATION.png``: the at-most-budget step curve per method
  (faithfulness against the edge budget, mean over seeds; the band is the credited circuit's
  bootstrap 95% interval).

Each file is written atomically (``circuitboard.atomic``) with the user's umask.
"""

from __future__ import annotations

import io
import math
import os

import pandas as pd
from tabulate import tabulate

from circuitboard import atomic, scoring
from circuitboard.leaderboard import store, tables

RULES_NOTE = """\
How to read these tables (the rules live in `circuitboard/scoring.py`):

- **Budgets.** Every method is asked for one circuit per budget of one grid: MIB's ten edge
  fractions on graphs of 1000 edges or more, otherwise distinct integer sizes (every size up to 40
  edges; above, 1..10 and log-spaced sizes). No method is told the ground truth's size.
- **At most the budget.** A point at budget B is the best returned circuit of at most B edges
  after pruning; a circuit over its budget is never credited; if none fits, the empty circuit.
- **Areas.** CPR (area under faithfulness) and CMD (area under |1 - faithfulness|) of that step
  curve on a log axis over [1 edge, all edges], normalised to [0, 1], the empty circuit's value
  below the smallest budget; no extrapolation. `cpr_mib` / `cmd_mib` are MIB's linear-axis values,
  computed as MIB's code does.
- **Ranks.** A paired bootstrap over the test examples (1000 resamples, every method's curve
  recomputed on each): a method ranks above another only if its area is higher by more than
  {margin:g} (the difference promised to reproduce on another machine) in at least 95% of resamples;
  otherwise they share the rank. `wins`: tasks where a method beats every other one.
- **Ground truth.** AUC from the returned circuits (each a point), the same for every method;
  `auc_ranking` is a scoring method's full ranking. F1 at the smallest budget at least the ground
  truth's size; `exact`: a fitting returned circuit equals the ground truth. Programs whose ground
  truth is empty are counted apart.
- **Controls** are beaten only significantly (the same paired test); `n/a` where a control cannot
  apply (shuffled labels for a method that never reads labels).
"""


def render(results=None, out: str | None = None) -> dict[str, str]:
    """Render everything; returns ``{kind: path}`` of what was written."""
    results = store.results_dir(results)
    out = out or results
    df = tables.load_results(results)
    written = {}
    plots = _plots(df, os.path.join(out, "plots"))
    written["markdown"] = atomic.write_text(
        os.path.join(out, "LEADERBOARD.md"), markdown(df, results, plots, out)
    )
    flat = df.drop(columns=["record"])
    written["csv"] = atomic.write_text(
        os.path.join(out, "leaderboard.csv"), flat.to_csv(index=False)
    )
    points = tables.pareto_points(df) if not df.empty else pd.DataFrame()
    written["pareto_csv"] = atomic.write_text(
        os.path.join(out, "pareto.csv"), points.to_csv(index=False)
    )
    for key, path in plots.items():
        written[f"plot {key}"] = path
    return written


# ------------------------------------------------------------------------------ markdown
INTEGER_COLUMNS = ("seeds", "tasks", "forward", "backward", "gt_size")


def _fmt(df: pd.DataFrame, columns: list[str]) -> str:
    shown = df[[c for c in columns if c in df.columns]].copy()
    for col in shown.columns:
        if col in INTEGER_COLUMNS or (col.endswith("_rank") and not col.startswith("mean")):
            shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else int(round(v)))
        elif shown[col].dtype == bool or shown[col].dtype == object:
            shown[col] = shown[col].map(_cell)
    shown = shown.astype(object).where(shown.notna(), None)
    return tabulate(
        shown,
        headers="keys",
        tablefmt="github",
        floatfmt=".3f",
        showindex=False,
        missingval="–",
    )


def _cell(value):
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return value


SUMMARY_COLUMNS = [
    "method",
    "tasks",
    "mean_cpr_rank",
    "mean_cmd_rank",
    "wins",
    "cpr",
    "cmd",
    "seconds",
]
GT_SUMMARY_COLUMNS = [
    "family",
    "method",
    "programs",
    "gt_auc",
    "gt_auc_ranking",
    "gt_f1",
    "exact",
    "empty_gt_recovered",
]


def summary_text(df: pd.DataFrame) -> str:
    """The summary and ground-truth tables, as ``circuitboard run`` prints them."""
    if df.empty:
        return "no results"
    tasks = tables.per_task(df)
    parts = [_fmt(tables.summary(df, tasks), SUMMARY_COLUMNS)]
    by_family = tables.summary(df, tasks, by_family=True)
    if not by_family.empty and by_family["family"].nunique() > 1:
        parts += ["", _fmt(by_family, ["family"] + SUMMARY_COLUMNS)]
    gt = tables.groundtruth_summary(df)
    if not gt.empty:
        parts += ["", _fmt(gt, GT_SUMMARY_COLUMNS)]
    return "\n".join(parts)


def markdown(df: pd.DataFrame, results: str, plots: dict, out: str) -> str:
    skipped = df.attrs.get("skipped", [])
    lines = [
        "# circuitboard leaderboard",
        "",
        f"Rendered by `circuitboard leaderboard` from {len(df)} stored result file(s) in "
        f"`{os.path.relpath(results, out)}/`; nothing is recomputed.",
        "",
        RULES_NOTE.format(margin=scoring.MIN_AREA_DIFFERENCE),
    ]
    if df.empty:
        lines += ["No results yet: run `circuitboard run`.", ""]
    else:
        ranks = tables.rankings(df)
        per_task = tables.per_task(df, ranks)
        lines += ["## Summary", "", _fmt(tables.summary(df, per_task), SUMMARY_COLUMNS), ""]
        by_family = tables.summary(df, per_task, by_family=True)
        if not by_family.empty and by_family["family"].nunique() > 1:
            lines += [
                "By family of tasks (`tracr`: compiled weights, `planted`: weights trained here, "
                "both with a ground truth; `other`: the standard tasks and any task without one):",
                "",
                _fmt(by_family, ["family"] + SUMMARY_COLUMNS),
                "",
            ]
        gt_summary = tables.groundtruth_summary(df)
        if not gt_summary.empty:
            lines += [
                "## Ground truth",
                "",
                "Means over the programs of each family whose ground truth (for the run's "
                "ablation; counterfactual runs are judged by the resample ground truth) is "
                "not empty; programs with an empty ground truth are counted apart.",
                "",
                _fmt(gt_summary, GT_SUMMARY_COLUMNS),
                "",
            ]
        degenerate = per_task[per_task["degenerate"].notna()]
        lines += ["## Tasks", ""]
        for (task, model, ablation), part in per_task.groupby(["task", "model", "ablation"]):
            lines += [f"### {task} (model {model}, {ablation} ablation)", ""]
            if part["degenerate"].notna().all():
                lines += [f"Not ranked: {part['degenerate'].iloc[0]}", ""]
                continue
            plot = plots.get((task, model, ablation))
            if plot:
                lines += [f"![Pareto curve of {task}]({os.path.relpath(plot, out)})", ""]
            lines += [
                _fmt(
                    part,
                    [
                        "method",
                        "seeds",
                        "cpr_rank",
                        "cmd_rank",
                        "cpr",
                        "cpr_sd",
                        "cmd",
                        "cpr_mib",
                        "cmd_mib",
                        "beats",
                        "seconds",
                        "forward",
                        "backward",
                        "peak_mb",
                    ],
                ),
                "",
            ]
        if not degenerate.empty:
            names = sorted({f"{r.task} ({r.ablation})" for r in degenerate.itertuples()})
            lines += [
                "Degenerate (full model = empty circuit), not ranked: " + ", ".join(names),
                "",
            ]
        gt = tables.groundtruth(df)
        if not gt.empty:
            lines += [
                "## Ground truth per program",
                "",
                _fmt(
                    gt,
                    [
                        "family",
                        "task",
                        "method",
                        "ablation",
                        "gt_ablation",
                        "gt_size",
                        "seeds",
                        "auc",
                        "auc_ranking",
                        "precision",
                        "recall",
                        "f1",
                        "f1_budget",
                        "exact",
                        "empty_recovered",
                    ],
                ),
                "",
            ]
        rob = tables.robustness(df)
        if not rob.empty:
            lines += [
                "## Robustness",
                "",
                "`seed_jaccard`: mean edge Jaccard between seeds at equal budget. "
                "`cpr_<ablation>`: the same circuits scored under each ablation. "
                "`cpr_off_distribution`: on the task's off-distribution split. Controls "
                "(scored on the real model and task): random circuits at the same budgets, "
                "the method run on a randomly initialised model, the method run with shuffled "
                "labels; `beats_*` is yes only when the method's CPR is higher in at least 95% "
                "of paired bootstrap resamples, n/a where the control cannot apply.",
                "",
                _fmt(
                    rob,
                    [
                        "task",
                        "method",
                        "ablation",
                        "seed_jaccard",
                        "cpr",
                        "cpr_zero",
                        "cpr_mean",
                        "cpr_resample",
                        "cpr_counterfactual",
                        "cpr_off_distribution",
                        "cpr_random_circuits",
                        "beats_random_circuits",
                        "cpr_random_model",
                        "beats_random_model",
                        "cpr_shuffled_labels",
                        "beats_shuffled_labels",
                    ],
                ),
                "",
            ]
            diag_columns = [
                "task",
                "method",
                "ablation",
                "diagnosed_size",
                "diagnosed_faithfulness",
            ]
            diag_columns += sorted(c for c in rob.columns if c.startswith("eta2_"))
            diag_columns += ["flagged", "self_repair_k1", "self_repair_k2", "self_repair_k4"]
            diag_columns += ["backup_heads", "negative_heads", "median_density"]
            if "diagnosed_size" in rob:
                lines += [
                    "### Diagnostics",
                    "",
                    "On each cell's smallest circuit with faithfulness at least 0.9 (else its "
                    "largest below all edges): `eta2_<grouping>` the share of the per-example "
                    "variance the task's grouping explains, `flagged` whether groups differ "
                    "beyond their intervals; `self_repair_k<k>` the compensation over the direct "
                    "effect after knocking out the circuit's top k heads, whether the model shows "
                    "backup or negative heads; `median_density` the median over the circuit's "
                    "edges of the share of (example, position) pairs that edge alone moves.",
                    "",
                    _fmt(rob[rob["diagnosed_size"].notna()], diag_columns),
                    "",
                ]
    if skipped:
        lines += ["## Skipped result files", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- plots
def _plots(df: pd.DataFrame, directory: str) -> dict:
    """One plot per (task, model, ablation): each method's at-most-budget step curve."""
    if df.empty:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = tables.pareto_points(df)
    if points.empty:
        return {}
    out = {}
    for (task, model, ablation), part in points.groupby(["task", "model", "ablation"]):
        n_edges = int(round(part["budget"].max() / part["budget_fraction"].max()))
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for method, curve in part.groupby("method"):
            c = curve.groupby("budget").mean(numeric_only=True).sort_index()
            # The step function of the rules: the empty circuit (0) below the smallest budget,
            # each budget's value up to the next, the last one to all edges.
            x = [1 / n_edges] + list(c["budget_fraction"]) + [1.0]
            y = [0.0] + list(c["faithfulness"]) + [c["faithfulness"].iloc[-1]]
            line = ax.step(x, y, where="post", label=method, lw=1.2)[0]
            lo = [0.0] + list(c["ci_low"]) + [c["ci_low"].iloc[-1]]
            hi = [0.0] + list(c["ci_high"]) + [c["ci_high"].iloc[-1]]
            ax.fill_between(x, lo, hi, step="post", color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlim(1 / n_edges, 1.0)
        ax.set_xlabel(f"edge budget (fraction of {n_edges} edges; circuits at most the budget)")
        ax.set_ylabel("faithfulness")
        ax.axhline(1.0, color="grey", lw=0.5, ls="--")
        ax.set_title(f"{task} ({ablation})", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = "__".join(store._slug(v) for v in ("pareto", task, model, ablation)) + ".png"
        path = os.path.join(directory, name)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
        atomic.write_bytes(path, buffer.getvalue())
        plt.close(fig)
        out[(task, model, ablation)] = path
    return out
