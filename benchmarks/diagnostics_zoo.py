"""The diagnostics' findings on the zoo models, as quoted in the README (issue 12).

    python benchmarks/diagnostics_zoo.py                  # everything below (~15 min on 2 cores)
    python benchmarks/diagnostics_zoo.py --part repair    # self-repair only
    python benchmarks/diagnostics_zoo.py --json out.json  # also write every report

- **self-repair**: on zoo/toy-lm and zoo/toy-lm-sparse for IOI (test split, counterfactual
  ablation), the full model's top 1, 2 and 4 heads by clean direct effect and by single-head
  ablation: direct effect, total drop, self-repair fraction, backup and negative heads, and the
  heads' and MLPs' direct effects: does the model have backup or negative heads at all?
- **variance and token density per method**: EAP, EAP-IG and random circuits at 10 and 48 edges
  on IOI (token density too) and on the gendered-pronoun task (test and off-distribution splits,
  so that its ``pairing`` grouping has both levels): faithfulness, spread, eta squared and the
  flag per grouping, and the median edge density.
"""

from __future__ import annotations

import argparse

import torch
from tabulate import tabulate

import circuitboard as cb
from circuitboard import diagnostics
from circuitboard.graph import write_json_atomic

MODELS = ("zoo/toy-lm", "zoo/toy-lm-sparse")
METHODS = ("eap", "eap-ig", "random")
SIZES = (10, 48)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def self_repair_part(out: dict) -> None:
    rows, nodes = [], []
    for name in MODELS:
        model, task = cb.load_model(name), cb.load_task("ioi", model=name)
        full = cb.Circuit.full(model.graph)
        for ranking in ("direct", "ablation"):
            report = diagnostics.self_repair(model, task, full, ranking=ranking)
            out[f"self_repair|{name}|{ranking}"] = report.to_dict()
            for ko in report.knockouts:
                growth = ko.direct_effect_growth[0] if ko.direct_effect_growth else None
                rows.append(
                    [
                        name,
                        ranking,
                        ko.k,
                        " ".join(ko.heads),
                        _fmt(ko.direct_effect),
                        _fmt(ko.total_drop),
                        _fmt(ko.self_repair_fraction, 1),
                        _fmt(ko.compensation_heads),
                        _fmt(ko.compensation_mlps),
                        f"{growth.node} {growth.value:+.3f}" if growth else "-",
                        len(ko.backup_heads),
                    ]
                )
        heads = sorted(report.direct_effects, key=lambda e: -abs(e.value))[:3]
        nodes.append(
            [
                name,
                _fmt(report.gap),
                ", ".join(f"{e.node} {e.value:+.3f}" for e in heads),
                ", ".join(f"{e.node} {e.value:+.2f}" for e in report.mlp_direct_effects),
                ", ".join(e.node for e in report.negative_heads) or "none",
            ]
        )
    print("Self-repair on IOI, full model, counterfactual ablation (threshold 0.1)")
    print(
        tabulate(
            rows,
            headers=[
                "model",
                "ranking",
                "k",
                "heads",
                "DE(H)",
                "drop",
                "repair",
                "heads +",
                "MLPs +",
                "top DE growth",
                "backup",
            ],
        )  # fmt: skip
    )
    print()
    print(tabulate(nodes, headers=["model", "gap", "largest head DE", "MLP DE", "negative"]))


def variance_part(out: dict) -> None:
    rows = []
    for name in MODELS:
        model = cb.load_model(name)
        for task_name, split in (
            ("ioi", "test"),
            ("gendered-pronoun", ("test", "off_distribution")),
        ):
            task = cb.load_task(task_name, model=name)
            for method in METHODS:
                circuits = cb.get_method(method).find_circuits(
                    model, task, sizes=list(SIZES), ablation="counterfactual", seed=0
                )
                for size, circuit in zip(SIZES, circuits):
                    v = diagnostics.group_variance(model, task, circuit, split=split)
                    d = None
                    if task_name == "ioi" and circuit.size:
                        d = diagnostics.token_density(model, task, circuit, progress=False)
                    key = f"{name}|{task_name}|{method}|{size}"
                    out[f"variance|{key}"] = v.to_dict(per_example=False)
                    out[f"density|{key}"] = d.to_dict() if d else None
                    groups = "; ".join(
                        f"{g.grouping} {g.eta_squared:.3f}{' FLAG' if g.differs else ''}"
                        for g in v.groupings
                    )
                    rows.append(
                        [
                            name,
                            task_name,
                            method,
                            circuit.size,
                            f"{v.faithfulness:.3f} [{v.ci_low:.3f}, {v.ci_high:.3f}]",
                            _fmt(v.std),
                            groups,
                            _fmt(d.median) if d else "-",
                            _fmt(d.mean) if d else "-",
                        ]
                    )
    print("Variance by group and token density (epsilon 0.05 of the gap), counterfactual ablation")
    print(
        tabulate(
            rows,
            headers=[
                "model",
                "task",
                "method",
                "edges",
                "faithfulness",
                "std",
                "eta^2 per grouping",
                "median density",
                "mean density",
            ],
        )  # fmt: skip
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "repair", "variance"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write every report to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {}
    if args.part in ("all", "repair"):
        self_repair_part(out)
        print()
    if args.part in ("all", "variance"):
        variance_part(out)
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()
