"""``circuitboard validate METHOD``: score a method against every known ground truth.

By default the programs are every Tracr program (compiled weights) and every planted program
(weights trained here by SIIT, ``circuitboard.groundtruth.planted``), shown as two tables with
their own pass counts: a method can recover circuits in compiled weights and miss them in
trained ones, and the verdict should say which.

For each program the method is run once (seed 0 unless ``--seed``) under the ablation (default
``resample``), and its circuits are compared with the ground truth for that ablation. A program
passes when

- the AUC of its circuits' ROC (``circuitboard.scoring``: the same estimator for every method)
  is at least ``--min-auc`` (default 0.9), and
- the F1 of its circuit at the smallest budget of the grid at least the ground truth's size is
  at least ``--min-f1`` (default 0.9); the method is never told that size, and
- with ``--require-exact``, some returned circuit that fits its budget equals the ground truth
  after pruning.

A program whose ground truth is empty (no edge matters under the ablation) has no AUC or F1; it
is reported apart and passes when some returned circuit is empty after pruning.

Nothing is written. Exit status: 0 if every program passes, 1 if one fails or errors, 2 if there
is no program to validate against.
"""

from __future__ import annotations

import sys
import traceback

from circuitboard.leaderboard import catalog
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.cli_common import parse_params

GT_ABLATIONS = ("zero", "resample", "mean", "counterfactual")


def add_arguments(parser) -> None:
    parser.add_argument("method", help="a registered name or an import path pkg.mod:Class")
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter for the method (repeatable)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="programs (default: every Tracr and planted program); also pkg.mod:factory",
    )
    parser.add_argument(
        "--ablation",
        default="resample",
        choices=GT_ABLATIONS,
        help="ablation, and with it the ground truth (default resample; "
        "counterfactual is judged against the resample ground truth)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-auc", type=float, default=0.9)
    parser.add_argument("--min-f1", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--require-exact",
        action="store_true",
        help="also require exact recovery of the ground truth",
    )


def verdict(gt: dict | None, args) -> tuple[bool, str]:
    """``(passed, why)`` for one program's ground-truth scores (``scoring.groundtruth_scores``)."""
    if not gt or "problem" in gt:
        return False, (gt or {}).get("problem", "no ground truth for this ablation")
    if gt.get("empty_truth"):
        note = "empty ground truth (reported apart): judged by returning an empty circuit"
        return gt["recovers_empty"], note if gt["recovers_empty"] else note + ", none returned"
    reasons = []
    if gt.get("auc") is None or gt["auc"] < args.min_auc:
        reasons.append(f"AUC < {args.min_auc}")
    if gt["f1"] < args.min_f1:
        reasons.append(f"F1 at {gt['f1_budget']} edges < {args.min_f1}")
    if args.require_exact and not gt["exact_recovery"]:
        reasons.append("not recovered exactly")
    return not reasons, "; ".join(reasons)


def main(args) -> int:
    from tabulate import tabulate

    from circuitboard.leaderboard.cell import Cell, run_cell
    from circuitboard.leaderboard.runner import expand_tasks

    tasks = expand_tasks(args.tasks) if args.tasks else catalog.groundtruth_names()
    if not tasks:
        print(
            "no Tracr or planted programs available: build them with `circuitboard groundtruth`",
            file=sys.stderr,
        )
        return 2
    spec = MethodSpec(args.method, params=parse_params(args.param))
    try:
        spec.build()  # an unknown method or parameter is a usage error, not a failed program
    except (KeyError, ImportError, TypeError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"circuitboard validate: error: {message}", file=sys.stderr)
        return 2
    print(
        f"validating {args.method} under {args.ablation} ablation, seed {args.seed}; a program "
        f"passes with AUC (of its circuits) >= {args.min_auc} and F1 at the smallest budget at "
        f"least the ground truth's size >= {args.min_f1}"
        + (" and exact recovery" if args.require_exact else "")
    )
    rows, failed = [], 0
    for task in tasks:
        row = {"program": task}
        try:
            model = catalog.task_models(task)[0]
            cell = Cell(
                spec,
                task,
                model,
                args.ablation,
                args.seed,
                robustness=False,
                n_boot=200,
                threads=args.threads,
            )
            gt = run_cell(cell).get("groundtruth")
            passed, why = verdict(gt, args)
            if gt and "problem" not in gt:
                exact = gt.get("exact_recovery")
                row.update(
                    gt_size=gt["size"],
                    auc=gt["auc"],
                    auc_ranking=gt.get("auc_ranking"),
                    f1=gt["f1"],
                    f1_budget=gt.get("f1_budget"),
                    exact="apart" if exact is None else ("yes" if exact else "no"),
                )
        except Exception as err:  # one broken program must not hide the others' verdicts
            passed, why = False, f"error: {err}"
            traceback.print_exc(file=sys.stderr)
        row["result"] = "PASS" if passed else "FAIL"
        row["why"] = why
        failed += not passed
        rows.append(row)
    for family, group in _families(rows):
        print(f"\n{family}:")
        print(tabulate(group, headers="keys", tablefmt="github", floatfmt=".3f", missingval="–"))
        passed = sum(r["result"] == "PASS" for r in group)
        print(f"{family}: {passed}/{len(group)} programs passed")
    print(f"\n{len(rows) - failed}/{len(rows)} programs passed")
    return 1 if failed else 0


def _families(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped as Tracr (compiled weights), planted (trained weights) and other tasks."""
    names = {
        "tracr": "Tracr programs (compiled weights)",
        "planted": "planted programs (trained weights)",
        "none": "other tasks",
    }
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(names[catalog.family(row["program"])], []).append(row)
    return list(groups.items())
