"""Arguments that several leaderboard commands share."""

from __future__ import annotations

import json

from circuitboard.leaderboard import suite
from circuitboard.leaderboard.executors import EXECUTORS

# circuitboard.ablation.ABLATIONS, spelled out so that --help needs no torch (a test keeps the
# two equal).
ABLATIONS = ("zero", "mean", "mean-pooled", "resample", "counterfactual")


def add_results(parser) -> None:
    parser.add_argument(
        "--results",
        metavar="DIR",
        help="results directory (default: $CIRCUITBOARD_RESULTS, else ./circuitboard-results)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where LEADERBOARD.md, the CSVs and plots go (default: the results directory)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the reference board shipped in the package: results in leaderboard/results/, "
        "tables in leaderboard/ (for maintainers regenerating it)",
    )


def results_and_out(args) -> tuple[str | None, str | None]:
    """``(results dir, tables dir)`` from ``--results``, ``--out`` and ``--reference``."""
    from circuitboard.leaderboard import store

    if getattr(args, "reference", False):
        if args.results:
            raise ValueError("give --reference or --results, not both")
        return store.REFERENCE_DIR, args.out or store.PACKAGE_DIR
    return args.results, args.out


def add_suite(parser, *, seeds_default: int) -> None:
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="tasks (default: every Tracr and planted program, and the standard tasks on "
        f"{suite.DEFAULT_STANDARD_MODEL}); 'tracr', 'planted' and 'standard' stand for "
        "every Tracr program, every planted program and every standard task on every zoo "
        "model that does it; also an import path pkg.mod:factory",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=seeds_default,
        metavar="N",
        help=f"seeds 0..N-1 (default {seeds_default})",
    )
    parser.add_argument(
        "--ablation",
        nargs="+",
        choices=ABLATIONS,
        metavar="ABLATION",
        help="ablations to run (default: resample for Tracr and planted programs, the "
        "task's counterfactual otherwise); choices: " + ", ".join(ABLATIONS),
    )
    parser.add_argument(
        "--no-robustness",
        action="store_true",
        help="skip the robustness report (other ablations, off-distribution, controls, "
        "diagnostics)",
    )
    parser.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="keep the robustness report but skip its diagnostics (variance by group, "
        "self-repair, token density)",
    )
    parser.add_argument(
        "--n-boot",
        type=int,
        default=1000,
        help="bootstrap draws for faithfulness intervals (default 1000)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per cell (default 1: fastest for small models such as the "
        "Tracr programs, and what Ray workers use anyway; 0 leaves torch's own choice)",
    )
    parser.add_argument(
        "--device", help="run models on this device (e.g. cuda); default: where the model loads"
    )


def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_executor(parser, default: str = "local") -> None:
    parser.add_argument(
        "--force", action="store_true", help="rerun cells that already have a result"
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=default,
        help=f"local (in this process), process (a process pool) or ray (default {default})",
    )
    parser.add_argument("--workers", type=int, help="processes or Ray CPUs (default: all cores)")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_params(items: list[str] | None) -> dict:
    """``key=value`` pairs; values are read as JSON where they parse (3, 0.5, true), else text."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: write parameters as key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
