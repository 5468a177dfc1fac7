"""``rampart pattern``: build, sign, publish, verify, inspect and serve patterns, and move
between the versions kept in a data directory.

``rollback`` and ``versions`` work on DATA_DIR/patterns; a server running on that
directory notices the new ``current`` version within ``pattern_poll`` seconds.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from proxy.cli.common import (
    Run,
    config_file_option,
    data_dir_option,
    fail_cleanly,
    json_option,
    pass_run,
)
from proxy.cli.remote import field_of, remote_for, remote_options
from proxy.errors import ConfigError, RampartError

if TYPE_CHECKING:
    from proxy.updates.publish import Published


@click.group()
def pattern() -> None:
    """Build, publish, verify and serve patterns."""


_SOURCE = click.Path(path_type=Path, dir_okay=False, exists=True)


@pattern.command("build")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory to write the pattern into: new or empty, or a build to replace "
                   "with --force.")
@click.option("--force", is_flag=True, help="Replace the build already in --out.")
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
              help="The previous build: keeps its string ids and agent prefix length, so diffs "
                   "stay small. It adds none of its entries (optional: publish works without).")
@click.option("--version", "version",
              help="Pattern version YYYYMMDDHH[MM[SS]] (default: the build hour; publish then "
                   "takes the next free version if the update source has that hour already).")
@fail_cleanly
def pattern_build(out: Path, force: bool, hashes: tuple[Path, ...], clamav: tuple[Path, ...],
                  urls: tuple[Path, ...], domains: tuple[Path, ...], hosts: tuple[Path, ...],
                  skip_bad: bool, base: Path | None, version: str | None) -> None:
    """Build a pattern directory from publisher sources.

    The sources are the whole pattern: entries not in them are removed when
    the build is published (give every source each time, as a feed's full
    dump; `pattern publish` counts what it adds and removes). Duplicates
    merge by one rule: the most severe verdict or rating wins, then the higher
    score, then the earlier line. A malformed line fails the build naming file
    and line, unless --skip-bad.
    """
    from proxy.patterns.build import build_pattern

    if not (hashes or clamav or urls or domains or hosts):
        raise ConfigError("give at least one source: --hashes, --clamav, --urls, --domains "
                          "or --hosts")
    r = build_pattern(out, hashes=hashes, clamav=clamav, urls=urls, domains=domains,
                      hosts=hosts, skip_bad=skip_bad, base=base, version=version, replace=force)
    click.echo(f"built {out} version {r.version}: {r.hashes} hashes (md5 {r.md5}, sha1 "
               f"{r.sha1}, sha256 {r.sha256}), {r.web_blocking} web-blocking, "
               f"{r.suspicious_urls} suspicious urls, {r.domains} domains, "
               f"{r.ip4 + r.ip6} ip ranges, agent {r.agent}")
    click.echo("the sources are the whole pattern: entries not in them are removed when this "
               "build is published")
    if r.auto_version:
        click.echo(f"version {r.version} is the build hour: publish takes the next free version "
                   "if the update source has it already")
    if skip_bad:
        click.echo(f"skipped {r.skipped} malformed line(s)")
        for example in r.skipped_examples:
            click.echo(f"  {example}", err=True)


@pattern.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Private key file to create (mode 0600; missing folders are made 0700); the "
                   "public key goes to OUT.pub.")
@click.option("--force", is_flag=True,
              help="Replace an existing key pair (appliances trusting the old public key will "
                   "refuse what the new one signs).")
@fail_cleanly
def pattern_keygen(out: Path, force: bool) -> None:
    """Create an Ed25519 key pair for signing an update source."""
    from proxy.updates.signing import keygen

    missing = []
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    pub = keygen(out, force=force)
    for folder in reversed(missing):
        click.echo(f"created folder {folder} (mode 0700)")
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
@click.option("--max-shrink", type=click.FloatRange(0, 100), default=50, show_default=True,
              metavar="PERCENT",
              help="Refuse to publish a build that removes more than this share of a "
                   "pattern's published entries.")
@click.option("--allow-shrink", is_flag=True,
              help="Publish whatever the build removes (a deliberate clean-up).")
@fail_cleanly
def pattern_publish(build_dir: Path, repo_dir: Path, key: Path, keep: int,
                    valid_for: timedelta, max_shrink: float, allow_shrink: bool) -> None:
    """Add a build to an update source: full files, diffs, a signed manifest.

    The build is the whole pattern: entries it lacks are removed. Publish
    prints, per pattern, how many entries it adds and removes against the
    published version, and refuses, writing nothing, a build that removes
    more than --max-shrink percent of a pattern's entries (give --allow-shrink
    when that is meant). A build whose version was defaulted gets the next
    free version. Files are published 0644 (folders 0755) for any web server.
    """
    from proxy.updates.publish import publish
    from proxy.updates.signing import load_private_key

    report = publish(build_dir, repo_dir, load_private_key(key), keep=keep, valid_for=valid_for,
                     max_shrink=None if allow_shrink else max_shrink)
    for p in report.patterns:
        click.echo(f"  {p.pattern:<16} version {p.version}  {_published_state(p)}")
    if report.version != report.build_version and any(p.changed for p in report.patterns):
        click.echo(f"version {report.build_version} (the build hour) was taken: published as "
                   f"{report.version}, the next free version")
    if report.renumbered:
        click.echo("the build's threat names and categories were renumbered onto the published "
                   "ones")
    click.echo(f"published {build_dir} to {repo_dir} (pruned {report.pruned})")


def _published_state(p: Published) -> str:
    """What publishing did to one pattern, with the entries it adds and removes."""
    c = p.change
    if c is None:
        return "new" if p.changed else "unchanged"
    if not p.changed:
        return f"unchanged, {c.after} entries"
    return (f"new: +{c.added} -{c.removed} entries ({c.before} -> {c.after}), "
            f"{p.full_bytes} bytes full, {p.diff_bytes} bytes of diffs")


@pattern.command("verify")
@click.argument("path", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Ed25519 public key: check an update source's signature.")
@fail_cleanly
def pattern_verify(path: Path, key: Path | None) -> None:
    """Check a build or an update source: sizes, SHA-256 digests, signature."""
    from proxy.updates.repo_dir import is_repo, verify_repo

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
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def pattern_info(run: Run, directory: Path) -> None:
    """Print a build's or an update source's versions and entry counts."""
    from proxy.patterns.pattern import pattern_info as info
    from proxy.updates.repo_dir import is_repo, repo_info

    data = repo_info(directory) if is_repo(directory) else info(directory)
    if run.as_json:
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
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address to listen on: 127.0.0.1 serves this machine only; 0.0.0.0 for "
                   "every address, so appliances on other machines can reach it (:: for IPv6).")
@fail_cleanly
def pattern_serve(repo_dir: Path, port: int, listen: str) -> None:
    """Serve an update source over plain HTTP (for tests and small sites).

    Appliances check every file against the signed manifest and refuse an
    older manifest served again, so plain HTTP will do; any static web server
    can serve the folder too.
    """
    from proxy.serve.repo_server import make_server

    server = make_server(repo_dir, listen, port)
    host, bound = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    where = (" (every address: appliances use this machine's name or address)"
             if host in ("0.0.0.0", "::") else
             " (this machine only: --listen 0.0.0.0 for appliances on other machines)"
             if host in ("127.0.0.1", "::1", "localhost") else "")
    click.echo(f"serving {repo_dir} on http://{shown}:{bound}/{where}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _store_options(fn: Any) -> Any:
    """``--data-dir`` and ``--config``: the data directory whose patterns/ these work on."""
    fn = config_file_option("Take the data directory from this TOML config file (the one "
                            "`serve` uses).")(fn)
    return data_dir_option(fn)


@pattern.command("rollback")
@_store_options
@remote_options
@pass_run
@fail_cleanly
def pattern_rollback(run: Run) -> None:
    """Go back to the pattern version installed before the current one.

    The version rolled back from is not installed again by scheduled updates;
    the next newer published version is. A running server swaps within seconds.
    With --server, the appliance there rolls back through its admin API.
    """
    from proxy.updates.store import PatternStore

    remote = remote_for(run)
    if remote is not None:
        path = "/api/updates/rollback"
        done = remote.post(path, {})
        click.echo(f"rolled back from {field_of(remote, path, done, 'from', str)}"
                   f" to {field_of(remote, path, done, 'to', str)}")
        return
    store = PatternStore.open(run.existing_data_dir() / "patterns")
    before = store.current_version()
    after = store.rollback()
    click.echo(f"rolled back from {before} to {after}")


@pattern.command("versions")
@_store_options
@pass_run
@fail_cleanly
def pattern_versions(run: Run) -> None:
    """List the pattern versions kept in the data directory (the current one marked *)."""
    from proxy.updates.store import PatternStore

    store = PatternStore.open(run.existing_data_dir() / "patterns")
    current, refused = store.current_version(), store.refused()
    for v in store.versions():
        mark = "*" if v == current else " "
        click.echo(f"{mark} {v}" + ("  (rolled back)" if v in refused else ""))
