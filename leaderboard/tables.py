"""Stored results -> pandas tables. Reads records only; computes nothing about models.

Every verdict in these tables (ranks, wins, control tests, ground-truth scores) comes from
``circuitboard.scoring``; this module only gathers stored records and calls it:

- ``per_task``: per (task, model, ablation, method), areas averaged over seeds and the ranks of
  ``scoring.rank`` (a paired bootstrap over the test examples, ties shared), by CPR and by CMD;
- ``summary``: per method, its mean ranks over the tasks it ran, the tasks it wins significantly,
  mean areas and cost;
- ``groundtruth`` and ``groundtruth_summary``: scores against ground truth per program and per
  family of programs (``tracr/``, ``planted/``), with programs whose ground truth is empty kept
  apart;
- ``robustness``: seed Jaccard, other ablations, off-distribution, controls, and the
  diagnostics of one circuit per cell (variance by group, self-repair, token density).
"""

from __future__ import annotations

import warnings

import pandas as pd

from circuitboard import scoring
from circuitboard.leaderboard import catalog, scores, store

GROUP = ["task", "model", "ablation", "method"]
TASK = ["task", "model", "ablation"]
CONTROLS = ("random_circuits", "random_model", "shuffled_labels")


family = catalog.family  # which kind of ground truth a task has


def _row(record: dict) -> dict:
    ev = record.get("evaluation") or {}
    areas = ev.get("areas") or {}
    gt = record.get("groundtruth") or {}
    cost = record.get("cost") or {}
    env = record.get("environment") or {}
    return {
        **record["key"],
        "degenerate": ev.get("degenerate"),
        "cpr": areas.get("cpr"),
        "cmd": areas.get("cmd"),
        "cpr_mib": areas.get("cpr_mib"),
        "cmd_mib": areas.get("cmd_mib"),
        "full_metric": ev.get("full_metric"),
        "empty_metric": ev.get("empty_metric"),
        "n_edges_total": (record.get("model") or {}).get("n_edges"),
        "gt_ablation": gt.get("ablation"),
        "gt_size": gt.get("size"),
        "gt_empty": gt.get("empty_truth"),
        "gt_auc": gt.get("auc"),
        "gt_auc_ranking": gt.get("auc_ranking"),
        "gt_precision": gt.get("precision"),
        "gt_recall": gt.get("recall"),
        "gt_f1": gt.get("f1"),
        "gt_f1_budget": gt.get("f1_budget"),
        "gt_exact": gt.get("exact_recovery"),
        "gt_recovers_empty": gt.get("recovers_empty"),
        "seconds": cost.get("seconds"),
        "peak_memory_bytes": cost.get("peak_memory_bytes"),
        "forward": cost.get("forward"),
        "backward": cost.get("backward"),
        "device": env.get("device"),
        "git_commit": (env.get("git") or {}).get("commit"),
        "created": record.get("created"),
        "file": record.get("_file"),
        "record": record,
    }


_EMPTY = {"key": dict.fromkeys(store.KEY_FIELDS), "evaluation": {}}


def frame(records: list[dict], skipped: list | None = None) -> pd.DataFrame:
    columns = list(_row(_EMPTY).keys())
    df = pd.DataFrame([_row(r) for r in records], columns=columns)
    df.attrs["skipped"] = list(skipped or [])
    return df


def load_results(results_dir=None) -> pd.DataFrame:
    """Every stored result as one row; unreadable files are warned about, listed in
    ``df.attrs["skipped"]`` as ``(file name, reason)``, and left out."""
    records, skipped = store.read_all(results_dir)
    return frame(records, skipped)


# ------------------------------------------------------------------------------ ranks
def rankings(df: pd.DataFrame) -> dict[tuple, dict[str, scoring.Ranking]]:
    """``{(task, model, ablation): {"cpr": Ranking, "cmd": Ranking}}`` over the stored
    per-example data of every non-degenerate result (``scoring.rank``)."""
    out = {}
    if df.empty:
        return out
    for key, part in df[df["degenerate"].isna()].groupby(TASK, sort=True):
        groups: dict[str, list] = {}
        for method, rows in part.groupby("method", sort=True):
            data = []
            for record in rows["record"]:
                packed = (record.get("evaluation") or {}).get("per_example")
                if packed is None:
                    continue
                try:
                    data.append(scores.unpack_per_example(packed))
                except ValueError as err:
                    warnings.warn(
                        f"{record.get('_file')}: {err}; left out of the ranks", stacklevel=2
                    )
            if data:
                groups[method] = data
        if not groups:
            continue
        try:
            out[key] = {area: scoring.rank(groups, area) for area in scoring.CRITERIA}
        except ValueError as err:  # results made on different test examples
            warnings.warn(f"{' | '.join(map(str, key))}: {err}; not ranked", stacklevel=2)
    return out


# ------------------------------------------------------------------------------ tables
def per_task(df: pd.DataFrame, ranks: dict | None = None) -> pd.DataFrame:
    """Mean (and spread) over seeds for each (task, model, ablation, method), with ranks."""
    if df.empty:
        return pd.DataFrame()
    ranks = rankings(df) if ranks is None else ranks
    g = df.groupby(GROUP, sort=True)
    out = g.agg(
        seeds=("seed", "nunique"),
        cpr=("cpr", "mean"),
        cpr_sd=("cpr", "std"),
        cmd=("cmd", "mean"),
        cpr_mib=("cpr_mib", "mean"),
        cmd_mib=("cmd_mib", "mean"),
        seconds=("seconds", "mean"),
        forward=("forward", "mean"),
        backward=("backward", "mean"),
        peak_mb=("peak_memory_bytes", lambda s: s.mean() / 2**20),
        degenerate=("degenerate", "first"),
    ).reset_index()
    cpr_rank, cmd_rank, wins, beats = [], [], [], []
    for row in out.itertuples():
        r = ranks.get((row.task, row.model, row.ablation))
        if r is None or row.method not in r["cpr"].rank:
            cpr_rank.append(None)
            cmd_rank.append(None)
            wins.append(None)
            beats.append("")
            continue
        cpr_rank.append(r["cpr"].rank[row.method])
        cmd_rank.append(r["cmd"].rank[row.method])
        wins.append(r["cpr"].wins(row.method))
        beats.append(", ".join(r["cpr"].beats[row.method]))
    out["cpr_rank"], out["cmd_rank"] = cpr_rank, cmd_rank
    out["wins"], out["beats"] = wins, beats
    out = out.sort_values(TASK + ["cpr_rank", "method"], na_position="last")
    return out.reset_index(drop=True)


def summary(
    df: pd.DataFrame, tasks: pd.DataFrame | None = None, by_family: bool = False
) -> pd.DataFrame:
    """One row per method (per family of tasks and method with ``by_family``): mean ranks over
    the tasks it was ranked on, significant wins, mean areas and time. Degenerate tasks are left
    out of the ranks and the means. Families: ``tracr`` and ``planted`` (compiled and trained
    ground truths) and ``other`` (the standard tasks and any task without a ground truth): a
    method can lead on compiled weights and trail on trained ones, which one mean hides."""
    tasks = per_task(df) if tasks is None else tasks
    if tasks.empty:
        return pd.DataFrame()
    ranked = tasks[tasks["cpr_rank"].notna()].copy()
    if ranked.empty:
        return pd.DataFrame()
    ranked["wins"] = ranked["wins"].astype(bool)
    keys = ["method"]
    if by_family:
        ranked["family"] = ranked["task"].map(lambda t: family(t).replace("none", "other"))
        keys = ["family", "method"]
    out = ranked.groupby(keys).agg(
        tasks=("task", "count"),
        mean_cpr_rank=("cpr_rank", "mean"),
        mean_cmd_rank=("cmd_rank", "mean"),
        wins=("wins", "sum"),
        cpr=("cpr", "mean"),
        cmd=("cmd", "mean"),
        seconds=("seconds", "mean"),
    )
    order = keys[:-1] + ["mean_cpr_rank", "mean_cmd_rank", "method"]
    out = out.reset_index().sort_values(order)
    return out.reset_index(drop=True)


def groundtruth(df: pd.DataFrame) -> pd.DataFrame:
    """Per program and method: AUC (from circuits, and of the ranking), precision, recall and F1
    at the smallest budget at least the ground truth's size, exact recovery (seeds)."""
    gt = df[df["gt_size"].notna()]
    if gt.empty:
        return pd.DataFrame()
    out = gt.groupby(GROUP + ["gt_ablation"]).agg(
        seeds=("seed", "nunique"),
        gt_size=("gt_size", "first"),
        auc=("gt_auc", "mean"),
        auc_ranking=("gt_auc_ranking", "mean"),
        precision=("gt_precision", "mean"),
        recall=("gt_recall", "mean"),
        f1=("gt_f1", "mean"),
        f1_budget=("gt_f1_budget", "first"),
        exact=("gt_exact", lambda s: _count(s)),
        empty_recovered=("gt_recovers_empty", lambda s: _count(s)),
    )
    out = out.reset_index()
    out.insert(0, "family", out["task"].map(family))
    return out.sort_values(["family", "task", "auc"], ascending=[True, True, False])


def _count(values: pd.Series) -> str | None:
    """``"k/n"`` of the non-missing booleans, or None if all are missing."""
    known = values.dropna()
    if known.empty:
        return None
    return f"{int(known.astype(bool).sum())}/{len(known)}"


def groundtruth_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per family of ground truths and method: means over the programs with a non-empty ground
    truth, exact recoveries among them, and the empty-ground-truth programs apart."""
    gt = df[df["gt_size"].notna()].copy()
    if gt.empty:
        return pd.DataFrame()
    gt["family"] = gt["task"].map(family)
    rows = []
    for (fam, method), part in gt.groupby(["family", "method"], sort=True):
        full = part[part["gt_empty"] != True]  # noqa: E712 (None means unknown, kept)
        empty = part[part["gt_empty"] == True]  # noqa: E712
        rows.append(
            {
                "family": fam,
                "method": method,
                "programs": full["task"].nunique(),
                "gt_auc": full["gt_auc"].mean(),
                "gt_auc_ranking": full["gt_auc_ranking"].mean(),
                "gt_f1": full["gt_f1"].mean(),
                "exact": _count(full["gt_exact"]),
                "empty_gt_recovered": _count(empty["gt_recovers_empty"]),
            }
        )
    out = pd.DataFrame(rows)
    return out.sort_values(["family", "gt_auc", "method"], ascending=[True, False, True])


def jaccard_between_seeds(records: list[dict]) -> pd.DataFrame:
    """Mean pairwise edge Jaccard between seeds, per budget below all edges."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        k = r["key"]
        groups.setdefault((k["task"], k["model"], k["ablation"], k["method"]), []).append(r)
    rows = []
    for (task, model, ablation, method), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        n_edges = rs[0]["model"]["n_edges"]
        per_budget: dict[int, list] = {}
        for r in rs:
            for c in r["circuits"]:
                if c.get("budget") is not None and c["budget"] < n_edges:
                    keep = scores.unpack(c["edges"], n_edges)
                    per_budget.setdefault(c["budget"], []).append(keep)
        for budget, keeps in sorted(per_budget.items()):
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "ablation": ablation,
                    "method": method,
                    "budget": budget,
                    "jaccard": scores.mean_pairwise_jaccard(keeps),
                }
            )
    return pd.DataFrame(rows, columns=GROUP + ["budget", "jaccard"])


def robustness(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, ablation, method): seed Jaccard, CPR under each ablation, off-distribution
    CPR, each control's CPR, and whether the method beats it significantly (``yes``/``no`` with
    one seed, ``k/n`` seeds with several; ``n/a`` where the control cannot apply)."""
    rows = []
    for r in df["record"]:
        rob = r.get("robustness")
        if not rob:
            continue
        areas = (r.get("evaluation") or {}).get("areas") or {}
        row = {**{k: r["key"][k] for k in GROUP}, "cpr": areas.get("cpr")}
        for ablation, s in (rob.get("ablations") or {}).items():
            row[f"cpr_{ablation}"] = s.get("cpr")
        off = rob.get("off_distribution")
        row["cpr_off_distribution"] = off.get("cpr") if off else None
        diag = rob.get("diagnostics") or {}
        if "circuit" in diag:
            row["diagnosed_size"] = diag.get("size")
            for part in ("variance", "self_repair", "token_density"):
                for column, value in ((diag.get(part) or {}).get("summary") or {}).items():
                    if column == "faithfulness" or column == "std":
                        column = f"diagnosed_{column}"
                    row[column] = value
        for name in CONTROLS:
            control = (rob.get("controls") or {}).get(name) or {}
            row[f"cpr_{name}"] = control.get("cpr")
            if control.get("applicable") is False:
                row[f"beats_{name}"] = "n/a"
            else:
                row[f"beats_{name}"] = control.get("beats")
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    flags = [c for c in ("flagged", "backup_heads", "negative_heads") if c in table]
    numeric = [
        c for c in table.columns if c not in GROUP and not c.startswith("beats_") and c not in flags
    ]
    for col in numeric:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    agg = {c: "mean" for c in numeric}
    agg.update({f"beats_{n}": _verdicts for n in CONTROLS if f"beats_{n}" in table})
    agg.update({c: _verdicts for c in flags})
    table = table.groupby(GROUP).agg(agg).reset_index()
    jac = jaccard_between_seeds(list(df["record"]))
    if not jac.empty:
        mean_jac = jac.groupby(GROUP)["jaccard"].mean().rename("seed_jaccard")
        table = table.merge(mean_jac.reset_index(), on=GROUP, how="left")
    else:
        table["seed_jaccard"] = None
    return table


def _verdicts(values: pd.Series) -> str | None:
    """One control's verdicts over seeds: ``yes``/``no``/``n/a``, or ``k/n`` seeds that beat it."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and pd.isna(v))]
    if not values:
        return None
    if all(v == "n/a" for v in values):
        return "n/a"
    known = [bool(v) for v in values if v != "n/a"]
    if len(known) == 1:
        return "yes" if known[0] else "no"
    return f"{sum(known)}/{len(known)}"


def pareto_points(df: pd.DataFrame) -> pd.DataFrame:
    """Every point of every result's at-most-budget curve (for the CSV and the plots)."""
    rows = []
    for r in df["record"]:
        ev = r.get("evaluation") or {}
        n_edges = (r.get("model") or {}).get("n_edges") or ev.get("n_edges_total")
        points = ev.get("points") or []
        for p in ev.get("curve") or []:
            credited = p.get("credited")
            ci = points[credited] if credited is not None and credited < len(points) else {}
            rows.append(
                {
                    **r["key"],
                    "budget": p["budget"],
                    "budget_fraction": p["budget"] / n_edges if n_edges else None,
                    "size": p["size"],
                    "own_size": p.get("own_size"),
                    "own_fits": p.get("own_fits"),
                    "faithfulness": p["faithfulness"],
                    "ci_low": ci.get("ci_low", 0.0),
                    "ci_high": ci.get("ci_high", 0.0),
                }
            )
    return pd.DataFrame(rows)
