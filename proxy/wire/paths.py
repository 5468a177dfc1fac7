"""The v1 paths and their methods: the one table every door, the metrics and the relay read.

A ``Route`` is an exact path, or a prefix (``/v1/file/``: the item follows) when
``prefix`` is set. ``service`` is the engine service a route asks (None: the
appliance's own: health, metrics, patterns); ``items`` names the request field
holding a batch's items (``""``: the whole body is the one item), for the
routes the relay asks the cloud on. ``label`` is the route as /metrics counts it.

The ``/v4/`` routes are the Safe Browsing v4 API (issue 14), served on the query door
only: they ask no engine service (the intercept door forwards them to the real host),
and ``key=`` on them is accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.model import Service

GET = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    methods: tuple[str, ...]
    service: Service | None = None
    prefix: bool = False
    items: str | None = None  # the batch field the relay fills (None: not a relay route)
    label: str = field(init=False, compare=False)
    """The metric label: the path, with ``{item}`` (``{file}`` for patterns) after a prefix
    (made once: it is read for every request)."""

    def __post_init__(self) -> None:
        label = self.path + ("{file}" if self.service is None else "{item}") if self.prefix else self.path
        object.__setattr__(self, "label", label)


FILE = Route("/v1/file", ("POST",), Service.FILE, items="items")
FILE_ONE = Route("/v1/file/", GET, Service.FILE, prefix=True)
WEB = Route("/v1/web", ("POST", "GET"), Service.WEB, items="urls")
DOMAIN = Route("/v1/domain", ("POST",), Service.DOMAIN, items="items")
DOMAIN_ONE = Route("/v1/domain/", GET, Service.DOMAIN, prefix=True)
INSPECT = Route("/v1/inspect", ("POST",), Service.INSPECT, items="")
HEALTHZ = Route("/healthz", GET)
READYZ = Route("/readyz", GET)
METRICS = Route("/metrics", GET)
AGENT_PATTERN = Route("/v1/agent-pattern", GET)
PATTERNS = Route("/v1/patterns/", GET, prefix=True)

SB_THREAT_LISTS = Route("/v4/threatLists", GET)
SB_FETCH = Route("/v4/threatListUpdates:fetch", ("POST",))
SB_FULL_HASHES = Route("/v4/fullHashes:find", ("POST",))
SB_THREAT_MATCHES = Route("/v4/threatMatches:find", ("POST",))
SAFE_BROWSING = (SB_THREAT_LISTS, SB_FETCH, SB_FULL_HASHES, SB_THREAT_MATCHES)

ROUTES = (FILE, FILE_ONE, WEB, DOMAIN, DOMAIN_ONE, INSPECT, HEALTHZ, READYZ, METRICS,
          AGENT_PATTERN, PATTERNS, *SAFE_BROWSING)

_EXACT = {r.path: r for r in ROUTES if not r.prefix}
_PREFIXES = tuple(r for r in ROUTES if r.prefix)
_RELAYED = {r.service: r for r in ROUTES if r.items is not None}


def route_of(path: str) -> Route | None:
    """The route serving ``path`` (no query), or None: no such path."""
    found = _EXACT.get(path)
    if found is not None:
        return found
    for route in _PREFIXES:
        if path.startswith(route.path):
            return route
    return None


def engine_service(path: str) -> Service | None:
    """The engine service ``path`` (a query may follow) asks, or None: the appliance's own
    paths, unknown paths and a prefix with no item after it."""
    p = path.split("?", 1)[0]
    route = route_of(p)
    if route is None or (route.prefix and len(p) == len(route.path)):
        return None
    return route.service


def relayed(service: Service) -> Route:
    """The route the relay asks the cloud on for ``service`` (a POST of a batch)."""
    return _RELAYED[service]
