"""The planted half of ``circuitboard groundtruth``: ``train``, and the planted lines of ``list``
and ``check``."""

from __future__ import annotations

import json

from circuitboard.groundtruth.planted.specs import SPECS


def add_train_arguments(parser) -> None:
    parser.add_argument("name", help=f"the planted program ({', '.join(SPECS)})")
    parser.add_argument("--seed", type=int, default=None, help="default: the program's own seed")
    parser.add_argument(
        "--steps", type=int, default=None, help="default: the program's own step count"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--out", default=None, help="directory to write (default: the shipped trained/)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def train_main(args) -> int:
    from circuitboard.groundtruth.planted import build, truth

    built = build.build(
        args.name, seed=args.seed, steps=args.steps, threads=args.threads, progress=not args.quiet
    )
    card = built.card
    print(
        f"planted/{args.name}: trained in {card['train_time_s']:.0f} s "
        f"({card['train_cpu_s']:.0f} s CPU), ground truths and checks in "
        f"{card['derive_time_s']:.0f} s ({card['derive_cpu_s']:.0f} s CPU); accuracy "
        f"{card['accuracy']:.4f}, IIA "
        f"{json.dumps({k: round(v, 4) for k, v in card['iia'].items()})}, accuracy with "
        f"every edge outside the planted circuit ablated "
        f"{card['accuracy_outside_planted_ablated']:.4f}; sizes {card['sizes']}"
    )
    fails = truth.failures(built.record["checks"])
    if fails:
        print(f"planted/{args.name} FAILS its checks and is not written:")
        for line in fails:
            print(f"  {line}")
        return 1
    out = build.save(built, args.name, args.out)
    print(f"wrote {out}")
    return 0


def list_lines() -> list[str]:
    from circuitboard.groundtruth.planted import store

    shipped = set(store.shipped())
    out = []
    for name, spec in SPECS.items():
        if name in shipped:
            card = store.card(name)
            sizes = card.get("sizes", {})
            out.append(
                f"planted/{name:10} trained  {sizes.get('planted', '?')} planted edges, "
                f"{sizes.get('resample', '?')} functional (resample); accuracy "
                f"{card.get('accuracy', float('nan')):.4f}, min IIA "
                f"{min(card.get('iia', {0: float('nan')}).values()):.4f}"
            )
        else:
            out.append(
                f"planted/{name:10} not trained (circuitboard groundtruth train {spec.name})"
            )
    return out


def check_rows(names=None, recompute: bool = False) -> tuple[list[list], bool]:
    """Check every shipped planted program; print one block each; return table rows, ok."""
    from circuitboard.groundtruth import store as tracr_store
    from circuitboard.groundtruth.planted import alignment, load, store, truth

    ok_all, rows = True, []
    for name in names or store.shipped():
        gt = load(name)
        model, record = gt.model, gt.record
        hl = tracr_store.load_model(record["program"])
        align = alignment.from_tracr(hl, record["alignment"]["hl_edges"], model.graph)
        readout_ok = list(align.planted_edges) == record["circuits"]["planted"]["edges"]
        from circuitboard.groundtruth.planted.siit import Readout

        readout = Readout.from_dict(record["readout"])
        groups = gt.groups()
        checks = truth.run_checks(model, hl, align, groups, readout)
        fails = truth.failures(checks)
        redundant_same = sorted(checks["necessity"]["redundant"]) == sorted(
            record["circuits"]["planted"]["redundant"]
        )
        ok = readout_ok and not fails and redundant_same
        c = checks
        print(
            f"planted/{name}: {model.graph.n_nodes} nodes, {model.graph.n_edges} edges, "
            f"{sum(len(g) for g in groups)} inputs"
        )
        print(
            f"  accuracy {c['behaviour']['accuracy']:.4f} | min IIA "
            f"{min(c['iia']['per_node'].values()):.4f} (>= {truth.MIN_IIA}) | outside planted "
            f"ablated {c['outside']['accuracy_outside_ablated']:.4f} (drop <= "
            f"{truth.MAX_ACCURACY_DROP}) | redundant {c['necessity']['redundant'] or 'none'}"
            f"{'' if redundant_same else ' (differs from the record)'} "
            f"{'PASS' if ok else 'FAIL'}"
        )
        if recompute:
            fresh = truth.functional_circuits(model, hl, groups, readout, align.planted())
            same = all(
                sorted(fresh[k]["edges"]) == sorted(record["circuits"][k]["edges"]) for k in fresh
            )
            ok &= same
            print(f"  recomputed functional ground truths equal the record: {same}")
        ok_all &= ok
        circuits = record["circuits"]
        rows.append(
            [f"planted/{name}", model.graph.n_nodes, model.graph.n_edges]
            + [len(circuits[k]["edges"]) for k in truth.KINDS]
        )
    return rows, ok_all
