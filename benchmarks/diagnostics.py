"""Speed of the three circuit diagnostics on zoo/toy-lm with IOI's test split, side by side.

    python benchmarks/diagnostics.py               # EAP circuits of 48 and 240 edges, and all 479
    python benchmarks/diagnostics.py --quick       # 64 test examples, the 48-edge circuit only

Target (issue 12): each diagnostic on one circuit of <= 500 edges on toy-lm with the task's test
split in <= 30 s on a 2-core CPU. toy-lm has 479 edges, so its whole graph is the worst case.

For each circuit it prints the wall time of ``group_variance``, ``self_repair`` and
``token_density``, the patched rows each ran (one row = one example under one edge mask), and the
time per row over that of a plain unpatched forward pass of the same examples, measured in the
same run (a ratio that holds when the machine is shared; the seconds do not). The load average
is printed before and after, so a shared machine shows.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from tabulate import tabulate

import circuitboard as cb
from circuitboard import diagnostics

TARGET_S = 30.0


def plain_us_per_row(model, task, repeats: int = 3) -> float:
    """A plain forward of the test split, microseconds per example (best of ``repeats``)."""
    best = float("inf")
    n = task.n_examples("test")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in task.test:
                model(batch.clean)
            best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 test examples, one circuit")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="circuit sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}; torch threads: {args.threads}")

    model = cb.load_model("zoo/toy-lm")
    n_test = 64 if args.quick else 256
    task = cb.load_task("ioi", model="zoo/toy-lm", n_test=n_test)
    graph = model.graph
    sizes = args.sizes or ([48] if args.quick else [48, 240, graph.n_edges])
    eap = cb.get_method("eap")
    scores = eap.score_edges(model, task, "counterfactual", 0)
    n = task.n_examples("test")
    plain = plain_us_per_row(model, task)
    rows = []
    for size in sizes:
        circuit = cb.Circuit.top_k(graph, scores, size)
        n_edges = circuit.size
        variance, t_var = timed(diagnostics.group_variance, model, task, circuit)
        repair, t_rep = timed(diagnostics.self_repair, model, task, circuit)
        density, t_den = timed(diagnostics.token_density, model, task, circuit, progress=False)
        eta = variance.grouping("order").eta_squared
        fraction = repair.knockouts[0].self_repair_fraction
        runs = (
            ("group_variance", t_var, 3 * n, f"eta2(order) {eta:.3f}"),
            (
                "self_repair",
                t_rep,
                _self_repair_masks(graph, repair) * n,
                f"k=1 repair {fraction:.2f}",
            ),
            ("token_density", t_den, (3 + density.n_edges) * n, f"median {density.median:.3f}"),
        )
        for name, seconds, n_rows, note in runs:
            rows.append(
                [
                    name,
                    n_edges,
                    n,
                    f"{seconds:.1f}",
                    "yes" if seconds <= TARGET_S else "NO",
                    n_rows,
                    f"{seconds / n_rows * 1e6 / plain:.2f}",
                    note,
                ]
            )
    headers = ["diagnostic", "edges", "examples", "seconds", "<= 30 s", "rows", "row / plain", ""]
    print(tabulate(rows, headers=headers))
    print(f"plain forward: {plain:.0f} us per example; load average after: {os.getloadavg()}")


def _self_repair_masks(graph, report) -> int:
    """Masks ``self_repair`` ran: full, empty, each source's direct path (and each head's
    knockout when it ranks by ablation), then per k the knockout, the removed heads' direct path
    and every other source's."""
    n_heads = sum(1 for s in graph.sources if s.startswith("a") and s not in graph.dead)
    n_src = n_heads + sum(1 for s in graph.sources if s.startswith("m") and s not in graph.dead)
    stage1 = 2 + n_src + (n_heads if report.ranking == "ablation" else 0)
    return stage1 + sum(2 + n_src - ko.k for ko in report.knockouts)


if __name__ == "__main__":
    main()
