"""The DNS door's compiled lane (``_lane.c``, optional at install), made for one engine.

``Answerer.answer`` asks the lane first, after the memo: it answers the common queries
(an A or ANY question about an IPv4 address or a host name, decided by the pattern or by
nothing knowing it) in one C call, and returns None for every other query, which
``Answerer._fast`` and ``_plain`` then answer as before. ``_lane.c`` says why; here is what
it is given: the zones' wire names, the domain and IPv4 tables' Finders and rated
columns, the engine's list match, its answer cache (misses go to Python while it holds
anything) and the fixed parts of the responses. A lane is made again when the engine,
its pattern or its lists change (``Answerer._lane_of``). Without the module, or with
``RAMPART_PLAIN_DNS=1``, there is no lane.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from proxy.decide.engine import Engine
from proxy.dns import wire
from proxy.dns.zones import Codes, Zones
from proxy.patterns.layout import DOMAIN_IP, DOMAINS_TABLE, IP4_TABLE
from proxy.patterns.tables.read import FINDER

RATED = ("rating", "score", "category")


def compiled_lane() -> Any:
    """The compiled lane's type, or None: not built, the tables' lookups not compiled, or
    ``RAMPART_PLAIN_DNS`` set."""
    if os.environ.get("RAMPART_PLAIN_DNS") or FINDER is None:
        return None
    try:
        return importlib.import_module("proxy.dns._lane").Lane
    except ImportError:
        return None


LANE = compiled_lane()


def _rated(engine: Engine, name: str, prefix: bool) -> tuple[Any, ...] | None:
    """A rated table as the lane reads it (``_lane.c``'s ``rated``), or None: the pattern
    has no such table, or it is not searched by compiled code."""
    try:
        table = engine.patterns.table(name)
        view = table.compiled_view((*RATED, "prefix") if prefix else RATED)
    except KeyError:
        return None
    if view is None:
        return None
    finder, rows, base, added = view
    return (finder, rows, *base, *([] if prefix else [None]), *added[:3])


def make_lane(engine: Engine, zones: Zones, codes: Codes, *, upstream: bool,
              soa_parts: Callable[[str, int], tuple[bytes, bytes]], ttl: int) -> Any:
    """The lane for ``engine`` (None without the compiled module). ``upstream``: names no
    table knows are asked of an upstream zone (the Python path); ``soa_parts`` and ``ttl``:
    the negative answer's SOA pieces and the TTL both answers carry, as ``_fast`` makes them."""
    if LANE is None:
        return None
    patterns = engine.patterns

    def outcome(rating: int, category: int, score: int) -> tuple[int, bytes | None, Any] | None:
        """One kind of pattern answer: made once per rating, category and score seen."""
        hit = patterns.rated_hit(rating, category, score, DOMAIN_IP)
        if hit is None:
            return None
        answer = engine.pattern_answer("", hit)  # matched: the lane passes it apart, per name
        return hit.rating.severity, codes.code(answer), answer

    local = None if upstream else engine.local_miss()
    miss = None if local is None else (codes.code(local), local, local.source.value)
    fixed, timers = soa_parts(engine.version, ttl)
    return LANE(
        tuple((b"".join(bytes([len(x)]) + x for x in z.labels) + b"\x00", z.kind == "ip", z.kind)
              for z in zones.zones),
        _rated(engine, DOMAINS_TABLE, prefix=False), _rated(engine, IP4_TABLE, prefix=True),
        outcome, miss, engine.lists.match_domain, engine.cache,
        wire.RR_FIXED.pack(wire.IN, ttl, 4), fixed, timers, *wire.OPT_ECHOES,
    )
