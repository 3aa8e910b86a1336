"""``circuitboard study NAME [options]``: run a study, write its report, print its headline.

    circuitboard study seeds [--methods node-pruning] [--models zoo/toy-lm] [--seeds 100]
    circuitboard study sparse-vs-dense [--methods eap acdc] [--tasks ioi]
    circuitboard study edges-for-faithfulness [--board DIR | --methods ... --tasks ...]

Every study writes under ``--out`` (default ``./circuitboard-studies/NAME``): ``cells/`` (raw
records, one per unit; an interrupted study resumes from them), ``NAME.json``, ``REPORT.md`` and
PNG figures. ``--executor process|ray`` spreads the units over workers with identical results.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from circuitboard.leaderboard.cli_common import ABLATIONS, add_executor, parse_params, positive_int
from circuitboard.leaderboard.studies import defaults


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a faithfulness level lies in (0, 1], got {value}")
    return value


def _common(p) -> None:
    p.add_argument(
        "--out", metavar="DIR", help="study directory (default ./circuitboard-studies/NAME)"
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a method parameter (repeatable): KEY=VALUE for every method, METHOD.KEY=VALUE "
        "for one, e.g. --param edge-pruning.steps=300",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per unit (default 1; 0: torch's)"
    )
    add_executor(p)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="study", metavar="NAME")

    p = sub.add_parser(
        "seeds",
        help="the seed population on and off distribution (Drori)",
        description=defaults.SEEDS_DESCRIPTION,
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(defaults.SEEDS_METHODS),
        metavar="METHOD",
        help="default: " + ", ".join(defaults.SEEDS_METHODS) + " (with the study's settings, "
        "seeds.STUDY_PARAMS, unless --param overrides them)",
    )
    p.add_argument(
        "--task", default=defaults.SEEDS_TASK, help="a task with an off-distribution split"
    )
    p.add_argument(
        "--models", nargs="+", metavar="MODEL", help="default: " + ", ".join(defaults.SEEDS_MODELS)
    )
    p.add_argument("--seeds", type=positive_int, default=defaults.SEEDS_COUNT, metavar="N")
    p.add_argument(
        "--ablations", nargs="+", choices=ABLATIONS, default=list(defaults.SEEDS_ABLATIONS)
    )
    p.add_argument(
        "--target",
        type=_level,
        default=defaults.SEEDS_TARGET,
        help="training faithfulness a seed's circuit must reach to be kept (default "
        f"{defaults.SEEDS_TARGET})",
    )
    p.add_argument(
        "--train-fraction",
        type=_level,
        default=defaults.SEEDS_TRAIN_FRACTION,
        help="share of the training data in each seed's seeded subsample (default "
        f"{defaults.SEEDS_TRAIN_FRACTION})",
    )
    p.add_argument(
        "--budgets", nargs="+", type=int, metavar="K", help="edge budgets (default: the grid)"
    )
    _common(p)
    p.set_defaults(_study=_seeds)

    p = sub.add_parser(
        "sparse-vs-dense",
        help="edges needed for faithfulness in a weight-sparse vs a dense model (Gao et al.)",
        description=defaults.SPARSE_DENSE_DESCRIPTION,
    )
    p.add_argument("--methods", nargs="+", metavar="METHOD", help="default: every method")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="default: every task both solve")
    p.add_argument("--dense", default=defaults.SPARSE_DENSE_DENSE)
    p.add_argument("--sparse", default=defaults.SPARSE_DENSE_SPARSE)
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N")
    p.add_argument("--ablation", choices=ABLATIONS, help="default: the task's counterfactual")
    p.add_argument("--levels", nargs="+", type=_level, default=list(defaults.SPARSE_DENSE_LEVELS))
    _common(p)
    p.set_defaults(_study=_sparse_dense)

    p = sub.add_parser(
        "edges-for-faithfulness",
        help="edges each method needs to reach a faithfulness level (Bhaskar et al.)",
        description=defaults.EDGES_DESCRIPTION,
    )
    p.add_argument(
        "--board",
        metavar="DIR",
        help="report on every result in this results directory ('reference': the board shipped "
        "in the package; the default when neither --methods nor --tasks is given)",
    )
    p.add_argument("--methods", nargs="+", metavar="METHOD", help="run these cells first")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="run these cells first")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N")
    p.add_argument("--ablation", nargs="+", choices=ABLATIONS)
    p.add_argument("--levels", nargs="+", type=_level, default=list(defaults.EDGES_LEVELS))
    _common(p)
    p.set_defaults(_study=_edges)


def main(args) -> int:
    if getattr(args, "study", None) is None:
        print(
            "circuitboard study: name a study: "
            + ", ".join(["seeds", "sparse-vs-dense", "edges-for-faithfulness"]),
            file=sys.stderr,
        )
        return 2
    return args._study(args)


def _options(args) -> dict:
    return {
        "force": args.force,
        "executor": args.executor,
        "workers": args.workers,
        "address": args.address,
        "progress": not args.quiet,
    }


def _check_names(methods, tasks) -> list[str]:
    from circuitboard.leaderboard import names as names_module

    return names_module.method_problems(list(methods or [])) + names_module.task_problems(
        list(tasks or [])
    )


def _fail(problems) -> int:
    for problem in problems:
        print(f"circuitboard study: error: {problem}", file=sys.stderr)
    return 2


def _seeds(args) -> int:
    from circuitboard.leaderboard.studies import plumbing, seeds

    problems = _check_names(args.methods, [args.task])
    if problems:
        return _fail(problems)
    units = seeds.plan(
        args.methods,
        args.task,
        args.models,
        args.seeds,
        args.ablations,
        target=args.target,
        train_fraction=args.train_fraction,
        params=parse_params(args.param),
        budgets=args.budgets,
        n_boot=args.n_boot,
        threads=args.threads or None,
    )
    directory = plumbing.study_dir(seeds.NAME, args.out)
    ran, summary = seeds.run(units, directory, **_options(args))
    print(ran.describe())
    print(seeds.headline(summary["rows"]))
    print(f"report: {directory}/REPORT.md")
    return 0 if ran.ok else 1


def _sparse_dense(args) -> int:
    from circuitboard.leaderboard.studies import plumbing, sparse_dense

    problems = _check_names(args.methods, args.tasks)
    if problems:
        return _fail(problems)
    cells = sparse_dense.plan(
        args.methods,
        args.tasks,
        args.dense,
        args.sparse,
        args.seeds,
        args.ablation,
        params=parse_params(args.param),
        n_boot=args.n_boot,
        threads=args.threads or None,
    )
    if not cells:
        print(f"no task is solved by both {args.dense} and {args.sparse}", file=sys.stderr)
        return 1
    directory = plumbing.study_dir(sparse_dense.NAME, args.out)
    results = plumbing.cells_dir(directory)
    ran = plumbing.run_board_cells(cells, results, **_options(args))
    records, missing = plumbing.board_records(cells, results)
    summary = sparse_dense.report(records, directory, args.dense, args.sparse, args.levels, missing)
    print(ran.describe())
    print(sparse_dense.headline(summary["rows"]))
    print(sparse_dense.tally(summary["rows"]))
    print(f"report: {directory}/REPORT.md")
    return 0 if ran.ok else 1


def _edges(args) -> int:
    from circuitboard.leaderboard import store
    from circuitboard.leaderboard.studies import edges, plumbing

    directory = plumbing.study_dir(edges.NAME, args.out)
    if args.methods or args.tasks:
        if args.board:
            return _fail(
                ["give --board (report stored results) or --methods/--tasks (run cells), not both"]
            )
        problems = _check_names(args.methods, args.tasks)
        if problems:
            return _fail(problems)
        plan_problems: list[str] = []
        cells = edges.plan(
            args.methods,
            args.tasks,
            args.seeds,
            args.ablation,
            params=parse_params(args.param),
            n_boot=args.n_boot,
            threads=args.threads or None,
            problems=plan_problems,
        )
        for problem in plan_problems:
            print(f"note: {problem}", file=sys.stderr)
        results = plumbing.cells_dir(directory)
        ran = plumbing.run_board_cells(cells, results, **_options(args))
        print(ran.describe())
        records, missing = plumbing.board_records(cells, results)
        source = results
        ok = ran.ok
    else:
        source = edges.board_source(args.board)
        with warnings.catch_warnings():  # each skipped file is listed in the report instead
            warnings.simplefilter("ignore")
            records, skipped = store.read_all(source)
        missing = [f"{name}: {why}" for name, why in skipped]
        if skipped:
            print(
                f"note: {len(skipped)} result files in {source} are unusable and left out "
                f"(first: {missing[0]})",
                file=sys.stderr,
            )
        ok = True
    if not records:
        return _fail([f"no results to report in {source}"])
    summary = edges.report(
        records, directory, args.levels, source=source, missing=missing, n_boot=args.n_boot
    )
    print(edges.headline(summary["rows"], args.levels))
    print(edges.wins_text(summary["rows"], args.levels))
    print(f"report: {directory}/REPORT.md")
    return 0 if ok else 1
