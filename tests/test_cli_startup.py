"""A newcomer's first commands answer at once: --help loads no model code."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_the_cli_spells_the_ablations_as_the_engine_does():
    assert cli_common.ABLATIONS == ABLATIONS
