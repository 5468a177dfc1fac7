"""Keyword and regular-expression rules matched against a URL without running them all.

Why it is shaped so: one RE2 set of 1,000 expressions costs the query door 10-20 µs a
URL (``bench/bench_lists.py``), most of it spent building automaton states for text
the set has not met yet, and its states crowd the caches the rest of the door needs.
Yet almost every expression requires some literal text (``/login``, ``?id=``,
``.exe``), and almost every URL holds none of it. So:

1. ``required`` works out, from an expression's parse, a set of strings one of which
   is in any text it matches (its *atoms*); a keyword is its own atom.
2. Every atom goes into one literal, case-insensitive RE2 set: a small automaton (a
   trie of the atoms, bounded whatever the traffic), searched once per URL. A URL
   holding no atom skips every filtered expression.
3. The expressions whose atom was found are confirmed one by one with their own RE2
   (a keyword's atom is its match: nothing to confirm). More than ``CONFIRM_AT_MOST``
   of them and the full set of every rule decides instead, so a URL stuffed with
   atoms costs one search of the full set, as it did before, not a thousand.
4. Expressions with no useful atom (``^https?://[0-9.]+/``: every URL holds ``http``)
   form a small set searched for every URL.

Case: atoms are matched case-insensitively, so an atom is required whatever the
expression's flags (a superset is safe: step 3 confirms). The analysis reads the
expression with Python's own parser, which accepts a subset of RE2's syntax with the
same meaning; what it refuses, and RE2's ``[[:alpha:]]`` (which Python would read as
literal text), is left unfiltered. ``tests/proxy/decide/test_list_regex.py`` holds
``PatternSet.match`` equal to searching every rule on its own, on thousands of URLs.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Sequence
from re import _parser  # type: ignore[attr-defined]
from typing import Any

import re2  # type: ignore[import-untyped,unused-ignore]

from proxy.decide.list_rules import Entry, EntryKind, regex_options
from proxy.errors import ListError

SET_MEMORY = 256 << 20  # RE2 budget of the full set: 1,000 typical expressions take a few MB
ATOM_MEMORY = 64 << 20  # the atoms' literal set: a trie, a few MB for 10,000 expressions
CONFIRM_MEMORY = 8 << 20  # one expression confirmed on its own (RE2's default budget)
CONFIRM_AT_MOST = 8  # candidates confirmed one by one; more and the full set decides
MIN_ATOM = 3  # a shorter atom is in too many URLs to filter anything
MAX_EXACT = 16  # strings an exact part may stand for (``(exe|zip|scr)``: 3)
MAX_CLASS = 4  # characters a class may stand for (``[?&]``: 2)
MAX_NEED = 64  # atoms one expression may need (alternatives of alternatives)
MAX_ATOM = 64  # characters of one atom: a longer literal run is cut into required pieces
# An atom inside every canonical URL filters nothing.
EVERYWHERE = ("http://", "https://")

Strings = frozenset[str]
Info = tuple[Strings | None, Strings | None]
"""What a part of an expression matches: (exactly one of these strings, or None;
else a text holding one of these strings, or None: nothing known)."""
NOTHING: Info = (None, None)
EMPTY: Info = (frozenset({""}), None)


class _Unfilterable(Exception):
    """The expression holds a construct the analysis does not read: search it always."""


@functools.lru_cache(maxsize=20_000)  # every snapshot reads the same expressions again
def required(pattern: str) -> Strings | None:
    """Strings one of which (case aside) is in every text ``pattern`` matches, or None
    when none is known or each would be too common to filter anything.

    ~0.1 ms an expression (Python's parser), so remembered: a snapshot rebuilt after one
    change reads the others again. At most 20,000: twice ``lists.MAX_PATTERN_RULES``."""
    if "[:" in pattern:  # RE2's [[:alpha:]]: Python would read literal text there
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = _parser.parse(pattern)
        if tree.state.flags & re.VERBOSE:
            return None
        exact, need = _seq(tree)
    except (re.error, RecursionError, OverflowError, ValueError, _Unfilterable):
        return None
    return _as_need(exact) if exact is not None else need


def _fold(text: str) -> str:
    """ASCII lower case only: the atoms' set folds case itself; this just merges duplicates."""
    return text.lower() if text.isascii() else text


def _as_need(exact: Strings | None) -> Strings | None:
    """Exact strings as required ones: useless if any is short or in every URL."""
    if exact is None or not exact or len(exact) > MAX_NEED:
        return None
    for s in exact:
        if len(s) < MIN_ATOM or any(s in everywhere for everywhere in EVERYWHERE):
            return None
    return exact


def _better(a: Strings | None, b: Strings | None) -> Strings | None:
    """Of two requirements (both hold), the one likelier to rule a URL out: longer, fewer."""
    if a is None or b is None:
        return a if b is None else b
    return max(a, b, key=lambda s: (min(map(len, s)), -len(s)))


def _need_of(info: Info) -> Strings | None:
    return _as_need(info[0]) if info[0] is not None else info[1]


def _seq(items: Iterable[Any]) -> Info:
    """A concatenation: runs of exact parts multiply out (``.`` then ``(com|net)``: ``.com``,
    ``.net``); a run grown too big or ended by an inexact part is one requirement."""
    run: Strings = frozenset({""})
    best: Strings | None = None
    exact = True
    for op, av in items:
        part, need = _item(op, av)
        if part is None:
            best = _better(_better(best, _as_need(run)), need)
            run, exact = frozenset({""}), False
            continue
        joined = frozenset(a + b for a in run for b in part) if len(run) * len(part) <= MAX_EXACT else None
        if joined is None or max(map(len, joined)) > MAX_ATOM:
            best = _better(best, _as_need(run))
            run, exact = part, False
        else:
            run = joined
    return (run, None) if exact else (None, _better(best, _as_need(run)))


def _item(op: Any, av: Any) -> Info:
    if op is _parser.LITERAL:
        return frozenset({_fold(chr(av))}), None
    if op is _parser.IN:
        chars = _class(av)
        return (chars, None) if chars is not None else NOTHING
    if op is _parser.AT:
        return EMPTY
    if op is _parser.SUBPATTERN:
        return _seq(av[-1])
    if op is _parser.BRANCH:
        return _branch([_seq(alt) for alt in av[1]])
    if op in (_parser.MAX_REPEAT, _parser.MIN_REPEAT, _parser.POSSESSIVE_REPEAT):
        low, high, sub = av
        if low == 0:
            return NOTHING
        inner = _seq(sub)
        return inner if low == high == 1 else (None, _need_of(inner))
    if op in (_parser.ANY, _parser.NOT_LITERAL, _parser.CATEGORY):
        return NOTHING
    raise _Unfilterable(str(op))


def _branch(alternatives: Sequence[Info]) -> Info:
    """Alternatives: exact if each is and there are few strings; else one of each's needs."""
    if all(a[0] is not None for a in alternatives):
        union = frozenset().union(*(a[0] for a in alternatives if a[0] is not None))
        if len(union) <= MAX_EXACT:
            return union, None
    needs = [_need_of(a) for a in alternatives]
    if any(n is None for n in needs):
        return NOTHING
    union = frozenset().union(*(n for n in needs if n is not None))
    return (None, union) if len(union) <= MAX_NEED else NOTHING


def _class(items: Any) -> Strings | None:
    """The characters of a small class (``[?&]``), or None (negated, a category, too many)."""
    chars: set[str] = set()
    for op, av in items:
        if op is _parser.LITERAL:
            chars.add(_fold(chr(av)))
        elif op is _parser.RANGE and av[1] - av[0] < MAX_CLASS:
            chars.update(_fold(chr(c)) for c in range(av[0], av[1] + 1))
        else:
            return None
        if len(chars) > MAX_CLASS:
            return None
    return frozenset(chars)


def expression(e: Entry) -> str:
    """A keyword or regex rule as the RE2 expression it matches a canonical URL with."""
    return f"(?i){re2.escape(e.value)}" if e.kind is EntryKind.KEYWORD else e.value


def _search_set(patterns: Sequence[str], memory: int, *, literal: bool = False) -> Any:
    """One compiled RE2 search set, bare (no per-call wrapper). Raises re2.error."""
    options: Any = regex_options()
    options.max_mem = memory
    if literal:
        options.literal = True
        options.case_sensitive = False
    compiled = re2.Set.SearchSet(options)
    for p in patterns:
        compiled.Add(p)
    compiled.Compile()
    return getattr(compiled, "_set", compiled)


class PatternSet:
    """Keyword and regex rules (most specific first), asked which of them a URL matches."""

    __slots__ = ("_all", "_atom_rules", "_atoms", "_confirm", "_rest", "_rest_rules", "entries")

    def __init__(self, ordered: Sequence[Entry]) -> None:
        """Raises ListError when RE2 cannot compile the rules together."""
        self.entries = tuple(ordered)
        patterns = [expression(e) for e in self.entries]
        atoms: dict[str, list[int]] = {}
        rest: list[int] = []
        for i, e in enumerate(self.entries):
            need = frozenset({e.value}) if e.kind is EntryKind.KEYWORD else required(e.value)
            if need is None:
                rest.append(i)
            for atom in need or ():
                atoms.setdefault(_fold(atom), []).append(i)
        try:
            self._all = _search_set(patterns, SET_MEMORY)
            self._atoms = _search_set(list(atoms), ATOM_MEMORY, literal=True) if atoms else None
            self._rest = _search_set([patterns[i] for i in rest], SET_MEMORY) if rest else None
            unfiltered = set(rest)
            self._confirm = tuple(None if e.kind is EntryKind.KEYWORD or i in unfiltered else
                                  _search_set([patterns[i]], CONFIRM_MEMORY)
                                  for i, e in enumerate(self.entries))
        except re2.error as err:
            raise ListError(f"the keyword and regex rules cannot be compiled together: {err}") from None
        self._atom_rules = tuple(tuple(rules) for rules in atoms.values())
        self._rest_rules = tuple(rest)

    def match(self, data: bytes) -> list[int]:
        """Positions in ``entries`` of every rule matching the UTF-8 text, in order."""
        found: list[int] = []
        if self._atoms is not None:
            hits = self._atoms.Match(data)
            if hits:
                atom_rules, confirm = self._atom_rules, self._confirm
                candidates = sorted({i for h in hits for i in atom_rules[h]})
                if sum(confirm[i] is not None for i in candidates) > CONFIRM_AT_MOST:
                    return sorted(self._all.Match(data))  # one search, however many candidates
                found = [i for i in candidates if confirm[i] is None or confirm[i].Match(data)]
        if self._rest is not None:
            more = self._rest.Match(data)
            if more:
                found += [self._rest_rules[i] for i in more]
                found.sort()
        return found
