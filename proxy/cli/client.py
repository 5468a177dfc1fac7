"""``rampart client``: the reference client (``proxy.client``) from the command line.

``scan`` prints one line per file in clamscan's form (``PATH: OK``, ``PATH: THREAT
FOUND``) and a summary, and exits as clamscan does: 0 nothing found, 1 something found
(or blocked under ``--fail-closed``), 2 errors. ``--json`` prints one JSON object per
file and the summary last, one per line. Settings come from ``--config FILE`` (TOML, see
``proxy.client.options``) and the options; the state (answer cache, file index, agent
pattern, flags, quarantine records) lives in ``--state-dir``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from proxy.cli.common import fail_cleanly
from proxy.client.session import Session
from proxy.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _options(fn: F) -> F:
    for decorator in reversed([
        click.option("--server", "servers", multiple=True, metavar="URL[@PRIORITY]",
                     help="A server, in priority order (repeatable; URL@1 for a lower "
                          "priority, external:https://… for one used outside the intranet). "
                          "Default http://127.0.0.1:8080."),
        click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False,
                                                                exists=True),
                     envvar="RAMPART_CLIENT_CONFIG", help="Client settings (TOML)."),
        click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                     envvar="RAMPART_CLIENT_DIR",
                     help="Where the cache, agent pattern and flags are kept "
                          "(default ~/.local/share/rampart-client)."),
        click.option("--ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     help="CA certificate to verify https servers with (e.g. the appliance's "
                          "ca.pem; default: the system trust store)."),
        click.option("--order", type=click.Choice(["in-order", "random"]),
                     help="Servers of one priority in the order given (default) or at random."),
        click.option("--deadline", type=click.FloatRange(0.1, 600),
                     help="Seconds one question may take across every server (default 10)."),
    ]):
        fn = decorator(fn)
    return fn


def _session(given: dict[str, Any]) -> Session:
    """The command's parts; a bad setting or server is a usage error (exit 2)."""
    from proxy.client import options
    from proxy.client.errors import ClientError
    from proxy.client.servers import parse_server
    from proxy.client.session import open_session

    config_file = given.pop("config_file", None)
    try:
        opts = options.load(config_file, given)
        for server in opts.servers:
            parse_server(server)
    except ClientError as e:
        raise ConfigError(e.message) from None
    return open_session(opts)


def _run(given: dict[str, Any], work: Callable[[Session], Awaitable[T]]) -> T:
    async def main() -> T:
        session = _session(given)
        try:
            return await work(session)
        finally:
            await session.close()

    return asyncio.run(main())


@click.group("client")
def client_group() -> None:
    """The reference client: scan files and check URLs against Rampart servers."""


def _line(report: Any) -> str:
    v = report.verdict
    if report.action == "error":
        return f"{report.path}: ERROR {report.error}"
    if report.action == "gone":
        return f"{report.path}: gone (no longer flagged)"
    if report.action in ("found", "quarantined"):
        threat = (v.threat if v is not None else None) or "Unknown-Threat"
        moved = " (quarantined)" if report.action == "quarantined" else ""
        extra = f" ({report.error})" if report.error else ""
        return f"{report.path}: {threat} FOUND{moved}{extra}"
    if report.action in ("flagged", "blocked"):
        how = "blocked (--fail-closed)" if report.action == "blocked" else "allowed for now"
        return f"{report.path}: FLAGGED no server answered; {how}"
    return f"{report.path}: OK"


def _summary_lines(s: Any, seconds: float) -> list[str]:
    return ["", "----------- SCAN SUMMARY -----------", f"Scanned files: {s.scanned}",
            f"Infected files: {s.infected}", f"Flagged files: {s.flagged + s.blocked}",
            f"Errors: {s.errors}", f"Data read: {s.bytes_read / 1e6:.2f} MB",
            f"Time: {seconds:.3f} sec"]


class _Progress:
    """Files done, on standard error when it is a terminal; nothing otherwise."""

    def __init__(self) -> None:
        self.on = sys.stderr.isatty()
        self.done = 0
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.on and now - self.last >= 0.2:
            self.last = now
            click.echo(f"\r{self.done} files scanned…", err=True, nl=False)

    def end(self) -> None:
        if self.on and self.done:
            click.echo("\r" + " " * 40 + "\r", err=True, nl=False)


async def _scan(session: Session, paths: list[Path] | None, quarantine_dir: Path | None,
                as_json: bool) -> int:
    from proxy.client.quarantine import Quarantine
    from proxy.client.scan import Scanner

    started = time.monotonic()
    quarantine = Quarantine(session.state, quarantine_dir) if quarantine_dir else None
    progress = _Progress()
    scanner = Scanner(session.client, session.state, kinds=session.opts.digests,
                      quarantine=quarantine, progress=progress)
    try:
        await session.client.refresh_agent()
    except Exception as e:  # no server now: the scan goes on with the pattern held, if any
        click.echo(f"rampart client: warning: agent pattern not refreshed: "
                   f"{getattr(e, 'message', e)}", err=True)
    reports = scanner.scan(paths) if paths is not None else scanner.rescan()
    async for report in reports:
        progress.end()
        click.echo(json.dumps(report.to_json()) if as_json else _line(report))
    progress.end()
    s = scanner.summary
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"summary": {"scanned": s.scanned, "infected": s.infected,
                                           "flagged": s.flagged, "blocked": s.blocked,
                                           "errors": s.errors, "bytes_read": s.bytes_read,
                                           "seconds": round(seconds, 3)}}))
    else:
        for line in _summary_lines(s, seconds):
            click.echo(line)
    return s.exit_code


@client_group.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_options
@click.option("--query", type=click.Choice(["filtered", "all"]),
              help="filtered (default): ask only about files the agent pattern cannot clear; "
                   "all: ask about every file not cached, so the cloud decides unknown files.")
@click.option("--digest", "digests", multiple=True, type=click.Choice(["sha256", "sha1", "md5"]),
              help="Digests to compute and ask by (repeatable; sha256 always).")
@click.option("--fail-closed", is_flag=True, default=None,
              help="Block files no server could answer for, instead of allowing them for now.")
@click.option("--quarantine", "quarantine_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Move malicious files into this folder (rampart client quarantine list).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, then the summary.")
@fail_cleanly
def client_scan(paths: tuple[Path, ...], quarantine_dir: Path | None, as_json: bool,
                **given: Any) -> None:
    """Scan files and folders (recursively): digests only, never the content.

    Prints PATH: OK, PATH: THREAT FOUND or PATH: FLAGGED per file and a summary. Exit
    0 when nothing was found, 1 when something was (or blocked), 2 on errors. Files
    flagged earlier are asked about again when a server answers.
    """
    given["digests"] = ("sha256", *(d for d in given.get("digests") or () if d != "sha256"))
    sys.exit(_run(given, lambda s: _scan(s, list(paths), quarantine_dir, as_json)))


@client_group.command("rescan")
@_options
@click.option("--query", type=click.Choice(["filtered", "all"]),
              help="filtered (default): the agent pattern may clear a flagged file; all: ask.")
@click.option("--fail-closed", is_flag=True, default=None,
              help="Block files still unanswered instead of allowing them.")
@click.option("--quarantine", "quarantine_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Move files now found malicious into this folder.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, then the summary.")
@fail_cleanly
def client_rescan(quarantine_dir: Path | None, as_json: bool, **given: Any) -> None:
    """Ask again about the files flagged while no server answered, act on them, and
    clear their flags."""
    sys.exit(_run(given, lambda s: _scan(s, None, quarantine_dir, as_json)))


@client_group.command("url")
@click.argument("urls", nargs=-1, required=True)
@_options
@click.option("--policy", type=click.Choice(["low", "medium", "high"]), default="medium",
              show_default=True, help="Web policy level: which ratings are blocked.")
@click.option("--json", "as_json", is_flag=True, help="The results as JSON.")
@fail_cleanly
def client_url(urls: tuple[str, ...], policy: str, as_json: bool, **given: Any) -> None:
    """Rate URLs and say whether the policy allows or blocks each (exit 1 if any is
    blocked)."""
    results = _run(given, lambda s: s.client.check_urls(list(urls), policy))
    if as_json:
        click.echo(json.dumps(results))
    else:
        for url, r in zip(urls, results):
            extra = f" ({r['category']})" if r.get("category") else ""
            click.echo(f"{url}: {r.get('rating')}{extra} -> {r.get('action', 'allow')}"
                       f"  [{r.get('source')}]")
    sys.exit(1 if any(r.get("action") == "block" for r in results) else 0)


@client_group.command("status")
@_options
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@fail_cleanly
def client_status(as_json: bool, **given: Any) -> None:
    """Servers and which answered last, inside or outside, agent pattern, cache, flags."""

    async def work(s: Session) -> dict[str, Any]:
        location = await s.pool.locate(s.transport, force=True)
        return {
            "servers": s.pool.status(), "location": location,
            "location_reason": s.pool.location_reason,
            "last_server": s.state.get_meta("last_server"),
            "agent_pattern": {"version": s.agent.version,
                              "checked": s.state.get_meta("agent.checked")},
            "cache_entries": s.state.answer_count(), "flagged": [
                {"path": f.path, "reason": f.reason, "at": f.at} for f in s.state.flags()],
            "quarantined": len(s.state.quarantine_records()), "state_dir": str(s.opts.state_dir)}

    doc = _run(given, work)
    if as_json:
        click.echo(json.dumps(doc))
        return
    for server in doc["servers"]:
        seen = "answered last" if server.get("answered_last") else (
            f"last error: {server['last_error']}" if server.get("last_error") else "")
        click.echo(f"server       {server['url']}  priority {server['priority']}, {server['zone']}"
                   + (f"; {seen}" if seen else ""))
    click.echo(f"location     {doc['location']} ({doc['location_reason']})")
    click.echo(f"last answer  {doc['last_server'] or 'none yet'}")
    click.echo(f"agent        {doc['agent_pattern']['version'] or 'none yet'}")
    click.echo(f"cache        {doc['cache_entries']} answers")
    click.echo(f"flagged      {len(doc['flagged'])} files" + "".join(
        f"\n  {f['path']}: {f['reason']}" for f in doc["flagged"][:20]))
    click.echo(f"quarantined  {doc['quarantined']} files")
    click.echo(f"state        {doc['state_dir']}")


@client_group.command("update")
@_options
@fail_cleanly
def client_update(**given: Any) -> None:
    """Bring the agent pattern up to date from the servers now (a diff when possible)."""

    async def work(s: Session) -> Any:
        return await s.client.refresh_agent(force=True)

    done = _run(given, work)
    if done.how == "none":
        click.echo("the servers have no agent pattern (every file is asked about)")
    else:
        shown = {"current": "already current", "diff": f"updated by a diff, {done.bytes} bytes",
                 "full": f"fetched whole, {done.bytes} bytes"}.get(done.how, done.how)
        click.echo(f"agent pattern {done.version}: {shown}")


@client_group.group("quarantine")
def quarantine_group() -> None:
    """Files moved out of the way by scan --quarantine."""


def _quarantine(state_dir: Path | None) -> tuple[Any, Any]:
    from proxy.client.options import default_state_dir
    from proxy.client.quarantine import Quarantine
    from proxy.client.state import ClientState

    where = state_dir or default_state_dir()
    state = ClientState.open(where)
    return state, Quarantine(state, where / "quarantine")


_state_dir = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                          envvar="RAMPART_CLIENT_DIR", help="The client's state folder.")


@quarantine_group.command("list")
@_state_dir
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@fail_cleanly
def quarantine_list(state_dir: Path | None, as_json: bool) -> None:
    """Every quarantined file: its id, where it was, its threat and SHA-256."""
    from proxy.decide.list_rules import iso_time

    state, q = _quarantine(state_dir)
    try:
        records = q.list()
        if as_json:
            click.echo(json.dumps([{"id": r.id, "path": r.path, "stored": r.stored,
                                    "threat": r.threat, "sha256": r.digests.sha256, "at": r.at,
                                    "size": r.size, "present": q.present(r)} for r in records]))
            return
        if not records:
            click.echo("no file is quarantined")
        for r in records:
            gone = "" if q.present(r) else "  (its quarantined copy is missing)"
            click.echo(f"{r.id}  {iso_time(r.at)}  {r.threat}  {r.path}  sha256 {r.digests.sha256}{gone}")
    finally:
        state.close()


@quarantine_group.command("restore")
@click.argument("record_id", metavar="ID")
@click.option("--to", type=click.Path(path_type=Path), help="Restore here instead of the original path.")
@click.option("--overwrite", is_flag=True, help="Replace a file that is there now.")
@_state_dir
@fail_cleanly
def quarantine_restore(record_id: str, to: Path | None, overwrite: bool, state_dir: Path | None) -> None:
    """Put a quarantined file back (its original path and mode)."""
    state, q = _quarantine(state_dir)
    try:
        where = q.restore(record_id, to=to, overwrite=overwrite)
        click.echo(f"restored {record_id} to {where}")
    finally:
        state.close()


@quarantine_group.command("delete")
@click.argument("record_id", metavar="ID")
@_state_dir
@fail_cleanly
def quarantine_delete(record_id: str, state_dir: Path | None) -> None:
    """Remove a quarantined file for good, and its record."""
    state, q = _quarantine(state_dir)
    try:
        rec = q.delete(record_id)
        click.echo(f"deleted {record_id} ({rec.threat}, was {rec.path})")
    finally:
        state.close()
