"""The decision chain
(docs/architecture.md, “The decision chain”): blocked list ▸ approved list ▸ pattern ▸ cache ▸ relay.

For every item the first source that answers wins. Local sources are consulted
synchronously (``*_local`` returns ``None`` where nothing local answered) so a
request that is fully answered locally never awaits; only the leftovers go to
the cache and then, gathered into one call, to the relay.

What an item nobody knew becomes says why, so a product knows whether to ask again:

- no cloud to ask: an authoritative engine (the reference cloud) answers it
  ``unknown``/``untested`` with source ``cloud``; an appliance with no cloud
  configured gives the same answer with source ``local`` (and a note saying no cloud
  is configured). Both carry ``local_ttl``: the answer is final, asking again
  sooner would get the same one.
- a configured cloud that did not answer usably in time: ``degraded``, no TTL,
  ``retry_after``; the product flags the item and asks again. With a web policy its
  ``action`` is ``degraded_action``'s under ``low``/``medium`` (``high`` blocks it as
  it blocks ``untested``), see ``proxy.wire.replies``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import operator
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from functools import partial
from itertools import compress, repeat
from typing import Any, Protocol

from proxy.config import DEGRADED_ACTIONS, default
from proxy.decide.cache import AnswerCache
from proxy.errors import RelayError
from proxy.model import (
    DomainQuery,
    FileAnswer,
    FileQuery,
    HashKind,
    InspectAnswer,
    InspectQuery,
    Rating,
    Service,
    Source,
    Verdict,
    WebAnswer,
    WebQuery,
)
from proxy.patterns.pattern import FileHit, PatternSet, WebHit
from proxy.wire import protocol, replies, urls
from proxy.wire.protocol import FileBatch

logger = logging.getLogger(__name__)

BLOCKED_THREAT = "Blocked-By-Administrator"
BLOCKED_CATEGORY = "blocked-by-administrator"
APPROVED_CATEGORY = "approved-by-administrator"

Answer = FileAnswer | WebAnswer | InspectAnswer
Ask = list[tuple[int, str, object]]  # (position, cache key, upstream item) still to answer


class Lists(Protocol):
    """What the engine asks of the administrator's lists (proxy.decide.list_match.ListSnapshot).

    ``client`` is the asking peer's address: a rule scoped to client networks applies only
    to clients in them (None: unknown, only unscoped rules). ``scoped`` says some rule is,
    so an answer may depend on who asks (the GET memo keys on the client then).
    """

    scoped: bool

    def match_hexes(self, hexes: Sequence[str], client: str | None = None) -> dict[str, tuple[Any, str]]: ...
    def match_url(self, canonical_url: str, client: str | None = None,
                  host: str | None = None) -> tuple[Any, str] | None: ...
    def match_domain(self, name: str, client: str | None = None) -> tuple[Any, str] | None: ...


class RelayLike(Protocol):
    async def ask_many(
        self, service: Service, pairs: Sequence[tuple[str, object]]
    ) -> list[dict[str, Any] | RelayError]: ...


class SharedCache(Protocol):
    """The cloud-answer cache the appliances share (proxy.shared.answers.SharedAnswers), asked
    for what the local cache missed before the relay is. ``get_many`` answers within its own
    bound and never raises (None: a miss); ``put_many`` stores the cloud's results (the JSON
    the relay returned) with their TTLs without making the caller wait."""

    async def get_many(
        self, service: Service, keys: Sequence[str]
    ) -> list[tuple[dict[str, Any], int] | None]: ...
    def put_many(self, service: Service, items: Sequence[tuple[str, dict[str, Any], float]]) -> None: ...


class StatsLike(Protocol):
    def count_items(self, service: Service, sources: Mapping[Any, int]) -> None: ...

    def count_item(self, service: Service, source: Any) -> None: ...


_source = operator.attrgetter("source")
_is_none = partial(operator.is_, None)


def _complete(answers: list[Any]) -> bool:
    """No position is None. By identity: ``None in answers`` would call each dataclass's __eq__."""
    return not any(map(_is_none, answers))


_views: dict[Any, Any] = {}  # each distinct cache view, once (see _served_from_cache)


def _served_from_cache(answer: Any, left: int) -> Any:
    """``answer`` as the cache serves it with ``left`` seconds: one object per distinct view,
    so a batch of cache hits holds a few answers the renderer memoises, not one per item.
    Made once per cache entry and second (``AnswerCache.get_views``): the hash is paid then."""
    view = dataclasses.replace(answer, source=Source.CACHE, ttl=left)
    if len(_views) >= 65536:
        _views.clear()
    return _views.setdefault(view, view)


def _is_blocked(match: tuple[Any, str]) -> bool:
    name = match[0]
    return str(getattr(name, "value", name)) == "blocked"


class Engine:
    def __init__(
        self,
        *,
        patterns: PatternSet,
        lists: Lists,
        cache: AnswerCache[Answer],
        relay: RelayLike | None,
        stats: StatsLike,
        local_ttl: int = default("local_ttl"),
        retry_after: int = default("degraded_retry_after"),
        authoritative: bool = False,
        degraded_action: str = default("degraded_action"),
        shared: SharedCache | None = None,
    ) -> None:
        if degraded_action not in DEGRADED_ACTIONS:
            raise ValueError(f"degraded_action {degraded_action!r} is not one of {DEGRADED_ACTIONS}")
        self.patterns = patterns  # swapped whole by the updater; read once per request
        self.lists = lists  # swapped whole when the list store changes
        self.cache = cache
        self.relay = relay
        self.shared = shared  # the appliances' shared cache (None: this one's alone)
        self.stats = stats
        self.local_ttl = local_ttl
        self.retry_after = retry_after
        self.authoritative = authoritative
        self.block_degraded = degraded_action == "block"  # read by the routes when rendering
        self._file_hits: dict[int, tuple[FileHit, FileAnswer]] = {}
        self._degraded_file = FileAnswer(Verdict.UNKNOWN, Source.DEGRADED, retry_after=retry_after)
        self._degraded_web = WebAnswer(
            Rating.UNTESTED, Source.DEGRADED, score=Rating.UNTESTED.default_score,
            retry_after=retry_after,
        )
        # Nobody knew the item and there is no cloud to ask: the reference cloud's answer,
        # or the same from an appliance with no cloud configured.
        here = Source.CLOUD if authoritative else Source.LOCAL
        self._unknown_file = FileAnswer(Verdict.UNKNOWN, here, ttl=local_ttl)
        self._untested = WebAnswer(
            Rating.UNTESTED, here, score=Rating.UNTESTED.default_score, ttl=local_ttl
        )

    @property
    def version(self) -> str:
        return self.patterns.version

    # ------------------------------------------------------------ files

    def _file_list_answer(self, match: tuple[Any, str]) -> FileAnswer:
        if _is_blocked(match):
            return FileAnswer(
                Verdict.MALICIOUS, Source.BLOCKED_LIST, threat=BLOCKED_THREAT,
                ttl=self.local_ttl, matched=match[1],
            )
        return FileAnswer(Verdict.CLEAN, Source.APPROVED_LIST, ttl=self.local_ttl, matched=match[1])

    def _file_hit_answer(self, hit: FileHit) -> FileAnswer:
        # Keyed by identity: PatternSet interns its hits, and the memo holds each one.
        memo = self._file_hits.get(id(hit))
        if memo is not None and memo[0] is hit:
            return memo[1]
        answer = FileAnswer(hit.verdict, Source.PATTERN, threat=hit.threat, ttl=self.local_ttl)
        if len(self._file_hits) > 65536:
            self._file_hits.clear()
        self._file_hits[id(hit)] = (hit, answer)
        return answer

    def files_local(self, batch: FileBatch, client: str | None = None) -> list[FileAnswer | None]:
        out: list[FileAnswer | None] = [None] * len(batch)
        hit_answer = self._file_hit_answer
        put = out.__setitem__
        for kind, (positions, raw) in batch.groups.items():
            for hit, at in self.patterns.lookup_joined(kind, raw):
                where = at if positions is None else map(positions.__getitem__, at)
                deque(map(put, where, repeat(hit_answer(hit))), maxlen=0)  # out[j] = answer, in C
        matches = self.lists.match_hexes(batch.hexes, client)
        if matches:  # the administrator's lists outrank the pattern
            for i, h in enumerate(batch.hexes):
                match = matches.get(h)
                if match is not None:
                    out[i] = self._file_list_answer(match)
        return out

    def begin_files(self, batch: FileBatch, client: str | None = None) -> tuple[list[Any], Ask]:
        """Local sources and the cache; returns the answers so far and what to relay.
        ``client`` (every ``begin_*``): the peer's address, for rules scoped to networks."""
        answers: list[Any] = self.files_local(batch, client)
        if _complete(answers):
            return answers, []
        names, hexes = batch.names, batch.hexes
        missing = list(compress(range(len(answers)), map(_is_none, answers)))
        # A file's cache key is its hex digest: the length tells the kind apart.
        left = self.settle(Service.FILE, answers, list(zip(missing, map(hexes.__getitem__, missing))))
        return answers, [(i, key, {names[i]: key}) for i, key in left]

    # ------------------------------------------------------------ web

    def _web_list_answer(self, match: tuple[Any, str]) -> WebAnswer:
        if _is_blocked(match):
            return WebAnswer(
                Rating.DANGEROUS, Source.BLOCKED_LIST, score=100, category=BLOCKED_CATEGORY,
                ttl=self.local_ttl, matched=match[1],
            )
        return WebAnswer(
            Rating.SAFE, Source.APPROVED_LIST, score=0, category=APPROVED_CATEGORY,
            ttl=self.local_ttl, matched=match[1],
        )

    def local_miss(self) -> WebAnswer | None:
        """The answer to a domain or address no list, pattern or cached answer knows when
        no cloud is asked (``begin_domain_one``'s last one); None: the relay asks."""
        return self._untested if self.relay is None or self.authoritative else None

    def pattern_answer(self, matched: str, hit: WebHit) -> WebAnswer:
        """A pattern hit's answer (``domain_local_one``'s, and the DNS door's lane's)."""
        return WebAnswer(
            hit.rating, Source.PATTERN, score=hit.score, category=hit.category,
            ttl=self.local_ttl, matched=matched,
        )

    def _host_hit(self, host: str) -> tuple[str, WebHit] | None:
        ip = urls.parse_ip(host)
        if ip is not None:
            return self.patterns.lookup_ip(ip)
        return self.patterns.lookup_domain(host)

    def web_local_one(self, q: WebQuery, client: str | None = None) -> WebAnswer | None:
        match = self.lists.match_url(q.canonical, client, q.host)  # its host: parsed once
        if match is not None:
            return self._web_list_answer(match)
        found = self.patterns.lookup_url(urls.expressions(q.canonical))
        host = self._host_hit(q.host)
        if host is not None and (found is None or host[1].rating.severity > found[1].rating.severity):
            found = host
        return self.pattern_answer(*found) if found is not None else None

    def begin_web(self, qs: Sequence[WebQuery], client: str | None = None) -> tuple[list[Any], Ask]:
        answers: list[Any] = [self.web_local_one(q, client) for q in qs]
        if _complete(answers):
            return answers, []
        pending = [(i, f"web:{q.canonical}") for i, (q, a) in enumerate(zip(qs, answers)) if a is None]
        return answers, [(i, key, key[4:]) for i, key in self.settle(Service.WEB, answers, pending)]

    # ------------------------------------------------------------ domain / IP

    def domain_local_one(self, q: DomainQuery, client: str | None = None) -> WebAnswer | None:
        match = self.lists.match_domain(q.name, client)
        if match is not None:
            return self._web_list_answer(match)
        found = self.patterns.lookup_ip(q.ip) if q.ip is not None else (
            self.patterns.lookup_domain(q.name)
        )
        return self.pattern_answer(*found) if found is not None else None

    def begin_domains(self, qs: Sequence[DomainQuery], client: str | None = None) -> tuple[list[Any], Ask]:
        answers: list[Any] = [self.domain_local_one(q, client) for q in qs]
        if _complete(answers):
            return answers, []
        pending = [(i, f"domain:{q.name}") for i, (q, a) in enumerate(zip(qs, answers)) if a is None]
        return answers, [(i, key, key[7:]) for i, key in self.settle(Service.DOMAIN, answers, pending)]

    def begin_domain_one(self, q: DomainQuery, client: str | None = None) -> tuple[WebAnswer | None, Ask]:
        """``begin_domains`` for one item without its lists (the DNS door asks one name per
        query): the answer, or None and what to ask the relay; tests hold the two equal."""
        found = self.domain_local_one(q, client)
        if found is not None:
            return found, []
        key = f"domain:{q.name}"
        cached = self.cache.get_view(key, _served_from_cache)  # settle's, for one key
        if isinstance(cached, WebAnswer):  # what a domain key holds (None: not cached)
            return cached, []
        miss = self.local_miss()  # _unasked(Service.DOMAIN)
        if miss is not None:
            return miss, []
        return None, [(0, key, q.name)]

    # ------------------------------------------------------------ web inspection

    def _inspect_here(self, q: InspectQuery, client: str | None) -> InspectAnswer:
        """An inspection answered without a cloud: from the lists and the pattern, as the
        reference cloud answers it (source ``cloud`` there, ``local`` on an appliance)."""
        doc = json.loads(q.body)
        web = protocol.parse_url(doc["url"], protocol.Limits(max_url=1 << 16))
        rating = self.web_local_one(web, client) or self._untested
        result: dict[str, Any] = {
            "rating": rating.rating.value, "score": rating.score, "category": rating.category,
        }
        content = doc.get("content")
        if isinstance(content, str):
            digest = hashlib.sha256(base64.b64decode(content)).digest()
            hit = self.patterns.lookup_file(FileQuery(HashKind.SHA256, digest))
            result["sha256"] = digest.hex()
            result["verdict"] = hit.verdict.value if hit else Verdict.UNKNOWN.value
            if hit:
                result["threat"] = hit.threat
        return replies.inspect_answer_from_result(
            {**result, "ttl": self.local_ttl}, self._untested.source
        )

    def begin_inspect(self, q: InspectQuery, client: str | None = None) -> tuple[list[Any], Ask]:
        if self.authoritative or self.relay is None:
            return [self._inspect_here(q, client)], []
        answers: list[Any] = [None]
        left = self.settle(Service.INSPECT, answers, [(0, f"inspect:{q.digest}")])
        return answers, [(i, key, json.loads(q.body)) for i, key in left]

    # ------------------------------------------------------------ cache, relay, degraded

    def _convert(self, service: Service, result: dict[str, Any]) -> Answer:
        if service is Service.FILE:
            return replies.file_answer_from_result(result, Source.CLOUD)
        if service is Service.INSPECT:
            return replies.inspect_answer_from_result(result, Source.CLOUD)
        return replies.web_answer_from_result(result, Source.CLOUD)

    def _unasked(self, service: Service) -> Answer:
        """What an item nothing local knew becomes when there is no cloud to ask (final, with
        ``local_ttl``: source ``cloud`` on the reference cloud, ``local`` on an appliance)."""
        return self._unknown_file if service is Service.FILE else self._untested

    def _degraded(self, service: Service) -> Answer:
        """What an item becomes when the configured cloud did not answer it usably in time."""
        if service is Service.FILE:
            return self._degraded_file
        if service is Service.INSPECT:
            return InspectAnswer(b"", Source.DEGRADED, retry_after=self.retry_after)
        return self._degraded_web

    def settle(
        self, service: Service, answers: list[Any], pending: Sequence[tuple[int, str]]
    ) -> list[tuple[int, str]]:
        """Fill pending (position, cache key) pairs from the cache (or the authoritative fallback).

        Returns the pairs left for the relay; empty when ``answers`` is complete.
        """
        views = self.cache.get_views([key for _, key in pending], _served_from_cache)
        deque(map(answers.__setitem__, [i for i, _ in pending], views), maxlen=0)  # misses stay None
        left = list(compress(pending, map(_is_none, views)))
        if left and (self.relay is None or self.authoritative):
            fallback = self._unasked(service)
            for i, _ in left:
                answers[i] = fallback
            return []
        return left

    async def relay_fill(
        self, service: Service, answers: list[Any], ask: Ask
    ) -> None:
        """Ask the shared cache, then the relay, for what ``settle`` left; failures become
        degraded answers. What the cloud answered with a TTL goes to both caches."""
        assert self.relay is not None
        if self.shared is not None:
            ask = await self._shared_fill(service, answers, ask)
            if not ask:
                return
        results = await self.relay.ask_many(service, [(key, item) for _, key, item in ask])
        stored: list[tuple[str, dict[str, Any], float]] = []
        for (i, key, _), result in zip(ask, results):
            if isinstance(result, RelayError):
                answers[i] = self._degraded(service)
                continue
            try:
                answer = self._convert(service, result)
            except (ValueError, TypeError, KeyError) as e:
                logger.warning("cloud answered a %s item unusably: %s", service.value, e)
                answers[i] = self._degraded(service)
                continue
            if answer.ttl:
                self.cache.put(key, answer, answer.ttl)
                stored.append((key, result, answer.ttl))
            answers[i] = answer
        if stored and self.shared is not None:
            self.shared.put_many(service, stored)

    async def _shared_fill(self, service: Service, answers: list[Any], ask: Ask) -> Ask:
        """Answer what the shared cache holds (source ``cache``, the TTL left, kept locally
        for it too); returns what is still to ask the relay."""
        assert self.shared is not None
        found = await self.shared.get_many(service, [key for _, key, _ in ask])
        left: Ask = []
        for (i, key, item), hit in zip(ask, found):
            if hit is None:
                left.append((i, key, item))
                continue
            try:
                answer = self._convert(service, hit[0])
            except (ValueError, TypeError, KeyError, AttributeError):
                left.append((i, key, item))  # unreadable: the cloud is asked instead
                continue
            self.cache.put(key, answer, hit[1])
            answers[i] = _served_from_cache(answer, hit[1])
        return left

    async def finish(self, service: Service, answers: list[Any], ask: Ask) -> list[Any]:
        """The answers a ``begin_*`` call left ``ask`` for, relayed; all of them counted."""
        if ask:
            await self.relay_fill(service, answers, ask)
        return self.count(service, answers)

    def count(self, service: Service, answers: list[Any]) -> list[Any]:
        self.stats.count_items(service, Counter(map(_source, answers)))
        return answers

    def count_one(self, service: Service, answer: Answer) -> None:
        """``count`` for one answer (the DNS door's per-query path)."""
        self.stats.count_item(service, answer.source)
