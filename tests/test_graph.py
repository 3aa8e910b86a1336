"""The edge universe: counts, names, pruning, JSON round trips."""

from __future__ import annotations

import json

import pytest
import torch

from circuitboard.graph import Circuit, Graph


def test_gpt2_small_counts_match_eap_ig_and_mib():
    graph = Graph(n_layers=12, n_heads=12)
    assert graph.n_nodes == 158
    assert graph.n_edges == 32_491
    assert len(set(graph.edge_names)) == 32_491


def test_attention_only_two_layer_four_head_count_by_hand():
    graph = Graph(n_layers=2, n_heads=4, attn_only=True)
    # Layer 0: 4 heads x 3 readers, each reads `input` only          -> 12
    # Layer 1: 4 heads x 3 readers, each reads input + 4 layer-0 heads -> 12 * 5 = 60
    # logits reads input + 8 heads                                    -> 9
    assert graph.n_edges == 12 + 60 + 9
    assert graph.n_nodes == 1 + 8 + 1


def test_edge_names_and_order():
    graph = Graph(n_layers=1, n_heads=2)
    assert graph.edge_names == (
        "input->a0.h0<q>",
        "input->a0.h1<q>",
        "input->a0.h0<k>",
        "input->a0.h1<k>",
        "input->a0.h0<v>",
        "input->a0.h1<v>",
        "input->m0",
        "a0.h0->m0",
        "a0.h1->m0",
        "input->logits",
        "a0.h0->logits",
        "a0.h1->logits",
        "m0->logits",
    )
    dense = graph.to_dense(torch.arange(graph.n_edges, dtype=torch.float32), fill=-1)
    assert dense[graph.sources.index("a0.h1"), graph.readers.index("m0")] == 8
    assert torch.equal(graph.from_dense(dense), torch.arange(graph.n_edges, dtype=torch.float32))


def test_dead_nodes_carry_no_edges():
    graph = Graph(n_layers=2, n_heads=2, dead=frozenset({"a0.h1", "m1"}))
    assert not any("a0.h1" in name or "m1" in name for name in graph.edge_names)
    full = Graph(n_layers=2, n_heads=2)
    # a0.h1: 3 in (its q, k, v from input); 9 out (m0, the 6 layer-1 head readers, m1, logits).
    # m1, apart from a0.h1->m1: 5 in (input, a0.h0, m0, a1.h0, a1.h1); 1 out (logits).
    assert full.n_edges - graph.n_edges == (3 + 9) + (5 + 1)
    with pytest.raises(ValueError, match="not heads or MLPs"):
        Graph(n_layers=1, n_heads=1, dead=frozenset({"a3.h0"}))


def test_unknown_edge_names_are_explained():
    graph = Graph(n_layers=2, n_heads=2)
    with pytest.raises(KeyError, match="no source node 'a5.h0'"):
        graph.index_of(["a5.h0->logits"])
    with pytest.raises(KeyError, match="does not come before"):
        graph.index_of(["m1->a0.h0<q>"])
    with pytest.raises(KeyError, match="no reader"):
        graph.index_of(["input->a0.h0<x>"])


def test_prune_keeps_only_paths_from_input_to_logits():
    graph = Graph(n_layers=2, n_heads=2)
    circuit = Circuit.from_edges(
        graph,
        [
            "input->a0.h0<v>",  # on a path: input -> a0.h0 -> m1 -> logits
            "a0.h0->m1",
            "m1->logits",
            "a0.h1->a1.h0<q>",  # a0.h1 is never reached from input
            "input->m0",  # m0 leads nowhere
            "a1.h1->logits",  # a1.h1 has no input
        ],
    )
    assert sorted(circuit.pruned().edges) == ["a0.h0->m1", "input->a0.h0<v>", "m1->logits"]
    assert circuit.size == 3 and circuit.n_kept == 6
    assert Circuit.full(graph).size == graph.n_edges
    assert Circuit.empty(graph).size == 0


def test_set_operations_and_top_k():
    graph = Graph(n_layers=1, n_heads=2)
    a = Circuit.from_edges(graph, ["input->m0", "m0->logits"])
    b = Circuit.from_edges(graph, ["m0->logits", "input->logits"])
    assert (a & b).edges == ["m0->logits"]
    assert sorted((a | b).edges) == ["input->logits", "input->m0", "m0->logits"]
    assert (a - b).edges == ["input->m0"]
    assert a.jaccard(b) == pytest.approx(1 / 3)
    scores = torch.zeros(graph.n_edges)
    scores[graph.edge_index["input->m0"]] = -3.0
    scores[graph.edge_index["m0->logits"]] = 2.0
    scores[graph.edge_index["input->logits"]] = 1.0
    assert Circuit.top_k(graph, scores, 2).edges == ["input->m0", "m0->logits"]
    assert Circuit.top_k(graph, scores, 2, absolute=False).edges == ["input->logits", "m0->logits"]


def test_json_round_trip_is_lossless(tmp_path):
    graph = Graph(n_layers=3, n_heads=2)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_edges, generator=gen, dtype=torch.float64)
    circuit = Circuit.top_k(graph, scores, 25)
    path = tmp_path / "circuit.json"
    circuit.to_json(path)
    data = json.loads(path.read_text())
    assert set(data) == {"cfg", "nodes", "edges"}
    assert data["edges"]["input->a0.h0<q>"].keys() == {"score", "in_graph"}
    back = Circuit.from_json(graph, path)
    assert back == circuit
    assert torch.equal(back.scores, circuit.scores)


def test_json_errors_name_the_problem(tmp_path):
    graph = Graph(n_layers=1, n_heads=1)
    bad = {"cfg": {}, "nodes": {}, "edges": {"input->a9.h0<q>": {"score": 1.0, "in_graph": True}}}
    with pytest.raises(ValueError, match="unknown edge"):
        Circuit.from_json_dict(graph, bad)
    nan = {"edges": {"input->m0": {"score": float("nan"), "in_graph": True}}}
    with pytest.raises(ValueError, match="non-finite"):
        Circuit.from_json_dict(graph, nan)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Circuit.from_json(graph, broken)


def test_wrong_length_vectors_are_refused():
    graph = Graph(n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        Circuit(graph, torch.ones(5, dtype=torch.bool))


def test_circuits_refuse_values_that_are_not_edges_kept_or_removed():
    graph = Graph(n_layers=1, n_heads=1)
    n = graph.n_edges
    with pytest.raises(ValueError, match="keeps an edge .1. or not .0.; got the value 0.5"):
        Circuit(graph, torch.full((n,), 0.5))
    with pytest.raises(ValueError, match="got the value nan"):
        Circuit(graph, torch.tensor([float("nan")] + [1.0] * (n - 1)))
    assert Circuit(graph, torch.ones(n)).n_kept == n  # 0/1 floats are fine
    scores = torch.arange(n, dtype=torch.float64)
    scores[2] = float("nan")
    with pytest.raises(ValueError, match="with 1 NaN"):
        Circuit.top_k(graph, scores, 2)
    scores[2] = float("-inf")  # ranked last, not refused
    assert not Circuit.top_k(graph, scores, n - 1, absolute=False).keep[2]
