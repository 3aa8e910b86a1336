"""Loaders: GPT-2 from a local directory and our own checkpoints, each exact against its source."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import random_model

import circuitboard as cb
from circuitboard.loaders import checkpoint

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A randomly initialised GPT-2 (3 layers, 4 heads) written with save_pretrained."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=3,
        n_head=4,
        n_embd=32,
        vocab_size=97,
        n_positions=24,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path, model


def test_gpt2_from_a_local_directory_matches_transformers(gpt2_dir):
    path, reference = gpt2_dir
    tokens = torch.randint(0, 97, (5, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(tokens).logits
        for model in (cb.loaders.from_hf(str(path)), cb.load_model(str(path))):
            assert model.graph.n_edges == gpt2_edge_count(3, 4)
            assert (model(tokens) - expected).abs().max() <= 1e-4


def gpt2_edge_count(n_layers: int, n_heads: int) -> int:
    """Edge count of a GPT-2-shaped graph, summed reader by reader."""
    total = 0
    for layer in range(n_layers):
        sources = 1 + layer * (n_heads + 1)
        total += 3 * n_heads * sources + (sources + n_heads)
    return total + 1 + n_layers * (n_heads + 1)


def test_missing_directory_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="local directory"):
        cb.loaders.from_hf(str(tmp_path / "gpt2-does-not-exist"))


def test_checkpoint_round_trip_is_exact(tmp_path, tokens):
    model = random_model(d_vocab_out=6, normalization=None, act_fn="relu", dead=["a1.h2"])
    checkpoint.save(model, tmp_path / "ckpt", card={"trained": "no"})
    loaded = cb.load_model(str(tmp_path / "ckpt"))
    assert loaded.cfg == model.cfg
    assert "a1.h2" in loaded.graph.dead
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]


def test_checkpoint_whose_config_and_weights_disagree_is_refused(tmp_path):
    model = random_model()
    checkpoint.save(model, tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "config.json"
    data = json.loads(config_file.read_text())
    data["config"]["d_mlp"] = 48
    config_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config and weights disagree.*mlp.W_in"):
        cb.loaders.load(tmp_path / "ckpt")
    data["config"]["n_layres"] = 3
    config_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown model config keys"):
        cb.loaders.load(tmp_path / "ckpt")


def test_checkpoint_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        cb.loaders.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="'format' must be"):
        cb.loaders.load(tmp_path)
