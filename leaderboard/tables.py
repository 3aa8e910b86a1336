"""Stored results -> pandas tables. Reads records only; computes nothing about models.

Ranking follows MIB: within each (task, model, ablation) methods are ranked by CPR (signed
faithfulness area, higher is better) and separately by CMD (area of |1 - f|, lower is better),
each averaged over seeds; a method's summary rank is the mean of its ranks over the tasks it ran.
"""

from __future__ import annotations

import pandas as pd

from circuitboard.leaderboard import scores, store

GROUP = ["task", "model", "ablation", "method"]
CONTROLS = ("random_circuits", "random_model", "shuffled_labels")


def _row(record: dict) -> dict:
    ev = record["evaluation"]
    areas = ev.get("areas") or {}
    gt = record.get("groundtruth") or {}
    cost = record.get("cost") or {}
    env = record.get("environment") or {}
    return {
        **record["key"],
        "cpr": (areas.get("log") or {}).get("cpr"),
        "cmd": (areas.get("log") or {}).get("cmd"),
        "cpr_linear": (areas.get("linear_mib") or {}).get("cpr"),
        "cmd_linear": (areas.get("linear_mib") or {}).get("cmd"),
        "full_metric": ev.get("full_metric"),
        "empty_metric": ev.get("empty_metric"),
        "n_edges_total": ev.get("n_edges_total"),
        "gt_ablation": gt.get("ablation"),
        "gt_size": gt.get("size"),
        "gt_auc": gt.get("auc"),
        "gt_precision": gt.get("precision"),
        "gt_recall": gt.get("recall"),
        "gt_f1": gt.get("f1"),
        "gt_exact": gt.get("exact_recovery"),
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


def frame(records: list[dict], skipped: list | None = None) -> pd.DataFrame:
    columns = list(_row(_EMPTY).keys())
    df = pd.DataFrame([_row(r) for r in records], columns=columns)
    df.attrs["skipped"] = list(skipped or [])
    return df


_EMPTY = {"key": dict.fromkeys(store.KEY_FIELDS), "evaluation": {}}


def load_results(results_dir=None) -> pd.DataFrame:
    """Every stored result as one row; unreadable files are warned about, listed in
    ``df.attrs["skipped"]`` as ``(file name, reason)``, and left out."""
    records, skipped = store.read_all(results_dir)
    return frame(records, skipped)


# ------------------------------------------------------------------------------ tables
def per_task(df: pd.DataFrame) -> pd.DataFrame:
    """Mean (and spread) over seeds for each (task, model, ablation, method)."""
    if df.empty:
        return pd.DataFrame()
    g = df.groupby(GROUP, sort=True)
    out = g.agg(
        seeds=("seed", "nunique"),
        cpr=("cpr", "mean"),
        cpr_sd=("cpr", "std"),
        cmd=("cmd", "mean"),
        cpr_linear=("cpr_linear", "mean"),
        cmd_linear=("cmd_linear", "mean"),
        seconds=("seconds", "mean"),
        forward=("forward", "mean"),
        backward=("backward", "mean"),
        peak_mb=("peak_memory_bytes", lambda s: s.mean() / 2**20),
    ).reset_index()
    keys = ["task", "model", "ablation"]
    out["cpr_rank"] = out.groupby(keys)["cpr"].rank(ascending=False, method="min")
    out["cmd_rank"] = out.groupby(keys)["cmd"].rank(ascending=True, method="min")
    return out.sort_values(keys + ["cpr_rank", "method"]).reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean ranks over tasks, mean areas, ground-truth AUC, exact recoveries."""
    tasks = per_task(df)
    if tasks.empty:
        return pd.DataFrame()
    out = tasks.groupby("method").agg(
        tasks=("task", "count"),
        mean_cpr_rank=("cpr_rank", "mean"),
        mean_cmd_rank=("cmd_rank", "mean"),
        cpr=("cpr", "mean"),
        cmd=("cmd", "mean"),
        seconds=("seconds", "mean"),
    )
    gt = df[df["gt_auc"].notna() | df["gt_exact"].notna()]
    if not gt.empty:
        out["gt_auc"] = gt.groupby("method")["gt_auc"].mean()
        out["gt_f1"] = gt.groupby("method")["gt_f1"].mean()
        exact = gt.groupby("method")["gt_exact"].agg(lambda s: f"{int(s.sum())}/{len(s)}")
        out["exact"] = exact
    out = out.reset_index().sort_values(["mean_cpr_rank", "mean_cmd_rank", "method"])
    return out.reset_index(drop=True)


def groundtruth(df: pd.DataFrame) -> pd.DataFrame:
    """Per program and method: AUC, precision, recall and F1 at the ground truth's size, exact."""
    gt = df[df["gt_size"].notna()]
    if gt.empty:
        return pd.DataFrame()
    out = gt.groupby(GROUP + ["gt_ablation"]).agg(
        seeds=("seed", "nunique"),
        gt_size=("gt_size", "first"),
        auc=("gt_auc", "mean"),
        precision=("gt_precision", "mean"),
        recall=("gt_recall", "mean"),
        f1=("gt_f1", "mean"),
        exact=("gt_exact", lambda s: f"{int(s.fillna(False).sum())}/{len(s)}"),
    )
    return out.reset_index().sort_values(["task", "auc"], ascending=[True, False])


def jaccard_between_seeds(records: list[dict]) -> pd.DataFrame:
    """Mean pairwise edge Jaccard between seeds, per MIB budget below 100%."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        k = r["key"]
        groups.setdefault((k["task"], k["model"], k["ablation"], k["method"]), []).append(r)
    rows = []
    for (task, model, ablation, method), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        n_edges = rs[0]["model"]["n_edges"]
        per_budget: dict[float, list] = {}
        for r in rs:
            for c in r["circuits"]:
                if c["role"] == "budget" and c["budget"] is not None and c["budget"] < 1:
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
    CPR, and each control's CPR with whether the method beats it (means over seeds)."""
    rows = []
    for r in df["record"]:
        rob = r.get("robustness")
        if not rob:
            continue
        row = {**{k: r["key"][k] for k in GROUP}, "cpr": r["evaluation"]["areas"]["log"]["cpr"]}
        for ablation, s in (rob.get("ablations") or {}).items():
            row[f"cpr_{ablation}"] = s.get("cpr")
        off = rob.get("off_distribution")
        row["cpr_off_distribution"] = off.get("cpr") if off else None
        for name in CONTROLS:
            row[f"cpr_{name}"] = (rob.get("controls") or {}).get(name, {}).get("cpr")
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    for col in table.columns.difference(GROUP):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    table = table.groupby(GROUP).mean().reset_index()
    jac = jaccard_between_seeds(list(df["record"]))
    if not jac.empty:
        mean_jac = jac.groupby(GROUP)["jaccard"].mean().rename("seed_jaccard")
        table = table.merge(mean_jac.reset_index(), on=GROUP, how="left")
    else:
        table["seed_jaccard"] = None
    for name in CONTROLS:
        col = f"cpr_{name}"
        if col not in table:
            table[col] = None
        table[f"beats_{name}"] = [
            None if pd.isna(c) else bool(m > c) for m, c in zip(table["cpr"], table[col])
        ]
    return table


def pareto_points(df: pd.DataFrame) -> pd.DataFrame:
    """Every curve point of every result (for the CSV and the plots)."""
    rows = []
    for r in df["record"]:
        for p, c in zip(r["evaluation"]["points"], r["circuits"]):
            rows.append({**r["key"], "role": c["role"], **p})
    return pd.DataFrame(rows)
