"""Write LEADERBOARD.md, CSVs and Pareto plots from stored results only (no model is run).

Outputs, under ``out`` (default: the folder holding the results folder, i.e. ``leaderboard/``):

- ``LEADERBOARD.md``: summary ranks, per-task tables with plots, ground truth, robustness;
- ``leaderboard.csv``: one row per result (the columns of ``load_results``);
- ``pareto.csv``: every curve point of every result;
- ``plots/pareto__TASK__MODEL__ABLATION.png``: faithfulness against edge fraction per method
  (mean over seeds at each MIB budget, the band the mean bootstrap 95% interval; a star marks
  the circuit requested at the ground truth's size, which is not a budget point).

Each file is written through a temporary file and a rename.
"""

from __future__ import annotations

import math
import os
import tempfile

import pandas as pd
from tabulate import tabulate

from circuitboard.leaderboard import store, tables
from circuitboard.metrics import LOG_AXIS

RANKING_NOTE = (
    "Ranking follows MIB: within each task, methods are ranked by **CPR** (area under the "
    "signed faithfulness curve, higher is better) and separately by **CMD** (area under "
    "|1 - faithfulness|, lower is better), each the mean over seeds; a method's summary rank is "
    "its mean rank over the tasks it ran. Areas use a log axis over 0.1%..100% of the edges, "
    "normalised to [0, 1]; MIB's linear-axis values are given as `cpr_linear` / `cmd_linear`."
)


def render(results=None, out: str | None = None) -> dict[str, str]:
    """Render everything; returns ``{kind: path}`` of what was written."""
    results = store.results_dir(results)
    out = out or store.output_dir(results)
    df = tables.load_results(results)
    written = {}
    plots = _plots(df, os.path.join(out, "plots"))
    written["markdown"] = _write_text(
        os.path.join(out, "LEADERBOARD.md"), markdown(df, results, plots, out)
    )
    flat = df.drop(columns=["record"])
    written["csv"] = _write_text(os.path.join(out, "leaderboard.csv"), flat.to_csv(index=False))
    points = tables.pareto_points(df) if not df.empty else pd.DataFrame()
    written["pareto_csv"] = _write_text(os.path.join(out, "pareto.csv"), points.to_csv(index=False))
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


def markdown(df: pd.DataFrame, results: str, plots: dict, out: str) -> str:
    skipped = df.attrs.get("skipped", [])
    lines = [
        "# circuitboard leaderboard",
        "",
        f"Rendered by `circuitboard leaderboard` from {len(df)} stored result file(s) in "
        f"`{os.path.relpath(results, out)}/`; nothing is recomputed.",
        "",
        RANKING_NOTE,
        "",
    ]
    if df.empty:
        lines += ["No results yet: run `circuitboard run`.", ""]
    else:
        lines += [
            "## Summary",
            "",
            _fmt(
                tables.summary(df),
                [
                    "method",
                    "tasks",
                    "mean_cpr_rank",
                    "mean_cmd_rank",
                    "cpr",
                    "cmd",
                    "gt_auc",
                    "gt_f1",
                    "exact",
                    "seconds",
                ],
            ),
            "",
        ]
        per_task = tables.per_task(df)
        lines += ["## Tasks", ""]
        for (task, model, ablation), part in per_task.groupby(["task", "model", "ablation"]):
            lines += [f"### {task} (model {model}, {ablation} ablation)", ""]
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
                        "cpr_linear",
                        "cmd_linear",
                        "seconds",
                        "forward",
                        "backward",
                        "peak_mb",
                    ],
                ),
                "",
            ]
        gt = tables.groundtruth(df)
        if not gt.empty:
            lines += [
                "## Ground truth (Tracr programs)",
                "",
                "Against the ground truth of the run's ablation (counterfactual runs are "
                "judged against the resample ground truth). AUC: ROC over the method's "
                "edge ranking (scoring methods) or over its circuits; precision, recall "
                "and F1 of the circuit requested at the ground truth's size; exact: seeds "
                "in which some returned circuit equals the ground truth after pruning.",
                "",
                _fmt(
                    gt,
                    [
                        "task",
                        "method",
                        "ablation",
                        "gt_ablation",
                        "gt_size",
                        "seeds",
                        "auc",
                        "precision",
                        "recall",
                        "f1",
                        "exact",
                    ],
                ),
                "",
            ]
        rob = tables.robustness(df)
        if not rob.empty:
            lines += [
                "## Robustness",
                "",
                "`seed_jaccard`: mean edge Jaccard between seeds at equal budget (below "
                "100%). `cpr_<ablation>`: the same circuits scored under each ablation. "
                "`cpr_off_distribution`: on the task's off-distribution split. Controls "
                "(scored on the real model and task): random circuits at the same "
                "budgets, the method run on a randomly initialised model, the method run "
                "with shuffled labels; `beats_*` is yes when the method's CPR is higher.",
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
    if skipped:
        lines += ["## Skipped result files", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- plots
def _plots(df: pd.DataFrame, directory: str) -> dict:
    """One Pareto plot per (task, model, ablation): mean faithfulness over seeds per budget."""
    if df.empty:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_points = tables.pareto_points(df)
    if all_points.empty:
        return {}
    points = all_points[all_points["role"] == "budget"]
    at_truth = all_points[all_points["role"] == "groundtruth_size"]
    out = {}
    for (task, model, ablation), part in points.groupby(["task", "model", "ablation"]):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        drawn = 0
        for method, curve in part.groupby("method"):
            c = curve.groupby("budget").mean(numeric_only=True).sort_index()
            c = c[c["faithfulness"].notna()]
            if c.empty:  # faithfulness undefined: the full and empty circuits tie on the metric
                continue
            x = c["fraction"].clip(lower=LOG_AXIS[0])
            line = ax.plot(x, c["faithfulness"], marker="o", ms=3, label=method)[0]
            ax.fill_between(x, c["ci_low"], c["ci_high"], color=line.get_color(), alpha=0.15)
            extra = at_truth[
                (at_truth["task"] == task)
                & (at_truth["model"] == model)
                & (at_truth["ablation"] == ablation)
                & (at_truth["method"] == method)
            ]
            if not extra.empty:  # the circuit requested at the ground truth's size
                ax.plot(
                    extra["fraction"].clip(lower=LOG_AXIS[0]).mean(),
                    extra["faithfulness"].mean(),
                    marker="*",
                    ms=9,
                    ls="none",
                    color=line.get_color(),
                )
            drawn += 1
        ax.set_xscale("log")
        ax.set_xlim(*LOG_AXIS)
        ax.set_xlabel("edges kept (fraction, after pruning)")
        ax.set_ylabel("faithfulness")
        ax.axhline(1.0, color="grey", lw=0.5, ls="--")
        title = f"{task} ({ablation})"
        if not drawn:
            title += ": faithfulness undefined (full = empty metric)"
        ax.set_title(title, fontsize=10)
        if drawn:
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = "__".join(store._slug(v) for v in ("pareto", task, model, ablation)) + ".png"
        path = os.path.join(directory, name)
        _save_figure(fig, path)
        plt.close(fig)
        out[(task, model, ablation)] = path
    return out


def _save_figure(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
