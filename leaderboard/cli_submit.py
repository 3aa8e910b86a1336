"""``circuitboard submit SPEC --name NAME``: validate a submission, run the suite, store, render.

SPEC is code (``pkg.module:Class``, or an entry-point name in the group ``circuitboard.methods``)
or data (a graph JSON file with ``--task``, or a manifest; see ``submission``). Everything is
validated before anything runs, and every problem is reported; a malformed submission writes
nothing. Results are written only when every cell of the suite succeeded.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from circuitboard.leaderboard import catalog, names, store, suite
from circuitboard.leaderboard.catalog import MethodSpec
from circuitboard.leaderboard.cli_common import (
    add_executor,
    add_results,
    add_suite,
    parse_params,
)

ENTRY_POINT_GROUP = "circuitboard.methods"


def add_arguments(parser) -> None:
    parser.add_argument(
        "spec",
        metavar="SPEC",
        help="pkg.module:Class, an entry-point name, a graph JSON file (with "
        '--task) or a manifest {"tasks": {TASK: file}}',
    )
    parser.add_argument("--name", required=True, help="the name results and tables use")
    parser.add_argument("--task", help="the task a single graph JSON file belongs to")
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter for a code submission (repeatable)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace results stored under NAME by another submission",
    )
    add_suite(parser, seeds_default=suite.DEFAULT_SEEDS)
    add_executor(parser, default=suite.DEFAULT_RUN_EXECUTOR)
    add_results(parser)


def is_data(spec: str) -> bool:
    return spec.endswith(".json") or os.path.exists(spec)


def registered_names() -> list[str]:
    import circuitboard as cb

    try:
        return list(cb.method_names())
    except ImportError:
        return []


def code_spec(spec: str, name: str, params: dict) -> tuple[MethodSpec | None, list[str]]:
    """Build the method once to check it: importable, constructible, has find_circuits."""
    if ":" not in spec:
        eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if spec not in eps:
            return None, [
                f"{spec!r} is neither a file, nor an import path 'pkg.module:Class', nor an "
                f"entry point in the group {ENTRY_POINT_GROUP!r}"
            ]
        spec = eps[spec].value
    method_spec = MethodSpec(name, target=spec, params=params)
    try:
        method = method_spec.build()
    except Exception as err:
        return None, [f"cannot build {spec!r}: {type(err).__name__}: {err}"]
    if not callable(getattr(method, "find_circuits", None)):
        return None, [
            f"{spec!r} has no find_circuits(model, task, sizes, ablation, seed); see the "
            f"Method interface in circuitboard.methods.base (and the README's 'Methods')"
        ]
    return method_spec, []


def data_cells(args, name: str) -> tuple[list, list[str]]:
    """Validate every graph file of a data submission, then plan its cells (seed 0).

    Each file is checked against its task's graph (the model's shape only: no task data is
    generated) before anything else is loaded, so a malformed file is refused at once.
    """
    from circuitboard.leaderboard import submission
    from circuitboard.leaderboard.cell import Cell

    if args.task:
        problems = names.task_problems([args.task]) + submission.check_file(args.spec)
        manifest = {args.task: args.spec}
    else:
        manifest, problems = submission.read_manifest(args.spec)
        if manifest is not None:
            problems += names.task_problems(list(manifest))
    if problems:
        return [], problems
    validated, problems = [], []
    for task, path in manifest.items():
        try:
            model = catalog.task_models(task)[0]
            graph = catalog.model_graph(task, model)
        except Exception as err:
            problems.append(f"task {task!r}: cannot load its model ({err})")
            continue
        submitted, found = submission.load_data(path, graph, task)
        problems += found
        if submitted is not None:
            validated.append((task, model, submitted))
    if problems:
        return [], problems
    cells = []
    for task, model, submitted in validated:
        spec = MethodSpec(name, target="data", data=submitted)
        ablations = args.ablation or [catalog.default_ablation(catalog.load_bundle(task, model))]
        for ablation in ablations:
            cells.append(
                Cell(
                    spec,
                    task,
                    model,
                    ablation,
                    0,
                    not args.no_robustness,
                    args.n_boot,
                    args.device,
                    args.threads,
                    not args.no_diagnostics,
                )
            )
    return cells, []


def previous(name: str, results) -> list[dict]:
    records, _ = store.read_all(results)
    return [r for r in records if r["key"]["method"] == name]


def main(args) -> int:
    from circuitboard.leaderboard import rendering, runner
    from circuitboard.leaderboard.submission import SubmissionError, check_name

    name = args.name
    problems = check_name(name, registered_names())
    try:
        params = parse_params(args.param)
    except ValueError as err:
        problems.append(str(err))
        params = {}
    if is_data(args.spec):
        if params:
            problems.append("--param applies to code submissions only")
        cells, found = data_cells(args, name)
        problems += found
    else:
        spec, found = code_spec(args.spec, name, params)
        problems += found + names.task_problems(args.tasks or [])
        cells = []
        if spec is not None and not problems:
            cells = runner.plan(
                [spec],
                args.tasks,
                args.seeds,
                args.ablation,
                robustness=not args.no_robustness,
                n_boot=args.n_boot,
                device=args.device,
                threads=args.threads,
                diagnostics=not args.no_diagnostics,
            )
    old = previous(name, args.results)
    if old and not args.replace:
        stale = [r for r in old if not _same_submission(r, cells)]
        if stale:
            problems.append(
                f"results named {name!r} from a different submission are stored already "
                f"({len(stale)} file(s)); choose another --name or pass --replace"
            )
    if not cells and not problems:
        problems.append("the suite is empty: no task to run the submission on")
    if problems:
        print(SubmissionError(problems), file=sys.stderr)
        return 2
    summary = runner.run(
        cells,
        args.results,
        force=args.replace or args.force,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        progress=not args.quiet,
        atomic=True,
    )
    print(summary.describe())
    if not summary.ok:
        print("the suite failed; nothing was written", file=sys.stderr)
        return 1
    if args.replace:
        keep = {os.path.basename(p) for p in summary.written} | {c.key.filename() for c in cells}
        for r in old:
            if r["_file"] not in keep:
                os.unlink(os.path.join(store.results_dir(args.results), r["_file"]))
    written = rendering.render(args.results, args.out)
    print(f"submitted {name!r}: {len(summary.written)} result(s); tables: {written['markdown']}")
    return 0


def _same_submission(record: dict, cells: list) -> bool:
    """Whether a stored result comes from this submission (same code and parameters, or the
    same data file contents), so that resubmitting resumes instead of clashing."""
    stored = record["method"]
    for cell in cells:
        spec = cell.method
        if spec.data is not None:
            if (stored.get("submission") or {}).get("sha256") == spec.data.sha256:
                return True
        elif stored.get("target") == spec.target and all(
            stored.get("params", {}).get(k) == v for k, v in store.json_safe(spec.params).items()
        ):
            return True
    return False
