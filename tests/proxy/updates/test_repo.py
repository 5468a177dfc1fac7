"""Tests for proxy.updates.repo, with proxy.updates.publish, proxy.updates.signing and
proxy.serve.repo_server: the signed update source, publishing it, planning from it and serving it."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.errors import ConfigError, PatternError, Refused
from proxy.patterns.build import build_pattern
from proxy.serve.repo_server import make_server
from proxy.updates import repo
from proxy.updates.publish import publish
from proxy.updates.repo import FetchKind
from proxy.updates.repo_dir import read_repo, repo_info, verify_repo
from proxy.updates.signing import keygen, load_private_key, load_public_key

V1, V2, V3, V4 = "2024010100", "2024010101", "2024010102", "2024010103"


def digest(i: int) -> str:
    return hashlib.sha256(f"sample-{i}".encode()).hexdigest()


class Builder:
    """Builds successive versions from a growing hash list (each on the previous build)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prev: Path | None = None

    def build(self, version: str, start: int, count: int, *, base: bool = True,
              urls: str = "http://bad.test/\n") -> Path:
        src = self.root / f"h-{version}.txt"
        src.write_text("".join(f"{digest(i)},Threat-{i % 7}\n" for i in range(start,
                                                                               start + count)))
        u = self.root / f"u-{version}.txt"
        u.write_text(urls)
        out = self.root / f"build-{version}"
        build_pattern(out, hashes=[src], urls=[u], base=self.prev if base else None,
                      version=version)
        self.prev = out
        return out


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    keygen(tmp_path / "key")
    return load_private_key(tmp_path / "key")


@pytest.fixture
def builder(tmp_path: Path) -> Builder:
    return Builder(tmp_path)


def test_keygen_writes_a_0600_private_key_and_a_public_key(tmp_path: Path) -> None:
    pub = keygen(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert pub == tmp_path / "k.pub"
    priv = load_private_key(tmp_path / "k")
    assert load_public_key(pub).public_bytes_raw() == priv.public_key().public_bytes_raw()
    with pytest.raises(ConfigError, match="k exists; refusing to overwrite a key"):
        keygen(tmp_path / "k")


def test_keys_that_are_not_ed25519_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(PatternError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(PatternError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk")


def fetch_all(repo_dir: Path, fetches: list[repo.Fetch], have_dir: Path | None,
              out_dir: Path) -> None:
    """What the updater does: full files copied, diffs applied in chain order."""
    out_dir.mkdir(exist_ok=True)
    for f in fetches:
        src = repo_dir / f.path
        repo.verify_file(src, f.size, f.sha256, f.path)
        target = out_dir / f.file
        if f.kind is FetchKind.FULL:
            shutil.copyfile(src, target)
            continue
        base = target if target.exists() else have_dir / f.file
        tmp = out_dir / (f.file + ".new")
        repo.apply_diff(f.file, base, src.read_bytes(), tmp)
        tmp.replace(target)


def test_publish_verify_round_trip(tmp_path: Path, key, builder: Builder) -> None:
    b1 = builder.build(V1, 0, 300)
    report = publish(b1, tmp_path / "repo", key)
    assert {p.pattern for p in report.patterns} == set(repo.PATTERN_FILES)
    assert all(p.changed and p.version == V1 for p in report.patterns)
    assert verify_repo(tmp_path / "repo", tmp_path / "key.pub") == []
    m = read_repo(tmp_path / "repo", tmp_path / "key.pub")
    assert m.pattern("smart-scan").version == V1
    fetches = repo.plan(m, {})
    assert all(f.kind is FetchKind.FULL for f in fetches)
    fetch_all(tmp_path / "repo", fetches, None, tmp_path / "got")
    for name in [*(f for fs in repo.PATTERN_FILES.values() for f in fs), "strings.json"]:
        assert (tmp_path / "got" / name).read_bytes() == (b1 / name).read_bytes(), name
    assert repo.plan(m, {**{p: V1 for p in repo.PATTERN_FILES}, repo.STRINGS: V1}) == []


def test_second_and_third_publish_make_diff_chains(tmp_path: Path, key,
                                                   builder: Builder) -> None:
    r = tmp_path / "repo"
    b1 = builder.build(V1, 0, 3000)
    publish(b1, r, key)
    builder.build(V2, 10, 3050)
    report = publish(builder.prev, r, key)
    by = {p.pattern: p for p in report.patterns}
    assert by["smart-scan"].changed and by["smart-scan"].diff_bytes > 0
    assert not by["web-blocking"].changed and by["web-blocking"].version == V1
    b3 = builder.build(V3, 20, 3100)
    publish(b3, r, key)
    m = read_repo(r, tmp_path / "key.pub")
    smart = m.pattern("smart-scan")
    assert smart.history == (V1, V2, V3)
    assert [(d.from_version, d.to_version) for d in smart.diffs] == [(V1, V2), (V2, V3)]

    fetches = repo.plan(m, {"smart-scan": V1, "agent": V1, "web-blocking": V1})
    kinds = {(f.pattern, f.file): [] for f in fetches}
    for f in fetches:
        kinds[(f.pattern, f.file)].append((f.kind, f.from_version))
    assert kinds[("smart-scan", "file-sha256.tbl")] == [(FetchKind.DIFF, V1),
                                                        (FetchKind.DIFF, V2)]
    assert kinds[("agent", "agent.bin")] == [(FetchKind.DIFF, V1), (FetchKind.DIFF, V2)]
    assert kinds[("strings", "strings.json")] == [(FetchKind.FULL, None)]
    assert ("web-blocking", "web-blocking.tbl") not in kinds
    fetch_all(r, fetches, b1, tmp_path / "got")
    for name in ("file-sha256.tbl", "file-md5.tbl", "agent.bin", "strings.json"):
        assert (tmp_path / "got" / name).read_bytes() == (b3 / name).read_bytes(), name
        spec = m.pattern("smart-scan").file(name) or m.pattern("agent").file(name)
        if spec is not None:
            repo.verify_file(tmp_path / "got" / name, spec.size, spec.sha256)


def test_plan_takes_the_full_file_when_the_chain_is_bigger_or_missing(
        tmp_path: Path, key, builder: Builder) -> None:
    r = tmp_path / "repo"
    publish(builder.build(V1, 0, 50), r, key)
    publish(builder.build(V2, 1000, 3000), r, key)  # nearly everything changes
    m = read_repo(r, None)
    smart = m.pattern("smart-scan")
    sha = next(f for f in repo.plan(m, {"smart-scan": V1}) if f.file == "file-sha256.tbl")
    diff = smart.diffs[0].file("file-sha256.tbl")
    assert (sha.kind is FetchKind.DIFF) == (diff is not None and
                                            diff.size < smart.file("file-sha256.tbl").size)
    for have in ("2023010100", "garbage"):
        plan = repo.plan(m, {"smart-scan": have})
        assert all(f.kind is FetchKind.FULL for f in plan if f.pattern == "smart-scan")


def test_pruning_keeps_the_last_versions(tmp_path: Path, key, builder: Builder) -> None:
    r = tmp_path / "repo"
    for i, v in enumerate((V1, V2, V3, V4)):
        publish(builder.build(v, i * 10, 500), r, key, keep=2)
    m = read_repo(r, tmp_path / "key.pub")
    smart = m.pattern("smart-scan")
    assert smart.history == (V3, V4)
    assert [(d.from_version, d.to_version) for d in smart.diffs] == [(V3, V4)]
    assert sorted(p.name for p in (r / "diffs" / "smart-scan").iterdir()) == [f"{V3}-{V4}"]
    # the previous full files stay one more publish for readers of the old manifest
    assert sorted(p.name for p in (r / "full" / "smart-scan").iterdir()) == [V3, V4]
    assert verify_repo(r, tmp_path / "key.pub") == []
    assert repo.plan(m, {"smart-scan": V2})[1].kind is FetchKind.FULL


@pytest.fixture
def published(tmp_path: Path, key, builder: Builder) -> Path:
    publish(builder.build(V1, 0, 100), tmp_path / "repo", key)
    return tmp_path / "repo"


def test_tampered_unsigned_or_wrongly_signed_manifests_are_refused(
        tmp_path: Path, published: Path) -> None:
    raw = (published / "manifest.json").read_bytes()
    sig = (published / "manifest.json.sig").read_bytes()
    pub = tmp_path / "key.pub"
    assert repo.load_manifest(raw, sig, pub).keep == repo.DEFAULT_KEEP
    tampered = raw.replace(b'"keep": 24', b'"keep": 23')
    assert tampered != raw
    with pytest.raises(PatternError, match="bad signature"):
        repo.load_manifest(tampered, sig, pub)
    with pytest.raises(PatternError, match="missing"):
        repo.load_manifest(raw, b"", pub)
    with pytest.raises(PatternError, match="65 bytes"):
        repo.load_manifest(raw, sig + b"x", pub)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(PatternError, match="bad signature"):
        repo.load_manifest(raw, sig, other)
    (published / "manifest.json.sig").unlink()
    with pytest.raises(PatternError, match="missing"):
        read_repo(published, pub)


def test_publishing_with_another_key_is_refused(tmp_path: Path, published: Path,
                                                builder: Builder) -> None:
    with pytest.raises(PatternError, match="bad signature"):
        publish(builder.build(V2, 0, 100), published, Ed25519PrivateKey.generate())


def test_an_old_version_given_to_the_build_is_refused(tmp_path: Path, key, published: Path,
                                                      builder: Builder) -> None:
    with pytest.raises(ConfigError, match="not newer"):
        publish(builder.build("2023010100", 5, 100), published, key)
    assert read_repo(published, tmp_path / "key.pub").pattern("smart-scan").version == V1


def test_verify_repo_finds_missing_and_corrupt_files(tmp_path: Path, published: Path) -> None:
    target = published / "full" / "smart-scan" / V1 / "file-sha256.tbl"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    (published / "full" / "agent" / V1 / "agent.bin").unlink()
    problems = verify_repo(published, tmp_path / "key.pub")
    assert len(problems) == 2
    assert any("file-sha256.tbl: SHA-256 mismatch" in p for p in problems)
    assert any("agent.bin: cannot read" in p for p in problems)


def test_verify_file(tmp_path: Path) -> None:
    data = b"hello"
    sha = hashlib.sha256(data).hexdigest()
    repo.verify_file(data, 5, sha)
    with pytest.raises(PatternError, match="x: truncated: 4 bytes"):
        repo.verify_file(data[:4], 5, sha, "x")
    with pytest.raises(PatternError, match="SHA-256 mismatch"):
        repo.verify_file(b"hellO", 5, sha)
    (tmp_path / "f").write_bytes(data + b"!")
    with pytest.raises(PatternError, match="too long"):
        repo.verify_file(tmp_path / "f", 5, sha)


def _doc(published: Path) -> dict:
    return json.loads((published / "manifest.json").read_bytes())


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d.update(type="other"), "type"),
        (lambda d: d.update(format=2), "format"),
        (lambda d: d["patterns"].pop("agent"), "pattern 'agent' missing"),
        (lambda d: d["patterns"]["agent"].update(version="yesterday"), "bad version"),
        (lambda d: d["patterns"]["agent"].update(history=["2099010100"]), "history"),
        (lambda d: d["patterns"]["agent"]["files"]["agent.bin"].update(sha256="AB"),
         "bad sha256"),
        (lambda d: d["patterns"]["agent"]["files"]["agent.bin"].update(size=-1), "size"),
        (lambda d: d["patterns"]["agent"]["files"].update({"../x": {}}), "unexpected file"),
        (lambda d: d["patterns"]["agent"].update(diffs=[{"from": V1, "to": V1, "files": {}}]),
         "is not before"),
        (lambda d: d.update(keep=0), "keep"),
    ],
)
def test_bad_manifests_are_refused(published: Path, mangle, message) -> None:
    doc = _doc(published)
    mangle(doc)
    with pytest.raises(PatternError, match=message):
        repo.parse_manifest(json.dumps(doc).encode())


def test_oversized_manifest_is_refused() -> None:
    with pytest.raises(PatternError, match="larger than"):
        repo.parse_manifest(b" " * (repo.MAX_MANIFEST_BYTES + 1))


@pytest.fixture
def server(published: Path) -> Iterator[str]:
    srv = make_server(published, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_serve_gives_files_and_refuses_traversal(server: str, published: Path) -> None:
    with urllib.request.urlopen(f"{server}/manifest.json", timeout=5) as resp:
        assert resp.read() == (published / "manifest.json").read_bytes()
        assert resp.headers["Cache-Control"] == "no-cache"
    with urllib.request.urlopen(f"{server}/full/agent/{V1}/agent.bin", timeout=5) as resp:
        assert resp.read() == (published / "full" / "agent" / V1 / "agent.bin").read_bytes()
    for bad in ("/../../etc/passwd", "/full/%2e%2e/x", "/.publish.lock", "/full", "/nope",
                "/full/agent/../../manifest.json"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server}{bad}", timeout=5)
        assert e.value.code == 404, bad


# ---------------------------------------------------------------- replays, the clock, expiry

NOON = datetime(2024, 1, 1, 12, tzinfo=UTC)


def manifest_at(published: Path, when: datetime, version: str = V1, expires: object = None
                ) -> repo.Manifest:
    """The published manifest, re-dated to ``when``, every pattern at ``version``."""
    doc = _doc(published)
    doc.update(published=when.isoformat(), expires=expires)
    for p in doc["patterns"].values():
        p.update(version=version, history=[version])
    return repo.parse_manifest(json.dumps(doc).encode())


def test_the_sample_takes_any_first_manifest(published: Path) -> None:
    repo.check_timely(manifest_at(published, NOON), {}, NOON, 86400)


def test_the_same_or_a_newer_manifest_is_taken(published: Path) -> None:
    mark = repo.newest(manifest_at(published, NOON))
    assert mark[repo.PUBLISHED] == "2024-01-01T12:00:00Z" and mark["smart-scan"] == V1
    repo.check_timely(manifest_at(published, NOON), mark, NOON, 86400)
    repo.check_timely(manifest_at(published, NOON + timedelta(hours=1), V2), mark, NOON, 86400)


def test_an_older_publication_time_is_a_replay_even_with_newer_versions(published: Path) -> None:
    mark = repo.newest(manifest_at(published, NOON, V2))
    replay = manifest_at(published, NOON - timedelta(seconds=1), V3)
    with pytest.raises(Refused, match="published 2024-01-01T11:59:59Z is older than the "
                                           "installed 2024-01-01T12:00:00Z") as e:
        repo.check_timely(replay, mark, NOON, 86400)
    assert e.value.reason == "downgrade" and "replayed" in e.value.message


def test_an_older_version_is_refused_even_when_published_later(published: Path) -> None:
    mark = repo.newest(manifest_at(published, NOON, V2))
    with pytest.raises(Refused, match=f"version {V1} is older than the installed {V2}") as e:
        repo.check_timely(manifest_at(published, NOON + timedelta(days=1), V1), mark,
                          NOON + timedelta(days=1), 86400)
    assert e.value.reason == "downgrade"


def test_a_manifest_from_the_future_is_refused_beyond_the_skew(published: Path) -> None:
    ahead = manifest_at(published, NOON + timedelta(hours=2))
    repo.check_timely(ahead, {}, NOON, 3 * 3600)  # within the allowed skew
    with pytest.raises(Refused, match="7200 s ahead of this appliance's clock") as e:
        repo.check_timely(ahead, {}, NOON, 3600)
    assert e.value.reason == "from_future" and "update_max_clock_skew" in e.value.message


def test_publish_signs_an_expiry(tmp_path: Path, key, builder: Builder) -> None:
    publish(builder.build(V1, 0, 50), tmp_path / "repo", key, now=NOON,
            valid_for=timedelta(hours=36))
    m = read_repo(tmp_path / "repo", tmp_path / "key.pub")
    assert m.published == NOON and m.expires == NOON + timedelta(hours=36)
    assert repo_info(tmp_path / "repo")["expires"] == "2024-01-03T00:00:00Z"
    publish(builder.build(V2, 0, 60), tmp_path / "repo", key, now=NOON)
    m = read_repo(tmp_path / "repo", tmp_path / "key.pub")
    assert m.expires == NOON + timedelta(days=7)  # the default
    with pytest.raises(ConfigError, match="valid_for must be"):
        publish(builder.build(V3, 0, 70), tmp_path / "repo", key, valid_for=timedelta(0))


def test_manifests_without_an_expiry_still_load_and_a_bad_one_is_refused(published: Path) -> None:
    assert manifest_at(published, NOON).expires is None
    with pytest.raises(PatternError, match="expires 2024-01-01T12:00:00Z is not after published"):
        manifest_at(published, NOON, expires=NOON.isoformat())
    with pytest.raises(PatternError, match="bad expires time 'soon'"):
        manifest_at(published, NOON, expires="soon")


def test_serve_holds_one_client_to_half_its_connections(
    published: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection is a thread: one host opening many (and sending nothing) must not
    take them all, and refused connections are closed at once."""
    import socket

    from proxy.serve import repo_server

    monkeypatch.setattr(repo_server, "MAX_OPEN_CONNECTIONS", 8)
    srv = make_server(published, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    port = srv.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert extra.recv(1) == b""  # closed by the server, not left waiting
        extra.close()
        other = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=5)
        other.sendall(b"GET /manifest.json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert other.makefile("rb").readline().startswith(b"HTTP/1.1 200")
        other.close()
    finally:
        for s in held:
            s.close()
        srv.shutdown()
        srv.server_close()
