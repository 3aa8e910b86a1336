"""Speed, passes and memory of every method, side by side, in one run.

    python benchmarks/methods.py            # every Tracr program, full settings
    python benchmarks/methods.py --quick    # two programs, short runs, a 4-layer GPT-2 shape
    python benchmarks/methods.py --threads 1 --validate edge-pruning   # or node-pruning
    python benchmarks/methods.py --threads 1 --pruning  # Edge Pruning step ratio, batched/single
    python benchmarks/methods.py --threads 1 --zoo      # the pruning methods on zoo/toy-lm

Prints, for each method on each compiled Tracr program: wall time, forward and backward passes
(as the method counts them in ``circuit.info["cost"]``), peak memory (CUDA: peak allocated;
CPU: peak resident-set growth, sampled every millisecond) and the ROC AUC against the
ground truth of the ablation used (from the method's edge scores, or for ACDC and Edge Pruning
through the circuits it returns for the MIB edge budgets; nan where the ground truth is empty).
Then EAP and EAP-IG on a randomly initialised GPT-2-small-shaped model (batch 16, 20 tokens)
with EAP's time over that of two plain forward passes and one backward pass of the same weights
(target <= 1.3), ACDC's speed-up over its reference loop on the largest Tracr model (the two
must agree edge for edge), and ACDC per threshold on two GPT-2 shapes (see ``bench_acdc_shapes``).

``--validate METHOD`` scores a method on every Tracr program under the referee's rules
(``circuitboard.scoring``: one circuit per grid budget, an over-budget circuit is never credited,
AUC through the circuits, F1 at the smallest budget >= the truth's size) and prints seconds per
program; ``--pruning`` times one Edge Pruning step with every budget of the 83-edge toy's grid
batched against one patched forward and backward of the same batch, and the batched grid against
one run per budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from functools import partial

import torch

import circuitboard as cb
from circuitboard import methods, scoring


# -------------------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory growth during a block: CUDA peak allocated, or sampled CPU resident set."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.001)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def groundtruth_auc(circuits, sizes, truth: torch.Tensor) -> float:
    """The referee's AUC through the returned circuits (``circuitboard.scoring``)."""
    keeps = [c.pruned().keep for c in circuits]
    own = list(range(len(circuits)))
    return scoring.groundtruth_scores(keeps, sizes, own, truth)["auc"]


# ------------------------------------------------------------------------------- Tracr part
def method_settings(quick: bool) -> dict[str, dict]:
    if quick:
        return {
            "acdc": {"thresholds": (1e-4, 1e-3, 1e-2, 0.1)},
            "eap": {},
            "eap-ig": {},
            "edge-pruning": {"steps": 60},
            "node-pruning": {"steps": 60},
            "random": {},
            "groundtruth": {},
            "full": {},
        }
    return {name: {} for name in methods.BUILTIN}


def tracr_programs(quick: bool) -> list[str]:
    from circuitboard import groundtruth

    names = list(groundtruth.model_names())
    if quick:
        wanted = [n for n in ("reverse", "frac_prevs") if n in names]
        return wanted or names[:2]
    return names


def bench_tracr(args, device) -> list[str]:
    from circuitboard import groundtruth

    torch.set_flush_denormal(True)
    rows = []
    header = (
        f"{'program':<14} {'edges':>5} {'method':<13} {'ablation':<9} {'seconds':>8} "
        f"{'fwd':>6} {'bwd':>6} {'peak MiB':>9} {'AUC':>6}"
    )
    print(header)
    print("-" * len(header))
    largest = None
    for name in tracr_programs(args.quick):
        truth_set = groundtruth.load(name)
        model, task = truth_set.model.to(device), truth_set.task
        n_edges = model.graph.n_edges
        if largest is None or n_edges > largest[1]:
            largest = (name, n_edges)
        sizes = scoring.budget_grid(n_edges)
        for method_name, params in method_settings(args.quick).items():
            method = methods.get(method_name, **params)
            ablation = args.ablation
            run = partial(method.find_circuits, model, task, sizes, ablation, 0)
            with PeakMemory(device) as mem:
                circuits, seconds = timed(run, device)
            truth = truth_set.circuit(ablation).pruned().keep
            auc = float("nan")
            if 0 < int(truth.sum()) < n_edges and method_name != "full":
                auc = groundtruth_auc(circuits, sizes, truth)
            cost = circuits[0].info.get("cost", {})
            line = (
                f"{name:<14} {n_edges:>5} {method_name:<13} {ablation:<9} {seconds:>8.3f} "
                f"{cost.get('forward', 0):>6} {cost.get('backward', 0):>6} {mem.mib:>9.1f} "
                f"{auc:>6.3f}"
            )
            print(line, flush=True)
            rows.append(line)
    if largest is not None:
        bench_acdc_speedup(largest[0], args, device)
    return rows


def bench_acdc_speedup(name: str, args, device) -> None:
    from circuitboard import groundtruth

    truth_set = groundtruth.load(name)
    model, task = truth_set.model.to(device), truth_set.task
    thresholds = (1e-3,) if args.quick else (1e-4, 1e-3, 1e-2)
    fast_method = methods.get("acdc", thresholds=thresholds)
    ref_method = methods.get("acdc", thresholds=thresholds, fast=False)
    fast, t_fast = timed(lambda: fast_method.sweep(model, task, args.ablation, 0), device)
    ref, t_ref = timed(lambda: ref_method.sweep(model, task, args.ablation, 0), device)
    same = all(torch.equal(a.keep, b.keep) for a, b in zip(fast, ref, strict=True))
    print(
        f"\nACDC on the largest Tracr model ({name}, {model.graph.n_edges} edges, "
        f"{args.ablation} ablation, thresholds {thresholds}): reference {t_ref:.3f}s "
        f"({ref[0].info['cost']['forward']} forwards), fast {t_fast:.3f}s "
        f"({fast[0].info['cost']['forward']} passes): speed-up {t_ref / t_fast:.1f}x; "
        f"identical circuits: {same}"
    )


# ------------------------------------------------------------------------------- GPT-2 part
def gpt2_model(n_layer: int, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitboard.loaders.hf import convert_gpt2

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=12, n_embd=768))
    return convert_gpt2(hf).to(device).eval()


def gpt2_task(model, batch: int, length: int):
    gen = torch.Generator().manual_seed(0)
    vocab = model.cfg.d_vocab
    clean = torch.randint(0, vocab, (batch, length), generator=gen)
    counterfactual = torch.randint(0, vocab, (batch, length), generator=gen)
    answer = torch.randint(0, vocab, (batch,), generator=gen)
    distractor = (answer + 1) % vocab
    b = cb.Batch(clean, counterfactual, answer, distractor)
    return cb.Task("random-gpt2", [b], [b], metric="logit_diff")


def bench_gpt2(args, device) -> None:
    n_layer = 4 if args.quick else 12
    model = gpt2_model(n_layer, device)
    task = gpt2_task(model, 16, 20)
    batch = task.train[0]
    tokens = batch.clean.to(device)
    print(
        f"\nGPT-2-small-shaped random model ({n_layer} layers, 12 heads, d_model 768, "
        f"{model.graph.n_edges} edges), batch 16 x 20 tokens, on {device}:"
    )
    reps = 1 if args.quick else 3

    def best(fn) -> float:
        fn()  # warm-up
        return min(timed(fn, device)[1] for _ in range(reps))

    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:

        def plain_forward():
            with torch.no_grad():
                return model(tokens)

        def forward_backward():
            x = (model.embed.W_E[tokens] + model.pos_embed.W_pos[: tokens.shape[1]]).detach()
            x.requires_grad_(True)
            logits = model(input_embeds=x)
            loss = -task.score(logits, batch).mean()
            return torch.autograd.grad(loss, x)

        t_fwd = best(plain_forward)
        t_fb = best(forward_backward)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    baseline = t_fwd + t_fb
    print(f"  plain forward {t_fwd:.3f}s; forward + backward {t_fb:.3f}s; 2F + 1B {baseline:.3f}s")
    for name, method in (("eap", methods.get("eap")), ("eap-ig", methods.get("eap-ig"))):
        with PeakMemory(device) as mem:
            seconds = best(
                lambda method=method: method.score_edges(model, task, "counterfactual", 0)
            )
        cost = method.last_cost
        extra = (
            f"; time / (2F + 1B) = {seconds / baseline:.2f} (target <= 1.3)"
            if name == "eap"
            else f"; time / (2F + 1B) = {seconds / baseline:.2f}"
        )
        print(
            f"  {name:<7} {seconds:.3f}s, {cost['forward']} forward / {cost['backward']} backward "
            f"passes, peak {mem.mib:.0f} MiB{extra}"
        )


# ------------------------------------------------------------------------------- ACDC part
def acdc_shape(n_layers: int, n_heads: int, d_model: int, d_vocab: int, device):
    """A GPT-2-shaped model (LayerNorm, GELU, learned positions) with HF's random init."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitboard.loaders.hf import convert_gpt2

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, vocab_size=d_vocab)
    return convert_gpt2(GPT2LMHeadModel(config)).to(device).eval()


def bench_acdc_shapes(args, device) -> None:
    """ACDC per threshold on two GPT-2 shapes (HF's random init, GPT-2's vocabulary, 64 prompts
    x 32 random tokens, logit-difference task, so ACDC's KL), side by side with what each is
    measured against:

    - 4 layers x 8 heads, d_model 256 (1519 edges): seconds for one tau = 1e-4, divided by one
      plain forward of the same batch (target <= 100);
    - 2 layers x 4 heads, d_model 128 (110 edges): three taus, against the plain loop that runs
      one partial forward per edge test at every position (``window=1,
      last_position_only=False``: auto-circuit's way) and against the reference loop of full
      patched passes (target >= 10x over the plain loop). All must make the same decisions.
    """
    prompts = 16 if args.quick else 64

    def counts(c):
        info = c.info
        return f"{info['tests']} tests, {info['states_evaluated']} states, {info['passes']} passes"

    big = acdc_shape(4, 8, 256, 50257, device)
    task = gpt2_task(big, prompts, 32)
    tokens = task.train[0].clean.to(device)
    with torch.no_grad():
        big(tokens)
        plain = min(timed(lambda: big(tokens), device)[1] for _ in range(3))
    tau = 1e-4
    circuit, seconds = timed(lambda: methods.get("acdc").run(big, task, tau), device)
    with torch.no_grad():
        plain = min([plain] + [timed(lambda: big(tokens), device)[1] for _ in range(3)])
    print(
        f"\nACDC, 4 layers x 8 heads, d_model 256 ({big.graph.n_edges} edges), {len(tokens)} x "
        f"{tokens.shape[1]} tokens, tau {tau}: {seconds:.1f}s ({counts(circuit)}, "
        f"{circuit.size} edges kept); one plain forward {plain:.3f}s (best of 6, before and "
        f"after); ratio {seconds / plain:.0f} (target <= 100); "
        f"{seconds / plain / circuit.info['states_evaluated']:.3f} plain forwards per state",
        flush=True,
    )
    small = acdc_shape(2, 4, 128, 50257, device)
    task = gpt2_task(small, prompts, 32)
    taus = (1e-4, 1e-3, 1e-2)
    runs = {}
    for name, params in (
        ("fast", {}),
        ("plain loop, one partial pass per test", {"window": 1, "last_position_only": False}),
        ("reference loop, full passes", {"fast": False}),
    ):
        method = methods.get("acdc", thresholds=taus, **params)
        runs[name] = timed(lambda method=method: method.sweep(small, task), device)
        print(f"  ({name}: {runs[name][1]:.1f}s)", flush=True)
    fast, t_fast = runs["fast"]
    print(
        f"ACDC, 2 layers x 4 heads, d_model 128 ({small.graph.n_edges} edges), {prompts} x 32 "
        f"tokens, taus {taus} (sizes {[c.size for c in fast]}): fast {t_fast:.2f}s "
        f"({'; '.join(counts(c) for c in fast)})"
    )
    for name, (circuits, t) in list(runs.items())[1:]:
        same = all(torch.equal(a.keep, b.keep) for a, b in zip(fast, circuits, strict=True))
        print(f"  {name}: {t:.2f}s, fast is {t / t_fast:.1f}x faster; same circuits: {same}")


# ------------------------------------------------------------- pruning part (Edge, node)
def referee_scores(graph, circuits, sizes, truth: torch.Tensor) -> dict:
    """AUC through the circuits, F1 at the smallest budget >= the truth's size, exact recovery:
    ``circuitboard.scoring.groundtruth_scores``, plus how many circuits were over budget."""
    keeps = [graph.prune(c.keep) for c in circuits]
    out = scoring.groundtruth_scores(keeps, sizes, list(range(len(circuits))), truth)
    out["over_budget"] = sum(int(k.sum()) > b for k, b in zip(keeps, sizes, strict=True))
    out["gt_size"] = out["size"]
    out["exact"] = bool(out["exact_recovery"] or out.get("recovers_empty"))
    return out


def validate(args, device) -> int:
    """``--validate METHOD``: every Tracr program under the new rules, with seconds each."""
    from circuitboard import groundtruth
    from circuitboard.groundtruth.nodes import native_scores, node_sets, node_truth

    torch.set_flush_denormal(True)
    params = dict(p.split("=", 1) for p in args.param or [])
    params = {k: _literal(v) for k, v in params.items()}
    print(
        f"validate {args.validate} {params or ''} under {args.validate_ablation} ablation, seed "
        f"{args.seed}, new rules: PASS at AUC (circuits) >= 0.9 and F1 >= 0.9"
    )
    header = (
        f"{'program':<18} {'edges':>5} {'budgets':>7} {'gt':>3} {'seconds':>8} {'AUC':>6} "
        f"{'F1':>6} {'exact':>5} {'over':>4} {'result':<6} detail"
    )
    print(header + "\n" + "-" * len(header))
    passed = failed = 0
    total = time.perf_counter()
    for name in groundtruth.names():
        gt = groundtruth.load(name)
        model, task = gt.model.to(device), gt.task
        graph = model.graph
        truth = graph.prune(gt.circuit(args.validate_ablation).keep)
        sizes = scoring.budget_grid(graph.n_edges)
        method = methods.get(args.validate, **params)
        run = partial(method.find_circuits, model, task, sizes, args.validate_ablation, args.seed)
        circuits, seconds = timed(run, device)
        r = referee_scores(graph, circuits, sizes, truth)
        detail = ""
        if args.validate == "edge-pruning":
            trained = [c for c in circuits if c.info.get("trained")]
            met = sum(c.info["met_budget"] for c in trained)
            steps = [c.info["steps_trained"] for c in trained]
            detail = f"met {met}/{len(trained)}, steps {min(steps)}-{max(steps)}"
        if args.validate == "node-pruning" and r["gt_size"]:
            nodes = node_truth(model, gt.circuit(args.validate_ablation))
            sets = node_sets(model, [c.native["nodes"] for c in circuits])
            search = circuits[0].info["target_search"]
            (at_target,) = node_sets(model, [search["nodes"]])
            native = native_scores(nodes["keep"], sets + [at_target])
            detail = (
                f"nodes: truth {native['size']}/{native['n_nodes']}, AUC {native['auc_sets']:.3f}, "
                f"F1 at target loss {native['per_set'][-1]['f1']:.3f} ({search['native_size']} "
                f"nodes)"
                + (f", truth's extra edges {nodes['extra_edges']}" if nodes["extra_edges"] else "")
            )
        if r["gt_size"]:
            ok = r["auc"] >= 0.9 and r["f1"] >= 0.9 and not r["over_budget"]
            auc, f1 = f"{r['auc']:.3f}", f"{r['f1']:.3f}"
        else:  # empty truth: reported apart, judged by recovering the empty circuit
            ok, auc, f1 = r["exact"], "–", "–"
        passed += ok
        failed += not ok
        print(
            f"{name:<18} {graph.n_edges:>5} {len(sizes):>7} {r['gt_size']:>3} {seconds:>8.2f} "
            f"{auc:>6} {f1:>6} {str(r['exact']):>5} {r['over_budget']:>4} "
            f"{'PASS' if ok else 'FAIL':<6} {detail}",
            flush=True,
        )
    print(f"{passed}/{passed + failed} programs passed in {time.perf_counter() - total:.1f}s")
    return 0 if failed == 0 else 1


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def toy_gpt2(device, n_embd: int = 256, vocab: int = 1024):
    """A randomly initialised HF GPT-2 with one layer of 16 heads: 83 edges."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitboard.loaders.hf import convert_gpt2

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_head=16, n_embd=n_embd, vocab_size=vocab, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return convert_gpt2(GPT2LMHeadModel(config)).to(device).eval()


def bench_edge_pruning_step(args, device) -> None:
    """One Edge Pruning step with every budget of the 83-edge toy's grid batched, over one
    patched forward and backward of the same (replicated) batch with per-example masks."""
    from circuitboard.methods.base import Cost, divergence
    from circuitboard.methods.edge_pruning import EdgePruning, _Trainer

    model = toy_gpt2(device)
    task = gpt2_task(model, 32, 20)
    graph = model.graph
    budgets = [k for k in scoring.budget_grid(graph.n_edges) if k < graph.n_edges]
    method = EdgePruning(stop_after=None)
    bs = method.batch_size
    trainer = _Trainer(method, model, task, "counterfactual", 0, Cost())
    short, long = 3, 3 + (2 if args.quick else 8)

    def steps(n: int) -> float:
        trainer.method = EdgePruning(steps=n, stop_after=None)
        return timed(lambda: trainer.train(budgets), device)[1]

    steps(1)  # warm-up (imports, allocator)
    step = (steps(long) - steps(short)) / (long - short)  # per step, set-up cancelled out
    batch = task.train[0]
    rows = torch.arange(bs)
    tokens = batch.clean[rows].to(device).repeat(len(budgets), 1)
    prep = trainer.prepared[0]
    ablated = prep.ablated[rows].repeat(len(budgets), 1, 1, 1)
    full = trainer.full[0][rows].repeat(len(budgets), 1, 1)
    mask = torch.rand(len(tokens), graph.n_edges, device=device, dtype=model.dtype)

    def forward_backward(chunk: int | None = None):
        m = mask.clone().requires_grad_(True)
        step = chunk or len(tokens)
        for i in range(0, len(tokens), step):
            part = slice(i, i + step)
            logits = model.run(tokens[part], m[part], ablated[part]).logits
            divergence(trainer.kind, full[part], logits, task.positions).sum().backward()

    chunk = max(1, method.max_examples // bs) * bs  # the trainer's passes: whole budgets
    forward_backward()
    reps = 3 if args.quick else 7
    with frozen_params(model):
        one = min(timed(forward_backward, device)[1] for _ in range(reps))
        chunked = min(timed(partial(forward_backward, chunk), device)[1] for _ in range(reps))
    print(
        f"\nEdge Pruning step on the 83-edge toy GPT-2 (1 layer x 16 heads, d_model 256, vocab "
        f"1024; {len(budgets)} budgets x {bs} examples x 20 tokens = {len(tokens)} sequences per "
        f"step): {step * 1e3:.1f} ms per step; one patched forward + backward of the same batch "
        f"in one pass {one * 1e3:.1f} ms (ratio {step / one:.2f}), in the trainer's passes of "
        f"{chunk} sequences {chunked * 1e3:.1f} ms (ratio {step / chunked:.2f}; target <= 1.5)"
    )


class frozen_params:
    def __init__(self, model) -> None:
        self.params = [(p, p.requires_grad) for p in model.parameters()]

    def __enter__(self):
        for p, _ in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        for p, flag in self.params:
            p.requires_grad_(flag)


def bench_pruning_modes(args, device) -> None:
    """Edge Pruning's budget grid batched in one run against one run per budget, side by side."""
    from circuitboard import groundtruth

    names = ["hist", "frac_prevs"] if args.quick else ["hist", "frac_prevs", "reverse", "sort"]
    print("\nEdge Pruning, full budget grid, batched vs one run per budget (resample):")
    for name in names:
        gt = groundtruth.load(name)
        model, task = gt.model.to(device), gt.task
        sizes = scoring.budget_grid(model.graph.n_edges)
        row = []
        for mode in ("single", "batched"):
            method = methods.get("edge-pruning", mode=mode)
            _, seconds = timed(
                partial(method.find_circuits, model, task, sizes, "resample", 0), device
            )
            row.append(seconds)
        print(
            f"  {name:<12} {len(sizes):>3} budgets: single {row[0]:7.2f}s, batched {row[1]:7.2f}s, "
            f"speed-up {row[0] / row[1]:.1f}x"
        )


def bench_zoo(args, device) -> None:
    """``--zoo``: node pruning, Edge Pruning and EAP on the standard tasks on zoo/toy-lm with
    the referee's budget grid (counterfactual ablation): seconds and the at-most-budget area."""
    model = cb.load_model("zoo/toy-lm").to(device)
    grid = scoring.budget_grid(model.graph.n_edges)
    print(
        f"\nzoo/toy-lm ({model.graph.n_edges} edges, {len(grid)} budgets), counterfactual; "
        f"seconds per task and the at-most-budget faithfulness area (log axis, test split):"
    )
    names = ["ioi", "greater-than"] if args.quick else list(cb.tasks.names())
    for name in names:
        task = cb.load_task(name, model="zoo/toy-lm")
        row = []
        for method_name in ("node-pruning", "edge-pruning", "eap"):
            method = methods.get(method_name)
            run = partial(method.find_circuits, model, task, grid, "counterfactual", 0)
            circuits, seconds = timed(run, device)
            over = sum(c.size > k for c, k in zip(circuits, grid, strict=True))
            ev = cb.evaluate(model, task, circuits, "counterfactual", budgets=grid, n_boot=10)
            area = ev.areas["cpr"]
            row.append(f"{method_name} {seconds:6.1f}s area {area:.3f} over {over}")
        print(f"  {name:<17} " + " | ".join(row), flush=True)


# ------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two programs, short runs")
    parser.add_argument("--ablation", default="zero", help="ablation for the Tracr runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice; 1 is steadier on a busy machine)",
    )
    parser.add_argument("--skip-tracr", action="store_true")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--skip-acdc", action="store_true", help="skip the two ACDC shapes")
    parser.add_argument("--only-acdc", action="store_true", help="only the two ACDC shapes")
    parser.add_argument(
        "--validate", metavar="METHOD", help="only: every Tracr program under the new rules"
    )
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="for --validate")
    parser.add_argument("--validate-ablation", default="resample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pruning", action="store_true", help="only: Edge Pruning step ratio and batched vs single"
    )
    parser.add_argument("--zoo", action="store_true", help="only: the pruning methods on toy-lm")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"circuitboard methods benchmark on {device} ({torch.get_num_threads()} CPU threads)\n")
    if args.only_acdc:
        bench_acdc_shapes(args, device)
        return 0
    if args.validate:
        return validate(args, device)
    if args.zoo:
        bench_zoo(args, device)
        return 0
    if args.pruning:
        bench_edge_pruning_step(args, device)
        bench_pruning_modes(args, device)
        return 0
    if not args.skip_tracr:
        try:
            bench_tracr(args, device)
        except (ImportError, AttributeError) as err:
            print(f"(Tracr part skipped: the ground truths are not available: {err})")
    if not args.skip_gpt2:
        bench_gpt2(args, device)
    if not args.skip_acdc:
        bench_acdc_shapes(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
