"""Why a URL gets the answer it gets: every list rule and pattern entry that matches, and the winner.

``rampart lists test URL`` prints this for administrators. The decision itself
comes from the engine (the same code that answers products), so the explanation
cannot drift from what the appliance really does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.decide.cache import AnswerCache
from proxy.decide.engine import Engine
from proxy.decide.lists import ListSnapshot
from proxy.model import WebAnswer
from proxy.patterns.pattern import PatternSet, WebHit
from proxy.wire import protocol, urls


class _NoStats:
    def count_items(self, service: Any, sources: Any) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Explanation:
    url: str
    canonical: str
    expressions: tuple[str, ...]
    rules: tuple[tuple[str, str, str], ...]  # (list, kind, value), most specific first
    pattern_hits: tuple[tuple[str, WebHit], ...]  # (matched expression, domain or range)
    decision: WebAnswer | None  # None: not decided locally (the cache or the cloud answers)

    def lines(self) -> list[str]:
        out = [f"url        {self.url}", f"canonical  {self.canonical}"]
        if self.rules:
            for i, (name, kind, value) in enumerate(self.rules):
                out.append(f"{'list' if i == 0 else '':<10} {name:<8} {kind:<6} {value}")
        else:
            out.append("list       no approved or blocked rule matches")
        if self.pattern_hits:
            for i, (matched, hit) in enumerate(self.pattern_hits):
                out.append(
                    f"{'pattern' if i == 0 else '':<10} {hit.rating.value:<17} {hit.score:>3} "
                    f"{hit.category or '-':<12} {matched}  ({hit.pattern})"
                )
        else:
            out.append("pattern    no pattern entry matches")
        d = self.decision
        if d is None:
            out.append("decision   not decided here: the cache or the cloud answers (with no"
                       " cloud configured: untested, source local)")
        else:
            why = {
                "blocked-list": "a blocked rule wins over everything",
                "approved-list": "an approved rule wins over the pattern",
                "pattern": "the most severe pattern entry (the most specific on a tie)",
            }.get(d.source.value, "")
            out.append(f"decision   {d.rating.value} from {d.source.value}"
                       f"{f' ({d.matched})' if d.matched else ''}: {why}")
        return out


def explain_url(url: str, lists: ListSnapshot, patterns: PatternSet) -> Explanation:
    """Raises ProtocolError for a URL the query door would refuse, with the same message."""
    q = protocol.parse_url(url, protocol.Limits())
    expressions = urls.expressions(q.canonical)
    engine = Engine(patterns=patterns, lists=lists, cache=AnswerCache(0), relay=None,
                    stats=_NoStats())
    hits: list[tuple[str, WebHit]] = []
    for expression in expressions:
        found = patterns.lookup_url([expression])
        if found is not None:
            hits.append(found)
    host = q.host[1:-1] if q.host.startswith("[") else q.host
    ip = urls.parse_ip(host)
    found = patterns.lookup_ip(ip) if ip is not None else patterns.lookup_domain(host)
    if found is not None:
        hits.append(found)
    return Explanation(
        url=url,
        canonical=q.canonical,
        expressions=tuple(expressions),
        rules=tuple((e.list.value, e.kind.value, e.value) for e in lists.url_entries(q.canonical)),
        pattern_hits=tuple(hits),
        decision=engine.web_local_one(q),
    )
