"""Time per seed of the ``seeds`` study, and what it means for the speed target.

    python benchmarks/studies.py                       # the study's defaults, 2 seeds each
    python benchmarks/studies.py --methods eap --seeds 3 --model zoo/toy-lm

Runs ``--seeds`` seeds of each method under zero and mean ablation on one model with the
study's own settings (``seeds.STUDY_PARAMS``, ``seeds.DEFAULT_TRAIN_FRACTION``), one after
another in this process on one thread, as one worker of the study runs them. Prints, side by
side: seconds per seed, the share spent in the method (the rest is scoring: the training curve
that picks the seed's circuit, and its scores on and off distribution), and the projected wall
time of the target study (20 seeds, both ablations) over ``--workers`` workers, with its ratio
to the 10-minute target (below 1 meets it). The machine's load changes wall times 2-3x; compare
methods within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from circuitboard.leaderboard.studies import seeds

TARGET_SECONDS = 600.0
TARGET_SEEDS = 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(seeds.DEFAULT_METHODS))
    parser.add_argument("--model", default=seeds.DEFAULT_MODELS[0])
    parser.add_argument("--task", default=seeds.DEFAULT_TASK)
    parser.add_argument("--seeds", type=int, default=2, help="seeds timed per method and ablation")
    parser.add_argument("--workers", type=int, default=2, help="workers of the projected study")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    for method in args.methods:
        units = seeds.plan(
            [method], args.task, [args.model], range(args.seeds), seeds.DEFAULT_ABLATIONS
        )
        per_seed, in_method = [], []
        for unit in units:
            start = time.perf_counter()
            record = seeds.run_seed(unit)
            per_seed.append(time.perf_counter() - start)
            in_method.append(record["cost"]["method_seconds"])
        t = statistics.mean(per_seed)
        projected = TARGET_SEEDS * len(seeds.DEFAULT_ABLATIONS) * t / args.workers
        rows.append((method, t, statistics.mean(in_method) / t, projected))

    print(
        f"seeds study on {args.model} / {args.task}: {args.seeds} seeds x "
        f"{len(seeds.DEFAULT_ABLATIONS)} ablations per method, one thread"
    )
    header = (
        f"{'method':<14} {'s/seed':>8} {'in method':>10} "
        f"{'20 seeds x 2 abl / ' + str(args.workers) + ' workers':>30} {'/ 10 min':>9}"
    )
    print(header)
    for method, t, share, projected in rows:
        print(
            f"{method:<14} {t:>8.1f} {share:>10.0%} {projected:>28.0f} s "
            f"{projected / TARGET_SECONDS:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
