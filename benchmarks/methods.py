"""Speed, passes and memory of every method, side by side, in one run.

    python benchmarks/methods.py            # every Tracr program, full settings
    python benchmarks/methods.py --quick    # two programs, short runs, a 4-layer GPT-2 shape

Prints, for each method on each compiled Tracr program: wall time, forward and backward passes
(as the method counts them in ``circuit.info["cost"]``), peak memory (CUDA: peak allocated;
CPU: peak resident-set growth, sampled every millisecond) and the ROC AUC against the
ground truth of the ablation used (from the method's edge scores, or for ACDC and Edge Pruning
through the circuits it returns for the MIB edge budgets; nan where the ground truth is empty).
Then EAP and EAP-IG on a randomly initialised GPT-2-small-shaped model (batch 16, 20 tokens)
with EAP's time over that of two plain forward passes and one backward pass of the same weights
(target <= 1.3), and ACDC's speed-up over its reference loop on the largest Tracr model (the two
must agree edge for edge).
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
from circuitboard import methods
from circuitboard.metrics import roc_from_scores

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


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


def edge_budgets(n_edges: int) -> list[int]:
    return sorted({max(1, round(f * n_edges)) for f in MIB_FRACTIONS})


def circuits_auc(circuits, truth: torch.Tensor) -> float:
    """AUC under the ROC frontier of the circuits' (FPR, TPR) points, from (0, 0) to (1, 1).

    Circuits from different thresholds or budgets need not be nested, so, as in the ACDC
    paper's ROC, the curve is the best TPR reached at or below each FPR (the Pareto frontier).
    """
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    points = sorted(
        {(0.0, 0.0), (1.0, 1.0)}
        | {
            (int((c.keep & ~truth).sum()) / n_neg, int((c.keep & truth).sum()) / n_pos)
            for c in circuits
        }
    )
    area, best, last_x = 0.0, 0.0, 0.0
    for x, y in points:
        area += (x - last_x) * best
        best, last_x = max(best, y), x
    return area


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
        sizes = edge_budgets(n_edges)
        for method_name, params in method_settings(args.quick).items():
            method = methods.get(method_name, **params)
            ablation = args.ablation
            run = partial(method.find_circuits, model, task, sizes, ablation, 0)
            with PeakMemory(device) as mem:
                circuits, seconds = timed(run, device)
            truth = truth_set.circuit(ablation).keep
            auc = float("nan")
            if 0 < int(truth.sum()) < n_edges and method_name != "full":
                # One ranking of every edge where the method gives one; otherwise (ACDC's
                # sweep, Edge Pruning's run per size) the ROC through its circuits.
                scores = circuits[0].scores
                if method_name in ("acdc", "edge-pruning") or scores is None:
                    auc = circuits_auc(circuits, truth)
                else:
                    auc = roc_from_scores(scores, truth)[2]
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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"circuitboard methods benchmark on {device} ({torch.get_num_threads()} CPU threads)\n")
    if not args.skip_tracr:
        try:
            bench_tracr(args, device)
        except (ImportError, AttributeError) as err:
            print(f"(Tracr part skipped: the ground truths are not available: {err})")
    if not args.skip_gpt2:
        bench_gpt2(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
