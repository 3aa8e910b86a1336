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
        for name in found:
            print(name.removeprefix("std/"))
        if not found:
            print(f"no {kind}s registered")
        return 0

    return SimpleNamespace(add_arguments=add_arguments, main=main)


models = _lister("model")
tasks = _lister("task")
methods = _lister("method")
