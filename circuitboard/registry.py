"""Name -> object registries that resolve lazily, so the core never imports its plug-ins.

An entry is an import path ``"package.module:attribute"``; a *namespace* ``"tracr"`` hands every
``"tracr/NAME"`` to a provider that lists and loads its own names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


def import_object(path: str):
    """Resolve ``"package.module:attribute"``; the error names what is wrong."""
    if ":" not in path:
        raise ValueError(f"{path!r} is not an import path; write it as 'package.module:Name'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import module {module_name!r} for {path!r}: {err}") from err
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


@dataclass
class Namespace:
    lister: str  # import path of a function returning the names
    loader: str  # import path of a function name -> object


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, str | Callable] = {}
        self._namespaces: dict[str, Namespace] = {}

    def register(self, name: str, target: str | Callable) -> None:
        self._entries[name] = target

    def add_namespace(self, prefix: str, lister: str, loader: str) -> None:
        self._namespaces[prefix] = Namespace(lister, loader)

    def names(self) -> list[str]:
        out = list(self._entries)
        for prefix, ns in self._namespaces.items():
            try:
                out += [f"{prefix}/{n}" for n in import_object(ns.lister)()]
            except ImportError:
                continue  # a provider whose optional parts are missing lists nothing
        return out

    def load(self, name: str, **kwargs):
        if name in self._entries:
            target = self._entries[name]
            factory = import_object(target) if isinstance(target, str) else target
            return factory(**kwargs)
        prefix, sep, rest = name.partition("/")
        if sep and prefix in self._namespaces:
            return import_object(self._namespaces[prefix].loader)(rest, **kwargs)
        raise KeyError(
            f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self.names())) or 'none'}"
        )
