"""Result files, load_results, and the ground-truth and seed scores (no model runs here)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from circuitboard.leaderboard import rendering, scores, store
from circuitboard.leaderboard.tables import load_results


def record(method="m", task="t", seed=0, cpr=0.5) -> dict:
    return {
        "schema": store.SCHEMA,
        "schema_version": store.SCHEMA_VERSION,
        "key": {"method": method, "task": task, "model": "tiny", "ablation": "zero", "seed": seed},
        "method": {"name": method, "target": method, "params": {}},
        "model": {"name": "tiny", "n_edges": 46},
        "evaluation": {
            "points": [],
            "areas": {"cpr": cpr, "cmd": 1 - cpr, "cpr_mib": cpr, "cmd_mib": 0},
            "full_metric": float("nan"),
        },
        "circuits": [],
        "groundtruth": None,
        "cost": {"seconds": 1.0},
        "environment": {},
    }


def test_round_trip_and_unique_names(tmp_path):
    a = store.write_result(record("eap", "tracr/sort"), tmp_path)
    b = store.write_result(record("eap", "tracr_sort"), tmp_path)  # same slug, other key
    assert a != b and os.path.basename(a).startswith("eap__tracr-sort__tiny__zero__seed0__")
    loaded = store.read_result(a)
    assert loaded["key"]["task"] == "tracr/sort"
    assert loaded["evaluation"]["full_metric"] is None  # NaN is not JSON; it is stored as null
    assert store.stored(store.Key("eap", "tracr/sort", "tiny", "zero", 0), tmp_path)
    assert not store.stored(store.Key("eap", "tracr/sort", "tiny", "zero", 1), tmp_path)
    with pytest.raises(ValueError, match="missing section 'cost'"):
        store.write_result({k: v for k, v in record().items() if k != "cost"}, tmp_path)


def test_results_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "elsewhere"))
    assert store.results_dir() == str(tmp_path / "elsewhere")
    assert store.results_dir(tmp_path) == str(tmp_path)
    monkeypatch.delenv(store.ENV_VAR)
    # The user's own board by default, never the reference board shipped in the package.
    assert store.results_dir() == "circuitboard-results"
    assert store.REFERENCE_DIR.endswith(os.path.join("leaderboard", "results"))


def test_load_results_names_and_skips_bad_files(tmp_path):
    store.write_result(record("good", seed=0, cpr=0.25), tmp_path)
    store.write_result(record("good", seed=1, cpr=0.75), tmp_path)
    (tmp_path / "truncated.json").write_text('{"schema": "circuitboard-result", "key"')
    future = record("future")
    future["schema_version"] = store.SCHEMA_VERSION + 1
    (tmp_path / "future.json").write_text(json.dumps(future))
    (tmp_path / "other.json").write_text(json.dumps({"edges": {}}))
    (tmp_path / ".tmp-abc.json").write_text("{")  # an unfinished atomic write: not a result
    with pytest.warns(UserWarning) as caught:
        df = load_results(tmp_path)
    assert sorted(df["seed"]) == [0, 1] and list(df["method"].unique()) == ["good"]
    assert sorted(df["cpr"]) == [0.25, 0.75]
    skipped = dict(df.attrs["skipped"])
    assert set(skipped) == {"truncated.json", "future.json", "other.json"}
    assert "not valid JSON" in skipped["truncated.json"]
    assert f"unknown schema version {store.SCHEMA_VERSION + 1}" in skipped["future.json"]
    assert "not a circuitboard result" in skipped["other.json"]
    warned = " ".join(str(w.message) for w in caught)
    assert all(name in warned for name in skipped)
    # The rendered leaderboard lists them too.
    with pytest.warns(UserWarning):
        written = rendering.render(tmp_path, tmp_path / "out")
    text = open(written["markdown"]).read()
    assert "## Skipped result files" in text
    assert all(f"`{name}`: {reason}" in text for name, reason in skipped.items())


def test_comparable_drops_only_volatile_fields():
    a, b = store.json_safe(record()), store.json_safe(record())
    b["cost"]["seconds"] = 9.0
    b["environment"] = {"device": "cuda"}
    b["evaluation"]["seconds"] = 3.0
    assert store.comparable(a) == store.comparable(b)
    b["evaluation"]["areas"]["cpr"] = 0.1
    assert store.comparable(a) != store.comparable(b)


def test_pack_unpack_and_jaccard():
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert torch.equal(scores.unpack(scores.pack(keep), 11), keep)
    with pytest.raises(ValueError, match="not 20 edges"):
        scores.unpack(scores.pack(keep), 20)
    other = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    assert scores.jaccard(keep, other) == 3 / 6  # {0, 2, 8} of {0, 1, 2, 3, 8, 9}
    assert scores.mean_pairwise_jaccard([keep, keep, other]) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores.mean_pairwise_jaccard([keep]) is None


def test_packed_floats_round_trip_exactly_and_refuse_bad_data():
    values = torch.tensor([[0.1, -2.5e-300, 3.0], [float("inf"), 1 / 3, 0.0]], dtype=torch.float64)
    packed = scores.pack_floats(values)
    assert torch.equal(scores.unpack_floats(packed), values)
    with pytest.raises(ValueError, match="not the shape"):
        scores.unpack_floats({**packed, "shape": [3, 3]})
    with pytest.raises(ValueError, match="malformed"):
        scores.unpack_floats({"shape": [1], "data": "%%%"})
    bomb = {"shape": [1], "data": scores.pack_floats(torch.zeros(2**20))["data"]}
    with pytest.raises(ValueError, match="not the shape"):
        scores.unpack_floats(bomb)
