"""``circuitboard models|tasks|methods``: list what the registries hold."""

from __future__ import annotations

from types import SimpleNamespace


def _lister(kind: str):
    def add_arguments(parser) -> None:
        parser.add_argument("--verbose", action="store_true", help=f"describe each {kind}")

    def main(args) -> int:
        import circuitboard as cb

        names = {
            "model": lambda: cb.MODELS.names(),
            "task": lambda: cb.TASKS.names(),
            "method": cb.method_names,
        }[kind]
        try:
            found = names()
        except ImportError as err:
            print(f"no {kind}s available: {err}")
            return 0
        if kind == "task":
            print_task_catalog(found)
            return 0
        for name in found:
            print(name.removeprefix("std/"))
        if not found:
            print(f"no {kind}s registered")
        return 0

    return SimpleNamespace(add_arguments=add_arguments, main=main)


models = _lister("model")
tasks = _lister("task")
methods = _lister("method")


def print_task_catalog(names: list[str]) -> None:
    """Each task with the models it runs on and the model's accuracy on it."""
    from tabulate import tabulate

    try:
        from circuitboard.tasks import catalog
    except ImportError:
        catalog = None
    rows = [] if catalog is None else catalog()
    listed = {row["task"] for row in rows}
    table = [
        [
            row["task"],
            row["model"],
            "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}",
            row.get("metric_name", ""),
            "yes" if row.get("on_leaderboard") else "no",
        ]
        for row in rows
    ]
    table += [
        [n.removeprefix("std/"), "", "", "", ""]
        for n in names
        if n.removeprefix("std/") not in listed
    ]
    print(tabulate(table, headers=["task", "model", "accuracy", "metric", "on leaderboard"]))
