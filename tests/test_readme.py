"""The README's two opening commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_main_job_and_the_test_command():
    run, test = readme_commands()[:2]
    assert run.endswith("circuitboard run")
    assert test.endswith("pytest")
    for command in (run, test):
        # The CPU build first, so that no CUDA build of torch is pulled in.
        assert "pip install torch==2.13.0" in command.split("&&")[2]


def test_ci_runs_the_readme_test_command_verbatim():
    test = readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci
