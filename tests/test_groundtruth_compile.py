"""A fresh tracr compile equals the committed cache; so do recomputed ground truths."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("tracr", reason="compiling needs tracr (pip install tracr-pypi)")

from circuitboard.cli import main as cli_main  # noqa: E402
from circuitboard.groundtruth import (  # noqa: E402
    compile_program,
    derive,
    from_model,
    names,
    programs,
    record,
    store,
)
from circuitboard.groundtruth.compile import compile_registered, compiled, describe  # noqa: E402

torch.set_flush_denormal(True)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with derive.single_thread():  # tiny models: threads only contend on a shared CPU
        yield


@pytest.mark.parametrize("name", list(programs.PROGRAMS))
def test_fresh_compile_equals_cache(name):
    fresh = compiled(name)
    cached = store.load_model(name)
    assert fresh.cfg.to_dict() == cached.cfg.to_dict()
    assert fresh.tracr_info == cached.tracr_info
    assert describe(programs.get(name)) == cached.program
    assert store.same_weights(fresh, cached)


def test_labels_do_not_depend_on_earlier_rasp_expressions():
    from tracr.rasp import rasp

    for _ in range(7):  # advance tracr's global counter
        _ = (rasp.tokens == "a").named(None).label
    model = compile_registered(programs.get("length"))
    assert (
        model.tracr_info["residual_labels"]
        == store.load_model("length").tracr_info["residual_labels"]
    )


@pytest.mark.parametrize("name", ["reverse", "frac_prevs_causal", "pattern_abc", "numerical_map"])
def test_recomputed_ground_truths_equal_cache(name):
    """Every program is recomputed by `circuitboard groundtruth check --recompute`; here four."""
    fresh = from_model(compiled(name), programs.get(name).valid)
    cached = store.read_circuits(name)
    assert record.same_circuits(fresh.record, cached) == []
    assert fresh.record["n_inputs"] == cached["n_inputs"]


def test_compile_cli_writes_what_is_committed(tmp_path, capsys):
    assert cli_main(["groundtruth", "compile", "length", "--out", str(tmp_path)]) == 0
    assert "length:" in capsys.readouterr().out
    fresh, committed = store.paths("length", str(tmp_path)), store.paths("length")
    for key in ("model", "circuits"):
        with open(fresh[key]) as f, open(committed[key]) as g:
            assert json.load(f) == json.load(g)
    assert store.same_weights(store.load_model("length", str(tmp_path)), store.load_model("length"))
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in fresh.values())


def test_compile_program_for_a_users_own_program():
    from tracr.rasp import rasp

    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
    program = rasp.numerical(
        rasp.Aggregate(same, rasp.numerical(rasp.tokens == "a"), default=0)
    ).named("share_same_as_a")
    model = compile_program(program, {"a", "b"}, 3, name="mine")
    assert model.program["name"] == "mine" and not model.tracr_info["categorical"]
    gt = from_model(model)
    for kind in record.KINDS:
        circuit = gt.circuit(kind)
        res = derive.check(model, gt.data(), circuit, "zero" if kind == "structural" else kind)
        assert res.sufficient
    with pytest.raises(ValueError, match="BOS"):
        compile_program(program, {"a", "BOS"}, 3)
    with pytest.raises(TypeError, match="RASP SOp"):
        compile_program("tokens", {"a"}, 3)


def test_check_cli_passes(capsys):
    assert cli_main(["groundtruth", "check", "reverse", "frac_prevs"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("PASS") >= 2 * 2 * 4 + 4
    assert "all checks pass" in out
    assert names() == list(programs.PROGRAMS)
