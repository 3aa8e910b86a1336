"""The committed Tracr ground truths: loading without tracr, data, both checks, published circuits.

Nothing here needs tracr or jax; tests/test_groundtruth_compile.py compiles afresh.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import circuitboard as cb
from circuitboard.groundtruth import derive, names, programs, published, record
from circuitboard.groundtruth import load as load_gt
from circuitboard.groundtruth.data import raw_inputs
from circuitboard.metrics import accuracy, l2

torch.set_flush_denormal(True)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with derive.single_thread():  # tiny models: threads only contend on a shared CPU
        yield


NAMES = names()


@pytest.fixture(scope="module")
def gts():
    return {name: load_gt(name) for name in NAMES}


def test_every_program_is_compiled_and_declared(gts):
    assert len(NAMES) >= 10 and NAMES == list(programs.PROGRAMS)
    for name, gt in gts.items():
        spec = programs.get(name)
        assert gt.model.tracr_info["categorical"] == spec.categorical
        assert gt.model.cfg.causal == spec.causal
        assert gt.model.program["vocab"] == list(spec.vocab)
        assert gt.model.cfg.n_ctx == spec.max_seq_len + 1
        assert gt.model.cfg.normalization is None and gt.model.cfg.act_fn == "relu"
    heads_per_layer = {
        name: max(
            sum(f"a{layer}.h" in n for n in gt.model.graph.live_nodes)
            for layer in range(gt.model.cfg.n_layers)
        )
        for name, gt in gts.items()
    }
    assert heads_per_layer["pattern_abc"] >= 2 and heads_per_layer["pair_balance"] >= 2
    with pytest.raises(KeyError, match="known"):
        programs.get("nope")


def test_loading_imports_neither_jax_nor_tracr():
    code = (
        "import sys, circuitboard as cb, circuitboard.groundtruth as g\n"
        "gt = g.load('reverse'); gt.task; [gt.circuit(k) for k in g.KINDS]\n"
        "cb.load_model('tracr/frac_prevs'); cb.load_task('tracr/sort')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'tracr',"
        " 'haiku'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_registry_hooks():
    assert "tracr/reverse" in cb.MODELS.names() and "tracr/hist" in cb.TASKS.names()
    model = cb.load_model("tracr/reverse")
    assert isinstance(model, cb.PatchableTransformer) and model.tracr_info["categorical"]
    task = cb.load_task("tracr/reverse")
    assert task.name == "tracr/reverse" and task.metric == "l2"
    assert task.positions == "after_bos" and task.categorical
    assert not cb.load_task("tracr/frac_prevs").categorical
    with pytest.raises(KeyError, match="unknown Tracr program"):
        cb.load_model("tracr/nope")


@pytest.mark.parametrize("name", NAMES)
def test_task_data(gts, name):
    gt = gts[name]
    model, task, info = gt.model, gt.task, gt.model.tracr_info
    spec = programs.get(name)
    seen = {"train": set(), "test": set()}
    for split in ("train", "test"):
        for batch in getattr(task, split):
            clean = batch.clean
            assert (clean[:, 0] == info["bos_id"]).all()
            assert not (clean[:, 1:] == info["bos_id"]).any()
            assert not (clean == info["pad_id"]).any()
            assert batch.counterfactual.shape == clean.shape
            if len(clean) > 1:  # a different example of the same length
                assert (batch.counterfactual != clean).any(1).all()
            assert torch.equal(batch.target, model(clean))
            assert torch.equal(l2(model(clean), batch), torch.zeros(len(clean)))
            if spec.categorical:
                assert torch.equal(accuracy(model(clean), batch), torch.ones(len(clean)))
            rows = {tuple(r) for r in clean.tolist()}
            assert len(rows) == len(clean)
            seen[split] |= rows
    assert not seen["train"] & seen["test"]
    everything = set()
    for length in range(1, spec.max_seq_len + 1):
        for seq in raw_inputs(spec.vocab, length, spec.valid):
            ids = [info["input_tokens"].index(t) for t in seq]
            everything.add(tuple([info["bos_id"]] + ids))
    assert seen["train"] | seen["test"] == everything
    assert {b.length for b in task.test} >= {spec.max_seq_len + 1}
    # Deterministic: the same split and counterfactuals again.
    again = load_gt(name).task
    for a, b in zip(task.train + task.test, again.train + again.test):
        assert torch.equal(a.clean, b.clean) and torch.equal(a.counterfactual, b.counterfactual)


def test_sort_unique_inputs_meet_the_precondition(gts):
    for batch in gts["sort_unique"].task.train:
        for row in batch.clean[:, 1:].tolist():
            assert len(set(row)) == len(row)


@pytest.mark.parametrize("name", NAMES)
def test_both_checks_pass_for_every_ground_truth(gts, name):
    gt = gts[name]
    for row in record.run_checks(gt.model, gt.data(), gt.record):
        assert row["sufficient"], (row["kind"], row["outside_effect"])
        assert row["redundant_as_recorded"], (row["kind"], row["redundant"])
        assert row["size"] == row["n_kept"]  # connected from input to logits
    structural = gt.circuit("structural")
    for kind in derive.ABLATIONS:
        assert not (gt.circuit(kind).keep & ~structural.keep).any()
        assert gt.redundant(kind) == []


@pytest.mark.parametrize("name", ["reverse", "pattern_abc", "shuffle_dyck"])
def test_structural_complement_carries_nothing_even_random_values(gts, name):
    """Outside edges ablated with random values in their source's span change no output."""
    gt = gts[name]
    model, keep = gt.model, gt.circuit("structural").keep
    written = derive.written_dims(model).to(model.dtype)
    gen = torch.Generator().manual_seed(0)
    for tokens in gt.data().groups[-2:]:
        n, p = tokens.shape
        noise = torch.randn(n, p, *written.shape, generator=gen) * 10
        ablated = noise * written
        with torch.no_grad(), derive.single_thread():
            clean = model(tokens)
            change = (model(tokens, keep, ablated) - clean)[:, 1:].abs().max()
            # ...while ablating the structural edges with the same values moves outputs.
            moved = (model(tokens, ~keep, ablated) - clean)[:, 1:].abs().max()
        assert change <= derive.TOL
        assert moved > 0.1


def test_structural_edges_carry_the_dims_tracr_built_them_for(gts):
    """Hand-checked against tracr's construction of reverse (categorical_attn, SelectorWidth)."""
    model = gts["reverse"].model
    labels = {
        e: derive.overlap_labels(model, e) for e in gts["reverse"].circuit("structural").edges
    }
    idx = [f"indices:{i}" for i in range(5)]
    # Select(indices, opp_idx, EQ): keys are indices, plus BOS for the default; query adds 'one'.
    assert labels["input->a3.h0<k>"] == idx + ["tokens:BOS"]
    assert labels["input->a3.h0<q>"] == ["one"]
    # Values are the tokens; BOS is declared in the value space but mapped to zero.
    assert labels["input->a3.h0<v>"] == ["tokens:1", "tokens:2", "tokens:3"]
    # length - indices reads indices and 'one'; the query reads only opp_idx-1 values that can
    # equal an index (0..4), not the negative ones the declared space also holds.
    assert labels["input->m1"] == idx + ["one"]
    assert [x.split(":")[1] for x in labels["m2->a3.h0<q>"]] == ["0", "1", "2", "3", "4"]
    assert labels["a3.h0->logits"] == model.tracr_info["output_labels"]
    # SelectorWidth's head attends to BOS and moves only the BOS indicator.
    assert labels["input->a0.h0<v>"] == ["tokens:BOS"]


def test_published_ground_truths_are_reproduced(gts):
    for name, expected in published.ACDC_ZERO.items():
        model = gts[name].model
        ours, _ = derive.functional(model, published.acdc_data(model), "zero")
        assert sorted(ours.edges) == sorted(expected), name
        assert ours.size == len(expected)
    for name, expected in published.AUTO_CIRCUIT_RESAMPLE.items():
        model = gts[name].model
        ours, _ = derive.functional(model, published.auto_circuit_data(model), "counterfactual")
        assert sorted(ours.edges) == sorted(expected), name
    # On our own data (every length, BOS first) the same circuits come out.
    for name in ("reverse", "frac_prevs"):
        assert sorted(gts[name].circuit("zero").edges) == sorted(published.ACDC_ZERO[name])
        assert sorted(gts[name].circuit("resample").edges) == sorted(
            published.AUTO_CIRCUIT_RESAMPLE[name]
        )


def test_acdc_proportion_data_has_no_bos(gts):
    model = gts["frac_prevs"].model
    data = published.acdc_data(model)
    tokens = data.groups[0]
    assert tokens.shape == (256, 4) and not (tokens == model.tracr_info["bos_id"]).any()
    assert published.acdc_data(gts["reverse"].model).groups[0].shape == (6, 4)


def test_circuit_kinds_and_errors(gts):
    gt = gts["reverse"]
    assert [gt.circuit(k).size for k in ("structural", "zero", "resample", "mean")] == [
        len(gt.record["circuits"][k]["edges"]) for k in ("structural", "zero", "resample", "mean")
    ]
    with pytest.raises(ValueError, match="structural, zero, resample, mean"):
        gt.circuit("counterfactual")
    with pytest.raises(FileNotFoundError, match="groundtruth compile"):
        load_gt("not_compiled")
