"""Did a run reproduce the reference board? ``circuitboard run`` asks after every run.

The package ships the results of the default run (``store.REFERENCE_DIR``). A cell of a user's run
*reproduces* the reference when the reference holds the same cell (same key and the same method
parameters) and every headline number agrees within ``TOLERANCE``: CPR and CMD, and, where there
is a ground truth, AUC and F1. Circuits may differ by an edge whose effect sits at a threshold
(float rounding differs between CPUs); the numbers that rank methods may not move beyond the
tolerance. Cells the reference does not hold are counted apart, never as failures.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from circuitboard import scoring
from circuitboard.leaderboard import store

TOLERANCE = scoring.REPRODUCIBLE
SHOWN = 10  # differing cells named one per line; the rest are counted
COMPARED = (
    ("evaluation", "areas", "cpr"),
    ("evaluation", "areas", "cmd"),
    ("groundtruth", "auc"),
    ("groundtruth", "f1"),
)


@dataclass
class ReferenceReport:
    reproduced: list[str] = field(default_factory=list)
    differ: list[tuple[str, str]] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    def describe(self) -> str:
        compared = len(self.reproduced) + len(self.differ)
        lines = [
            f"reference board: {len(self.reproduced)}/{compared} cells reproduced within "
            f"{TOLERANCE:g} (CPR, CMD, ground-truth AUC and F1)"
            + (f"; {len(self.absent)} cells not in the reference" if self.absent else "")
        ]
        shown = self.differ[:SHOWN]
        lines += [f"  DIFFERS {name}: {why}" for name, why in shown]
        if len(self.differ) > len(shown):
            lines.append(f"  ... and {len(self.differ) - len(shown)} more")
        return "\n".join(lines)


def _get(record: dict, path: tuple[str, ...]):
    value = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def difference(record: dict, reference: dict) -> str | None:
    """None if ``record`` reproduces ``reference``, else what differs."""
    if (record.get("method") or {}).get("params") != (reference.get("method") or {}).get("params"):
        return "the method's parameters differ from the reference's"
    problems = []
    for path in COMPARED:
        a, b = _get(record, path), _get(reference, path)
        if a is None and b is None:
            continue
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            problems.append(f"{'.'.join(path[-2:])} {a} vs reference {b}")
        elif abs(a - b) > TOLERANCE:
            problems.append(f"{'.'.join(path[-2:])} {a:.4f} vs reference {b:.4f}")
    return "; ".join(problems) or None


def compare(keys, results: str, reference: str = store.REFERENCE_DIR) -> ReferenceReport:
    """Compare the stored results of ``keys`` in ``results`` with the reference board."""
    report = ReferenceReport()
    if os.path.abspath(results) == os.path.abspath(reference):
        return report  # the reference itself was (re)computed: nothing to compare with
    for key in keys:
        name = str(key)
        ref_path = store.path_for(key, reference)
        if not os.path.exists(ref_path):
            report.absent.append(name)
            continue
        try:
            mine = store.read_result(store.path_for(key, results))
            ref = store.read_result(ref_path)
        except (ValueError, OSError) as err:
            report.differ.append((name, f"unreadable: {err}"))
            continue
        why = difference(mine, ref)
        if why is None:
            report.reproduced.append(name)
        else:
            report.differ.append((name, why))
    return report
