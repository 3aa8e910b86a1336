"""The Ray executor on a real two-node cluster on the loopback address.

The fixture starts a head node and a second node with ``ray start`` (each with its own raylet,
one CPU each), runs sweeps against it with ``--executor ray --address``, and stops exactly the
processes it started (matched by the cluster's own temporary directory), so another Ray on the
machine is left alone. Results must equal the in-process ones (timing, cost and machine aside),
and a sweep whose worker process is killed mid-cell must still complete, nothing lost.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from test_leaderboard_helpers import MARKS_ENV

from circuitboard import cli
from circuitboard.leaderboard import runner, store
from circuitboard.leaderboard.catalog import MethodSpec

ray = pytest.importorskip("ray", reason="the Ray executor tests need Ray: pip install ray")
psutil = pytest.importorskip("psutil")

HELPERS = "test_leaderboard_helpers"
TASK = f"{HELPERS}:tiny_bundle"


def comparable_dir(path) -> dict:
    return {
        os.path.basename(f): store.comparable(store.read_result(f))
        for f in store.result_files(path)
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "ray.scripts.scripts"]


def _stop(temp_dir: str) -> None:
    """Stop the processes of the cluster that lives in ``temp_dir``, and only those."""
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=3)
    for proc in alive:
        proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    temp_dir = tempfile.mkdtemp(prefix="cbray", dir="/tmp")  # short: Ray's socket paths
    marks = tmp_path_factory.mktemp("marks")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    # Token authentication off for this cluster and its driver, explicitly: otherwise Ray turns it
    # on in whichever process finds a ~/.ray/auth_token (any earlier local ray.init writes one),
    # and the head and the driver disagree.
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
        MARKS_ENV: str(marks),
    }
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = [*_ray_command(), "start", "--head", "--port", str(port), "--temp-dir", temp_dir]
    head += ["--include-dashboard", "false", *common]
    worker = [*_ray_command(), "start", "--address", address, *common]
    try:
        for argv in (head, worker):
            subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
        yield address, marks
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth


def _nodes(address: str) -> int:
    ray.init(address=address, log_to_driver=False)
    try:
        return sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_two_node_sweep_equals_in_process(cluster, tmp_path):
    address, _ = cluster
    assert _nodes(address) == 2
    argv = ["run", "--methods", f"{HELPERS}:EdgeEffects", f"{HELPERS}:Oracle", "--tasks", TASK]
    argv += ["--seeds", "2", "--n-boot", "50", "--threads", "1", "--no-render", "--quiet"]
    in_process = ["--executor", "local", "--results", str(tmp_path / "local")]
    assert cli.main(argv + in_process) == 0
    remote = ["--executor", "ray", "--address", address, "--results", str(tmp_path / "ray")]
    assert cli.main(argv + remote) == 0
    local = comparable_dir(tmp_path / "local")
    assert len(local) == 4 and comparable_dir(tmp_path / "ray") == local
    # Nothing else was written by the workers, and no claim is left behind.
    assert sorted(os.listdir(tmp_path / "ray")) == sorted(local)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_nothing_is_lost(cluster, tmp_path):
    address, marks = cluster
    spec = MethodSpec("dies-once", target=f"{HELPERS}:DiesOnce")
    cells = runner.plan([spec], [TASK], 2, n_boot=50, threads=1)
    started = time.perf_counter()
    summary = runner.run(cells, tmp_path / "ray", executor="ray", address=address, progress=False)
    assert summary.ok and len(summary.written) == 2, summary.describe()
    assert sorted(n for n in os.listdir(marks) if n.startswith("died")) == [
        "died-seed0",
        "died-seed1",
    ]
    assert time.perf_counter() - started < 240
    os.environ[MARKS_ENV] = str(marks)  # the local run finds the marks: nobody dies here
    try:
        runner.run(cells, tmp_path / "local", progress=False)
    finally:
        del os.environ[MARKS_ENV]
    assert comparable_dir(tmp_path / "ray") == comparable_dir(tmp_path / "local")
