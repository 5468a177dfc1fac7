"""The ``rampart`` command line: every command but ``serve`` (which needs mitmproxy; see addons.cli).

Each command's docstring is its help. Errors from the core (RampartError) are
printed as one line, ``rampart: error: …``, and exit with the error's code.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from proxy import config as config_mod
from proxy.errors import ConfigError, RampartError

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(fn: F) -> F:
    """Turn a RampartError (certificate errors included) into one clear line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RampartError as e:
            click.echo(f"rampart: error: {e.message}", err=True)
            sys.exit(e.exit_code)

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def data_dir_option(fn: F) -> F:
    return click.option(
        "--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="RAMPART_DATA_DIR",
        default=None, help="Data directory (default: $RAMPART_DATA_DIR or ~/.local/share/rampart).",
    )(fn)


def door_options(fn: F) -> F:
    """Options shared by `serve` and `cloud`, each mapping to a config key."""
    for decorator in reversed([
        click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                     envvar="RAMPART_CONFIG", help="TOML config file (see `rampart config`)."),
        data_dir_option,
        click.option("--listen", help="Address the doors listen on (default 0.0.0.0)."),
        click.option("--tls-name", "tls_names", multiple=True,
                     help="Extra name or address for the HTTPS certificate (repeatable)."),
        click.option("--pattern", "pattern_dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Serve this pattern directory instead of the data directory's."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
    ]):
        fn = decorator(fn)
    return fn


def load_config(config_file: Path | None, **flags: Any) -> config_mod.Config:
    return config_mod.load(config_file, flags)


def run_async(main: Callable[[], Any]) -> None:
    """Run ``main()`` on uvloop until SIGINT/SIGTERM."""
    import uvloop

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main()(stop)

    uvloop.run(runner())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rampart")
def cli() -> None:
    """Rampart: an open Smart Protection Server.

    Answers file, web and domain/IP reputation queries from hosted patterns and
    the administrator's lists, and relays the rest to the cloud. Start with
    `rampart serve`, then in another terminal ask about the EICAR test file:

    \b
      rampart query file 275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f
    """


# -------------------------------------------------------------------- config


@cli.command("config")
def config_cmd() -> None:
    """Print every config key with its default and meaning (a documented config file)."""
    for key, default, help_text in config_mod.describe():
        click.echo(f"# {help_text}")
        if default in ("None", "[]"):
            click.echo(f"# {key} = ")
        else:
            shown = default.replace("PosixPath(", "").rstrip(")") if "Path" in default else default
            click.echo(f"# {key} = {_toml_value(shown)}")
        click.echo()


def _toml_value(text: str) -> str:
    if text in ("True", "False"):
        return text.lower()
    return text.replace("'", '"')


# -------------------------------------------------------------------- cloud


@cli.command()
@door_options
@click.option("--port", type=click.IntRange(0, 65535), default=9443, show_default=True,
              help="HTTPS port of the reference cloud.")
@fail_cleanly
def cloud(config_file: Path | None, port: int, **flags: Any) -> None:
    """Run the reference cloud: the same engine, authoritative, over HTTPS only.

    It never relays: what it does not know is `unknown`/`untested` from `cloud`.
    Its CA certificate is written to DATA_DIR/ca.pem for appliances to trust
    (`rampart serve --cloud https://localhost:PORT --cloud-ca DATA_DIR/ca.pem`).
    """
    from proxy.serve.app import App

    cfg = load_config(config_file, query_port=0, query_tls_port=port, authoritative=True, **flags)
    setup_logging(cfg.log_level)

    def main() -> Any:
        async def serve(stop: asyncio.Event) -> None:
            app = App(cfg, authoritative=True, sample="cloud")
            await app.start()
            click.echo(
                f"rampart cloud: https://{_shown(cfg.listen)}:{app.ports().get('https')} "
                f"(pattern {app.engine.version}, CA {cfg.data_dir / 'ca.pem'})",
                err=True,
            )
            try:
                await stop.wait()
            finally:
                await app.stop()

        return serve

    run_async(main)


def _shown(listen: str) -> str:
    return "127.0.0.1" if listen in ("0.0.0.0", "") else listen


# -------------------------------------------------------------------- patterns


@cli.group()
def pattern() -> None:
    """Build, publish, verify and serve patterns."""


_SOURCE = click.Path(path_type=Path, dir_okay=False, exists=True)


@pattern.command("build")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory to write the pattern into (must not exist or be empty).")
@click.option("--hashes", type=_SOURCE, multiple=True,
              help="Hash source: lines HASH[,THREAT[,VERDICT]]; .hdb/.hsb are read as ClamAV "
                   "(repeatable).")
@click.option("--clamav", type=_SOURCE, multiple=True,
              help="ClamAV hash signatures: HASH:SIZE:NAME (.hdb MD5, .hsb SHA-1/SHA-256) "
                   "(repeatable).")
@click.option("--urls", type=_SOURCE, multiple=True,
              help="URL source: lines URL_OR_EXPRESSION[,RATING[,CATEGORY[,SCORE]]] (repeatable).")
@click.option("--domains", type=_SOURCE, multiple=True,
              help="Domain/IP source: lines DOMAIN_OR_IP_OR_CIDR[,RATING[,CATEGORY[,SCORE]]]; "
                   "plain domain, IP and CIDR lists too (repeatable).")
@click.option("--hosts", type=_SOURCE, multiple=True,
              help="Hosts file: lines ADDRESS NAME [NAME...] (0.0.0.0 ads.example); localhost "
                   "entries are ignored (repeatable).")
@click.option("--skip-bad", is_flag=True,
              help="Count and skip malformed lines instead of failing the build.")
@click.option("--base", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The previous build: keeps string ids and the agent prefix length stable, "
                   "so diffs stay small (needed to publish a second build).")
@click.option("--version", "version", help="Pattern version (default: the build hour, YYYYMMDDHH).")
@fail_cleanly
def pattern_build(out: Path, hashes: tuple[Path, ...], clamav: tuple[Path, ...],
                  urls: tuple[Path, ...], domains: tuple[Path, ...], hosts: tuple[Path, ...],
                  skip_bad: bool, base: Path | None, version: str | None) -> None:
    """Build a pattern directory from publisher sources.

    Duplicates merge by one rule: the most severe verdict or rating wins, then
    the higher score, then the earlier line. A malformed line fails the build
    naming file and line, unless --skip-bad.
    """
    from proxy.patterns.build import build_pattern

    if not (hashes or clamav or urls or domains or hosts):
        raise ConfigError("give at least one source: --hashes, --clamav, --urls, --domains "
                          "or --hosts")
    r = build_pattern(out, hashes=hashes, clamav=clamav, urls=urls, domains=domains,
                      hosts=hosts, skip_bad=skip_bad, base=base, version=version)
    click.echo(f"built {out} version {r.version}: {r.hashes} hashes (md5 {r.md5}, sha1 "
               f"{r.sha1}, sha256 {r.sha256}), {r.web_blocking} web-blocking, "
               f"{r.suspicious_urls} suspicious urls, {r.domains} domains, "
               f"{r.ip4 + r.ip6} ip ranges, agent {r.agent}")
    if skip_bad:
        click.echo(f"skipped {r.skipped} malformed line(s)")
        for example in r.skipped_examples:
            click.echo(f"  {example}", err=True)


@pattern.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Private key file to create (mode 0600); the public key goes to OUT.pub.")
@fail_cleanly
def pattern_keygen(out: Path) -> None:
    """Create an Ed25519 key pair for signing an update source."""
    from proxy.updates.signing import keygen

    pub = keygen(out)
    click.echo(f"wrote private key {out} (keep it secret) and public key {pub}")


class ValidFor(click.ParamType[timedelta]):
    """A duration: ``N`` then ``m``, ``h`` or ``d`` (minutes, hours, days); publish bounds it."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        unit = {"m": 60, "h": 3600, "d": 86400}.get(text[-1:])
        if unit is None or not text[:-1].isdigit() or len(text) > 12:
            self.fail(f"{str(value)[:40]!r} is not a duration like 36h or 7d", param, ctx)
        return timedelta(seconds=int(text[:-1]) * unit)


@pattern.command("publish")
@click.option("--from", "build_dir", type=click.Path(path_type=Path, file_okay=False,
                                                     exists=True), required=True,
              help="The build directory to publish.")
@click.option("--repo", "repo_dir", type=click.Path(path_type=Path, file_okay=False),
              required=True, help="The update-source directory (created if missing).")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="Ed25519 private key (from `rampart pattern keygen`).")
@click.option("--keep", type=click.IntRange(1, 1000), default=24, show_default=True,
              help="Versions of each pattern to keep diffs for.")
@click.option("--valid-for", type=ValidFor(), default="7d", show_default=True,
              help="How long the signed manifest stays valid (e.g. 36h, 7d; up to 366d): "
                   "appliances report their patterns stale after it. Publish again "
                   "(even the same build) sooner than that.")
@fail_cleanly
def pattern_publish(build_dir: Path, repo_dir: Path, key: Path, keep: int,
                    valid_for: timedelta) -> None:
    """Add a build to an update source: full files, diffs, a signed manifest."""
    from proxy.updates.publish import publish
    from proxy.updates.signing import load_private_key

    report = publish(build_dir, repo_dir, load_private_key(key), keep=keep, valid_for=valid_for)
    for p in report.patterns:
        state = (f"new, {p.full_bytes} bytes full, {p.diff_bytes} bytes of diffs" if p.changed
                 else "unchanged")
        click.echo(f"  {p.pattern:<16} version {p.version}  {state}")
    click.echo(f"published {build_dir} to {repo_dir} (pruned {report.pruned})")


@pattern.command("verify")
@click.argument("path", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Ed25519 public key: check an update source's signature.")
@fail_cleanly
def pattern_verify(path: Path, key: Path | None) -> None:
    """Check a build or an update source: sizes, SHA-256 digests, signature."""
    from proxy.updates.publish import is_repo, verify_repo

    if is_repo(path):
        problems = verify_repo(path, key)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        if problems:
            raise RampartError(f"{path}: {len(problems)} problem(s)")
        signed = "signature good" if key else "signature NOT checked (no --key)"
        click.echo(f"{path}: update source good ({signed})")
        return
    from proxy.patterns.pattern import PatternSet

    if key is not None:
        raise ConfigError(f"{path} is a build directory: it has no signature to check")
    with PatternSet.open(path, verify=True) as p:
        agent = p.info()["patterns"].get("agent")
        if agent is not None:
            from proxy.patterns.pattern import read_manifest
            from proxy.updates.repo import verify_file

            files = read_manifest(path).raw["patterns"]["agent"].get("files", {})
            for name, spec in files.items():
                verify_file(path / str(name), int(spec["size"]), str(spec["sha256"]), str(name))
        click.echo(f"{path}: build {p.version} good")


@pattern.command("info")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def pattern_info(directory: Path, as_json: bool) -> None:
    """Print a build's or an update source's versions and entry counts."""
    from proxy.patterns.pattern import pattern_info as info
    from proxy.updates.publish import is_repo, repo_info

    data = repo_info(directory) if is_repo(directory) else info(directory)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    if "published" in data:
        expires = data.get("expires") or "never"
        click.echo(f"update source  published {data['published']}  expires {expires}  "
                   f"keep {data['keep']}  strings {data['strings']}")
    else:
        click.echo(f"version {data.get('version')}  created {data.get('created')}")
    for name, p in sorted(data.get("patterns", {}).items()):
        extra = f"  diffs {p['diffs']}" if "diffs" in p else ""
        click.echo(f"  {name:<16} version {p.get('version')}  entries {p.get('entries')}{extra}")
    for problem in data.get("problems", []):
        click.echo(f"  problem: {problem}", err=True)


@pattern.command("serve")
@click.argument("repo_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on.")
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address to listen on.")
@fail_cleanly
def pattern_serve(repo_dir: Path, port: int, listen: str) -> None:
    """Serve an update source over plain HTTP (for tests and small sites)."""
    from proxy.serve.repo_server import make_server

    server = make_server(repo_dir, listen, port)
    host, bound = server.server_address[:2]
    click.echo(f"serving {repo_dir} on http://{host}:{bound}/", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -------------------------------------------------------------------- lists


@cli.group("lists")
def lists_group() -> None:
    """Edit the approved/blocked lists (a running server sees changes within seconds)."""


def _store(data_dir: Path | None) -> Any:
    from proxy.decide.lists import ListStore

    return ListStore.open(data_dir or config_mod.default_data_dir())


def _kind(kind: str | None) -> Any:
    from proxy.decide.lists import EntryKind

    return EntryKind(kind) if kind else None


KIND = click.Choice(["hash", "domain", "url"])


@lists_group.command("add")
@data_dir_option
@click.option("--blocked", "which", flag_value="blocked", help="Add to the blocked list.")
@click.option("--approved", "which", flag_value="approved", help="Add to the approved list.")
@click.option("--kind", type=KIND, help="Force the kind instead of telling it from the form.")
@click.option("--note", default="", help="A note stored with the entries.")
@click.argument("values", nargs=-1, required=True)
@fail_cleanly
def lists_add(data_dir: Path | None, which: str | None, kind: str | None, note: str,
              values: tuple[str, ...]) -> None:
    """Add VALUES (hex digests, domains, URL prefixes) to a list.

    The kind is told from the form: a 32/40/64-digit hex string is a file hash,
    a value with a scheme or a path is a URL prefix, anything else a domain
    (which also covers its subdomains).
    """
    from proxy.decide.lists import ListName, classify

    if which is None:
        raise ConfigError("say which list: --blocked or --approved")
    entries = [classify(v, _kind(kind)) for v in values]
    store = _store(data_dir)
    try:
        for message in store.add(ListName(which), entries, note=note):
            click.echo(message)
    finally:
        store.close()


@lists_group.command("remove")
@data_dir_option
@click.option("--kind", type=KIND, help="Force the kind instead of telling it from the form.")
@click.argument("values", nargs=-1, required=True)
@fail_cleanly
def lists_remove(data_dir: Path | None, kind: str | None, values: tuple[str, ...]) -> None:
    """Remove VALUES from whichever list holds them."""
    from proxy.decide.lists import classify

    entries = [classify(v, _kind(kind)) for v in values]
    store = _store(data_dir)
    try:
        n = store.remove(entries)
    finally:
        store.close()
    click.echo(f"removed {n} of {len(entries)}")
    if n < len(entries):
        sys.exit(1)


@lists_group.command("test")
@data_dir_option
@click.option("--pattern", "pattern_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Test against this pattern directory instead of the data directory's.")
@click.argument("urls", nargs=-1, required=True)
@fail_cleanly
def lists_test(data_dir: Path | None, pattern_dir: Path | None, urls: tuple[str, ...]) -> None:
    """Explain which list rule or pattern entry decides each URL, and why."""
    from proxy.decide.explain import explain_url
    from proxy.serve.app import sample_sources
    from proxy.serve.keeper import PatternKeeper

    cfg = config_mod.load(None, {"data_dir": data_dir, "pattern_dir": pattern_dir})
    store = _store(cfg.data_dir)
    patterns = PatternKeeper(cfg, sample_sources("appliance")).open()
    try:
        lists = store.snapshot()
        for i, url in enumerate(urls):
            if i:
                click.echo()
            for line in explain_url(url, lists, patterns).lines():
                click.echo(line)
        click.echo(f"(pattern {patterns.version})")
    finally:
        patterns.close()
        store.close()


@lists_group.command("show")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def lists_show(data_dir: Path | None, as_json: bool) -> None:
    """Show both lists."""
    store = _store(data_dir)
    try:
        entries = store.entries()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([
            {"list": e.list.value, "kind": e.kind.value, "value": e.value, "note": e.note}
            for e in entries
        ], indent=2))
        return
    if not entries:
        click.echo("both lists are empty")
    for e in entries:
        click.echo(f"{e.list.value:<9} {e.kind.value:<7} {e.value}" + (f"  # {e.note}" if e.note else ""))


# -------------------------------------------------------------------- query


@cli.group()
@click.option("--server", default="http://127.0.0.1:8080", show_default=True, envvar="RAMPART_SERVER",
              help="Base URL of a Rampart server or cloud.")
@click.option("--ca", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate to verify an https server with (e.g. DATA_DIR/ca.pem).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def query(ctx: click.Context, server: str, ca: str | None, as_json: bool, timeout: float) -> None:
    """Ask a server about files, URLs or domains and print a table."""
    ctx.obj = {"server": server.rstrip("/"), "ca": ca, "json": as_json, "timeout": timeout}


def _post(ctx: click.Context, path: str, body: dict[str, Any]) -> dict[str, Any]:
    o = ctx.obj
    context = ssl.create_default_context(cafile=o["ca"]) if o["server"].startswith("https") else None
    req = urllib.request.Request(
        o["server"] + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=o["timeout"], context=context) as resp:
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
        raise RampartError(f"cannot reach {o['server']}: {reason}") from None


def _print(ctx: click.Context, doc: dict[str, Any], subject: str, columns: list[str]) -> None:
    if ctx.obj["json"]:
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
@click.pass_context
@fail_cleanly
def query_file(ctx: click.Context, hashes: tuple[str, ...]) -> None:
    """Ask about file hashes (MD5, SHA-1 or SHA-256, told by length)."""
    from proxy.model import HashKind

    items = []
    for h in hashes:
        kind = HashKind.from_hex_length(len(h))
        if kind is None:
            raise ConfigError(f"{h!r} is not an MD5, SHA-1 or SHA-256 hex digest")
        items.append({kind.value: h.lower()})
    _print(ctx, _post(ctx, "/v1/file", {"items": items}), "sha256",
           ["verdict", "threat", "source", "ttl", "retry_after"])


@query.command("url")
@click.argument("urls", nargs=-1, required=True)
@click.option("--policy", type=click.Choice(["low", "medium", "high"]), help="Fill in block/allow.")
@click.pass_context
@fail_cleanly
def query_url(ctx: click.Context, urls: tuple[str, ...], policy: str | None) -> None:
    """Ask about URLs."""
    body: dict[str, Any] = {"urls": list(urls)}
    if policy:
        body["policy"] = policy
    _print(ctx, _post(ctx, "/v1/web", body), "url",
           ["rating", "score", "category", "action", "source", "matched"])


@query.command("domain")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
@fail_cleanly
def query_domain(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Ask about domains and IP addresses."""
    _print(ctx, _post(ctx, "/v1/domain", {"items": list(names)}), "domain",
           ["rating", "score", "category", "source", "matched"])


def main() -> None:
    cli()


from proxy.cli import appliance as cli_appliance  # noqa: E402, F401  (registers appliance commands)
from proxy.cli import ca as cli_ca  # noqa: E402,F401  (registers ca commands)
from proxy.cli import update as cli_update  # noqa: E402,F401  (registers update commands)
