"""``circuitboard groundtruth check|compile|list|train``.

``check`` loads every committed program and prints its node and edge counts, the size of each
ground truth and both checks, then the published ground truths it must reproduce, then the
planted programs' checks; it exits 1 if any line fails. ``compile`` rebuilds models and circuits
with tracr. ``train NAME`` retrains a planted program (``circuitboard.groundtruth.planted``) and
writes it only if it passes its checks.
"""

from __future__ import annotations

import time

from circuitboard.devices import add_device_argument, resolve_device
from circuitboard.groundtruth import derive, programs, published, record, store
from circuitboard.groundtruth.planted import cli as planted_cli
from circuitboard.groundtruth.truth import KINDS, load


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    c = sub.add_parser("check", help="check every committed ground truth (no tracr needed)")
    c.add_argument("names", nargs="*", help="programs, planted ones as planted/NAME (default: all)")
    c.add_argument(
        "--recompute",
        action="store_true",
        help="also derive every ground truth again and compare with the cache",
    )
    add_device_argument(c)
    m = sub.add_parser("compile", help="compile programs with tracr and derive their circuits")
    m.add_argument("names", nargs="*", help="programs (default: all)")
    m.add_argument(
        "--out", default=None, help="write here instead of the package's compiled/ directory"
    )
    sub.add_parser("list", help="list the programs")
    t = sub.add_parser("train", help="train a planted-circuit model by SIIT and check it")
    planted_cli.add_train_arguments(t)


def main(args) -> int:
    action = getattr(args, "action", None)
    if action == "compile":
        return compile_main(args.names, args.out)
    if action == "list":
        for spec in programs.PROGRAMS.values():
            kind = "categorical" if spec.categorical else "numerical"
            print(f"{spec.name:18} {kind:11} {spec.description}")
        for line in planted_cli.list_lines():
            print(line)
        return 0
    if action == "check":
        return check_main(args.names, args.recompute, resolve_device(args.device))
    if action == "train":
        return planted_cli.train_main(args)
    print("usage: circuitboard groundtruth {check,compile,list,train} [NAME ...]")
    return 2


def _names(names) -> list[str]:
    for n in names:
        programs.get(n)  # a clear error for an unknown name
    return list(names) or list(programs.PROGRAMS)


def compile_main(names, directory: str | None = None) -> int:
    from circuitboard.groundtruth.compile import compile_registered, describe
    from circuitboard.groundtruth.data import token_groups

    for name in _names(names):
        start = time.time()
        spec = programs.get(name)
        try:
            model = compile_registered(spec)
        except ImportError as err:
            print(f"circuitboard groundtruth compile: {err}")
            return 2
        store.save_model(model, name, describe(spec), directory)
        rec = record.derive_record(model, derive.Data(token_groups(model, spec.valid)))
        store.write_circuits(name, rec, directory)
        sizes = ", ".join(f"{k} {len(rec['circuits'][k]['edges'])}" for k in KINDS)
        print(f"{name}: {model.graph.describe()}; {sizes} ({time.time() - start:.1f}s)")
    return 0


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def check_main(names, recompute: bool = False, device=None) -> int:
    planted = [n.split("/", 1)[1] for n in names if n.startswith("planted/")]
    tracr = [n for n in names if not n.startswith("planted/")]
    ok_all = True
    table = []
    for name in _names(tracr) if tracr or not planted else []:
        gt = load(name)
        if device is not None:
            gt.model = gt.model.to(device)
        graph, data = gt.model.graph, gt.data()
        dead = f" ({len(graph.dead)} dead)" if graph.dead else ""
        print(
            f"{name}: {graph.n_nodes} nodes{dead}, {graph.n_edges} edges, {data.n_examples} inputs"
        )
        rows = record.run_checks(gt.model, data, gt.record)
        for row in rows:
            ok = row["sufficient"] and row["redundant_as_recorded"] and row["size"] == row["n_kept"]
            ok_all &= ok
            red = (
                f"{len(row['redundant'])} redundant, as recorded"
                if row["redundant"]
                else "every edge necessary"
            )
            if not row["redundant_as_recorded"]:
                red = f"redundant {row['redundant']} differ from the record"
            print(
                f"  {row['kind']:10} {row['size']:3d} edges | (1) outside edges ablated: max "
                f"change {row['outside_effect']:.1e} {_mark(row['sufficient'])} | (2) {red} "
                f"{_mark(row['redundant_as_recorded'])}"
            )
        if recompute:
            fresh = record.derive_record(gt.model, data)
            diff = record.same_circuits(fresh, gt.record)
            ok_all &= not diff
            print(
                f"  recomputed ground truths equal the cache: {_mark(not diff)}"
                + (f" (differ: {diff})" if diff else "")
            )
        table.append(
            [name, graph.n_nodes, graph.n_edges, data.n_examples] + [r["size"] for r in rows]
        )
    if tracr or not planted:
        ok_all &= _check_published()
    if planted or not names:
        print("planted programs:")
        planted_rows, ok = planted_cli.check_rows(planted or None, recompute)
        ok_all &= ok
    print()
    if table:
        print(_table(table))
    if planted or not names:
        print()
        print(_planted_table(planted_rows))
    print(f"\n{'all checks pass' if ok_all else 'SOME CHECKS FAIL'}")
    return 0 if ok_all else 1


def _check_published() -> bool:
    ok_all = True
    print("published ground truths:")
    for name, expected in published.ACDC_ZERO.items():
        gt = load(name)
        data = published.acdc_data(gt.model)
        ours, _ = derive.functional(gt.model, data, "zero")
        ok = sorted(ours.edges) == sorted(expected)
        ok_all &= ok
        print(
            f"  {name:10} zero, ACDC's data ({data.labels['source']}): ours {ours.size} edges,"
            f" ACDC {len(expected)} merged ({published.ACDC_UNMERGED_COUNTS[name]} with "
            f"separate embeddings) {_mark(ok)}"
        )
    for name, expected in published.AUTO_CIRCUIT_RESAMPLE.items():
        gt = load(name)
        data = published.auto_circuit_data(gt.model)
        ours, _ = derive.functional(gt.model, data, "counterfactual")
        ok = sorted(ours.edges) == sorted(expected)
        ok_all &= ok
        print(
            f"  {name:10} resample, auto-circuit's data ({data.labels['source']}): ours "
            f"{ours.size} edges, auto-circuit {len(expected)} {_mark(ok)}"
        )
    return ok_all


def _planted_table(rows) -> str:
    from tabulate import tabulate

    from circuitboard.groundtruth.planted.truth import KINDS as PLANTED_KINDS

    headers = ["program", "nodes", "edges"] + list(PLANTED_KINDS)
    return tabulate(rows, headers=headers, tablefmt="github")


def _table(rows) -> str:
    from tabulate import tabulate

    headers = ["program", "nodes", "edges", "inputs"] + list(KINDS)
    return tabulate(rows, headers=headers, tablefmt="github")
