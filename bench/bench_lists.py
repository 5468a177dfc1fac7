"""List matching benchmark: run by hand; prints figures, asserts nothing.

    python3 bench/bench_lists.py                       # 100k domain + URL-prefix rules, 1k regexes
    python3 bench/bench_lists.py --rules 200000 --regexes 2000 --seconds 3

In one run, on the same query URLs (fixed seed: most hosts unknown, some under a listed
domain, some under a listed URL prefix), it measures with no rules and then with the
rules loaded:

- snapshot lookups/s: ``ListSnapshot.match_url`` alone;
- query door single-item rate: ``POST /v1/web`` with one URL through the query door's
  routes in process (an ``App`` opened on a scratch data directory with the shipped
  sample pattern: canonicalisation, lists, pattern, rendering; no sockets, so the
  lists' share is larger here than behind HTTP, where wrk measures, ``bench/run.py``),
  once cycling the same URLs and once on fresh URLs, each asked once (as traffic
  mostly is: a matcher whose automaton grows with the text it meets looks good on
  the first and pays on the second);

- the query door over HTTP (when wrk and taskset are installed; ``--no-http`` skips it):
  two ``rampart serve`` processes on core 0, one with empty lists and one with the
  rules, each answering ``POST /v1/web`` with one URL, the URLs cycling (then made up
  fresh for every request), from wrk (one thread, 64 connections) on core 1: the
  single-item rate as products see it;

and prints each ratio (goal for the door: with rules >= 0.9 of without), plus the time
to import the rules into a real store and to build a snapshot from it (what a running
server does when the lists change). Runs alternate (none, rules, none, rules, ...); each
figure is the median of the rounds' ratios, with their spread (lowest-highest), so a
busy neighbour hurts both sides of a round alike.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy.config import Config
from proxy.decide.list_rules import Entry, EntryKind, ListName
from proxy.decide.lists import Actor, ListSnapshot, ListStore
from proxy.serve.app import App
from proxy.wire.http import Request, Response
from proxy.wire.urls import canonicalize, host_of

POST_FRESH = r"""
local n, letters = 0, "abcdefghijklmnopqrstuvwxyz"
local function word(k)
  local t = {}
  for j = 1, k do local c = math.random(26); t[j] = letters:sub(c, c) end
  return table.concat(t)
end
request = function()
  n = n + 1
  local url = "http://" .. word(6) .. n .. "." .. word(4) .. ".com/" .. word(5) .. "/" .. word(7) ..
    ".html?q=" .. word(5)
  return wrk.format("POST", "/v1/web", {["Content-Type"] = "application/json"}, '{"urls":["' .. url .. '"]}')
end
"""
POST_CYCLE = r"""
local bodies, n, i = {}, 0, 0
init = function(args)
  for line in io.lines(args[1]) do n = n + 1; bodies[n] = line end
  i = math.random(n)
end
request = function()
  i = i % n + 1
  return wrk.format("POST", "/v1/web", {["Content-Type"] = "application/json"}, bodies[i])
end
"""
SEED = 20261201
TLDS = ["com", "net", "org", "test", "example"]


def word(rng: random.Random, lo: int = 4, hi: int = 10) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def make_rules(rng: random.Random, n: int, regexes: int) -> list[Entry]:
    rules: list[Entry] = []
    for i in range(n):
        host = f"{word(rng)}.{word(rng, 3, 6)}.{rng.choice(TLDS)}"
        name = rng.choice([ListName.BLOCKED, ListName.APPROVED])
        if i % 2:
            rules.append(Entry(name, EntryKind.DOMAIN, host))
        else:
            rules.append(Entry(name, EntryKind.URL, f"{host}/{word(rng)}/"))
    shapes: list[Callable[[], str]] = [
        lambda: rf"^https?://([a-z0-9-]+\.)*{word(rng, 5, 8)}\.(com|net|org)/",
        lambda: rf"/{word(rng, 4, 6)}/[0-9]+\.(exe|zip|scr)$",
        lambda: rf"[?&]{word(rng, 3, 5)}=[a-f0-9]{{16,}}",
        lambda: rf"{word(rng, 6, 9)}[-_.]?(login|verify|account)",
    ]
    for i in range(regexes):
        rules.append(Entry(ListName.BLOCKED, EntryKind.REGEX, shapes[i % len(shapes)]()))
    return rules


def make_urls(rng: random.Random, rules: list[Entry], n: int) -> list[str]:
    listed = [e for e in rules if e.kind in (EntryKind.DOMAIN, EntryKind.URL)]
    out = []
    for i in range(n):
        if i % 10 == 0 and listed:  # under a listed domain or prefix
            e = rng.choice(listed)
            base = e.value if e.kind is EntryKind.URL else f"www.{e.value}/"
            out.append(canonicalize(f"http://{base}{word(rng)}.html"))
        else:
            host = f"{word(rng)}.{word(rng, 3, 6)}.{rng.choice(TLDS)}"
            out.append(canonicalize(f"http://{host}/{word(rng)}/{word(rng)}.html?q={word(rng)}"))
    return out


def rate(work: Callable[[], int]) -> float:
    """Items per CPU second of one call of ``work`` (which returns how many items it did).

    CPU time of this process, not wall time: on a shared machine the time others run
    on our core is not counted against either rule set.
    """
    t = time.process_time()
    items = work()
    return items / max(time.process_time() - t, 1e-9)


def lookups(snapshot: ListSnapshot, urls: list[str]) -> Callable[[], int]:
    pairs = [(u, host_of(u)) for u in urls]  # as the engine asks: with the host it parsed

    def work() -> int:
        match = snapshot.match_url
        for u, host in pairs:
            match(u, "192.0.2.1", host)
        return len(pairs)
    return work


def door(app: App, bodies: list[bytes]) -> Callable[[], int]:
    def work() -> int:
        routes = app.routes
        for body in bodies:
            r = routes(Request("POST", b"/v1/web", [], body, "127.0.0.1"))
            assert isinstance(r, Response) and r.status == 200
        return len(bodies)
    return work


def door_fresh(app: App, bodies: list[bytes], per_run: int) -> Callable[[], int]:
    """The door on the next ``per_run`` URLs of ``bodies`` each call: none asked twice, by
    either side when both sides share it (the answer cache must not help one of them)."""
    at = [0]

    def work() -> int:
        start = at[0]
        if start + per_run > len(bodies):
            raise RuntimeError("out of fresh URLs: raise --fresh-urls")
        at[0] = start + per_run
        return door(app, bodies[start:start + per_run])()
    return work


def report(label: str, rates: dict[bool, list[float]]) -> None:
    """Each side's median rate, and the median (lowest-highest) of the rounds' ratios."""
    ratios = [r / n for n, r in zip(rates[False], rates[True], strict=True)]
    without, with_rules = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"{label:<34} {without:>12,.0f}/s {with_rules:>12,.0f}/s   ratio {statistics.median(ratios):.3f}"
          f" ({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)")


def compare(label: str, none: Callable[[], int], full: Callable[[], int], seconds: float,
            swap: Callable[[bool], None], *, rounds: int = 5, warm: bool = True) -> None:
    """Alternate short runs without and with the rules for ``seconds`` in all (and at least
    ``rounds`` rounds), so a burst of load on the machine moves both sides of a round alike.
    ``warm``: one unmeasured run each first (RE2 builds automaton states as it meets text)."""
    if warm:
        for loaded in (False, True):
            swap(loaded)
            (full if loaded else none)()
    rates: dict[bool, list[float]] = {False: [], True: []}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates[True]) < rounds:
        for loaded in (False, True):
            swap(loaded)
            rates[loaded].append(rate(full if loaded else none))
    report(label, rates)


def over_http(tmp: Path, data: Path, bodies: list[bytes], seconds: float) -> None:
    """The door as products meet it: two servers (empty lists, the rules) under wrk in turn,
    on the cycling URLs and then on URLs made up fresh for every request."""
    import load
    import run

    empty = tmp / "empty"
    empty.mkdir(mode=0o700)
    (tmp / "serve.toml").write_text("query_log = false\n")
    script = tmp / "post_cycle.lua"
    script.write_text(POST_CYCLE + load.DONE)
    fresh = tmp / "post_fresh.lua"
    fresh.write_text(POST_FRESH + load.DONE)
    lines = tmp / "bodies.txt"
    lines.write_bytes(b"\n".join(bodies) + b"\n")
    servers: dict[bool, tuple[run.Server, int]] = {}
    try:
        for loaded, where in ((False, empty), (True, data)):
            port = run.free_port()
            server = run.Server("rules" if loaded else "none", run.pinned(run.SERVER_CORE, run.rampart(
                "serve", "--data-dir", str(where), "--listen", "127.0.0.1", "--query-port", str(port),
                "--log-level", "warning", "--config", str(tmp / "serve.toml"), *run.doors_off())),
                tmp / f"serve-{loaded}.log")
            servers[loaded] = (server.start(f"http://127.0.0.1:{port}/healthz", timeout=120), port)
        for loaded in (False, True):  # warm up: RE2 builds its automaton's states as it meets text
            load.run_wrk(f"http://127.0.0.1:{servers[loaded][1]}", script, str(lines), seconds=2,
                         core=run.LOAD_CORE)
        for label, lua, extra in (("query door over HTTP (wrk)", script, (str(lines),)),
                                  ("  fresh URLs over HTTP (wrk)", fresh, ())):
            rates: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(5):
                for loaded in (False, True):
                    result = load.run_wrk(f"http://127.0.0.1:{servers[loaded][1]}", lua, *extra,
                                          seconds=max(2, round(seconds / 10)), core=run.LOAD_CORE)
                    if result.failed:
                        raise RuntimeError(f"{result.failed} failed requests")
                    rates[loaded].append(result.rps)
            report(label, rates)
    finally:
        for server, _ in servers.values():
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=100_000, help="domain and URL-prefix rules (half each)")
    ap.add_argument("--regexes", type=int, default=1_000)
    ap.add_argument("--urls", type=int, default=5_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="per figure, both rule sets together")
    ap.add_argument("--fresh-urls", type=int, default=60_000, help="URLs for the fresh-URL figure")
    ap.add_argument("--no-http", dest="http", action="store_false", help="skip the wrk figure")
    args = ap.parse_args()
    rng = random.Random(SEED)
    rules = make_rules(rng, args.rules, args.regexes)
    urls = make_urls(rng, rules, args.urls)
    fresh = [json.dumps({"urls": [u]}).encode()
             for u in make_urls(random.Random(SEED + 1), rules, args.fresh_urls)]

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir(mode=0o700)
        with ListStore.open(data) as store:
            t = time.perf_counter()
            store.import_entries(rules, source="bench", actor=Actor("bench", "bench"))
            imported = time.perf_counter() - t
            t = time.perf_counter()
            full = store.snapshot()
            built = time.perf_counter() - t
        empty = ListSnapshot()
        hits = sum(full.match_url(u, "192.0.2.1") is not None for u in urls)
        print(f"{args.rules:,} domain/URL-prefix rules and {args.regexes:,} regexes; {len(urls):,} URLs, "
              f"{hits:,} matching a rule")
        print(f"import into lists.sqlite {imported:.2f} s; snapshot from it {built:.2f} s")
        print(f"{'':<34} {'no rules':>14} {'with rules':>14}")

        app = App(Config(data_dir=data, query_port=0, query_tls_port=0))
        app.open()
        try:
            def swap(loaded: bool) -> None:
                app.engine.lists = full if loaded else empty

            compare("snapshot lookups (match_url)", lookups(empty, urls), lookups(full, urls),
                    args.seconds, swap)
            bodies = [json.dumps({"urls": [u]}).encode() for u in urls]
            compare("query door, POST /v1/web, 1 URL", door(app, bodies), door(app, bodies),
                    args.seconds, swap)
            per_run = max(500, len(fresh) // 24)
            once = door_fresh(app, fresh, per_run)  # one cursor for both sides
            compare("  fresh URLs, each asked once", once, once, 0, swap,
                    rounds=len(fresh) // per_run // 2, warm=False)
        finally:
            app.lists_store.close()
            app.engine.patterns.close()
        if args.http and shutil.which("wrk") and shutil.which("taskset"):
            over_http(Path(tmp), data, bodies, args.seconds * 2)


if __name__ == "__main__":
    main()
