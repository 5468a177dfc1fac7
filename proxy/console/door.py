"""The console door: the admin API (``/api/``) and the web console's pages, over HTTPS on
``console_port``, for ``console_clients`` only (loopback and private ranges by default).

It is the query door's server (``proxy.serve.server``) with another handler, so it has
the same bounds on heads, bodies, slow clients and connections. Its certificate is
issued from the appliance CA for the same names as the query door's, kept apart in
DATA_DIR/tls (``tls-console.pem``). The pages are plain files shipped in the package
(``proxy/console/static``), served with a content security policy that allows
nothing from anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import certs
from certs.follow import DoorTls
from proxy.config import Config
from proxy.console.account_routes import AccountOps, account_routes
from proxy.console.api import Api, Route
from proxy.console.log_routes import LogOps, log_routes
from proxy.console.openapi import document
from proxy.console.routes import Operations, api_routes
from proxy.console.settings_routes import SettingOps, setting_routes
from proxy.errors import ProtocolError, RampartError
from proxy.files import read_bounded
from proxy.serve.gate import Gate
from proxy.serve.listener import Listener
from proxy.serve.server import ServerLimits, start_server
from proxy.wire.http import Request, Response

logger = logging.getLogger(__name__)

SCRIPTS = ("console", "core", "charts", "dashboard", "lists", "logs", "updates", "certs", "settings",
           "accounts")  # the console's JavaScript modules; console.js imports the others
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/console.css": ("console.css", "text/css; charset=utf-8"),
         **{f"/{name}.js": (f"{name}.js", "text/javascript; charset=utf-8") for name in SCRIPTS}}
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def _page(name: str) -> bytes:
    return resources.files("proxy.console").joinpath("static", name).read_bytes()


def console_routes(app: Any, accounts: Any, openapi: Any) -> list[Route]:
    """Every admin API operation: the appliance's, the accounts', the logs'."""
    return (api_routes(Operations(app, accounts), openapi)
            + account_routes(AccountOps(accounts)) + log_routes(LogOps(app))
            + setting_routes(SettingOps(app)))


class ConsoleDoor:
    """The console door of one running App; ``start`` listens, ``stop`` closes."""

    def __init__(self, cfg: Config, app: Any, accounts: Any, version: str) -> None:
        self.cfg = cfg
        self.accounts = accounts
        self.openapi: dict[str, Any] = {}
        routes = console_routes(app, accounts, lambda request, _: self.openapi)
        self.openapi = document(routes, version)
        logs = getattr(app, "logs", None)
        self.api = Api(routes, accounts, logs.audit if logs is not None else None)
        self.pages = {path: Response(200, _page(name), kind, headers=SECURITY_HEADERS)
                      for path, (name, kind) in PAGES.items()}
        self.app = app
        self.server: Listener | None = None
        self.tls: DoorTls | None = None
        self._follow: asyncio.Task[None] | None = None
        self.port = 0
        self.first_password: str | None = None  # the first admin's, made at this start

    def __call__(self, request: Request) -> Any:
        path = request.target.split(b"?", 1)[0]
        if path.startswith(b"/api/"):
            return self.api(request)
        if path == b"/ca.pem" and request.method == "GET":  # public: what products trust
            pem = read_bounded(Path(self.cfg.data_dir) / certs.CA_CERT_FILE, 1 << 20)
            return Response(200, pem, "application/x-pem-file", headers=(
                ("Content-Disposition", 'attachment; filename="rampart-ca.pem"'),))
        page = self.pages.get(path.decode("latin-1"))
        if page is None or request.method not in ("GET", "HEAD"):
            raise ProtocolError("not_found", "no such page", status=404)
        return page

    async def start(self) -> None:
        cfg = self.cfg
        certs.CA.ensure(cfg.data_dir)
        # followed like the query door's: a rotated or imported CA, or a certificate near
        # its end, is served to new connections without a restart
        self.tls = DoorTls(cfg.data_dir, certs.default_names(cfg.tls_names), purpose="console",
                           door="console", label="console door (HTTPS)")
        context = self.tls.first()
        limits = ServerLimits(max_header=cfg.max_header, max_body=cfg.max_body,
                              idle_timeout=cfg.idle_timeout, head_timeout=cfg.head_timeout,
                              request_timeout=cfg.request_timeout)
        try:
            self.server = await start_server(
                self, cfg.listen, cfg.console_port, limits=limits, ssl_context=context,
                gate=Gate(cfg.console_clients), caps=self.app.caps, door="console")
        except OSError as e:
            raise RampartError(f"cannot listen on {cfg.listen}:{cfg.console_port} for the console"
                               f" door: {e.strerror}; change --console-port (0 turns it off)"
                               ) from None
        self.port = int(self.server.sockets[0].getsockname()[1])
        self._follow = asyncio.create_task(self.tls.follow(self.server.use_ssl_context))
        logger.info("console door listening on https://%s:%d", cfg.listen, self.port)

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
        if self.tls is not None:
            self.tls.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.accounts.close()


async def start_console(cfg: Config, app: Any) -> ConsoleDoor:
    """Open the accounts (creating the first admin on first start: its password is on the
    door's ``first_password``, to be shown once) and start the console door."""
    from importlib.metadata import PackageNotFoundError, version

    from proxy.console.accounts import Accounts

    accounts = Accounts.open(cfg.data_dir, cfg)
    try:
        first = accounts.ensure_first_admin()
        try:
            shipped = version("rampart")
        except PackageNotFoundError:
            shipped = "0"
        door = ConsoleDoor(cfg, app, accounts, shipped)
        door.first_password = first
        await door.start()
    except BaseException:
        accounts.close()
        raise
    return door
