"""``rampart query``: ask a running server or cloud about files, URLs or domains over /v1.

A plain client of the query door's JSON protocol (docs/protocol.md): it posts one
request and prints the results as a table, or the raw answer with ``--json`` (before
or after the subcommand). Items are checked here with the server's own parsers
(``proxy.wire.protocol``), so a typo is a wrong command (exit 2) naming the item, not a
round trip. ``--server`` takes a URL or ``host:port``; a failure to reach or trust the
server is one line naming it (exit 1).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from proxy import config as config_mod
from proxy.cli.common import Run, Server, fail_cleanly, json_option, pass_run
from proxy.errors import ConfigError, ProtocolError, RampartError
from proxy.wire import protocol

QUERY_PORT = int(config_mod.default("query_port"))
TLS_PORTS = (int(config_mod.default("query_tls_port")), 443)
"""A ``host:port`` given without a scheme means https on these ports, http on any other."""

HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


def server_url(text: str) -> str:
    """The base URL ``--server`` names: ``host[:port]`` means ``http://`` (``https://`` on
    port 8443 or 443), no port means 8080; a scheme other than http or https is refused."""
    given = text.strip()
    base = given.rstrip("/")
    try:
        parts = urllib.parse.urlsplit(given if "://" in given else "//" + given)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"--server {given!r}: {e}; give a URL (http://HOST:8080) or HOST:PORT") from None
    if not parts.hostname:
        raise ConfigError(f"--server {given!r} names no host; give a URL (http://HOST:8080) or HOST:PORT")
    if parts.scheme:
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"--server {given!r}: use http:// or https://, not {parts.scheme}://")
        return base
    scheme = "https" if port in TLS_PORTS else "http"
    return f"{scheme}://{base}" if port is not None else f"{scheme}://{base}:{QUERY_PORT}"


def _also_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:  # given after the subcommand; never turns off the group's --json
        ctx.ensure_object(Run).as_json = True
    return value


json_after = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_also_json,
                          help="Print the raw JSON answer (also accepted before the subcommand).")


@click.group()
@click.option("--server", default=f"http://127.0.0.1:{QUERY_PORT}",
              show_default=True, envvar="RAMPART_SERVER",
              help="A Rampart server or cloud: a URL, or HOST:PORT (http; https on port 8443 or 443).")
@click.option("--ca", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate to verify an https server with (e.g. DATA_DIR/ca.pem).")
@json_option("Print the raw JSON answer.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait.")
@pass_run
@fail_cleanly
def query(run: Run, server: str, ca: str | None, timeout: float) -> None:
    """Ask a server about files, URLs or domains and print a table."""
    run.server = Server(server_url(server), ca, timeout)


def _checked(items: tuple[str, ...], parse: Any) -> None:
    """Refuse the first item the server would refuse, with the server's reason (exit 2)."""
    for i, item in enumerate(items):
        try:
            parse(item)
        except ProtocolError as e:
            where = f"item {i + 1} of {len(items)}: " if len(items) > 1 else ""
            raise ConfigError(f"{where}{e.message}; nothing was asked") from None


def _post(run: Run, path: str, body: dict[str, Any]) -> dict[str, Any]:
    server = run.server
    assert server is not None  # set by the query group
    context = ssl.create_default_context(cafile=server.ca) if server.url.startswith("https") else None
    req = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=server.timeout, context=context) as resp:
            data = resp.read()
    except urllib.error.HTTPError as e:
        raise RampartError(_refusal(e)) from None
    except urllib.error.URLError as e:
        raise RampartError(_unreachable(server, e.reason)) from None
    except (OSError, http.client.HTTPException) as e:
        raise RampartError(_unreachable(server, e)) from None
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise RampartError(f"{server.url} answered, but not as a Rampart server does "
                           "(no JSON results): is --server the query door?")
    return doc


def _refusal(e: urllib.error.HTTPError) -> str:
    try:
        err = json.loads(e.read())["error"]
        where = f" (item {err['item']})" if "item" in err else ""
        return f"server refused the request{where}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"server answered HTTP {e.code}"


def _unreachable(server: Server, reason: object) -> str:
    """One line saying why ``server`` gave no answer; a TLS verification failure names the fix."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        if reason.verify_code == HOSTNAME_MISMATCH:
            host = urllib.parse.urlsplit(server.url).hostname
            return (f"{server.url}: the certificate is not for {host}: ask by a name it holds "
                    "(e.g. localhost), or start the server with --tls-name " + str(host))
        if server.ca is None:
            return (f"{server.url}: certificate not trusted: use --ca DATA_DIR/ca.pem "
                    "(the appliance CA)")
        return (f"{server.url}: certificate not trusted by --ca {server.ca}: give the CA of this "
                "server (its DATA_DIR/ca.pem, or ca-bundle.pem during a CA rotation)")
    if isinstance(reason, ssl.SSLError):
        return f"cannot reach {server.url}: TLS failed ({reason.reason or reason}): is it an https door?"
    if isinstance(reason, http.client.HTTPException):
        return (f"cannot reach {server.url}: no HTTP answer ({type(reason).__name__}): "
                "an https door asked with http://?")
    return f"cannot reach {server.url}: {getattr(reason, 'strerror', None) or reason}"


def _action(r: dict[str, Any]) -> str:
    """The action cell: a degraded result is only for now, and says when to ask again."""
    action = r.get("action")
    if r.get("source") != "degraded":
        return str(action or "")
    when = f"ask again in {r['retry_after']} s" if "retry_after" in r else "ask again later"
    what = {"allow": "allowed for now", "block": "blocked for now"}.get(str(action), "no answer for now")
    return f"{what}, {when}"


def _cell(r: dict[str, Any], column: str) -> str:
    return _action(r) if column == "action" else str(r.get(column, ""))


def _print(run: Run, doc: dict[str, Any], subject: str, columns: list[str]) -> None:
    if run.as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    results = [r for r in doc["results"] if isinstance(r, dict)]
    rows = [[str(next((r[k] for k in (subject, "sha256", "sha1", "md5", "domain", "ip") if k in r), "?"))]
            + [_cell(r, c) for c in columns] for r in results]
    header = ["item", *columns]
    keep = [i for i in range(len(header)) if i == 0 or any(row[i] for row in rows)]  # no empty columns
    widths = {i: max(len(header[i]), *(len(row[i]) for row in rows)) for i in keep}
    for line in [header, *rows]:
        click.echo("  ".join(line[i].ljust(widths[i]) for i in keep).rstrip())
    click.echo(f"(pattern {doc.get('pattern')})")


@query.command("file")
@click.argument("hashes", nargs=-1, required=True)
@json_after
@pass_run
@fail_cleanly
def query_file(run: Run, hashes: tuple[str, ...]) -> None:
    """Ask about file hashes (MD5, SHA-1 or SHA-256, told by length)."""
    _checked(hashes, protocol.parse_hash)
    items = [{protocol.parse_hash(h).kind.value: h.lower()} for h in hashes]
    _print(run, _post(run, "/v1/file", {"items": items}), "sha256",
           ["verdict", "threat", "source", "ttl", "action", "note"])


@query.command("url")
@click.argument("urls", nargs=-1, required=True)
@click.option("--policy", type=click.Choice(["low", "medium", "high"]),
              help="Web policy level, fills in each result's action: low blocks dangerous; "
                   "medium also highly_suspicious; high also suspicious and untested. A degraded "
                   "result follows the server's degraded_action under low and medium.")
@json_after
@pass_run
@fail_cleanly
def query_url(run: Run, urls: tuple[str, ...], policy: str | None) -> None:
    """Ask about URLs."""
    _checked(urls, lambda u: protocol.parse_url(u, protocol.Limits()))
    body: dict[str, Any] = {"urls": list(urls)}
    if policy:
        body["policy"] = policy
    _print(run, _post(run, "/v1/web", body), "url",
           ["rating", "score", "category", "action", "source", "matched", "note"])


@query.command("domain")
@click.argument("names", nargs=-1, required=True)
@json_after
@pass_run
@fail_cleanly
def query_domain(run: Run, names: tuple[str, ...]) -> None:
    """Ask about domains and IP addresses."""
    _checked(names, protocol.parse_domain)
    _print(run, _post(run, "/v1/domain", {"items": list(names)}), "domain",
           ["rating", "score", "category", "action", "source", "matched", "note"])
