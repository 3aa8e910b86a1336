"""The RASP programs behind the Tracr ground truths, each declared in a few lines.

A program is a builder (called only when compiling, so that tracr is imported only then), its
vocabulary, its longest input, whether it is compiled with causal attention, and optionally a
precondition its inputs must meet. Whether the output is categorical or numerical is declared too
and checked against the compiled model.

Labels of the compiled residual stream come from RASP names plus tracr's global expression
counter; ``compile`` resets that counter before each build, so the labels are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    name: str
    build: Callable[[], object]  # () -> rasp.SOp; imports tracr inside
    vocab: tuple
    max_seq_len: int
    categorical: bool
    causal: bool = False
    valid: Callable[[tuple], bool] | None = None  # precondition on an input (no BOS)

    @property
    def description(self) -> str:
        """The first line of the builder's docstring."""
        text = (self.build.__doc__ or self.name).strip().splitlines()[0].strip()
        return text + (" Compiled with causal attention." if self.causal else "")


def _rasp():
    from tracr.rasp import rasp

    return rasp


def _lib():
    from tracr.compiler import lib

    return lib


def _length():
    rasp = _rasp()
    everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true")
    return rasp.SelectorWidth(everything).named("length")


def reverse():
    """Reverse the tokens (ACDC's tracr-reverse).

    ACDC's form: ``length - indices - 1`` as a SequenceMap then a Map, then one Aggregate.
    """
    rasp = _rasp()
    opp = (_length() - rasp.indices).named("opp_idx")
    opp = (opp - 1).named("opp_idx-1")
    flip = rasp.Select(rasp.indices, opp, rasp.Comparison.EQ).named("flip")
    return rasp.Aggregate(flip, rasp.tokens).named("reverse")


def frac_prevs():
    """Running share of 'x' tokens (ACDC's tracr-proportion, make_frac_prevs)."""
    rasp = _rasp()
    return _lib().make_frac_prevs((rasp.tokens == "x").named("is_x"))


def sort():
    """Sort the tokens, ties broken by position (make_sort)."""
    rasp = _rasp()
    return _lib().make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1)


def sort_unique():
    """Sort distinct tokens (make_sort_unique); inputs repeat no token."""
    rasp = _rasp()
    return _lib().make_sort_unique(rasp.tokens, rasp.tokens)


def hist():
    """How often each token occurs in the input (make_hist)."""
    return _lib().make_hist()


def pair_balance():
    """Running share of '(' minus share of ')': two mean heads side by side in one layer."""
    rasp = _rasp()
    return _lib().make_pair_balance(rasp.tokens, "(", ")")


def shuffle_dyck():
    """Are both bracket types balanced (shuffle-Dyck-2): 8 layers, 4 heads in one."""
    return _lib().make_shuffle_dyck(["()", "{}"])


def length():
    """The input length at every position (SelectorWidth of a select-all)."""
    return _length()


def pattern_abc():
    """Does "abc" end here (detect_pattern): two shift heads side by side in one layer."""
    rasp = _rasp()
    return _lib().detect_pattern(rasp.tokens, "abc")


def numerical_map():
    """The square of the token, through a numerical-to-numerical (discretising) MLP.

    A categorical-to-numerical MLP feeds it; no numerical mean comes first, since tracr's
    numerical MLPs after a numerical mean are known to be wrong.
    """
    rasp = _rasp()
    value = rasp.numerical(rasp.Map(lambda t: t, rasp.tokens)).named("value")
    square = rasp.Map(lambda x: x * x, value, simplify=False)
    return rasp.numerical(square).named("square")


def dup_frac():
    """Running share of tokens that occur more than once (our own chain of five operations).

    How often each token occurs (Select, SelectorWidth), whether it repeats (numerical Map),
    then the running mean of that (Select, numerical Aggregate).
    """
    rasp = _rasp()
    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")
    count = rasp.SelectorWidth(same).named("count")
    repeated = rasp.numerical(rasp.Map(lambda c: 1 if c > 1 else 0, count)).named("repeated")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    return rasp.numerical(rasp.Aggregate(prevs, repeated, default=0)).named("dup_frac")


def _unique(seq: tuple) -> bool:
    return len(set(seq)) == len(seq)


CAT, NUM = True, False
PROGRAMS: dict[str, Program] = {
    p.name: p
    for p in [  # name, builder, vocab, longest input, categorical output, causal
        Program("reverse", reverse, (1, 2, 3), 5, CAT),
        Program("frac_prevs", frac_prevs, ("w", "x", "y", "z"), 5, NUM),
        Program("frac_prevs_causal", frac_prevs, ("w", "x", "y", "z"), 5, NUM, causal=True),
        Program("sort", sort, (1, 2, 3), 5, CAT),
        Program("sort_unique", sort_unique, (1, 2, 3, 4, 5), 5, CAT, valid=_unique),
        Program("hist", hist, ("a", "b", "c"), 5, CAT),
        Program("pair_balance", pair_balance, ("(", ")"), 5, NUM),
        Program("shuffle_dyck", shuffle_dyck, ("(", ")", "{", "}"), 4, CAT),
        Program("length", length, ("a", "b", "c"), 5, CAT),
        Program("pattern_abc", pattern_abc, ("a", "b", "c"), 5, CAT),
        Program("numerical_map", numerical_map, (0, 1, 2, 3), 5, NUM),
        Program("dup_frac", dup_frac, ("a", "b", "c"), 5, NUM),
    ]
}


def get(name: str) -> Program:
    try:
        return PROGRAMS[name]
    except KeyError:
        raise KeyError(
            f"unknown Tracr program {name!r}; known: {', '.join(sorted(PROGRAMS))}"
        ) from None
