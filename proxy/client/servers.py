"""The client's servers: the administrator's list, where the client is, whom to ask first.

A server is a URL with a priority (lower is asked first) and a zone: ``internal`` (an
appliance in the intranet, http or https) or ``external`` (a global server, https only:
outside the intranet a lookup must not travel in plain text).

Location, the vendor's rule ("a probe of the internal servers decides whether the
client is inside"): with internal servers configured, the client is *inside* when one
of them answers ``GET /healthz`` with 200 within ``probe_timeout``; otherwise, and
when no internal server is configured, it is *outside*. Inside, the internal servers
are asked first and the external ones after them (``external_fallback``); outside, only
the external ones. The decision is kept ``location_ttl`` seconds, and forgotten when
every candidate has failed, so a laptop that moved finds out at its next ask.

A failed server cools down for ``cooldown`` seconds (or the ``Retry-After`` it sent,
bounded by ``max_retry_after``) and is skipped while another candidate is not
cooling; when all are cooling they are tried anyway, in order: a late answer beats none.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from proxy.client.errors import ClientError
from proxy.relay.http_client import parse_origin

if TYPE_CHECKING:
    from proxy.client.transport import Transport

Zone = Literal["internal", "external"]
Location = Literal["inside", "outside"]
Order = Literal["in-order", "random"]
ZONES: tuple[Zone, ...] = ("internal", "external")
ORDERS: tuple[Order, ...] = ("in-order", "random")
MAX_SERVERS = 64
MAX_PRIORITY = 999
MAX_TEXT = 2048
HEALTH_PATH = "/healthz"
_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class Server:
    """One configured server; ``url`` is its base (``https://host:port[/prefix]``)."""

    url: str
    priority: int = 0
    zone: Zone = "internal"

    @property
    def tls(self) -> bool:
        return self.url[:8].lower() == "https://"

    def describe(self) -> str:
        return f"{self.url} ({self.zone}, priority {self.priority})"


def parse_server(text: str) -> Server:
    """``URL``, ``URL@PRIORITY``, ``external:URL[@PRIORITY]`` (``internal:`` is the default).

    Raises ClientError naming the text and what is wrong; an external server must be https.
    """
    raw = text.strip()
    if not raw or len(raw) > MAX_TEXT:
        raise ClientError(f"server {text[:100]!r}: want URL, URL@PRIORITY or external:URL")
    zone: Zone = "internal"
    for name in ZONES:
        if raw[: len(name) + 1].lower() == name + ":":
            zone, raw = name, raw[len(name) + 1 :]
    url, priority = raw, 0
    head, at, tail = raw.rpartition("@")
    if at:
        if not (tail.isascii() and tail.isdigit() and int(tail) <= MAX_PRIORITY):
            raise ClientError(
                f"server {text!r}: {tail[:50]!r} after '@' is not a priority (a whole number "
                f"from 0 to {MAX_PRIORITY}; credentials in server URLs are not supported)"
            )
        url, priority = head, int(tail)
    url = normal_url(url, f"server {text!r}")
    if zone == "external" and not url.startswith("https://"):
        raise ClientError(f"server {text!r}: an external server must be https (outside the intranet "
                          "lookups go over verified TLS only)")
    return Server(url, priority, zone)


def normal_url(url: str, what: str) -> str:
    """``url`` as ``scheme://host[:port][/prefix]`` (default port dropped); ClientError if unusable."""
    try:
        origin = parse_origin(url)
    except ValueError as err:
        raise ClientError(f"{what}: {err}") from None
    return f"{origin.scheme}://{origin.authority}{origin.base_path}"


@dataclass(slots=True)
class Health:
    """What the pool knows of one server, for ``rampart client status``."""

    requests: int = 0
    failures: int = 0
    last_success: float | None = None  # wall-clock time
    last_error: str | None = None
    last_error_at: float | None = None  # wall-clock time
    cool_until: float = 0.0  # on the pool's monotonic clock


class ServerPool:
    """The configured servers, their health, and the location decision.

    clock: monotonic seconds (cool-downs, the decision's age, deadlines); wall: time.time
    for what status shows; rng: the shuffle for ``order="random"`` (seed it in tests).
    """

    def __init__(
        self,
        servers: Iterable[Server],
        *,
        order: Order = "in-order",
        cooldown: float = 30.0,
        probe_timeout: float = 1.0,
        location_ttl: float = 60.0,
        max_retry_after: float = 300.0,
        external_fallback: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.servers = _checked(servers)
        if order not in ORDERS:
            raise ClientError(f"server order {order!r}: want one of {', '.join(ORDERS)}")
        for name, value, hi in (("cooldown", cooldown, 86400.0), ("probe_timeout", probe_timeout, 60.0),
                                ("location_ttl", location_ttl, 86400.0),
                                ("max_retry_after", max_retry_after, 86400.0)):
            if not 0 <= value <= hi or (name == "probe_timeout" and value == 0):
                raise ClientError(f"{name} {value!r}: want seconds from 0 to {hi:g}")
        self.order, self.cooldown, self.probe_timeout = order, cooldown, probe_timeout
        self.location_ttl, self.max_retry_after = location_ttl, max_retry_after
        self.external_fallback = external_fallback
        self.clock, self.wall = clock, wall
        self._rng = rng or random.Random()
        self._health = {s.url: Health() for s in self.servers}
        self.last: Server | None = None  # the server that answered last
        self._location: Location | None = None
        self._located_at = 0.0
        self.location_reason = "not decided yet"

    # -------------------------------------------------------- order

    def zone(self, zone: Zone) -> list[Server]:
        return [s for s in self.servers if s.zone == zone]

    def plan(self, location: Location) -> list[Server]:
        """Every server to try from ``location``: candidates first, then the cooling ones."""
        ordered = self._ordered(location)
        ready = [s for s in ordered if not self.cooling(s)]
        return ready + [s for s in ordered if self.cooling(s)]

    def candidates(self, location: Location) -> list[Server]:
        """The servers to ask now: by priority, cooling ones skipped unless all are cooling."""
        ordered = self._ordered(location)
        ready = [s for s in ordered if not self.cooling(s)]
        return ready or ordered

    def _ordered(self, location: Location) -> list[Server]:
        zones: tuple[Zone, ...] = ("external",)
        if location == "inside":
            zones = ("internal", "external") if self.external_fallback else ("internal",)
        out: list[Server] = []
        for zone in zones:
            out += self._by_priority(self.zone(zone))
        return out

    def _by_priority(self, servers: list[Server]) -> list[Server]:
        out: list[Server] = []
        for priority in sorted({s.priority for s in servers}):
            group = [s for s in servers if s.priority == priority]
            if self.order == "random":
                self._rng.shuffle(group)
            out += group
        return out

    # -------------------------------------------------------- health

    def cooling(self, server: Server) -> bool:
        return self._health[server.url].cool_until > self.clock()

    def health(self, server: Server) -> Health:
        return self._health[server.url]

    def succeeded(self, server: Server) -> None:
        h = self._health[server.url]
        h.requests += 1
        h.last_success = self.wall()
        h.cool_until = 0.0
        self.last = server

    def failed(self, server: Server, error: str, *, retry_after: float | None = None) -> None:
        """Count a failure and cool the server down (``retry_after``, bounded, when it sent one)."""
        h = self._health[server.url]
        h.requests += 1
        h.failures += 1
        h.last_error = error[:_REASON_CHARS]
        h.last_error_at = self.wall()
        pause = self.cooldown if retry_after is None else min(max(retry_after, 0.0), self.max_retry_after)
        h.cool_until = self.clock() + pause

    def status(self) -> list[dict[str, Any]]:
        """Per server: zone, priority, counts, last success and error (wall time), cool-down left."""
        now = self.clock()
        return [
            {"url": s.url, "zone": s.zone, "priority": s.priority, "requests": h.requests,
             "failures": h.failures, "last_success": h.last_success, "last_error": h.last_error,
             "last_error_at": h.last_error_at, "cooling_for": round(max(0.0, h.cool_until - now), 3),
             "answered_last": s == self.last}
            for s in self.servers
            for h in (self._health[s.url],)
        ]

    # -------------------------------------------------------- location

    @property
    def location(self) -> Location | None:
        """The kept decision while it is fresh, else None."""
        if self._location is not None and self.clock() - self._located_at < self.location_ttl:
            return self._location
        return None

    def forget_location(self) -> None:
        self._location = None

    def decide(self, location: Location, reason: str) -> None:
        self._location, self._located_at, self.location_reason = location, self.clock(), reason

    async def locate(self, transport: Transport, *, force: bool = False,
                     deadline: float | None = None) -> Location:
        """Inside or outside: the kept decision, or a probe of the internal servers' /healthz."""
        kept = None if force else self.location
        if kept is not None:
            return kept
        internal = self.zone("internal")
        if not internal:
            self.decide("outside", "no internal server is configured")
            return "outside"
        limit = self.clock() + self.probe_timeout
        until = limit if deadline is None else min(limit, deadline)
        cut = until < limit  # the caller's deadline is shorter than a probe
        from proxy.client.transport import probe  # transport.py imports this module

        winner, reasons = await probe(transport, internal, until, self.probe_timeout)
        if winner is not None:
            self.decide("inside", f"{winner.url} answered {HEALTH_PATH}")
            return "inside"
        self.decide("outside", f"no internal server answered {HEALTH_PATH} within "
                               f"{self.probe_timeout:g}s ({'; '.join(reasons)})")
        if cut:
            self.forget_location()  # a probe cut short decides this ask only, it is not kept
        return "outside"

    # -------------------------------------------------------- kept between processes

    def export_state(self) -> dict[str, Any]:
        """Health and location as JSON values (wall times), for the state's meta table."""
        now, wall = self.clock(), self.wall()
        loc = self.location
        return {
            "saved_at": wall,
            "location": None if loc is None else
            {"value": loc, "reason": self.location_reason, "age": now - self._located_at},
            "last": None if self.last is None else self.last.url,
            "servers": self.status(),
        }

    def import_state(self, data: object) -> None:
        """Take back what ``export_state`` gave, for the servers still configured; ignores
        anything malformed or out of bounds (it comes from a file)."""
        if not isinstance(data, Mapping):
            return
        elapsed = self.wall() - _num(data.get("saved_at"), 0.0)
        if not 0 <= elapsed < 86400 * 365:
            return
        _import_location(self, data.get("location"), elapsed)
        rows = data.get("servers")
        for row in rows[:MAX_SERVERS] if isinstance(rows, list) else ():
            h = self._health.get(str(row.get("url"))) if isinstance(row, Mapping) else None
            if h is not None:
                _import_health(self, h, row, elapsed)
        self.last = next((s for s in self.servers if s.url == data.get("last")), None)


def _num(value: object, fallback: float, hi: float = 1e12) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= hi
    return float(value) if ok else fallback  # type: ignore[arg-type]


def _import_location(pool: ServerPool, loc: object, elapsed: float) -> None:
    if not isinstance(loc, Mapping) or loc.get("value") not in ("inside", "outside"):
        return
    age = _num(loc.get("age"), pool.location_ttl) + elapsed
    if age < pool.location_ttl:
        reason = loc.get("reason")
        pool.decide(loc["value"], str(reason)[:_REASON_CHARS] if reason else "kept from an earlier run")
        pool._located_at = pool.clock() - age


def _import_health(pool: ServerPool, h: Health, row: Mapping[str, Any], elapsed: float) -> None:
    h.requests = int(_num(row.get("requests"), 0, 1e15))
    h.failures = int(_num(row.get("failures"), 0, h.requests))
    for name in ("last_success", "last_error_at"):
        value = row.get(name)
        setattr(h, name, _num(value, 0.0) if value is not None else None)
    error = row.get("last_error")
    h.last_error = error[:_REASON_CHARS] if isinstance(error, str) else None
    left = _num(row.get("cooling_for"), 0.0, max(pool.cooldown, pool.max_retry_after)) - elapsed
    h.cool_until = pool.clock() + left if left > 0 else 0.0


def _checked(servers: Iterable[Server]) -> tuple[Server, ...]:
    out: list[Server] = []
    for server in servers:
        if len(out) >= MAX_SERVERS:
            raise ClientError(f"more than {MAX_SERVERS} servers configured")
        if not isinstance(server, Server):
            raise ClientError(f"server {server!r}: not a Server")
        normal_url(server.url, f"server {server.url[:100]!r}")
        if server.zone not in ZONES:
            raise ClientError(f"server {server.url}: zone {server.zone!r}: want internal or external")
        if not isinstance(server.priority, int) or not 0 <= server.priority <= MAX_PRIORITY:
            raise ClientError(f"server {server.url}: priority {server.priority!r}: want 0..{MAX_PRIORITY}")
        if any(s.url == server.url for s in out):
            raise ClientError(f"server {server.url} is configured twice")
        out.append(server)
    if not out:
        raise ClientError("no server configured: give at least one (--server URL)")
    return tuple(out)
