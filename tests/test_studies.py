"""The ``seeds`` study on a hand-built planted model with two circuits.

The planted pronoun model (one layer, two heads, one MLP, no LayerNorm) answers "he" or "she"
for a prompt ``[R, O, ?]`` by the gender of the name ``R``. Head 0 ("good") reads the gender at
position 0 (``R``) and writes ``+3 g(R)``; head 1 ("bad") reads position 1 (``O``) and writes
``-1.5 g(O)``; the MLP clips their sum to [-1, 1] and the unembedding turns it into the logit
difference, so the full model answers right on every prompt (``s = 3 g(R) - 1.5 g(O)`` has the
sign of ``g(R)``). On opposite-gender prompts (train and test) either head alone gives the same
answer (``g(O) = -g(R)``); on same-gender prompts (the off-distribution split) only the good
head does: the bad head alone says the opposite pronoun, faithfulness -1. Under mean ablation
(per position) a removed query or key still selects its position, so each circuit is three
edges: ``input -> head <v>``, ``head -> m0``, ``m0 -> logits``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from circuitboard.graph import Circuit
from circuitboard.leaderboard import catalog, scores
from circuitboard.leaderboard.studies import plumbing, seeds
from circuitboard.model import ModelConfig, PatchableTransformer
from circuitboard.task import Batch, Task

MALE, FEMALE, QUERY, HE, SHE = (0, 1, 2), (3, 4, 5), 6, 7, 8
GOOD = {"input->a0.h0<v>", "a0.h0->m0", "m0->logits"}
BAD = {"input->a0.h1<v>", "a0.h1->m0", "m0->logits"}
TASK = "test_studies:planted"


def planted_model() -> PatchableTransformer:
    cfg = ModelConfig(
        n_layers=1,
        n_heads=2,
        d_model=6,
        d_head=1,
        d_mlp=4,
        d_vocab=9,
        n_ctx=3,
        normalization=None,
        act_fn="relu",
        name="planted-pronoun",
    )
    model = PatchableTransformer(cfg)
    # residual: 0 gender (+1 male), 1-3 position one-hot, 4 the heads' sum s, 5 clip(s, -1, 1)
    with torch.no_grad():
        for t in MALE:
            model.embed.W_E[t, 0] = 1.0
        for t in FEMALE:
            model.embed.W_E[t, 0] = -1.0
        for p in range(3):
            model.pos_embed.W_pos[p, 1 + p] = 1.0
        attn = model.blocks[0].attn
        for head, (position, weight) in enumerate([(0, 3.0), (1, -1.5)]):
            attn.W_Q[head, 3, 0] = 1.0  # the last position asks
            attn.W_K[head, 1 + position, 0] = 20.0  # ... for this position
            attn.W_V[head, 0, 0] = 1.0  # and reads its gender
            attn.W_O[head, 0, 4] = weight
        mlp = model.blocks[0].mlp
        mlp.W_in[4] = torch.tensor([1.0, 1.0, -1.0, -1.0])
        mlp.b_in[:] = torch.tensor([0.0, -1.0, 0.0, -1.0])
        mlp.W_out[:, 5] = torch.tensor([1.0, -1.0, -1.0, 1.0])  # relu(s)-relu(s-1)-relu(-s)+...
        model.unembed.W_U[5, HE] = 1.0
        model.unembed.W_U[5, SHE] = -1.0
    return model.eval()


def pronoun_batch(same_gender: bool, n: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    rows, swapped, answer, distractor = [], [], [], []
    for _ in range(n):
        male = bool(torch.randint(2, (1,), generator=gen))
        own, other = (MALE, FEMALE) if male else (FEMALE, MALE)
        right = own[int(torch.randint(3, (1,), generator=gen))]
        pool = own if same_gender else other
        wrong = pool[int(torch.randint(3, (1,), generator=gen))]
        flip = other[int(torch.randint(3, (1,), generator=gen))]
        rows.append([right, wrong, QUERY])
        swapped.append([flip, wrong, QUERY])
        answer.append(HE if male else SHE)
        distractor.append(SHE if male else HE)
    t = torch.tensor
    return Batch(t(rows), t(swapped), t(answer), t(distractor))


class Planted:
    def __init__(self) -> None:
        self.model = planted_model()
        self.model_name = "planted-pronoun"
        self.task = Task(
            "planted-pronoun",
            train=[pronoun_batch(False, 64, 1)],
            test=[pronoun_batch(False, 64, 2)],
            off_distribution=[pronoun_batch(True, 64, 3)],
            metric="logit_diff",
            models=("planted-pronoun",),
        )


def planted() -> Planted:
    return Planted()


def edge_names(record: dict, graph) -> set[str]:
    keep = scores.unpack(record["circuit"]["edges"], graph.n_edges)
    return {graph.edge_names[i] for i in torch.nonzero(keep).flatten().tolist()}


# ---------------------------------------------------------------------------- the model
def test_planted_model_has_the_two_circuits_it_was_built_with():
    bundle = planted()
    model, task = bundle.model, bundle.task
    from circuitboard.evaluate import evaluate

    for edges, off in ((GOOD, 1.0), (BAD, -1.0)):
        circuit = Circuit.from_edges(model.graph, sorted(edges))
        on_ev = evaluate(model, task, [circuit], "mean", budgets=[3], n_boot=10)
        off_ev = evaluate(model, task, [circuit], "mean", budgets=[3], split="off_distribution")
        assert on_ev.points[0].faithfulness == pytest.approx(1.0, abs=0.05)
        assert off_ev.points[0].faithfulness == pytest.approx(off, abs=0.05)


def test_two_way_probability_is_the_softmax_over_answer_and_distractor():
    bundle = planted()
    batch = bundle.task.test[0]
    with torch.no_grad():
        logits = bundle.model(batch.clean)[:, -1].double() + torch.linspace(0, 1, 9)  # not 0/1
    pair = torch.stack(
        [
            logits.gather(1, batch.answer[:, None])[:, 0],
            logits.gather(1, batch.distractor[:, None])[:, 0],
        ],
        1,
    )
    expected = torch.softmax(pair, dim=1)[:, 0]
    diff = pair[:, 0] - pair[:, 1]
    torch.testing.assert_close(seeds.two_way_probability(diff), expected)


# ---------------------------------------------------------------------- seeded train data
def test_seeded_train_is_a_seeded_subsample_of_each_batch():
    task = planted().task
    a = seeds.seeded_train(task, 3, 0.25)
    again = seeds.seeded_train(task, 3, 0.25)
    other = seeds.seeded_train(task, 4, 0.25)
    assert a.n_examples("train") == 16 and a.test is task.test
    assert a.off_distribution is task.off_distribution
    assert torch.equal(a.train[0].clean, again.train[0].clean)
    assert not torch.equal(a.train[0].clean, other.train[0].clean)
    rows = {tuple(r) for r in task.train[0].clean.tolist()}
    assert all(tuple(r) in rows for r in a.train[0].clean.tolist())
    everything = seeds.seeded_train(task, 3, 1.0)  # a permutation of all of it
    assert sorted(everything.train[0].clean.tolist()) == sorted(task.train[0].clean.tolist())
    with pytest.raises(ValueError, match="train_fraction"):
        seeds.seeded_train(task, 0, 0.0)


# ------------------------------------------------------------------------- the study
def test_seeds_study_finds_both_circuits_and_counts_them(tmp_path):
    units = seeds.plan(
        ["node-pruning"],
        TASK,
        seeds=10,
        ablations=["mean"],
        params={"steps": 50},
        train_fraction=0.5,
        n_boot=50,
    )
    ran, summary = seeds.run(units, str(tmp_path), progress=False)
    assert ran.ok and len(ran.written) == 10
    graph = catalog.load_bundle(TASK).model.graph
    records, missing = seeds.records_for(units, plumbing.cells_dir(str(tmp_path)))
    assert not missing
    kept = [r for r in records if r["selection"]["kept"]]
    # By hand: a kept circuit with the good head's path is right off distribution; one with
    # only the bad head's path says the opposite pronoun there (faithfulness -1).
    good = [r["unit"]["seed"] for r in kept if GOOD <= edge_names(r, graph)]
    bad = [
        r["unit"]["seed"]
        for r in kept
        if BAD <= edge_names(r, graph) and not GOOD <= edge_names(r, graph)
    ]
    assert good and bad, "the study should find both kinds of circuit across seeds"
    for r in kept:
        expected = -1.0 if r["unit"]["seed"] in bad else 1.0
        assert r["on"]["faithfulness"] >= seeds.FAITHFUL_ON
        assert r["off"]["faithfulness"] == pytest.approx(expected, abs=0.1)
    (row,) = summary["rows"]
    assert row["n_seeds"] == 10 and row["n_kept"] == len(kept)
    assert row["faithful_on_not_off_seeds"] == sorted(bad)
    assert row["n_faithful_on_not_off"] == len(bad)
    assert row["share_faithful_on_not_off"] == pytest.approx(len(bad) / len(kept))
    assert row["kept_seeds"] == sorted(good + bad)
    # the report's files
    text = (tmp_path / "REPORT.md").read_text()
    assert f"{len(bad)}/{len(kept)}" in text
    assert (tmp_path / "histograms__node-pruning__planted-pronoun.png").stat().st_size > 1000
    assert json.loads((tmp_path / "seeds.json").read_text())["rows"][0]["n_kept"] == len(kept)


def finished(directory) -> list[str]:
    """The finished records in a cells folder (claims and temporaries start with a dot)."""
    return [n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")]


def _volatile_free(summary: dict) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(summary)


def _units(n_seeds: int = 4):
    return seeds.plan(["eap"], TASK, seeds=n_seeds, ablations=["mean", "zero"], n_boot=50)


def test_seeds_study_same_seed_same_results_and_resumes_after_interrupt(tmp_path, monkeypatch):
    fresh, _ = str(tmp_path / "fresh"), None
    _, first = seeds.run(_units(), fresh, progress=False)
    records = {
        u.key: seeds.comparable(
            plumbing.stored_record(
                u.key, plumbing.cells_dir(fresh), seeds.SCHEMA, seeds.SCHEMA_VERSION
            )
        )
        for u in _units()
    }

    # An interrupted study: the third unit is stopped as Ctrl-C stops it.
    broken = str(tmp_path / "broken")
    real, calls = seeds.run_seed, []

    def interrupted(unit, progress=None):
        calls.append(unit.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(unit, progress)

    monkeypatch.setattr(seeds, "run_seed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seeds.run(_units(), broken, progress=False)
    monkeypatch.setattr(seeds, "run_seed", real)
    assert len(finished(plumbing.cells_dir(broken))) == 2
    ran, resumed = seeds.run(_units(), broken, progress=False)
    assert ran.skipped == 2 and len(ran.written) == len(_units()) - 2
    assert _volatile_free(resumed) == _volatile_free(first)
    for u in _units():
        again = plumbing.stored_record(
            u.key, plumbing.cells_dir(broken), seeds.SCHEMA, seeds.SCHEMA_VERSION
        )
        assert seeds.comparable(again) == records[u.key]


def test_method_params_apply_to_every_method_or_to_one():
    params = {"steps": 5, "edge-pruning.per_size": True, "node-pruning.lam": 0.1}
    assert plumbing.method_params("edge-pruning", params) == {"steps": 5, "per_size": True}
    assert plumbing.method_params("eap", params) == {"steps": 5}
    (unit,) = seeds.plan(["node-pruning"], TASK, seeds=1, ablations=["mean"], params=params)
    assert unit.method.params == {"steps": 5, "lam": 0.1}  # over the study's own steps


def test_seeds_refuses_a_task_without_an_off_distribution_split():
    with pytest.raises(ValueError, match="off-distribution"):
        seeds.plan(["eap"], "tracr/reverse", seeds=1)


@pytest.mark.slow
def test_killed_seeds_study_resumes_with_the_same_report(tmp_path):
    """SIGKILL a study run by the command mid-way; the rerun computes only what is missing
    and its report equals an uninterrupted one's."""
    args = ["--task", TASK, "--methods", "node-pruning", "--ablations", "mean"]
    args += ["--seeds", "8", "--param", "steps=30", "--n-boot", "50", "--quiet"]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__)] + sys.path))
    cmd = [sys.executable, "-m", "circuitboard.cli", "study", "seeds", *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cells = killed / "cells"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = finished(cells) if cells.exists() else []
        if len(done) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = len(finished(cells))
    assert 2 <= before < 8
    units = seeds.plan(
        ["node-pruning"], TASK, seeds=8, ablations=["mean"], params={"steps": 30}, n_boot=50
    )
    ran, resumed = seeds.run(units, str(killed), progress=False)
    assert ran.skipped == before and len(ran.written) == 8 - before
    _, fresh = seeds.run(units, str(tmp_path / "fresh"), progress=False)
    assert _volatile_free(resumed) == _volatile_free(fresh)


@pytest.mark.slow
def test_process_executor_gives_the_local_results(tmp_path):
    units = _units(2)
    seeds.run(units, str(tmp_path / "local"), progress=False)
    ran, _ = seeds.run(units, str(tmp_path / "pool"), executor="process", workers=2, progress=False)
    assert ran.ok
    for u in units:
        a = plumbing.stored_record(u.key, str(tmp_path / "local" / "cells"), seeds.SCHEMA, 1)
        b = plumbing.stored_record(u.key, str(tmp_path / "pool" / "cells"), seeds.SCHEMA, 1)
        assert seeds.comparable(a) == seeds.comparable(b)
