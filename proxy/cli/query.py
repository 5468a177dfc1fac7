"""``rampart query``: ask a running server or cloud about files, URLs or domains over /v1.

A plain client of the query door's JSON protocol (docs/protocol.md): it posts one
request and prints the results as a table, or the raw answer with ``--json``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import click

from proxy import config as config_mod
from proxy.cli.common import Run, Server, fail_cleanly, json_option, pass_run
from proxy.errors import ConfigError, RampartError


@click.group()
@click.option("--server", default=f"http://127.0.0.1:{config_mod.default('query_port')}",
              show_default=True, envvar="RAMPART_SERVER",
              help="Base URL of a Rampart server or cloud.")
@click.option("--ca", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate to verify an https server with (e.g. DATA_DIR/ca.pem).")
@json_option("Print the raw JSON answer.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait.")
@pass_run
def query(run: Run, server: str, ca: str | None, timeout: float) -> None:
    """Ask a server about files, URLs or domains and print a table."""
    run.server = Server(server.rstrip("/"), ca, timeout)


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
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            where = f" (item {err['item']})" if "item" in err else ""
            msg = f"server refused the request{where}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            msg = f"server answered HTTP {e.code}"
        raise RampartError(msg) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RampartError(f"cannot reach {server.url}: {reason}") from None


def _print(run: Run, doc: dict[str, Any], subject: str, columns: list[str]) -> None:
    if run.as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    rows = []
    for r in doc.get("results", []):
        subj = next((str(r[k]) for k in (subject, "sha256", "sha1", "md5", "domain", "ip") if k in r), "?")
        rows.append([subj] + [str(r.get(c, "")) for c in columns])
    header = ["item", *columns]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    click.echo(f"(pattern {doc.get('pattern')})")


@query.command("file")
@click.argument("hashes", nargs=-1, required=True)
@pass_run
@fail_cleanly
def query_file(run: Run, hashes: tuple[str, ...]) -> None:
    """Ask about file hashes (MD5, SHA-1 or SHA-256, told by length)."""
    from proxy.model import HashKind

    items = []
    for h in hashes:
        kind = HashKind.from_hex_length(len(h))
        if kind is None:
            raise ConfigError(f"{h!r} is not an MD5, SHA-1 or SHA-256 hex digest")
        items.append({kind.value: h.lower()})
    _print(run, _post(run, "/v1/file", {"items": items}), "sha256",
           ["verdict", "threat", "source", "ttl", "retry_after"])


@query.command("url")
@click.argument("urls", nargs=-1, required=True)
@click.option("--policy", type=click.Choice(["low", "medium", "high"]), help="Fill in block/allow.")
@pass_run
@fail_cleanly
def query_url(run: Run, urls: tuple[str, ...], policy: str | None) -> None:
    """Ask about URLs."""
    body: dict[str, Any] = {"urls": list(urls)}
    if policy:
        body["policy"] = policy
    _print(run, _post(run, "/v1/web", body), "url",
           ["rating", "score", "category", "action", "source", "matched"])


@query.command("domain")
@click.argument("names", nargs=-1, required=True)
@pass_run
@fail_cleanly
def query_domain(run: Run, names: tuple[str, ...]) -> None:
    """Ask about domains and IP addresses."""
    _print(run, _post(run, "/v1/domain", {"items": list(names)}), "domain",
           ["rating", "score", "category", "source", "matched"])
