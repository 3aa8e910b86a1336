"""Pythia, Llama, Qwen2 and Gemma-2 from local directories, exact against HF transformers.

Each family is a small random config saved with ``save_pretrained`` to a temporary directory,
with weights drawn at a scale where every feature moves the logits (HF's own init makes them
nearly constant, which would let a wrong model pass a 1e-4 check). The reference is HF's forward
with eager attention.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import circuitboard as cb
from circuitboard.ablation import ablated_values
from circuitboard.graph import Graph
from circuitboard.loaders import hf as hf_loader

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 50
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}


def family_configs():
    """2 layers and 4 query heads each; features as the real models have them."""
    small = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, vocab_size=VOCAB)
    small.update(intermediate_size=48, max_position_embeddings=16)
    return {
        # parallel attention + MLP, LayerNorm, partial rotary (4 of 8 dims per head)
        "pythia": transformers.GPTNeoXConfig(**small, rotary_pct=0.5),
        # RMSNorm, full rotary with Llama-3 frequency scaling, GQA 4/2, SwiGLU, untied
        "llama": transformers.LlamaConfig(
            **small, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE
        ),
        # Llama plus q/k/v biases, tied embeddings
        "qwen2": transformers.Qwen2Config(**small, num_key_value_heads=2, tie_word_embeddings=True),
        # RMSNorm (1 + w), GeGLU, post-norms, both soft-caps, a sliding-window layer, embedding
        # scaling, head_dim != d_model / n_heads, query_pre_attn_scalar != head_dim
        "gemma2": transformers.Gemma2Config(
            **small,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=12,
            sliding_window=3,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    }


def scaled_init(model, seed: int = 0):
    """Weights with unit-scale activations: matrices N(0, 1/fan_in), gains near their identity."""
    gen = torch.Generator().manual_seed(seed)
    gemma = model.config.model_type == "gemma2"
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif "embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))
    return model.eval()


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    out = {}
    for i, (name, config) in enumerate(family_configs().items()):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        model = scaled_init(model, seed=i)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (path, model)
    return out


@pytest.fixture(scope="module")
def token_pair():
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randint(0, VOCAB, (3, 9), generator=gen),
        torch.randint(0, VOCAB, (3, 9), generator=gen),
    )


# Edge counts derived by hand, 2 layers x 4 heads, reader by reader:
# sequential: layer 0: 12 head readers x 1 source (input) + m0 reads input and 4 heads (5) = 17;
#   layer 1: 12 x 6 (input, 4 heads, m0) + m1 reads 10 = 82; logits read all 11 sources: 110.
#   GQA changes nothing: <k> and <v> are per query head (MIB's convention).
# parallel (Pythia): m0 reads input only (1) and m1 the 6 sources before layer 1 (not its heads):
#   12 + 1 + 72 + 6 + 11 = 102, i.e. 110 minus the 2 x 4 head -> own-MLP edges.
EDGES = {"pythia": 102, "llama": 110, "qwen2": 110, "gemma2": 110}


@pytest.mark.parametrize("name", list(EDGES))
def test_family_matches_transformers_with_and_without_a_mask(families, token_pair, name):
    path, reference = families[name]
    tokens, counterfactual = token_pair
    model = cb.loaders.from_hf(str(path))
    assert model.graph.n_edges == EDGES[name]
    with torch.no_grad():
        expected = reference(tokens).logits
        expected_cf = reference(counterfactual).logits
        assert expected.std() > 0.5  # the logits are far from constant: the check has teeth
        ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
        n = model.graph.n_edges
        plain = model(tokens)
        ones = model(tokens, torch.ones(n), ablated)
        zeros = model(tokens, torch.zeros(n), ablated)
    assert (plain - expected).abs().max() <= 1e-4
    assert (ones - expected).abs().max() <= 1e-4
    assert torch.equal(ones, plain)
    # every edge removed under counterfactual ablation is the counterfactual run
    assert (zeros - expected_cf).abs().max() <= 1e-4


def test_load_model_and_bfloat16_evaluation(families, token_pair):
    path, reference = families["llama"]
    tokens, _ = token_pair
    model = cb.load_model(str(path))
    assert model.cfg.n_kv_heads == 2 and model.cfg.gated_mlp and model.cfg.rotary_inv_freq
    half = cb.loaders.from_hf(str(path), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        expected = reference(tokens).logits
        low = half(tokens).float()
    # bfloat16 keeps 8 bits of mantissa: a loose tolerance, stated
    assert (low - expected).abs().max() <= 0.1 * expected.abs().max()


def test_mib_edge_counts_from_the_real_configs():
    """Our convention on the shapes of MIB's models (no weights): MIB's published counts."""
    qwen = transformers.Qwen2Config(
        hidden_size=896,
        num_attention_heads=14,
        num_key_value_heads=2,
        num_hidden_layers=24,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
    )
    gemma = transformers.Gemma2Config()  # the defaults are Gemma-2-2B
    llama = transformers.LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=128256,
        rope_parameters={**LLAMA3_ROPE, "original_max_position_embeddings": 8192},
    )
    counts = {}
    for name, config in (("qwen2.5", qwen), ("gemma2", gemma), ("llama3", llama)):
        cfg = hf_loader.model_config(config)
        counts[name] = cb.model.graph_of(cfg).n_edges
    assert counts == {"qwen2.5": 179_749, "gemma2": 74_218, "llama3": 1_592_881}
    # and the same counts from the closed form of the convention
    for layers, heads, n in ((24, 14, 179_749), (26, 8, 74_218), (32, 32, 1_592_881)):
        assert Graph(layers, heads).n_edges == n


def test_pythia_sequential_variant(tmp_path, token_pair):
    config = family_configs()["pythia"]
    config.use_parallel_residual = False
    reference = scaled_init(
        transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager"), 5
    )
    reference.save_pretrained(tmp_path)
    model = cb.loaders.from_hf(str(tmp_path))
    assert model.graph.n_edges == 110 and not model.graph.parallel_attn_mlp
    with torch.no_grad():
        assert (model(token_pair[0]) - reference(token_pair[0]).logits).abs().max() <= 1e-4


# ---------------------------------------------------------------------------- clear errors
def test_unsupported_architecture_is_named(tmp_path):
    config = transformers.MistralConfig(
        num_hidden_layers=1, num_attention_heads=2, hidden_size=8, intermediate_size=8
    )
    config.vocab_size = VOCAB
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(hf_loader.UnsupportedModel, match="'mistral' is not supported.*Llama"):
        cb.loaders.from_hf(str(tmp_path))


def test_unsupported_features_are_named(families, tmp_path):
    config = family_configs()["gemma2"]
    config.attention_bias = True
    with pytest.raises(hf_loader.UnsupportedModel, match="attention_bias=True"):
        hf_loader.model_config(config)
    config = family_configs()["llama"]
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(hf_loader.UnsupportedModel, match="'dynamic' changes with the sequence"):
        hf_loader.model_config(config)


def test_missing_files_are_named(families, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        cb.loaders.from_hf(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        cb.loaders.from_hf(str(tmp_path))
    path, _ = families["qwen2"]
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        cb.loaders.from_hf(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="never unpickles"):
        cb.loaders.from_hf(str(tmp_path))


def test_config_and_weights_that_disagree_are_refused(families, tmp_path):
    path, _ = families["llama"]
    for name in os.listdir(path):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"disagree: model.layers.0.mlp.gate_proj.weight has shape"
    ):
        cb.loaders.from_hf(str(tmp_path))
    config["intermediate_size"], config["num_hidden_layers"] = 48, 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"needs model.layers.2.*which the weights do not have"):
        cb.loaders.from_hf(str(tmp_path))
    config["num_hidden_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"have no place.*model.layers.1"):
        cb.loaders.from_hf(str(tmp_path))
