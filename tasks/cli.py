"""``circuitboard zoo``: train, list and check the model zoo.

    circuitboard zoo list                 the models, their cards' accuracy per task
    circuitboard zoo train NAME [--seed S] [--steps N] [--out DIR] [--threads T]
    circuitboard zoo eval NAME [--device D]  re-measure a shipped model against its card

Training is deterministic for a given seed, step count and thread count; run it under
``nice -n 19`` on a shared machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    sub.add_parser("list", help="list the zoo models and their accuracy per task")
    p = sub.add_parser("train", help="train a zoo model and write it with its card")
    p.add_argument("name", help="the zoo model to train")
    p.add_argument("--seed", type=int, default=None, help="default: the model's own seed")
    p.add_argument("--steps", type=int, default=None, help="default: the model's own step count")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--out", default=None, help="directory to write (default: the shipped zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    e = sub.add_parser("eval", help="re-measure a zoo model and compare with its card")
    e.add_argument("name")
    from circuitboard.devices import add_device_argument

    add_device_argument(e)


def main(args) -> int:
    command = getattr(args, "zoo_command", None)
    if command == "list":
        return _list()
    if command == "train":
        return _train(args)
    if command == "eval":
        return _eval(args.name, args.device)
    print("usage: circuitboard zoo {list,train,eval} ...", file=sys.stderr)
    return 2


def _list() -> int:
    from circuitboard.tasks import zoo
    from circuitboard.tasks.evaluation import on_leaderboard

    for name in zoo.names():
        if name not in zoo.available():
            print(f"{name}: not trained (circuitboard zoo train {name})")
            continue
        card = zoo.card(name)
        print(f"{name}: {card.get('description', '')}")
        wall, cpu = card.get("train_time_s", float("nan")), card.get("train_cpu_s", float("nan"))
        print(f"  trained in {wall:.0f} s ({cpu:.0f} s CPU), seed {card.get('seed')}")
        for task, entry in card.get("metrics", {}).items():
            mark = "" if on_leaderboard(entry["accuracy"]) else "  (off the leaderboard)"
            print(
                f"  {task:18s} accuracy {entry['accuracy']:.3f}  "
                f"{entry['metric_name']} {entry['metric']:.3f}{mark}"
            )
    return 0


def _command(args, spec) -> str:
    parts = ["circuitboard", "zoo", "train", args.name]
    if args.seed is not None:
        parts += ["--seed", str(args.seed)]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    if args.threads != 1:
        parts += ["--threads", str(args.threads)]
    return " ".join(parts)


def _train(args) -> int:
    from dataclasses import asdict

    import torch

    from circuitboard import loaders
    from circuitboard.tasks import train, vocab, zoo
    from circuitboard.tasks.evaluation import measure_all

    if args.name not in train.SPECS:
        raise KeyError(f"unknown zoo model {args.name!r}; the zoo has {', '.join(train.SPECS)}")
    spec = train.SPECS[args.name]
    log = None if args.quiet else (lambda line: print(line, flush=True))
    result = train.train(spec, seed=args.seed, steps=args.steps, threads=args.threads, log=log)
    metrics = measure_all(result.model)
    card = {
        "name": spec.name,
        "description": spec.description,
        "command": _command(args, spec),
        "seed": spec.seed if args.seed is None else args.seed,
        "spec": asdict(result.spec),
        "data_hash": result.data_hash,
        "vocab_hash": vocab.vocabulary_hash(),
        "vocab_size": len(vocab.toy_vocabulary()),
        "train_time_s": round(result.seconds, 1),
        "train_cpu_s": round(result.cpu_seconds, 1),
        "threads": args.threads,
        "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "first_losses": result.losses[:5],
        "loss_curve": [
            round(sum(result.losses[i : i + 100]) / len(result.losses[i : i + 100]), 4)
            for i in range(0, len(result.losses), 100)
        ],
        "metrics": metrics,
        "evaluation": {"seed": 0, "n_test": 256, "split": "test"},
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if spec.final_density is not None:
        card["sparsity"] = train.sparsity_report(result.model)
    out = args.out or zoo.path(args.name)
    loaders.save(result.model, out, card=card)
    for file in (loaders.checkpoint.WEIGHTS_FILE, loaders.checkpoint.CONFIG_FILE):
        os.chmod(os.path.join(out, file), 0o644)  # shipped files: readable by all
    print(f"wrote {out} in {result.seconds:.0f} s of training")
    print(json.dumps({k: round(v["accuracy"], 4) for k, v in metrics.items()}))
    return 0


def _eval(name: str, device=None) -> int:
    from circuitboard.devices import resolve_device
    from circuitboard.tasks import zoo
    from circuitboard.tasks.evaluation import measure_all

    card = zoo.card(name)
    measured = measure_all(zoo.load(name).to(resolve_device(device)))
    worst = 0.0
    for task, entry in measured.items():
        stored = card.get("metrics", {}).get(task, {}).get("accuracy")
        gap = abs(entry["accuracy"] - stored) if stored is not None else float("inf")
        worst = max(worst, gap)
        print(f"{task:18s} measured {entry['accuracy']:.4f}  card {stored}")
    return 0 if worst <= 0.005 else 1
