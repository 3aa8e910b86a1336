"""The ``circuitboard`` command.

Each command group lives with the part it drives and is imported only when used:
``groundtruth`` -> ``circuitboard.groundtruth.cli``, ``zoo`` -> ``circuitboard.tasks.cli``,
``run``/``leaderboard``/``submit``/``validate`` -> ``circuitboard.leaderboard.cli``. A group module
exposes ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys

from circuitboard.registry import import_object

# command -> (module path, one-line help). The module provides add_arguments and main.
COMMANDS = {
    "models": ("circuitboard.cli_lists:models", "list registered models"),
    "tasks": ("circuitboard.cli_lists:tasks", "list registered tasks"),
    "methods": ("circuitboard.cli_lists:methods", "list registered methods"),
    "groundtruth": ("circuitboard.groundtruth.cli", "Tracr and planted ground truths"),
    "zoo": ("circuitboard.tasks.cli", "train and inspect the model zoo"),
    "run": ("circuitboard.leaderboard.cli_run", "run methods on tasks and store results"),
    "leaderboard": ("circuitboard.leaderboard.cli_render", "render tables and plots"),
    "submit": ("circuitboard.leaderboard.cli_submit", "submit a method (code or JSON)"),
    "validate": ("circuitboard.leaderboard.cli_validate", "score a method against ground truths"),
    "study": ("circuitboard.leaderboard.studies.cli", "run a study of many cells"),
}


def _command_module(path: str):
    if ":" in path:
        return import_object(path)
    import importlib

    return importlib.import_module(path)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``chosen`` command's module is imported (for its arguments), so
    ``circuitboard --help`` imports no model code at all."""
    parser = argparse.ArgumentParser(
        prog="circuitboard",
        description="Benchmark circuit-finding methods on one edge universe.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (path, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _command_module(path)
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is not None and chosen not in COMMANDS:
        chosen = None  # argparse names the unknown command
    try:
        parser = build_parser(chosen)
    except ImportError as err:
        print(f"circuitboard {chosen}: error: this command needs a part not installed: {err}")
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._main(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"circuitboard {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
