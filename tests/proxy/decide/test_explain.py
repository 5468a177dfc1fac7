"""`rampart lists test URL`: every matching rule and pattern entry, and the engine's decision."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from addons.cli import cli
from proxy.decide.explain import explain_url
from proxy.decide.lists import Entry, EntryKind, ListName, ListSnapshot
from proxy.errors import ProtocolError
from proxy.model import Rating, Source
from proxy.patterns.pattern import PatternSet


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    from proxy.patterns.build import build_pattern
    from proxy.serve.app import sample_sources

    out = tmp_path_factory.mktemp("explain") / "p"
    src = sample_sources("appliance")
    build_pattern(out, hashes=src["hashes"], urls=src["urls"], domains=src["domains"])
    with PatternSet.open(out) as p:
        yield p


def rules(*entries: tuple[ListName, EntryKind, str]) -> ListSnapshot:
    return ListSnapshot([Entry(n, k, v, "", 0.0) for n, k, v in entries])


def test_blocked_beats_a_more_specific_approved_rule_and_both_are_shown(patterns):
    e = explain_url("http://www.bad.example.test/ok/page", rules(
        (ListName.BLOCKED, EntryKind.DOMAIN, "bad.example.test"),
        (ListName.APPROVED, EntryKind.URL, "www.bad.example.test/ok"),
    ), patterns)
    assert [r[0] for r in e.rules] == ["approved", "blocked"]  # most specific first
    assert e.decision is not None and e.decision.source is Source.BLOCKED_LIST
    assert e.decision.matched == "bad.example.test"


def test_every_pattern_hit_is_listed_and_the_most_severe_decides(patterns):
    e = explain_url("http://testsafebrowsing.appspot.com/s/malware.html", rules(), patterns)
    assert len(e.pattern_hits) >= 1
    assert e.decision is not None and e.decision.rating is Rating.DANGEROUS
    assert e.decision.matched == "testsafebrowsing.appspot.com/s/malware.html"
    assert "testsafebrowsing.appspot.com/s/malware.html" in e.expressions


def test_unknown_url_is_left_to_the_cache_and_cloud(patterns):
    e = explain_url("http://FINE.example:8080/a/../b", rules(), patterns)
    assert e.canonical == "http://fine.example/b" and e.decision is None
    assert "not decided here" in "\n".join(e.lines())


def test_a_url_the_door_would_refuse_is_refused_here_too(patterns):
    with pytest.raises(ProtocolError):
        explain_url("http://" + "a" * 5000 + ".test/", rules(), patterns)


def test_cli_prints_the_explanation(tmp_path):
    runner = CliRunner()
    data = str(tmp_path)
    assert runner.invoke(cli, ["lists", "add", "--data-dir", data, "--blocked", "evil.test"]).exit_code == 0
    result = runner.invoke(cli, ["lists", "test", "--data-dir", data, "http://a.evil.test/x",
                                 "http://testsafebrowsing.appspot.com/s/phishing.html"])
    assert result.exit_code == 0, result.output
    assert "decision   dangerous from blocked-list (evil.test)" in result.output
    assert "decision   dangerous from pattern" in result.output
    bad = runner.invoke(cli, ["lists", "test", "--data-dir", data, "http://"])
    assert bad.exit_code != 0 and "error" in bad.output


def test_for_a_client_scoped_rules_apply_and_each_rule_says_its_part(patterns):
    from proxy.decide.list_rules import parse_clients

    snapshot = ListSnapshot([
        Entry(ListName.BLOCKED, EntryKind.KEYWORD, "casino", clients=parse_clients(["10.0.0.0/8"])),
        Entry(ListName.APPROVED, EntryKind.DOMAIN, "fun.example.test"),
        Entry(ListName.APPROVED, EntryKind.URL, "casino.fun.example.test/"),
        Entry(ListName.BLOCKED, EntryKind.REGEX, r"\.exe$", expires=1.0),
    ])
    url = "http://casino.fun.example.test/setup.exe"
    inside = explain_url(url, snapshot, patterns, "10.1.2.3")
    assert inside.decision is not None and inside.decision.source is Source.BLOCKED_LIST
    assert inside.decision.matched == "casino"
    parts = {m.entry.value: m.part for m in inside.matches}
    assert parts == {
        "casino": "decides",
        "casino.fun.example.test/": "also matches; a blocked rule wins over every approved rule",
        "fun.example.test": "also matches; a blocked rule wins over every approved rule",
    }  # the expired regex is in no snapshot: `lists show` marks it EXPIRED
    text = "\n".join(inside.lines())
    assert "client     10.1.2.3" in text
    assert "blocked  keyword casino  [clients 10.0.0.0/8]  <- decides" in text

    outside = explain_url(url, snapshot, patterns, "192.0.2.1")
    assert outside.decision is not None and outside.decision.source is Source.APPROVED_LIST
    assert outside.decision.matched == "casino.fun.example.test/"
    parts = {m.entry.value: m.part for m in outside.matches}
    assert parts["casino"] == "does not apply: not for this client"
    assert parts["fun.example.test"] == "also matches; the most specific rule of its list is the one reported"

    unknown = explain_url(url, snapshot, patterns)
    assert "does not apply: scoped to client networks (give a client)" in "\n".join(unknown.lines())
    assert "client     not given" in "\n".join(unknown.lines())
