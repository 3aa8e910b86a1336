"""circuitboard.methods: the circuit-finding methods and their registry (see ARCHITECTURE.md).

``names()`` lists the built-in methods and those that installed packages declare under the
entry-point group ``circuitboard.methods``; ``get(name, **params)`` builds one. Import paths
(``"pkg.mod:Class"``) are resolved by ``circuitboard.get_method``. Built-in modules load only
when asked for.
"""

from __future__ import annotations

from importlib import metadata

from circuitboard.registry import import_object

ENTRY_POINT_GROUP = "circuitboard.methods"

BUILTIN = {
    "acdc": "circuitboard.methods.acdc:ACDC",
    "eap": "circuitboard.methods.eap:EAP",
    "eap-ig": "circuitboard.methods.eap_ig:EAPIG",
    "edge-pruning": "circuitboard.methods.edge_pruning:EdgePruning",
    "node-pruning": "circuitboard.methods.node_pruning:NodePruning",
    "random": "circuitboard.methods.baselines:Random",
    "groundtruth": "circuitboard.methods.baselines:GroundTruth",
    "full": "circuitboard.methods.baselines:Full",
}


def _entry_points() -> dict:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Built-in method names, then those from installed entry points."""
    return list(BUILTIN) + sorted(n for n in _entry_points() if n not in BUILTIN)


def get(name: str, **params):
    """The method ``name`` built with ``params``; unknown names and parameters are named."""
    if name in BUILTIN:
        factory = import_object(BUILTIN[name])
    else:
        eps = _entry_points()
        if name not in eps:
            raise KeyError(
                f"unknown method {name!r}; registered: {', '.join(names())}. A method of your "
                f"own can be given as an import path 'package.module:Class' or declared under "
                f"the entry-point group {ENTRY_POINT_GROUP!r}"
            )
        factory = eps[name].load()
    try:
        return factory(**params)
    except TypeError as err:
        raise TypeError(f"method {name!r} does not accept these parameters: {err}") from None


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "get", "names"]
