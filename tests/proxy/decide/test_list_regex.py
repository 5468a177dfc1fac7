"""The keyword and regex matcher (proxy/decide/list_regex.py): its required-literal
prefilter never loses a match. Held equal to searching every rule on its own with RE2,
on thousands of random expressions and texts, some built to hit each rule."""

from __future__ import annotations

import random

import pytest
import re2

from proxy.decide import list_regex
from proxy.decide.list_match import ListSnapshot
from proxy.decide.list_regex import PatternSet, expression, required
from proxy.decide.list_rules import Entry, EntryKind, ListName, regex_options
from proxy.errors import ListError
from proxy.wire.urls import canonicalize

B, A = ListName.BLOCKED, ListName.APPROVED
K, R = EntryKind.KEYWORD, EntryKind.REGEX


def by_hand(entries: tuple[Entry, ...], text: str) -> list[int]:
    """Every rule searched on its own: what the matcher must answer."""
    return [i for i, r in enumerate(compiled(entries)) if r.search(text) is not None]


def compiled(entries: tuple[Entry, ...]) -> list[re2._Regexp]:
    return [re2.compile(expression(e), options=regex_options()) for e in entries]


@pytest.mark.parametrize(("pattern", "atoms"), [
    (r"\.(exe|zip|scr)$", {".exe", ".zip", ".scr"}),
    (r"^https?://([a-z0-9-]+\.)*casino\.(com|net)/", {"casino.com/", "casino.net/"}),
    (r"[?&]sid=[a-f0-9]{16,}", {"?sid=", "&sid="}),
    (r"(?i)PayPal[-_.]?(login|verify)", {"paypal"}),  # case aside: matched case-insensitively
    (r"/wp-(admin|login)\.php", {"/wp-admin.php", "/wp-login.php"}),
    (r"(?:abc)+xyz", {"abc"}),  # the first of equally good requirements
    (r"ab(cd|e)fg", {"abcdfg", "abefg"}),
    (r"foo.*barbaz", {"barbaz"}),  # the longer of two requirements
    (r"/x/[0-9]+\.exe", {".exe"}),  # "/x/" is too short
])
def test_required_literals(pattern: str, atoms: set[str]) -> None:
    assert required(pattern) == atoms


@pytest.mark.parametrize("pattern", [
    r"^https?://[0-9.]+/",  # only "http", which every URL holds
    r"[[:alpha:]]{3}x",  # RE2's class: Python would read "[[:alph" as text
    r"\pL\pL\pLxyz",  # RE2 syntax Python refuses
    r"a(b|)c",  # an alternative may be empty: "ac" is too short
    r"[a-z]+\.[a-z]+",  # classes only
    r"(abc)?def?",  # optional parts: "de" is too short
    r"ab\x{63}d",  # RE2's \x{..}: Python refuses it
])
def test_no_useful_literal_leaves_the_expression_unfiltered(pattern: str) -> None:
    assert required(pattern) is None


ALPHABET = "abcAB./?=&-_0"


def random_expression(rng: random.Random, depth: int = 0) -> str:
    """RE2 syntax, mostly what Python's parser reads the same, some it refuses."""
    pick = rng.random()
    if depth > 3 or pick < 0.35:
        word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4)))
        return rng.choice([re2.escape(word)] * 8 +
                          ["[ab]", "[a-c]", "[^a]", r"\d", ".", "[?&]", "[Bb]", r"\b", "^", "$",
                           "[[:digit:]]", r"\pL", r"\x41", "[a-z]"])
    if pick < 0.6:
        return "".join(random_expression(rng, depth + 1) for _ in range(rng.randint(2, 5)))
    if pick < 0.75:
        return "|".join(random_expression(rng, depth + 1) for _ in range(rng.randint(2, 3)))
    if pick < 0.88:
        group = rng.choice(["(", "(?:", "(?i:", "(?P<g>"])
        return f"{group}{random_expression(rng, depth + 1)})"
    inner = random_expression(rng, depth + 1)
    return f"(?:{inner}){rng.choice(['*', '+', '?', '{1,3}', '{0,2}', '{2}', '+?', '{,2}'])}"


def random_text(rng: random.Random, atoms: list[str]) -> str:
    parts = ["".join(rng.choice(ALPHABET + "xyzC") for _ in range(rng.randint(0, 12)))]
    for _ in range(rng.randint(0, 3)):
        if atoms and rng.random() < 0.7:  # built to hold some rule's literal, in either case
            atom = rng.choice(atoms)
            parts.append(atom.upper() if rng.random() < 0.3 else atom)
        parts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6))))
    return "".join(parts)


def test_random_expressions_match_exactly_as_each_searched_on_its_own() -> None:
    rng = random.Random(20261215)
    checked = filtered_hits = missed = 0
    for _ in range(60):
        entries: list[Entry] = []
        while len(entries) < 30:
            text = random_expression(rng)
            try:
                re2.compile(text, options=regex_options())
            except re2.error:
                continue
            entries.append(Entry(rng.choice([A, B]), R, text))
        entries += [Entry(B, K, rng.choice(["ab.", "b=0", "_-_", "aaa"])) for _ in range(3)]
        ps = PatternSet(entries)
        each = compiled(ps.entries)
        needs = [required(e.value) if e.kind is R else {e.value} for e in ps.entries]
        atoms = [a for n in needs if n for a in n]
        for _ in range(80):
            text = random_text(rng, atoms)
            want = [i for i, r in enumerate(each) if r.search(text) is not None]
            assert ps.match(text.encode()) == want, text
            checked += 1
            filtered_hits += sum(needs[i] is not None for i in want)
            missed += sum(needs[i] is not None and i not in want and any(a in text.lower() for a in needs[i])
                          for i in range(len(each)))
    assert checked == 4800
    # the cases exercised both sides of the prefilter: literal found and the rule matched, or not
    assert filtered_hits > 2000 and missed > 1000


SHAPES = [  # bench/bench_lists.py's, and one with no useful literal
    (lambda w: rf"^https?://([a-z0-9-]+\.)*{w}\.(com|net|org)/", "http://www.{w}.com/"),
    (lambda w: rf"/{w}/[0-9]+\.(exe|zip|scr)$", "http://x.test/{w}/123.exe"),
    (lambda w: rf"[?&]{w}=[a-f0-9]{{16,}}", "http://x.test/?q=1&{w}=0123456789abcdef0"),
    (lambda w: rf"{w}[-_.]?(login|verify|account)", "http://x.test/{w}-login"),
    (lambda w: rf"^https?://[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/{w[:1]}", "http://10.0.0.1/{w}"),
]


def test_urls_built_to_hit_each_rule_match_as_by_hand() -> None:
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 8))) for _ in range(400)]
    entries = [Entry(B, R, SHAPES[i % len(SHAPES)][0](w)) for i, w in enumerate(words)]
    entries += [Entry(A, K, w) for w in words[:40]]
    snap = ListSnapshot(entries)
    ps = PatternSet(entries)
    each = compiled(ps.entries)
    hit: set[int] = set()
    for i, w in enumerate(words):
        for url in [SHAPES[i % len(SHAPES)][1].format(w=w), f"http://x.test/{w.upper()}/{rng.choice(words)}"]:
            canonical = canonicalize(url)
            want = [j for j, r in enumerate(each) if r.search(canonical) is not None]
            assert ps.match(canonical.encode()) == want, canonical
            in_snapshot = [e.value for e in snap.url_entries(canonical)]  # most specific first
            assert sorted(in_snapshot) == sorted(ps.entries[j].value for j in want)
            hit.update(want)
    assert len(hit) == len(entries)  # every rule was hit by some URL


def test_a_url_holding_many_literals_is_decided_by_the_full_set() -> None:
    entries = [Entry(B, R, rf"w{i:02d}x[0-9]") for i in range(list_regex.CONFIRM_AT_MOST * 3)]
    ps = PatternSet(entries)
    text = "".join(f"w{i:02d}x{i % 2 * 5}" if i % 3 else f"w{i:02d}xz" for i in range(len(entries)))
    assert ps.match(text.encode()) == by_hand(ps.entries, text)
    assert len(ps.match(text.encode())) > list_regex.CONFIRM_AT_MOST


@pytest.mark.parametrize("values", [
    [r"^https?://[0-9.]+/"],  # only unfiltered expressions
    [r"\.exe$"],  # only filtered ones
    [],  # keywords only
])
def test_sets_with_one_part_missing(values: list[str]) -> None:
    entries = [Entry(B, R, v) for v in values] + [Entry(A, K, "download")]
    ps = PatternSet(entries)
    for text in ("http://1.2.3.4/setup.exe", "http://x.test/DownLoad/a", "http://x.test/"):
        assert ps.match(text.encode()) == by_hand(ps.entries, text)


def test_non_ascii_text_and_case_folding_match_as_re2_does() -> None:
    entries = [Entry(B, R, "(?i)kelvin"), Entry(B, R, "straße"), Entry(B, K, "caf%c3%a9")]
    ps = PatternSet(entries)
    for text in ("http://x.test/\u212aelvin", "http://x.test/STRAßE", "http://x.test/straße",
                 "http://x.test/CAF%C3%A9", "http://x.test/ünï/kelvi"):
        assert ps.match(text.encode()) == by_hand(ps.entries, text), text


def test_rules_re2_cannot_compile_together_are_refused() -> None:
    with pytest.raises(ListError, match="cannot be compiled together"):
        PatternSet([Entry(B, R, "a(")])
