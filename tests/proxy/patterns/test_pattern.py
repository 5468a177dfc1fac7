"""Tests for proxy.patterns.pattern and proxy.patterns.build: building a pattern directory,
opening it, lookups."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.errors import ConfigError, PatternError, SourceError
from proxy.model import FileQuery, HashKind, Rating, Verdict
from proxy.patterns import build as build_mod
from proxy.patterns import pattern as pattern_mod
from proxy.patterns.build import build_pattern
from proxy.patterns.pattern import (
    FileHit,
    PatternSet,
    WebHit,
    pattern_info,
)
from proxy.wire import urls

SAMPLES = Path(pattern_mod.__file__).parents[1] / "samples"
EICAR = {
    HashKind.MD5: "44d88612fea8a8f36de82e1278abb02f",
    HashKind.SHA1: "3395856ce81f2b7382dee72602f798b642f14140",
    HashKind.SHA256: "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
}
NOW = datetime(2026, 11, 22, 13, 5, 7, tzinfo=UTC)


def nul_sha256() -> bytes:
    i = 0
    while (d := hashlib.sha256(b"nul-%d" % i).digest())[-1] != 0:
        i += 1
    return d


NUL = nul_sha256()
SUSPICIOUS = hashlib.sha256(b"suspicious").digest()
CLEAN = hashlib.sha256(b"clean").digest()
NEIGHBOUR = bytes([NUL[0], NUL[1] ^ 1]) + NUL[2:]  # the next bucket over, same tail


def fq(kind: HashKind, digest: bytes | str) -> FileQuery:
    return FileQuery(kind, bytes.fromhex(digest) if isinstance(digest, str) else digest)


def q256(digest: bytes) -> FileQuery:
    return FileQuery(HashKind.SHA256, digest)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def srcs(tmp_path: Path) -> dict[str, list[Path]]:
    d = tmp_path / "src"
    d.mkdir()
    hashes = write(d / "hashes.txt", f"""# test hashes
{EICAR[HashKind.MD5]},EICAR-Test-File
{EICAR[HashKind.SHA1]},EICAR-Test-File
{EICAR[HashKind.SHA256]},EICAR-Test-File
{NUL.hex()},Nul-Ended
{SUSPICIOUS.hex()},Grey-Thing,suspicious
{CLEAN.hex()},,clean
{hashlib.sha256(b"x").hexdigest()}
""")
    more = write(d / "more.txt", f"""{CLEAN.hex()},Now-Bad,malicious
{EICAR[HashKind.SHA256]},Other-Name,clean
""")
    url_src = write(d / "urls.txt", """evil.test/,dangerous,malware
evil.test/a/b.html,highly_suspicious,unwanted
safe.test/,safe,business
grey.test/x/,suspicious,gray
grey.test/x/y.html,untested
dup.test/,safe
dup.test/,dangerous,phishing
""")
    dom = write(d / "domains.txt", """malware.example.test,dangerous,malware
example.test,suspicious,parked
a.b.example.test,suspicious,sub
good.example.test,safe
192.0.2.0/24,suspicious,spam
192.0.2.7,dangerous,c2
2001:db8:bad::/48,dangerous
""")
    return {"hashes": [hashes, more], "urls": [url_src], "domains": [dom]}


@pytest.fixture
def built(tmp_path: Path, srcs: dict[str, list[Path]]) -> PatternSet:
    report = build_pattern(tmp_path / "pat", **srcs, now=NOW)
    assert report.version == "2026112213"
    assert (report.md5, report.sha1, report.sha256) == (1, 1, 5)
    assert (report.web_blocking, report.suspicious_urls) == (4, 2)
    assert (report.domains, report.ip4, report.ip6) == (4, 3, 1)
    ps = PatternSet.open(tmp_path / "pat")
    yield ps
    ps.close()


# ---------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("query", "hit"),
    [
        (fq(HashKind.MD5, EICAR[HashKind.MD5]), FileHit(Verdict.MALICIOUS, "EICAR-Test-File")),
        (fq(HashKind.SHA1, EICAR[HashKind.SHA1]), FileHit(Verdict.MALICIOUS, "EICAR-Test-File")),
        # a later line saying "clean" does not weaken a malicious hash
        (fq(HashKind.SHA256, EICAR[HashKind.SHA256]),
         FileHit(Verdict.MALICIOUS, "EICAR-Test-File")),
        (q256(NUL), FileHit(Verdict.MALICIOUS, "Nul-Ended")),
        (q256(SUSPICIOUS), FileHit(Verdict.SUSPICIOUS, "Grey-Thing")),
        # clean in one source, malicious in another: most severe wins
        (q256(CLEAN), FileHit(Verdict.MALICIOUS, "Now-Bad")),
        (q256(hashlib.sha256(b"x").digest()), FileHit(Verdict.MALICIOUS, "Unnamed-Threat")),
        (q256(NUL[:-1] + b"\x01"), None),
        (q256(NEIGHBOUR), None),
        (q256(hashlib.sha256(b"missing").digest()), None),
        (fq(HashKind.MD5, EICAR[HashKind.SHA256][:32]), None),
    ],
)
def test_lookup_file(built: PatternSet, query: FileQuery, hit: FileHit | None) -> None:
    assert built.lookup_file(query) == hit
    assert built.lookup_files([query]) == [hit]


def test_clean_hash_has_no_threat(tmp_path: Path) -> None:
    src = write(tmp_path / "h.txt", f"{CLEAN.hex()},,clean\n")
    build_pattern(tmp_path / "p", hashes=[src], now=NOW)
    with PatternSet.open(tmp_path / "p") as ps:
        assert ps.lookup_file(q256(CLEAN)) == FileHit(Verdict.CLEAN, None)


def test_lookup_files_keeps_order_across_kinds(built: PatternSet) -> None:
    qs = [q256(hashlib.sha256(b"missing").digest()), fq(HashKind.MD5, EICAR[HashKind.MD5]),
          q256(NUL), fq(HashKind.SHA1, "00" * 20), q256(SUSPICIOUS)]
    got = built.lookup_files(qs)
    assert got == [built.lookup_file(q) for q in qs]
    assert [h.verdict if h else None for h in got] == [
        None, Verdict.MALICIOUS, Verdict.MALICIOUS, None, Verdict.SUSPICIOUS]


# ---------------------------------------------------------------- web


def exprs(url: str) -> list[str]:
    return urls.expressions(urls.canonicalize(url))


@pytest.mark.parametrize(
    ("url", "matched", "rating", "pattern"),
    [
        # the host-wide dangerous entry outranks the more specific highly_suspicious one
        ("http://evil.test/a/b.html", "evil.test/", Rating.DANGEROUS, "web-blocking"),
        ("http://www.evil.test/anything", "evil.test/", Rating.DANGEROUS, "web-blocking"),
        ("http://safe.test/page", "safe.test/", Rating.SAFE, "web-blocking"),
        # equal severity would pick the most specific; here suspicious beats untested
        ("http://grey.test/x/y.html", "grey.test/x/", Rating.SUSPICIOUS, "suspicious-urls"),
        ("http://grey.test/x/z", "grey.test/x/", Rating.SUSPICIOUS, "suspicious-urls"),
        ("http://dup.test/", "dup.test/", Rating.DANGEROUS, "web-blocking"),
        ("http://unknown.test/", None, None, None),
        ("http://grey.test/", None, None, None),
    ],
)
def test_lookup_url(built: PatternSet, url: str, matched: str | None, rating: Rating | None,
                    pattern: str | None) -> None:
    got = built.lookup_url(exprs(url))
    if matched is None:
        assert got is None
        return
    assert got is not None
    assert got[0] == matched
    assert got[1].rating is rating
    assert got[1].pattern == pattern


def test_url_hit_carries_category_and_score(built: PatternSet) -> None:
    assert built.lookup_url(["dup.test/"]) == (
        "dup.test/", WebHit(Rating.DANGEROUS, 95, "phishing", "web-blocking"))
    assert built.lookup_url(["grey.test/x/y.html"]) == (
        "grey.test/x/y.html", WebHit(Rating.UNTESTED, 50, None, "suspicious-urls"))


@pytest.mark.parametrize(
    ("url", "matched"),
    [
        ("http://t.test/a/b", "t.test/a/"),
        ("http://t.test/a/c/d", "t.test/a/c/"),
        ("http://t.test/a/c/", "t.test/a/c/"),
        ("http://x.t.test/a/c/d", "x.t.test/"),
        ("http://t.test/z", "t.test/"),
    ],
)
def test_url_tie_goes_to_the_most_specific_expression(tmp_path: Path, url: str,
                                                      matched: str) -> None:
    src = write(tmp_path / "u.txt", "t.test/\nt.test/a/\nt.test/a/c/\nx.t.test/\n")
    build_pattern(tmp_path / "p", urls=[src], now=NOW)
    with PatternSet.open(tmp_path / "p") as ps:
        hit = ps.lookup_url(exprs(url))
        assert hit is not None and hit[0] == matched


# ---------------------------------------------------------------- domains and IPs


@pytest.mark.parametrize(
    ("name", "matched", "rating", "category"),
    [
        ("malware.example.test", "malware.example.test", Rating.DANGEROUS, "malware"),
        ("x.y.malware.example.test", "malware.example.test", Rating.DANGEROUS, "malware"),
        # safe subdomain under a suspicious parent: most severe wins
        ("good.example.test", "example.test", Rating.SUSPICIOUS, "parked"),
        # equal severity: the most specific suffix
        ("c.a.b.example.test", "a.b.example.test", Rating.SUSPICIOUS, "sub"),
        ("other.example.test", "example.test", Rating.SUSPICIOUS, "parked"),
        ("example.test.", "example.test", Rating.SUSPICIOUS, "parked"),
        ("notexample.test", None, None, None),
        ("test", None, None, None),
        ("192.0.2.7", "192.0.2.7", Rating.DANGEROUS, "c2"),
    ],
)
def test_lookup_domain(built: PatternSet, name: str, matched: str | None,
                       rating: Rating | None, category: str | None) -> None:
    got = built.lookup_domain(name)
    if matched is None:
        assert got is None
        return
    assert got == (matched, WebHit(rating, rating.default_score, category, "domain-ip"))


@pytest.mark.parametrize(
    ("ip", "matched", "rating"),
    [
        ("192.0.2.1", "192.0.2.0/24", Rating.SUSPICIOUS),
        ("192.0.2.255", "192.0.2.0/24", Rating.SUSPICIOUS),
        ("192.0.2.7", "192.0.2.7", Rating.DANGEROUS),
        ("::ffff:192.0.2.7", "192.0.2.7", Rating.DANGEROUS),
        ("192.0.3.0", None, None),
        ("2001:db8:bad:1::5", "2001:db8:bad::/48", Rating.DANGEROUS),
        ("2001:db8:bae::", None, None),
    ],
)
def test_lookup_ip(built: PatternSet, ip: str, matched: str | None,
                   rating: Rating | None) -> None:
    got = built.lookup_ip(ip)
    summary = (got[0], got[1].rating) if got else (None, None)
    assert summary == (matched, rating)
    parsed = urls.parse_ip(ip)
    assert parsed is not None
    assert built.lookup_ip(parsed) == got


def test_lookup_ip_refuses_garbage(built: PatternSet) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        built.lookup_ip("example.test")


# ---------------------------------------------------------------- manifest and info


def test_manifest_layout(built: PatternSet, tmp_path: Path) -> None:
    manifest = json.loads((tmp_path / "pat" / "manifest.json").read_text())
    assert manifest["format"] == 1
    assert manifest["version"] == "2026112213"
    assert manifest["created"] == "2026-11-22T13:05:07Z"
    assert set(manifest["patterns"]) == {"smart-scan", "web-blocking", "suspicious-urls",
                                         "domain-ip", "agent"}
    smart = manifest["patterns"]["smart-scan"]
    assert set(smart["files"]) == {"file-md5.tbl", "file-sha1.tbl", "file-sha256.tbl"}
    assert smart["entries"] == 7
    for f, spec in smart["files"].items():
        data = (tmp_path / "pat" / f).read_bytes()
        assert spec["size"] == len(data)
        assert spec["sha256"] == hashlib.sha256(data).hexdigest()
    assert built.version == "2026112213"
    assert built.created == NOW.replace(microsecond=0)


def test_info(built: PatternSet, tmp_path: Path) -> None:
    info = built.info()
    assert info["version"] == "2026112213"
    assert info["patterns"]["web-blocking"]["entries"] == 4
    assert info["tables"]["file-sha256.tbl"]["entries"] == 5
    cli = pattern_info(tmp_path / "pat")
    assert cli["patterns"] == info["patterns"]
    assert cli["problems"] == []


def test_pattern_info_reports_a_truncated_file(built: PatternSet, tmp_path: Path) -> None:
    path = tmp_path / "pat" / "domains.tbl"
    os.truncate(path, path.stat().st_size - 64)
    assert [p.split(":")[0] for p in pattern_info(tmp_path / "pat")["problems"]] == [
        "domains.tbl"]


# ---------------------------------------------------------------- refusing bad files


@pytest.mark.parametrize("name", ["file-sha256.tbl", "ip6.tbl", "strings.json"])
def test_truncated_file_is_refused_naming_it(built: PatternSet, tmp_path: Path,
                                             name: str) -> None:
    path = tmp_path / "pat" / name
    os.truncate(path, path.stat().st_size - 1)
    for verify in (True, False):
        with pytest.raises(PatternError, match=f"^{re.escape(name)}: truncated"):
            PatternSet.open(tmp_path / "pat", verify=verify)


@pytest.mark.parametrize("name", ["file-md5.tbl", "web-blocking.tbl", "strings.json"])
def test_corrupt_file_is_refused_naming_it(built: PatternSet, tmp_path: Path,
                                           name: str) -> None:
    path = tmp_path / "pat" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(PatternError, match=f"^{re.escape(name)}: SHA-256 does not match"):
        PatternSet.open(tmp_path / "pat")


def test_table_rejected_on_its_own_header_even_unverified(built: PatternSet,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "pat" / "ip4.tbl"
    data = bytearray(path.read_bytes())
    data[0:4] = b"JUNK"
    path.write_bytes(bytes(data))
    with pytest.raises(PatternError, match=r"^ip4\.tbl: not a Rampart table"):
        PatternSet.open(tmp_path / "pat", verify=False)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format=2), "format 2 not supported"),
        (lambda m: m.update(version="soon"), "bad version"),
        (lambda m: m["patterns"].pop("web-blocking"), "pattern 'web-blocking' missing"),
        (lambda m: m["patterns"]["domain-ip"]["files"].pop("ip6.tbl"), "ip6.tbl not listed"),
        (lambda m: m["patterns"]["smart-scan"]["files"].update(
            {"../etc": {"size": 1, "sha256": "0" * 64}}), "bad file name"),
        (lambda m: m["files"]["strings.json"].update(size=-1), "bad size"),
    ],
)
def test_bad_manifest_is_refused(built: PatternSet, tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "pat" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(PatternError, match=rf"^manifest\.json: .*{message}"):
        PatternSet.open(tmp_path / "pat")


def test_unknown_patterns_and_keys_are_ignored(built: PatternSet, tmp_path: Path) -> None:
    path = tmp_path / "pat" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["signature"] = "later"
    manifest["patterns"]["agent"] = {"version": "2026112213", "entries": 0, "files": {}}
    path.write_text(json.dumps(manifest))
    with PatternSet.open(tmp_path / "pat") as ps:
        assert ps.lookup_file(fq(HashKind.MD5, EICAR[HashKind.MD5])) is not None


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PatternError, match=r"manifest\.json: cannot read"):
        PatternSet.open(tmp_path / "nowhere")


# ---------------------------------------------------------------- building


@pytest.mark.parametrize(
    ("kind", "body", "line_no", "message"),
    [
        ("hashes", "# c\n" + EICAR[HashKind.MD5] + "\nzz\n", 3, "not an MD5"),
        ("hashes", EICAR[HashKind.MD5] + ",x,bad\n", 1, "unknown verdict"),
        ("urls", "\n\nevil.test/,meh\n", 3, "unknown rating"),
        ("domains", "ok.test\n192.0.2.1/24\n", 2, "host bits set"),
        ("domains", "single\n", 1, "single label"),
    ],
)
def test_bad_source_line_stops_the_build(tmp_path: Path, kind: str, body: str, line_no: int,
                                         message: str) -> None:
    src = write(tmp_path / "bad.txt", body)
    with pytest.raises(SourceError, match=message) as info:
        build_pattern(tmp_path / "out", **{kind: [src]}, now=NOW)
    assert str(info.value).startswith(f"{src}:{line_no}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_failing_write_leaves_nothing(tmp_path: Path, srcs, monkeypatch) -> None:
    calls = []

    def boom(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = build_mod.write_table
    monkeypatch.setattr(build_mod, "write_table", boom)
    with pytest.raises(OSError, match="No space"):
        build_pattern(tmp_path / "out", **srcs, now=NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_failed_rebuild_keeps_the_old_pattern(tmp_path: Path, srcs) -> None:
    build_pattern(tmp_path / "out", **srcs, version="2026010100")
    bad = write(tmp_path / "src" / "bad.txt", "not-a-hash\n")
    with pytest.raises(SourceError):
        build_pattern(tmp_path / "out", hashes=[bad], replace=True)
    with PatternSet.open(tmp_path / "out") as ps:
        assert ps.version == "2026010100"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_rebuild_replaces_the_pattern(tmp_path: Path, srcs) -> None:
    build_pattern(tmp_path / "out", **srcs, version="2026010100")
    old = PatternSet.open(tmp_path / "out")
    src = write(tmp_path / "src" / "one.txt", hashlib.sha256(b"new").hexdigest() + ",New\n")
    build_pattern(tmp_path / "out", hashes=[src], version="2026010101", replace=True)
    with PatternSet.open(tmp_path / "out") as new:
        assert new.version == "2026010101"
        assert new.lookup_file(q256(hashlib.sha256(b"new").digest())) == FileHit(
            Verdict.MALICIOUS, "New")
        assert new.lookup_file(q256(NUL)) is None
    # a set opened before the swap keeps answering from its own (unlinked) files
    assert old.lookup_file(q256(NUL)) == FileHit(Verdict.MALICIOUS, "Nul-Ended")
    old.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"refusing to replace .*home: it holds files"):
        build_pattern(tmp_path / "home", now=NOW, replace=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("version", ["2026", "2026-11-22", "20261122131", "x" * 10])
def test_bad_version_is_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(ConfigError, match="bad pattern version"):
        build_pattern(tmp_path / "out", version=version)
    assert not (tmp_path / "out").exists()


def test_empty_pattern_answers_nothing(tmp_path: Path) -> None:
    build_pattern(tmp_path / "empty", now=NOW)
    with PatternSet.open(tmp_path / "empty") as ps:
        assert ps.lookup_file(fq(HashKind.MD5, EICAR[HashKind.MD5])) is None
        assert ps.lookup_url(["evil.test/"]) is None
        assert ps.lookup_domain("malware.example.test") is None
        assert ps.lookup_ip("192.0.2.7") is None


def test_closed_set_refuses_lookups(built: PatternSet) -> None:
    built.close()
    with pytest.raises(PatternError, match="closed"):
        built.lookup_file(q256(NUL))


# ---------------------------------------------------------------- shipped samples


def build_sample(tmp_path: Path, name: str) -> PatternSet:
    d = SAMPLES / name
    build_pattern(tmp_path / name, hashes=[d / "hashes.txt"], urls=[d / "urls.txt"],
                  domains=[d / "domains.txt"], now=NOW)
    return PatternSet.open(tmp_path / name)


def test_appliance_sample_contains_eicar_and_test_pages(tmp_path: Path) -> None:
    with build_sample(tmp_path, "appliance") as ps:
        for kind, digest in EICAR.items():
            assert ps.lookup_file(fq(kind, digest)) == FileHit(Verdict.MALICIOUS,
                                                               "EICAR-Test-File")
        for page, rating, category in [("malware.html", Rating.DANGEROUS, "malware"),
                                       ("phishing.html", Rating.DANGEROUS, "phishing"),
                                       ("unwanted.html", Rating.HIGHLY_SUSPICIOUS, "unwanted")]:
            hit = ps.lookup_url(exprs(f"https://testsafebrowsing.appspot.com/s/{page}"))
            assert hit is not None
            assert (hit[1].rating, hit[1].category) == (rating, category)
        assert ps.lookup_domain("www.malware.example.test") is not None
        assert ps.lookup_ip("198.51.100.7") is not None
        assert ps.lookup_ip("2001:db8:bad::1") is not None


def test_cloud_sample_differs_from_the_appliance(tmp_path: Path) -> None:
    cloud_1 = hashlib.sha256(b"rampart-cloud-test-1").digest()
    cloud_clean = hashlib.sha256(b"rampart-cloud-clean-1").digest()
    with build_sample(tmp_path, "appliance") as app, build_sample(tmp_path, "cloud") as cloud:
        assert app.lookup_file(q256(cloud_1)) is None
        assert cloud.lookup_file(q256(cloud_1)) == FileHit(Verdict.MALICIOUS,
                                                           "Rampart-Cloud-Test-1")
        assert cloud.lookup_file(q256(cloud_clean)) == FileHit(Verdict.CLEAN, None)
        assert cloud.lookup_file(fq(HashKind.SHA256, EICAR[HashKind.SHA256])) is None
        assert app.lookup_domain("cloud-malware.example.test") is None
        assert cloud.lookup_domain("cloud-malware.example.test") is not None
        safe = cloud.lookup_url(exprs("http://www.example.test/index.html"))
        assert safe is not None and safe[1].rating is Rating.SAFE


# ---------------------------------------------------------------- single and batched agree at scale


def test_single_and_batched_lookups_agree_on_many_entries(tmp_path: Path) -> None:
    """Timing lives in bench/bench_patterns.py; here, only that both paths give the same hits."""
    n = 50_000
    src = tmp_path / "many.txt"
    with open(src, "w") as f:
        for i in range(n):
            f.write(hashlib.sha256(b"%d" % i).hexdigest() + "\n")
    build_pattern(tmp_path / "big", hashes=[src], now=NOW)
    with PatternSet.open(tmp_path / "big") as ps:
        qs = [q256(hashlib.sha256(b"%d" % i).digest()) for i in range(0, 2 * n, 3)]
        hits = [ps.lookup_file(q) for q in qs]
        assert hits == ps.lookup_files(qs)
        assert [h is not None for h in hits] == [i < n for i in range(0, 2 * n, 3)]
