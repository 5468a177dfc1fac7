"""The publisher's workflow as the README tells it, end to end with real processes on
127.0.0.1: build, publish, build again within the hour from complete sources without
--version or --base, publish (it counts what it adds and removes), `rampart pattern serve`,
`rampart update now` on an appliance's data directory, and the appliance answers from the
second build: its new entries, without the ones it dropped, every threat name right."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port, start_appliance

pytestmark = pytest.mark.integration


def hs(seed: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]


KEPT, DROPPED, ADDED = hs("kept", 30), hs("dropped", 5), hs("added", 10)


def rampart(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def build(src: Path, out: Path, hashes: list[tuple[str, str]]) -> str:
    """`pattern build` from complete sources: these hashes and the same hosts file."""
    (src / f"{out.name}.txt").write_text("".join(f"{h},{t}\n" for h, t in hashes))
    return rampart("pattern", "build", "--out", str(out), "--hashes", str(src / f"{out.name}.txt"),
                   "--hosts", str(src / "hosts")).stdout


def test_build_publish_build_again_within_the_hour_serve_update(tmp_path: Path) -> None:
    src, repo, key = tmp_path / "src", tmp_path / "repo", tmp_path / "keys" / "rampart.key"
    src.mkdir()
    key.parent.mkdir()
    (src / "hosts").write_text("0.0.0.0 ads.example.com\n")
    rampart("pattern", "keygen", "--out", str(key))
    first = [(EICAR_SHA256, "Eicar-First")] + [(h, "Kept") for h in KEPT] + [
        (h, "Dropped") for h in DROPPED]
    built = build(src, tmp_path / "b1", first)
    rampart("pattern", "publish", "--from", str(tmp_path / "b1"), "--repo", str(repo),
            "--key", str(key))
    # the hotfix: new names first (its ids differ from b1's), 5 entries gone, 10 new
    second = [(h, "Added") for h in ADDED] + [(EICAR_SHA256, "Eicar-Second")] + [
        (h, "Kept") for h in KEPT]
    build(src, tmp_path / "b2", second)
    out = rampart("pattern", "publish", "--from", str(tmp_path / "b2"), "--repo", str(repo),
                  "--key", str(key)).stdout
    assert "smart-scan" in out and "+10 -5 entries (36 -> 41)" in out, out
    assert "is the build hour" in built
    assert "domain-ip" in out and "unchanged, 1 entries" in out, out

    port = free_port()
    server = Proc([*RAMPART, "pattern", "serve", str(repo), "--port", str(port)], tmp_path,
                  tmp_path / "serve.log", {"http": port})
    server.start(f"http://127.0.0.1:{port}/manifest.json")
    try:
        assert f"on http://127.0.0.1:{port}/ (this machine only: --listen 0.0.0.0 for " \
               "appliances on other machines)" in server.output()
        appliance = tmp_path / "appliance"
        appliance.mkdir(mode=0o700)
        r = rampart("update", "now", "--data-dir", str(appliance), "--update-source",
                    f"http://127.0.0.1:{port}/", "--update-key", f"{key}.pub")
        assert "installed version" in r.stdout, r.stdout
    finally:
        server.stop()

    proc = start_appliance(tmp_path, None)
    try:
        door = f"http://127.0.0.1:{proc.ports['http']}"

        def ask(h: str) -> dict:
            return httpx.get(f"{door}/v1/file/{h}", timeout=10).json()["results"][0]

        assert ask(ADDED[3])["source"] == "pattern" and ask(ADDED[3])["threat"] == "Added"
        assert ask(KEPT[7])["threat"] == "Kept"
        assert ask(EICAR_SHA256)["threat"] == "Eicar-Second"
        assert ask(DROPPED[0])["source"] != "pattern"  # the second build dropped it
        hit = httpx.post(f"{door}/v1/domain", json={"items": ["ads.example.com"]},
                         timeout=10).json()["results"][0]
        assert hit["source"] == "pattern"
    finally:
        proc.stop()
