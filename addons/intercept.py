"""The intercept door: mitmproxy hooks between flows and the engine's routes.

Products that talk to the cloud reach the appliance as their explicit proxy or
through a transparent gateway. This addon applies the core's rules on *where*
traffic goes (``proxy.serve.intercept``, ``proxy.serve.gate``,
``proxy.serve.destinations``); every reputation decision is the engine's
(``proxy.serve.routes.Routes``, the same object the query door calls):

- clients outside ``allow_clients`` are refused at connect (never an open relay);
- destinations on this machine (loopback, its own addresses, …) are refused, with a
  403 naming them when there is an HTTP request to answer (``proxy.serve.destinations``);
- TLS to hosts outside ``intercept_hosts`` is not intercepted: the connection is
  relayed byte for byte (``tls_clienthello`` → ``ignore_connection``; mitmproxy's
  ``allow_hosts`` does the same earlier for plain TCP and transparent HTTP);
- on intercept hosts, the engine's paths (``/v1/file``, ``/v1/web``, …) are
  answered locally; every other path is forwarded to the real host unchanged,
  over verified TLS, streamed both ways.

Each answered flow carries the decision in ``flow.metadata["rampart"]`` and the
``X-Rampart-Source`` response header.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from mitmproxy import connection, http, tls
from mitmproxy.proxy import server_hooks

from addons.connections import client_address, connection_io
from proxy.config import Config
from proxy.errors import ProtocolError
from proxy.model import literal
from proxy.serve import metrics
from proxy.serve.destinations import Destinations
from proxy.serve.gate import ClientNetworks
from proxy.serve.intercept import decision_of, engine_service, intercept_patterns
from proxy.wire.http import Handler, Request, Response, coded, error_response, respond, settle

logger = logging.getLogger(__name__)

META = "rampart"
SOURCE_HEADER = "X-Rampart-Source"



# ---------------------------------------------------------------- mitmproxy values


def engine_request(flow: http.HTTPFlow) -> Request:
    """A flow's request as the core's ``Request``, its target's bytes as sent."""
    req = flow.request
    return Request(
        req.method,
        req.data.path,  # the bytes as sent: ``path`` is text, decoded with surrogateescape
        [(k, v) for k, v in req.headers.fields],
        req.raw_content or b"",
        client_address(flow.client_conn),
    )


def to_mitmproxy(response: Response, source: str) -> http.Response:
    """A core ``Response`` as mitmproxy's, with ``X-Rampart-Source`` when ``source`` is given.

    ``http.Response.make`` type-checks every field of what it builds (about 40 µs, most of
    what answering a flow costs this addon), and the routes hand out the same ``Response``
    object for a repeated answer. So the first mitmproxy response made for a (response,
    source) is kept as a template, and each flow gets a copy of its fields, with headers
    of its own: the values ``make`` checked once, in a new object (``_fresh``; a test holds
    it equal to ``make``'s and independent of other flows')."""
    key = (id(response), source)
    kept = _TEMPLATES.get(key)
    if kept is None or kept[0] is not response:
        headers: list[tuple[bytes, bytes]] = [(b"Content-Type", response.content_type.encode())]
        headers += [(k.encode(), v.encode()) for k, v in response.headers]
        if source:
            headers.append((SOURCE_HEADER.encode(), source.encode()))
        made = http.Response.make(response.status, response.body, headers)
        if len(response.body) > 4096:  # single answers repeat; batches seldom do, and are large
            return made
        if len(_TEMPLATES) >= 4096:
            _TEMPLATES.clear()
        kept = _TEMPLATES[key] = (response, made)
    return _fresh(kept[1])


def _fresh(template: http.Response) -> http.Response:
    """A new ``http.Response`` with ``template``'s fields and a copy of its headers."""
    made = object.__new__(http.Response)
    made.data = copy.copy(template.data)
    made.data.headers = http.Headers(template.data.headers.fields)
    return made


_TEMPLATES: dict[tuple[int, str], tuple[Response, http.Response]] = {}


# ---------------------------------------------------------------- the addon


class Intercept:
    """mitmproxy hooks for the intercept door; ``routes`` gives the engine's routes once open."""

    def __init__(self, cfg: Config, routes: Callable[[], Handler | None],
                 stats: Callable[[], metrics.Stats | None] = lambda: None,
                 log: Callable[[Request, Response, float], None] | None = None) -> None:
        self.hosts = intercept_patterns(cfg)
        self.clients = ClientNetworks.parse(cfg.allow_clients)
        self.routes = routes
        self.stats = stats
        self.log = log  # each answer to the query log, as the query door's are
        self.destinations = Destinations.from_config(cfg)
        self.refused = 0
        self.refused_destinations = 0

    def running(self) -> None:
        """Refusals go to the query door's /metrics, whose counters exist once it has opened
        (its ``running`` runs first)."""
        stats = self.stats()
        if stats is not None:
            metrics.counter(
                stats, "rampart_intercept_refused",
                "Intercept-door refusals since start: clients outside allow_clients,"
                " destinations on this machine (see intercept_allow_destinations)",
                lambda: [({"what": "client"}, float(self.refused)),
                         ({"what": "destination"}, float(self.refused_destinations))],
            )

    # ------------------------------------------------------------ connections

    def client_connected(self, client: connection.Client) -> None:
        address = client_address(client)
        if not self.clients.allows(address):
            self.refused += 1
            client.error = f"client {address} is not in allow_clients"
            logger.warning("refused intercept-door client %s: not in allow_clients", address)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        host = data.client_hello.sni
        if not host and data.context.server.address:
            host = str(data.context.server.address[0])
        if host not in self.hosts:
            data.ignore_connection = True  # relayed as is: not ours to read

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Prefer HTTP/2 when the product offers it, as the cloud's own servers do.

        Runs after mitmproxy's TlsConfig; lazily connected, mitmproxy would otherwise
        take the product's first ALPN preference (http/1.1 for many clients).
        """
        conn = data.ssl_conn
        if conn is None or b"h2" not in data.context.client.alpn_offers:
            return
        app = conn.get_app_data()
        if isinstance(app, dict) and app.get("http2") and app.get("client_alpn") is None:
            app["client_alpn"] = b"h2"

    # ------------------------------------------------------------ HTTP

    def _intercepted(self, flow: http.HTTPFlow) -> bool:
        """Bound for an intercept host: the TLS name when there is one (only those hosts'
        TLS is opened), else where the request goes (proxy URL) or names (Host header)."""
        if flow.client_conn.sni:
            return flow.client_conn.sni in self.hosts
        return flow.request.host in self.hosts or flow.request.pretty_host in self.hosts

    def _ours(self, flow: http.HTTPFlow) -> str | None:
        """The engine service a flow is for, or None when it is to be forwarded."""
        if not self._intercepted(flow):
            return None
        return engine_service(flow.request.path)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Refuse a tunnel to a refused destination (403); an intercept host's requests are
        decided one by one instead, as the engine answers some of them itself."""
        if flow.request.host in self.hosts:
            return None
        return self._guard(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        if self._ours(flow) is not None:
            return None
        flow.request.stream = True  # not ours: relayed as it arrives, never buffered
        if self._intercepted(flow):
            flow.metadata[META] = {"action": "forwarded", "service": None}
        return self._guard(flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Answer engine paths on intercept hosts; returns an awaitable only when relaying
        (mitmproxy awaits what a hook returns), so local answers cost no task or coroutine."""
        if flow.response or flow.error or not flow.live:
            return None
        service = self._ours(flow)
        if service is None:
            return None
        if flow.request.stream or _coded(flow.request):
            # over stream_large_bodies (max_body), or compressed: the real host gets it, as it
            # came (the engine reads plain bodies only; decoding one would unbound its size)
            flow.metadata[META] = {"action": "forwarded", "service": service}
            return None
        started = time.perf_counter()
        request = engine_request(flow)
        result = _call(self.routes(), request)
        if isinstance(result, Response):
            self._answered(flow, service, request, result, started)
            return None
        return self._answer_later(flow, service, request, result, started)

    def _answered(self, flow: http.HTTPFlow, service: str, request: Request, response: Response,
                  started: float) -> None:
        seconds = _answered(flow, service, response, started)
        if self.log is not None:
            self.log(request, response, seconds)

    async def _answer_later(self, flow: http.HTTPFlow, service: str, request: Request,
                            pending: Awaitable[Response], started: float) -> None:
        response = await settle(pending, flow.request.data.path)
        self._answered(flow, service, request, response, started)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if flow.response is not None and (meta is None or meta.get("action") != "answered"):
            flow.response.stream = True

    # ------------------------------------------------------------ destinations

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> Awaitable[None] | None:
        """Every upstream connection passes here: tunnels, TLS passed through, transparent
        mode's original destination. A refusal is mitmproxy's own (``server.error``)."""
        if data.server.error or not data.server.address:
            return None

        def kill(message: str) -> None:
            data.server.error = message

        host, port = str(data.server.address[0]), int(data.server.address[1])
        return self._decide(data.client, host, port, kill)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The last word, on the address actually reached: a name that resolves elsewhere at
        connect than at the check (DNS rebinding, a cached verdict) is cut before any byte."""
        peer, address = data.server.peername, data.server.address
        ip = literal(str(peer[0])) if peer else None
        if ip is None or not address:
            return
        host, port = str(address[0]), int(address[1])
        why = self.destinations.refusal(host, port, (ip,))
        if why is not None:
            data.server.error = self._refuse(data.client, host, port, why)
            _close(data)

    def _guard(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Answer a flow bound for a refused destination with a 403 naming it."""
        return self._decide(flow.client_conn, flow.request.host, flow.request.port,
                            functools.partial(_refused, flow))

    def _decide(self, client: connection.Client, host: str, port: int,
                refuse: Callable[[str], None]) -> Awaitable[None] | None:
        """``refuse(message)`` when ``host:port`` is refused; an awaitable (for mitmproxy to
        await, as a hook's result) only when a name is to be resolved first."""
        verdict = self.destinations.check(host, port)
        if verdict is None or isinstance(verdict, str):
            if verdict is not None:
                refuse(self._refuse(client, host, port, verdict))
            return None
        return self._decide_later(client, host, port, verdict, refuse)

    async def _decide_later(self, client: connection.Client, host: str, port: int,
                            verdict: Awaitable[str | None], refuse: Callable[[str], None]) -> None:
        why = await verdict
        if why is not None:
            refuse(self._refuse(client, host, port, why))

    def _refuse(self, client: connection.Client, host: str, port: int, why: str) -> str:
        """Count and log a refused destination; the message the client is given."""
        self.refused_destinations += 1
        address = client_address(client)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        logger.warning("refused intercept-door destination %s for client %s: %s", shown, address, why)
        return f"the intercept door does not connect to {shown}: {why}"


def _refused(flow: http.HTTPFlow, message: str) -> None:
    flow.response = to_mitmproxy(
        error_response(ProtocolError("destination_refused", message, status=403)), "")
    flow.response.http_version = flow.request.http_version
    if META in flow.metadata:  # an intercept host's flow (captured): say what became of it
        flow.metadata[META]["action"] = "refused"


def _close(data: server_hooks.ServerConnectionHookData) -> None:
    """Close a just-opened upstream connection: mitmproxy has no refusal after connect, but
    it writes nothing to a closing transport (``ConnectionHandler`` checks ``is_closing``)."""
    io = connection_io(data.client, data.server)
    if io is not None and io.writer is not None:
        io.writer.close()


def _coded(request: http.Request) -> bool:
    """A body with a content coding (gzip, br, …): not for the engine, which reads plain JSON."""
    coding = request.headers.get("content-encoding")
    return coding is not None and coded(coding.encode("latin-1", "replace"), b"identity")


def _answered(flow: http.HTTPFlow, service: str, response: Response, started: float) -> float:
    """Put ``response`` on the flow; returns the seconds it took."""
    seconds = time.perf_counter() - started
    latency_ms = round(seconds * 1000, 3)
    found = decision_of(response)
    flow.metadata[META] = {
        "action": "answered",
        "service": service,
        "status": response.status,
        "latency_ms": latency_ms,
        **found,
    }
    flow.response = to_mitmproxy(response, ",".join(found["sources"]))
    flow.response.http_version = flow.request.http_version
    return seconds


def _call(handler: Handler | None, request: Request) -> Response | Awaitable[Response]:
    """The routes' answer, errors included, exactly as the query door would give it."""
    if handler is None:
        return error_response(ProtocolError("starting", "the appliance is starting; try again",
                                            status=503, headers=(("Retry-After", "1"),)))
    return respond(handler, request)
