"""A newcomer's first commands answer at once: --help loads no model code."""

from __future__ import annotations

import subprocess
import sys

import pytest

import circuitboard as cb
from circuitboard import tasks
from circuitboard.ablation import ABLATIONS
from circuitboard.leaderboard import cli_common

PROBE = """
import sys
from circuitboard import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformer_lens", "pandas", "matplotlib") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["leaderboard", "--help"],
        ["validate", "--help"],
        ["submit", "--help"],
        ["methods"],
    ],  # fmt: skip
)
def test_help_and_listings_import_no_model_code(argv):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    ).stdout
    assert "HEAVY=\n" in out, out


def _run(argv: list[str]) -> tuple[list[str], str]:
    """The command's output lines, and the heavy modules it imported."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    ).stdout
    *lines, heavy = out.splitlines()
    return lines, heavy


def test_models_lists_the_registry_without_model_code():
    lines, heavy = _run(["models"])
    assert heavy == "HEAVY=", lines
    assert lines == cb.MODELS.names()


def test_tasks_lists_the_registry_and_catalog_without_model_code():
    lines, heavy = _run(["tasks"])
    assert heavy == "HEAVY=", lines
    rows = [line.split() for line in lines[2:]]  # below the table's header and rule
    assert {r[0] for r in rows} == {n.removeprefix("std/") for n in cb.TASKS.names()}
    catalog = [(r["task"], r["model"]) for r in tasks.catalog()]
    assert [(r[0], r[1]) for r in rows if len(r) > 1] == catalog


def test_the_cli_spells_the_ablations_as_the_engine_does():
    assert cli_common.ABLATIONS == ABLATIONS
