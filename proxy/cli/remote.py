"""The admin-API client of the commands that work on an appliance: ``--server``.

``rampart lists ...`` and ``rampart update now`` work on the data directory, or, with
``--server https://HOST:4343`` (or $RAMPART_CONSOLE), on a running appliance through its
console door's admin API (``proxy.console``). The key comes from $RAMPART_API_KEY or
``--api-key-file``, never the command line (it would show in ``ps``). TLS is always
verified: against ``--server-ca`` when given, else the system trust store plus
DATA_DIR/ca.pem when that exists (the appliance CA, on the appliance itself).

Answers are bounded (``MAX_ANSWER``; list reads ``MAX_LIST_ANSWER``) and every failure is
one line naming the server and the fix: the server's refusals (4xx) exit 2 like a wrong
command (``RemoteRefused``), a server that cannot be reached, trusted or understood exits 1
(``RemoteFailed``). ``refusal`` and ``unreachable`` make those errors (unit-tested alone).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from proxy import config as config_mod
from proxy.cli.common import Run
from proxy.errors import ConfigError, RampartError
from proxy.files import read_bounded

if TYPE_CHECKING:
    from proxy.decide.list_rules import Entry

F = TypeVar("F", bound=Callable[..., Any])

CONSOLE_PORT = int(config_mod.default("console_port"))
MAX_ANSWER = 4 << 20
MAX_LIST_ANSWER = 64 << 20  # every rule (up to 500,000), as `lists export` writes them
TIMEOUT = 30.0
UPDATE_TIMEOUT = 600.0  # the server fetches and installs the update before it answers
MAX_KEY = 256
KEY_ENV = "RAMPART_API_KEY"
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_META = "rampart.remote"


class RemoteRefused(ConfigError):
    """The admin API refused the request (a 4xx): a wrong command, key or role (exit 2)."""

    code = "remote_refused"

    def __init__(self, message: str, *, status: int = 400, code: str = "remote_refused") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RemoteFailed(RampartError):
    """The server could not be reached or trusted, failed (5xx) or answered unlike the admin
    API: the operation failed (exit 1)."""

    status = 502
    code = "remote_failed"


# ---------------------------------------------------------------- options


def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    assert param.name is not None
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def remote_options(fn: F) -> F:
    """``--server``, ``--api-key-file`` and ``--server-ca``, kept for :func:`remote_for`."""
    for decorator in reversed([
        click.option("--server", envvar="RAMPART_CONSOLE", metavar="URL", expose_value=False,
                     callback=_keep,
                     help=f"Work on a running appliance through its admin API (its console, "
                          f"https://HOST:{CONSOLE_PORT}; or $RAMPART_CONSOLE) instead of a data "
                          f"directory; the key comes from ${KEY_ENV} or --api-key-file."),
        click.option("--api-key-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     expose_value=False, callback=_keep,
                     help=f"With --server: read the API key from this file (mode 0600) instead of "
                          f"${KEY_ENV} (`rampart admin key create` makes one)."),
        click.option("--server-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     expose_value=False, callback=_keep,
                     help="With --server: trust only this CA (the appliance's ca.pem, from the console "
                          "at /ca.pem); default: the system trust store and DATA_DIR/ca.pem if it exists."),
    ]):
        fn = decorator(fn)
    return fn


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE


def _flag(ctx: click.Context, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name and isinstance(p, click.Option):
            return p.opts[0]
    return name


def remote_for(run: Run, *local: str) -> Remote | None:
    """The appliance the command works on, or None to work on the data directory.

    ``--server`` on the command line with ``--data-dir``, ``--config`` or another of
    ``local`` (parameter names of options that only a local run uses) is a usage error;
    a --server from $RAMPART_CONSOLE gives way to them (the command line wins).
    """
    ctx = click.get_current_context()
    given: dict[str, Any] = ctx.meta.get(_META, {})
    server = given.get("server")
    clashing = [n for n in ("data_dir", "config_file", *local) if _given(ctx, n)]
    for name in ("api_key_file", "server_ca"):
        if given.get(name) is not None and not server:
            raise ConfigError(f"{_flag(ctx, name)} is for --server; without it the command works on "
                              "the data directory")
    if not server:
        return None
    if clashing:
        if not _given(ctx, "server"):
            return None
        raise ConfigError(f"--server and {_flag(ctx, clashing[0])} conflict: --server works on a "
                          f"running appliance, {_flag(ctx, clashing[0])} on a local data directory; "
                          "give one of them")
    source = "--server" if _given(ctx, "server") else "$RAMPART_CONSOLE"
    return Remote(console_url(server, source), api_key(given.get("api_key_file")),
                  given.get("server_ca"), run.data_dir / "ca.pem")


def console_url(text: str, source: str = "--server") -> str:
    """``https://HOST:PORT`` from ``HOST``, ``HOST:PORT`` or an https URL (port default 4343);
    http, a path, a query or credentials in it are refused."""
    given = text.strip()
    hint = f"give the console's address, e.g. https://HOST:{CONSOLE_PORT}"
    try:
        parts = urllib.parse.urlsplit(given if "://" in given else "https://" + given)
        port = parts.port or CONSOLE_PORT
    except ValueError as e:
        raise ConfigError(f"{source} {given!r}: {e}; {hint}") from None
    if parts.scheme != "https":
        raise ConfigError(f"{source} {given!r}: the console speaks only https (verified TLS); {hint}")
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment \
            or parts.path not in ("", "/"):
        raise ConfigError(f"{source} {given!r} is not a console address; {hint}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port}"


def api_key(path: Path | None) -> str | None:
    """The key from ``--api-key-file`` (first line), else $RAMPART_API_KEY, else None."""
    if path is not None:
        where = f"--api-key-file {path}"
        try:
            raw = read_bounded(path, 4096, private=True, error=ConfigError, label=where)
        except OSError as e:
            raise ConfigError(f"cannot read {where}: {e.strerror or e}") from None
        text = raw.decode("utf-8", "replace").strip().splitlines()
        key = text[0].strip() if text else ""
    else:
        where = f"${KEY_ENV}"
        key = os.environ.get(KEY_ENV, "").strip()
        if not key:
            return None
    if not key or len(key) > MAX_KEY or not all(33 <= ord(c) < 127 for c in key):
        raise ConfigError(f"{where} does not hold an API key (one line, rpk_...); "
                          "`rampart admin key create` prints one")
    return key


# ---------------------------------------------------------------- the client


@dataclass(frozen=True)
class Remote:
    """One appliance's admin API: its base URL, the key, the CA to verify it with."""

    url: str
    key: str | None = None
    ca: Path | None = None
    """``--server-ca``: the only CA trusted; None: the system store plus ``local_ca``."""
    local_ca: Path | None = None
    timeout: float = TIMEOUT

    def context(self) -> ssl.SSLContext:
        """A verifying TLS context (there is no way to turn verification off)."""
        if self.ca is not None:
            try:
                return ssl.create_default_context(cafile=str(self.ca))
            except (ssl.SSLError, OSError, ValueError):
                raise ConfigError(f"--server-ca {self.ca} holds no usable CA certificate (PEM); "
                                  f"download the appliance's from {self.url}/ca.pem") from None
        context = ssl.create_default_context()
        if self.local_ca is not None and self.local_ca.is_file():
            # only a default: the system store still applies, and --server-ca fixes it
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                context.load_verify_locations(cafile=str(self.local_ca))
        return context

    def get(self, path: str, params: dict[str, Any] | None = None, *, limit: int = MAX_ANSWER) -> Any:
        """The JSON answer of ``GET path?params``."""
        return _json_of(self, path, self.call("GET", _target(path, params), None, limit=limit))

    def text(self, path: str, params: dict[str, Any] | None = None, *,
             limit: int = MAX_LIST_ANSWER) -> str:
        """The text answer of ``GET path?params`` (an export)."""
        body = self.call("GET", _target(path, params), None, limit=limit)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteFailed(f"{self.url}{path} answered with text that is not UTF-8") from None

    def post(self, path: str, doc: dict[str, Any], *, timeout: float | None = None) -> Any:
        """The JSON answer of ``POST path`` with the JSON object ``doc``."""
        body = json.dumps(doc).encode()
        return _json_of(self, path, self.call("POST", path, body, timeout=timeout))

    def call(self, method: str, target: str, body: bytes | None, *, limit: int = MAX_ANSWER,
             timeout: float | None = None) -> bytes:
        """One exchange; the body of a 2xx answer (at most ``limit`` bytes), else the error."""
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=self.context(),
                                           timeout=timeout or self.timeout)
        headers = {"Accept": "application/json", "User-Agent": "rampart-cli"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            size = resp.getheader("Content-Length")
            if size is not None and size.isdigit() and int(size) > limit:
                raise _too_large(self, target, limit)
            data = resp.read(limit + 1)
            if len(data) > limit:
                raise _too_large(self, target, limit)
            status, retry = resp.status, resp.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as e:
            raise unreachable(self, e, timeout or self.timeout) from None
        finally:
            conn.close()
        if not 200 <= status < 300:
            raise refusal(self, status, data, target.split("?", 1)[0], retry_after=retry)
        return data


def _target(path: str, params: dict[str, Any] | None) -> str:
    shown = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    return path + ("?" + urllib.parse.urlencode(shown) if shown else "")


def _too_large(remote: Remote, target: str, limit: int) -> RemoteFailed:
    return RemoteFailed(f"{remote.url}{target.split('?', 1)[0]} answered more than {limit >> 20} MiB; "
                        "refused (is --server a Rampart console?)")


def _json_of(remote: Remote, path: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RemoteFailed(f"{remote.url}{path} answered, but not with JSON as the admin API does: "
                           f"is --server the console door (port {CONSOLE_PORT})?") from None


def _server_error(data: bytes) -> tuple[str, str]:
    """The ``{"error": {"code", "message"}}`` of an answer: (code, message), or ('', '')."""
    try:
        err = json.loads(data)["error"]
        code, message = err.get("code", ""), err.get("message", "")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return "", ""
    if not isinstance(code, str) or not isinstance(message, str):
        return "", ""
    return code[:64], " ".join(message.split())[:1000]


def refusal(remote: Remote, status: int, data: bytes, path: str, *,
            retry_after: str | None = None) -> RampartError:
    """The error for a non-2xx answer: 4xx a RemoteRefused (exit 2), anything else RemoteFailed."""
    code, message = _server_error(data)
    said = message or f"HTTP {status}"
    where = f"{remote.url} refused {path} ({status})"
    if status == 401:
        why = (f"the API key was not accepted (revoked, expired or mistyped); set {KEY_ENV}"
               if remote.key is not None else f"no API key given: set {KEY_ENV}")
        text = f"{where}: {why} or give --api-key-file (`rampart admin key create` makes one)"
    elif status == 403 and code == "forbidden":
        text = f"{where}: {said}: the key's role may not do this; use a key of role operator or admin"
    elif status == 404 and code in ("not_found", ""):
        text = f"{where}: no such API operation: is --server the console door of a Rampart this recent?"
    elif status == 429:
        text = f"{where}: {said}" + (f"; try again in {retry_after} s" if retry_after else "")
    elif 400 <= status < 500:
        text = f"{where}: {said}"
    else:
        return RemoteFailed(f"{remote.url} failed {path} (HTTP {status}): {said}")
    return RemoteRefused(text, status=status, code=code or "remote_refused")


def unreachable(remote: Remote, e: BaseException, timeout: float = TIMEOUT) -> RampartError:
    """The error for an exchange that got no answer: why, and what to do (exit 1)."""
    if isinstance(e, RampartError):
        return e
    url = remote.url
    if isinstance(e, ssl.SSLCertVerificationError):
        if e.verify_code == HOSTNAME_MISMATCH:
            host = urllib.parse.urlsplit(url).hostname
            return RemoteFailed(f"{url}: the console's certificate is not for {host}: use a name it "
                                f"holds (e.g. localhost), or add one with tls_names on the appliance")
        if remote.ca is not None:
            return RemoteFailed(f"{url}: certificate not trusted by --server-ca {remote.ca}: give this "
                                "appliance's CA (its DATA_DIR/ca.pem, or ca-bundle.pem during a rotation)")
        return RemoteFailed(f"{url}: certificate not trusted: give --server-ca with the appliance's "
                            f"ca.pem (download it from {url}/ca.pem, or copy DATA_DIR/ca.pem)")
    if isinstance(e, ssl.SSLError):
        why = getattr(e, "reason", None) or e
        return RemoteFailed(f"cannot reach {url}: TLS failed ({why}): is it the console door?")
    if isinstance(e, ConnectionRefusedError):
        return RemoteFailed(f"cannot reach {url}: connection refused: is `rampart serve` running there "
                            f"with its console door on (console_port), and is --server right?")
    if isinstance(e, TimeoutError | socket.timeout):
        return RemoteFailed(f"{url} did not answer within {timeout:g} s")
    if isinstance(e, socket.gaierror):
        return RemoteFailed(f"cannot reach {url}: the host name does not resolve ({e.strerror})")
    if isinstance(e, http.client.HTTPException):
        return RemoteFailed(f"{url} broke the exchange ({type(e).__name__}): is it the console door?")
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return RemoteFailed(f"cannot reach {url}: {reason}")


# ---------------------------------------------------------------- answers read back


def _bad_answer(remote: Remote, path: str, what: str) -> RemoteFailed:
    return RemoteFailed(f"{remote.url}{path} answered unlike the admin API ({what})")


def field_of(remote: Remote, path: str, doc: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    """``doc[name]``, which must be of ``kind``; RemoteFailed naming the field otherwise."""
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _bad_answer(remote, path, f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def entry_of(remote: Remote, path: str, doc: Any) -> Entry:
    """A rule (``proxy.decide.list_rules.Entry``) from its JSON in an answer, so the listing
    and export code of the local mode prints it."""
    from proxy.decide.list_rules import Entry, EntryKind, ListName, parse_clients

    def text(name: str) -> str:
        return str(field_of(remote, path, doc, name, str))

    try:
        expires = doc.get("expires")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
            raise ValueError("expires")
        return Entry(list=ListName(text("list")), kind=EntryKind(text("kind")), value=text("value"),
                     note=text("note"), created=float(field_of(remote, path, doc, "created", (int, float))),
                     clients=parse_clients(field_of(remote, path, doc, "clients", list)),
                     expires=None if expires is None else float(expires), added_by=text("added_by"),
                     origin=text("origin"))
    except (ValueError, TypeError, RampartError) as e:
        if isinstance(e, RemoteFailed):
            raise
        raise _bad_answer(remote, path, f"a rule: {e}") from None


def entries_of(remote: Remote) -> list[Entry]:
    """Every rule the appliance holds (``GET /api/lists``), as local ``Entry`` values."""
    path = "/api/lists"
    doc = remote.get(path, limit=MAX_LIST_ANSWER)
    return [entry_of(remote, path, e) for e in field_of(remote, path, doc, "entries", list)]
