"""The Ray executor gives exactly the in-process results (timing, cost and machine aside)."""

from __future__ import annotations

import os

import pytest

from circuitboard.leaderboard import runner, store
from circuitboard.leaderboard.catalog import MethodSpec

pytest.importorskip("ray")

HELPERS = "test_leaderboard_helpers"


def comparable_dir(path) -> dict:
    return {
        os.path.basename(f): store.comparable(store.read_result(f))
        for f in store.result_files(path)
    }


def test_ray_sweep_equals_in_process(tmp_path):
    methods = [
        MethodSpec(n, target=f"{HELPERS}:{c}")
        for n, c in [("ee", "EdgeEffects"), ("oracle", "Oracle")]
    ]
    cells = runner.plan(methods, [f"{HELPERS}:tiny_bundle"], 2, n_boot=50, threads=1)
    assert len(cells) == 4
    runner.run(cells, tmp_path / "local", progress=False)
    summary = runner.run(cells, tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert summary.ok, summary.describe()
    local = comparable_dir(tmp_path / "local")
    assert len(local) == 4 and comparable_dir(tmp_path / "ray") == local
    # Nothing else was written by the workers.
    assert sorted(os.listdir(tmp_path / "ray")) == sorted(local)
