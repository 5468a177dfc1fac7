"""What the appliance writes in its data directory is private whatever the umask.

Real `rampart cloud` and `rampart serve` processes (query doors, intercept door,
capture file, pattern updates from a published source) started under umask
000 on an existing 0755 data directory; then `update now`, `lists add` and
`pattern rollback` under umask 000 too. After each step the data directories
are walked: no folder or file is writable by group or others, folders are
0700, files 0600, except the few public ones listed in PUBLIC.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR_SHA256, RAMPART, Proc, free_port, start_appliance, start_cloud

pytestmark = pytest.mark.integration

V1, V2 = "2026010100", "2026010101"

PUBLIC = {
    # the CA certificate products are given (`rampart ca export` copies it), and its copies
    "ca.pem", "ca-bundle.pem", "mitmproxy/mitmproxy-ca-cert.pem", "mitmproxy/mitmproxy-ca-cert.cer",
}
"""Files meant to be readable by anyone: 0644. Everything else is 0600 (files) or 0700 (folders)."""


def rampart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=120)


def wrong_modes(data: Path) -> dict[str, str]:
    """Each path under ``data`` whose mode is not the one it should have, with that mode."""
    wrong = {}
    for dirpath, dirnames, filenames in os.walk(data):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(data))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue  # `current`: a link's own mode means nothing; its folder is private
            want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o644 if rel in PUBLIC else 0o600
            if stat.S_IMODE(info.st_mode) != want:
                wrong[rel] = f"{stat.S_IMODE(info.st_mode):04o}"
    return wrong


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def umask_000() -> Iterator[None]:
    """Children inherit the umask: every `rampart` process of the test runs under 000."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A published update source (V1; V2 built, published by the test): its URL, key, repo."""
    src = tmp_path / "source"
    src.mkdir()
    assert rampart("pattern", "keygen", "--out", str(src / "key")).returncode == 0
    for version, base in ((V1, None), (V2, V1)):
        (src / f"h-{version}.txt").write_text(f"{EICAR_SHA256},Threat-{version}\n")
        args = ["pattern", "build", "--out", str(src / version), "--hashes",
                str(src / f"h-{version}.txt"), "--version", version]
        assert rampart(*args, *(["--base", str(src / base)] if base else [])).returncode == 0
    publish(src, V1)
    port = free_port()
    proc = Proc([*RAMPART, "pattern", "serve", str(src / "repo"), "--port", str(port)], src,
                src / "serve.log", {"http": port})
    proc.start(f"http://127.0.0.1:{port}/manifest.json")
    try:
        yield f"http://127.0.0.1:{port}/", src / "key.pub", src
    finally:
        proc.stop()


def publish(src: Path, version: str) -> None:
    r = rampart("pattern", "publish", "--from", str(src / version), "--repo", str(src / "repo"),
                "--key", str(src / "key"))
    assert r.returncode == 0, r.stderr


def test_everything_written_is_private_under_umask_000(
        tmp_path: Path, source: tuple[str, Path, Path], umask_000: None) -> None:
    url, key, src = source
    data = tmp_path / "appliance"
    data.mkdir()
    data.chmod(0o755)  # an existing data directory others may read but not write
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'update_source = "{url}"\nupdate_key = "{key}"\n')
    cloud = start_cloud(tmp_path)
    capture_port = free_port()
    try:
        appliance = start_appliance(
            tmp_path, cloud, "--config", str(cfg), "--proxy-port", str(free_port()),
            "--capture", str(data / "capture" / "flows.mitm"), "--capture-port", str(capture_port))
        try:
            door = f"http://127.0.0.1:{appliance.ports['http']}"
            assert eventually(lambda: httpx.get(f"{door}/readyz").json()["pattern"]["version"] == V1)
            hit = httpx.get(f"{door}/v1/file/{EICAR_SHA256}").json()["results"][0]
            assert hit["threat"] == f"Threat-{V1}"
            httpx.get(f"https://127.0.0.1:{appliance.ports['https']}/healthz", verify=False)
            live = tmp_path / "live.mitm"
            client = subprocess.Popen([*RAMPART, "capture", "-w", str(live), "--count", "1",
                                       "--server", f"http://127.0.0.1:{capture_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                assert eventually(live.exists)
                time.sleep(0.2)  # the subscription is registered right after the head is sent
                httpx.get(f"{door}/v1/file/{EICAR_SHA256}")
                assert client.wait(30) == 0
            finally:
                if client.poll() is None:
                    client.kill()
            assert stat.S_IMODE(live.stat().st_mode) == 0o600
            assert wrong_modes(data) == {}
            assert wrong_modes(cloud.data_dir) == {}

            publish(src, V2)
            r = rampart("update", "now", "--data-dir", str(data), "--config", str(cfg))
            assert r.returncode == 0 and f"installed version {V2}" in r.stdout, r.stdout + r.stderr
            r = rampart("lists", "add", "--data-dir", str(data), "--blocked", "evil.example")
            assert r.returncode == 0, r.stderr
            r = rampart("pattern", "rollback", "--data-dir", str(data))
            assert r.returncode == 0, r.stderr
            assert eventually(lambda: httpx.get(f"{door}/readyz").json()["pattern"]["version"] == V1)
            assert {"lists.sqlite", "patterns", "tls", "mitmproxy", "capture"} <= {
                p.name for p in data.iterdir()}
            assert wrong_modes(data) == {}
        finally:
            appliance.stop()
    finally:
        cloud.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # not writable by others: left as it was


@pytest.mark.parametrize("command", ["serve", "serve-intercept", "cloud", "lists", "update", "ca",
                                     "ca-export"])
def test_a_data_directory_others_can_write_is_refused_at_start(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    if command in ("serve-intercept", "ca-export"):  # a CA there already (and mitmproxy's confdir)
        assert rampart("ca", "init", "--data-dir", str(data)).returncode == 0
    else:
        data.mkdir()
    before = sorted(data.rglob("*"))
    data.chmod(0o777)
    serve = ["serve", "--data-dir", str(data), "--listen", "127.0.0.1", "--query-port",
             str(free_port()), "--query-tls-port", "0"]
    args = {
        "serve": [*serve, "--proxy-port", "0"],
        "serve-intercept": [*serve, "--proxy-port", str(free_port())],
        "cloud": ["cloud", "--data-dir", str(data), "--listen", "127.0.0.1", "--port", str(free_port())],
        "lists": ["lists", "add", "--data-dir", str(data), "--blocked", "evil.example"],
        "update": ["pattern", "rollback", "--data-dir", str(data)],
        "ca": ["ca", "init", "--data-dir", str(data)],
        "ca-export": ["ca", "export", "--bundle", "--data-dir", str(data), "--out", str(tmp_path / "b.pem")],
    }[command]
    r = rampart(*args)
    assert r.returncode != 0
    assert f"{data} is writable by its group and other users" in r.stderr, r.stderr
    assert f"chmod go-w {data}" in r.stderr and "Traceback" not in r.stderr
    assert sorted(data.rglob("*")) == before  # nothing written into it
    assert stat.S_IMODE(data.stat().st_mode) == 0o777  # refused, not quietly changed


def test_the_ca_folders_are_0700_parents_included(tmp_path: Path, umask_000: None) -> None:
    from certs import CA, server_context

    data = tmp_path / "a" / "data"
    server_context(CA.ensure(data), ["localhost"], state_dir=data / "tls")
    assert {p: stat.S_IMODE((tmp_path / p).stat().st_mode) for p in ("a", "a/data")} == {
        "a": 0o700, "a/data": 0o700}
    assert wrong_modes(data) == {}


def test_a_ca_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    from certs import CA, CertError

    (tmp_path / "data" / "mitmproxy").mkdir(parents=True)
    (tmp_path / "data" / "mitmproxy").chmod(0o777)
    with pytest.raises(CertError, match="mitmproxy is writable by its group and other users"):
        CA.ensure(tmp_path / "data")


def test_keygen_writes_a_private_key_and_a_public_key_nobody_else_can_change(
        tmp_path: Path, umask_000: None) -> None:
    from proxy.updates.signing import keygen

    pub = keygen(tmp_path / "key")
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "key", pub)} == {
        "key": 0o600, "key.pub": 0o644}
