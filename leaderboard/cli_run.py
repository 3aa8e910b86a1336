"""``circuitboard run``: compute the board, store one result per cell, render and summarise.

Results go to the user's results directory (``./circuitboard-results`` unless ``--results`` or
``$CIRCUITBOARD_RESULTS`` says otherwise), with the tables rendered there too; completed cells
are skipped, so an interrupted run picks up where it stopped. After the run the summary is printed
and every cell is compared with the reference board the package ships
(``leaderboard/results/``): the command says how many reproduced it and names those that did not.
"""

from __future__ import annotations

import sys

from circuitboard.leaderboard import suite
from circuitboard.leaderboard.cli_common import (
    add_executor,
    add_results,
    add_suite,
    parse_params,
    results_and_out,
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="registered names or import paths pkg.mod:Class (default: "
        + ", ".join(suite.DEFAULT_METHODS)
        + "); 'all' for every circuit-finding method ("
        + ", ".join(suite.ALL_METHODS)
        + "; not the oracle or the full-model baselines)",
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter for the methods (repeatable), e.g. --param steps=20",
    )
    add_suite(parser, seeds_default=suite.DEFAULT_SEEDS)
    add_executor(parser, default=suite.DEFAULT_RUN_EXECUTOR)
    add_results(parser)
    parser.add_argument("--no-render", action="store_true", help="do not regenerate the tables")


def main(args) -> int:
    from circuitboard.leaderboard import names as names_module
    from circuitboard.leaderboard import reference, rendering, runner, store, tables
    from circuitboard.leaderboard.catalog import MethodSpec

    results, out = results_and_out(args)
    params = parse_params(args.param)
    methods = None
    if args.methods:
        names = runner.ALL_METHODS if args.methods == ["all"] else args.methods
        methods = [MethodSpec(n, params=params) for n in names]
    elif params:
        methods = [MethodSpec(n, params=params) for n in runner.default_methods()]
    problems = names_module.method_problems([m.name for m in methods or []])
    problems += names_module.task_problems(args.tasks or [])
    if problems:
        for problem in problems:
            print(f"circuitboard run: error: {problem}", file=sys.stderr)
        return 2
    problems: list[str] = []
    cells = runner.plan(
        methods,
        args.tasks,
        args.seeds,
        args.ablation,
        robustness=not args.no_robustness,
        n_boot=args.n_boot,
        device=args.device,
        threads=args.threads,
        problems=problems,
        diagnostics=not args.no_diagnostics,
    )
    for problem in problems:
        print(f"note: {problem}", file=sys.stderr)
    if not cells:
        print("nothing to run: no method or no task available", file=sys.stderr)
        return 1
    try:
        summary = _run(cells, args)
    except ImportError as err:
        print(f"circuitboard run: error: {err}", file=sys.stderr)
        return 2
    print(summary.describe())
    results = store.results_dir(results)
    if not args.no_render:
        written = rendering.render(results, out)
        print(f"tables: {written['markdown']}")
        print()
        print(rendering.summary_text(tables.load_results(results)))
        print()
    stored = [c.key for c in cells if store.stored(c.key, results)]
    print(reference.compare(stored, results).describe())
    return 0 if summary.ok else 1


def _run(cells, args):
    from circuitboard.leaderboard import runner

    return runner.run(
        cells,
        results_and_out(args)[0],
        force=args.force,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        progress=not args.quiet,
    )
