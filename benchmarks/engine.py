"""Engine speed and memory: the patched forward against the plain forward of the same weights.

    python benchmarks/engine.py [--repeats 7] [--batch 16] [--seq 20] [--only gpt2,llama,tracr]
                                [--threads N] [--device cpu|cuda]

Prints, side by side in one run:
- a GPT-2-small-shaped randomly initialised model: HF ``GPT2LMHeadModel`` forward, and our forward
  with no mask, with a circuit-shaped mask (every edge among 15% of the nodes), with a random 50%
  mask (the dense worst case), with per-example random masks, and EAP's forward + backward at an
  all-ones mask;
- a Llama-shaped randomly initialised model (8 layers, d_model 512, GQA 8/2): HF
  ``LlamaForCausalLM`` forward, and ours with no mask and with a circuit-shaped mask (target:
  patched / HF <= 1.5);
- the largest Tracr ground-truth model: our forward without a mask (the plain pass of the same
  weights, which tests hold equal to tracr's own) and with its ground-truth mask.

Times are the median of interleaved repeats (each variant runs once per round, so a noisy
neighbour hurts all of them alike). Peak memory is how far the resident set rises above its level
before one forward (Linux high-water mark, reset first), each variant in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

torch.set_flush_denormal(True)
DEVICE = torch.device("cpu")  # set by --device (default: cuda when available)


def gpt2_setup(batch: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitboard.ablation import ablated_values
    from circuitboard.loaders.hf import convert_gpt2

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    model = convert_gpt2(hf).to(DEVICE)
    hf = hf.to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, hf.config.vocab_size, (batch, seq), generator=gen)
    counterfactual = torch.randint(0, hf.config.vocab_size, (batch, seq), generator=gen)
    graph = model.graph
    n = graph.n_edges
    dense = (torch.rand(n, generator=gen) > 0.5).float()
    masks = (torch.rand(batch, n, generator=gen) > 0.5).float()
    circuit = node_circuit(graph, gen)
    tokens, counterfactual, dense, masks, circuit = (
        t.to(DEVICE) for t in (tokens, counterfactual, dense, masks, circuit)
    )
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)

    def eap_pass():  # forward and backward with the mask at all ones, as EAP runs
        ones = torch.ones(n, requires_grad=True, device=DEVICE)
        with torch.enable_grad():
            model(tokens, ones, ablated)[:, -1, :2].sum().backward()

    return {
        "hf GPT2LMHeadModel (plain)": lambda: hf(tokens).logits,
        "patchable, no mask": lambda: model(tokens),
        f"patchable, circuit mask ({int(circuit.sum())} edges)": lambda: model(
            tokens, circuit, ablated
        ),
        "patchable, random 50% mask (dense worst case)": lambda: model(tokens, dense, ablated),
        "patchable, per-example random 50% masks": lambda: model(tokens, masks, ablated),
        "patchable, all-ones mask, forward + backward": eap_pass,
    }


def llama_setup(batch: int, seq: int):
    """A Llama-shaped random model: 8 layers, d_model 512, 8 query / 2 key-value heads (GQA),
    SwiGLU, RMSNorm, rotary, untied, vocabulary 32,000. HF ``LlamaForCausalLM`` with its default
    (SDPA) attention against the patched forward of the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitboard.ablation import ablated_values
    from circuitboard.loaders.hf import from_hf

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=32000,
        max_position_embeddings=512,
    )
    hf = LlamaForCausalLM(config).eval()
    model = from_hf(hf, device=DEVICE)
    hf = hf.to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    counterfactual = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    circuit = node_circuit(model.graph, gen)
    tokens, counterfactual, circuit = (t.to(DEVICE) for t in (tokens, counterfactual, circuit))
    ablated = ablated_values(model, "counterfactual", tokens, counterfactual=counterfactual)
    return {
        "hf LlamaForCausalLM (plain)": lambda: hf(tokens).logits,
        "patchable, no mask": lambda: model(tokens),
        f"patchable, circuit mask ({int(circuit.sum())} edges)": lambda: model(
            tokens, circuit, ablated
        ),
    }


def node_circuit(graph, gen) -> torch.Tensor:
    """A circuit shaped like real ones: every edge among 15% of the nodes (input and logits in)."""
    chosen = {"input", "logits"} | {
        node for node in graph.sources[1:] if torch.rand(1, generator=gen).item() < 0.15
    }
    keep = [
        graph.sources[s] in chosen and graph.reader_node(graph.readers[r]) in chosen
        for s, r in zip(graph.edge_src.tolist(), graph.edge_reader.tolist())
    ]
    return torch.tensor(keep, dtype=torch.float32)


def tracr_setup(batch: int):
    import circuitboard as cb
    from circuitboard.ablation import ablated_values

    names = cb.groundtruth.names()
    loaded = {name: cb.groundtruth.load(name) for name in names}
    name = max(names, key=lambda n: loaded[n].model.graph.n_edges)
    gt = loaded[name]
    model = gt.model.to(DEVICE)
    longest = max(gt.task.test + gt.task.train, key=lambda b: b.length)
    reps = -(-batch // len(longest))
    tokens = longest.clean.repeat(reps, 1)[:batch].to(DEVICE)
    counterfactual = longest.counterfactual.repeat(reps, 1)[:batch].to(DEVICE)
    ablated = ablated_values(model, "resample", tokens, counterfactual=counterfactual)
    mask = gt.circuit("resample").mask().to(DEVICE)
    return {
        f"patchable {name}, no mask": lambda: model(tokens),
        f"patchable {name}, ground-truth mask": lambda: model(tokens, mask, ablated),
    }


SETUPS = {
    "gpt2": gpt2_setup,
    "llama": llama_setup,
    "tracr": lambda batch, seq: tracr_setup(batch),
}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def time_variants(variants: dict, repeats: int) -> dict[str, float]:
    times = {name: [] for name in variants}
    with torch.no_grad():  # eap_pass turns gradients back on for itself
        for fn in variants.values():
            fn()  # warm up
        for _ in range(repeats):
            for name, fn in variants.items():
                _sync()
                start = time.perf_counter()
                fn()
                _sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_child(setup: str, variant: str, batch: int, seq: int) -> None:
    """Peak RSS growth of one forward: reset the high-water mark (Linux), run, read it back."""
    variants = SETUPS[setup](batch, seq)
    fn = variants[variant]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    with torch.no_grad():
        fn()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def peak_memory(setup: str, variant: str, batch: int, seq: int, variants=None) -> float:
    if DEVICE.type == "cuda":  # CUDA's own allocator statistics, in this process
        fn = variants[variant]
        _sync()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        with torch.no_grad():
            fn()
        _sync()
        return (torch.cuda.max_memory_allocated(DEVICE) - base) / 2**20
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            setup,
            variant,
            "--batch",
            str(batch),
            "--seq",
            str(seq),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def report(title: str, setup: str, repeats: int, batch: int, seq: int) -> None:
    variants = SETUPS[setup](batch, seq)
    times = time_variants(variants, repeats)
    base_name = next(iter(variants))
    base = times[base_name]
    print(f"\n{title}")
    print(f"{'variant':48s} {'median s':>10s} {'x ' + 'first':>9s} {'peak MiB':>9s}")
    for name, t in times.items():
        mem = peak_memory(setup, name, batch, seq, variants)
        print(f"{name:48s} {t:10.4f} {t / base:9.2f} {mem:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=20)
    parser.add_argument("--only", default="gpt2,llama,tracr", help="comma-separated setups")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--child", nargs=2, metavar=("SETUP", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    from circuitboard.devices import resolve_device

    DEVICE = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        peak_memory_child(*args.child, args.batch, args.seq)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}")
    only = set(args.only.split(","))
    shape = f"batch {args.batch} x {args.seq} tokens"
    if "gpt2" in only:
        report(
            f"GPT-2-small-shaped, random init, {shape}", "gpt2", args.repeats, args.batch, args.seq
        )
    if "llama" in only:
        title = f"Llama-shaped (8 layers, d_model 512, GQA 8/2), random init, {shape}"
        report(title, "llama", args.repeats, args.batch, args.seq)
    if "tracr" in only:
        try:
            report(
                f"largest Tracr program, batch {args.batch}", "tracr", args.repeats, args.batch, 0
            )
        except (ImportError, AttributeError) as err:
            print(f"\nTracr part skipped: {err}")


if __name__ == "__main__":
    main()
