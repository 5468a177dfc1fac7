"""Tests for proxy.patterns.sources: source line parsing, file reading and the merge rules."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from proxy.errors import SourceError
from proxy.model import HashKind, Rating, Verdict
from proxy.patterns import sources
from proxy.patterns.sources import (
    DomainRecord,
    HashRecord,
    NetworkRecord,
    UrlRecord,
    flatten_networks,
    merge_by,
    merge_hashes,
    parse_domain_line,
    parse_hash_line,
    parse_url_line,
)

MD5 = "44d88612fea8a8f36de82e1278abb02f"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


@pytest.mark.parametrize(
    ("line", "kind", "verdict", "threat"),
    [
        (MD5, HashKind.MD5, Verdict.MALICIOUS, None),
        (f"{SHA1},EICAR-Test-File", HashKind.SHA1, Verdict.MALICIOUS, "EICAR-Test-File"),
        (f"{SHA256.upper()} , Trojan.Win32 Agent , Suspicious", HashKind.SHA256,
         Verdict.SUSPICIOUS, "Trojan.Win32 Agent"),
        (f"{SHA256},,clean", HashKind.SHA256, Verdict.CLEAN, None),
    ],
)
def test_hash_lines(line: str, kind: HashKind, verdict: Verdict, threat: str | None) -> None:
    rec = parse_hash_line(line)
    assert rec.kind is kind
    assert rec.digest.hex() == line.split(",")[0].strip().lower()
    assert rec.verdict is verdict
    assert rec.threat == threat


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("abc", "not an MD5, SHA-1 or SHA-256"),
        (MD5[:-1] + "g", "not an MD5"),
        (MD5 + "0", "not an MD5"),
        (f"{MD5},x,unknown", "unknown verdict 'unknown'"),
        (f"{MD5},x,evil", "unknown verdict 'evil'"),
        (f"{MD5},{'x' * 129}", "bad threat name"),
        (f"{MD5},bad\tname", "bad threat name"),
        (f"{MD5},a,malicious,extra", "4 fields"),
    ],
)
def test_bad_hash_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hash_line(line)


@pytest.mark.parametrize(
    ("line", "expr", "rating", "category", "score"),
    [
        ("http://Evil.TEST/x", "evil.test/x", Rating.DANGEROUS, "malware", 95),
        ("evil.test", "evil.test/", Rating.DANGEROUS, "malware", 95),
        ("evil.test/a,highly-suspicious", "evil.test/a", Rating.HIGHLY_SUSPICIOUS, None, 75),
        ("evil.test/a,dangerous,Phishing,99", "evil.test/a", Rating.DANGEROUS, "phishing", 99),
        ("ok.test/,safe,,0", "ok.test/", Rating.SAFE, None, 0),
        ("ok.test/a%2Cb,untested", "ok.test/a,b", Rating.UNTESTED, None, 50),
    ],
)
def test_url_lines(line: str, expr: str, rating: Rating, category: str | None,
                   score: int) -> None:
    assert parse_url_line(line) == UrlRecord(expr, rating, score, category)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("evil.test/a,terrible", "unknown rating 'terrible'"),
        ("evil.test/a,dangerous,bad cat", "bad category"),
        ("evil.test/a,dangerous,malware,101", "bad score"),
        ("evil.test/a,dangerous,malware,-1", "bad score"),
        ("evil.test/a,b,dangerous", "unknown rating 'b'"),
        ("evil.test/a,dangerous,malware,5,x", "write a comma inside a URL as %2C"),
        (",dangerous", "bad URL"),
    ],
)
def test_bad_url_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url_line(line)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Malware.Example.TEST.", DomainRecord("malware.example.test", Rating.DANGEROUS, 95,
                                               "malware")),
        ("parked.invalid,suspicious,parked",
         DomainRecord("parked.invalid", Rating.SUSPICIOUS, 55, "parked")),
        ("192.0.2.0/24,suspicious", NetworkRecord(ipaddress.ip_network("192.0.2.0/24"),
                                                  Rating.SUSPICIOUS, 55, None)),
        ("198.51.100.7", NetworkRecord(ipaddress.ip_network("198.51.100.7/32"),
                                       Rating.DANGEROUS, 95, "malware")),
        ("2001:db8:bad::/48,dangerous,c2,90",
         NetworkRecord(ipaddress.ip_network("2001:db8:bad::/48"), Rating.DANGEROUS, 90, "c2")),
        ("[2001:db8::1]", NetworkRecord(ipaddress.ip_network("2001:db8::1/128"),
                                        Rating.DANGEROUS, 95, "malware")),
    ],
)
def test_domain_lines(line: str, expected: object) -> None:
    assert parse_domain_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("192.0.2.1/24", "host bits set"),
        ("192.0.2.0/33", "bad CIDR block"),
        ("test", "single label"),
        ("bad_*.example.test", "bad domain"),
        ("a..b.test", "bad domain"),
        ("", "empty"),
        ("x.test,dangerous,malware,50,extra", "5 fields"),
    ],
)
def test_bad_domain_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_domain_line(line)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_comments_blank_lines_and_inline_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "h.txt", f"\ufeff# header\n\n   \n{MD5},A # note\n  # indented\n"
                                    f"{SHA1}\r\n")
    recs = list(sources.read_hashes(path))
    assert [(r.kind, r.threat) for r in recs] == [(HashKind.MD5, "A"), (HashKind.SHA1, None)]


@pytest.mark.parametrize(
    ("reader", "body", "line_no", "message"),
    [
        (sources.read_hashes, f"# ok\n{MD5}\nnot-a-hash\n", 3, "not an MD5"),
        (sources.read_urls, "# c\n\nevil.test/,awful\n", 3, "unknown rating"),
        (sources.read_domains, "x.test\n10.0.0.1/8\n", 2, "host bits set"),
        (sources.read_hashes, b"\xff\xfe\n", 1, "not UTF-8"),
        (sources.read_urls, "a.test/" + "x" * sources.MAX_LINE_BYTES + "\n", 1,
         "line longer than"),
    ],
)
def test_file_errors_name_file_and_line(tmp_path: Path, reader, body, line_no: int,
                                        message: str) -> None:
    path = write(tmp_path, "src.txt", body)
    with pytest.raises(SourceError, match=message) as info:
        list(reader(path))
    assert info.value.path == str(path)
    assert info.value.line_no == line_no
    assert str(info.value).startswith(f"{path}:{line_no}: ")


@pytest.mark.parametrize(("extra", "ok"), [(0, True), (1, False)])
def test_line_length_limit(tmp_path: Path, extra: int, ok: bool) -> None:
    line = MD5 + " #" + "x" * (sources.MAX_LINE_BYTES - len(MD5) - 2 + extra)
    for body in (line + "\n" + MD5 + "\n", line):  # with and without a final newline
        path = write(tmp_path, "h.txt", body)
        if ok:
            assert len(list(sources.read_hashes(path))) == body.count(MD5)
        else:
            with pytest.raises(SourceError, match=r"h\.txt:1: line longer than"):
                list(sources.read_hashes(path))


def test_reading_streams(tmp_path: Path) -> None:
    path = write(tmp_path, "h.txt", f"{MD5}\nbroken\n")
    it = sources.read_hashes(path)
    assert next(it).kind is HashKind.MD5  # the first record comes before the bad line is seen
    with pytest.raises(SourceError):
        next(it)


# ---------------------------------------------------------------- merging


def h(verdict: Verdict, threat: str | None) -> HashRecord:
    return HashRecord(HashKind.MD5, b"\x01" * 16, verdict, threat)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([h(Verdict.CLEAN, None), h(Verdict.MALICIOUS, "X")], h(Verdict.MALICIOUS, "X")),
        ([h(Verdict.MALICIOUS, "X"), h(Verdict.CLEAN, None)], h(Verdict.MALICIOUS, "X")),
        ([h(Verdict.SUSPICIOUS, "S"), h(Verdict.MALICIOUS, None)], h(Verdict.MALICIOUS, "S")),
        ([h(Verdict.MALICIOUS, "A"), h(Verdict.MALICIOUS, "B")], h(Verdict.MALICIOUS, "A")),
        ([h(Verdict.MALICIOUS, None), h(Verdict.MALICIOUS, "B")], h(Verdict.MALICIOUS, "B")),
        ([h(Verdict.MALICIOUS, "M"), h(Verdict.SUSPICIOUS, "S"), h(Verdict.CLEAN, None)],
         h(Verdict.MALICIOUS, "M")),
    ],
)
def test_hash_duplicates_most_severe_wins(records: list[HashRecord],
                                          expected: HashRecord) -> None:
    assert list(merge_hashes(records).values()) == [expected]


def u(rating: Rating, score: int | None = None, category: str | None = None) -> UrlRecord:
    return UrlRecord("e.test/", rating, rating.default_score if score is None else score,
                     category)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([u(Rating.SAFE, category="biz"), u(Rating.DANGEROUS, category="malware")],
         u(Rating.DANGEROUS, category="malware")),
        ([u(Rating.SUSPICIOUS), u(Rating.UNTESTED)], u(Rating.SUSPICIOUS)),
        ([u(Rating.DANGEROUS, 90, "a"), u(Rating.DANGEROUS, 99, "b")],
         u(Rating.DANGEROUS, 99, "b")),
        ([u(Rating.DANGEROUS, 90, "a"), u(Rating.DANGEROUS, 90, "b")],
         u(Rating.DANGEROUS, 90, "a")),
        ([u(Rating.DANGEROUS, 90), u(Rating.DANGEROUS, 90, "b")], u(Rating.DANGEROUS, 90, "b")),
    ],
)
def test_rated_duplicates_most_severe_wins(records: list[UrlRecord],
                                           expected: UrlRecord) -> None:
    assert list(merge_by(records, lambda r: r.expression).values()) == [expected]


def n(net: str, rating: Rating, category: str | None = None) -> NetworkRecord:
    return NetworkRecord(ipaddress.ip_network(net), rating, rating.default_score, category)


def spans(records: list[NetworkRecord]) -> list[tuple[str, str, str]]:
    return [(str(ipaddress.ip_address(r.first)), str(ipaddress.ip_address(r.last)),
             str(r.record.network)) for r in flatten_networks(records)]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([n("192.0.2.0/24", Rating.SUSPICIOUS), n("192.0.2.7/32", Rating.DANGEROUS)],
         [("192.0.2.0", "192.0.2.6", "192.0.2.0/24"),
          ("192.0.2.7", "192.0.2.7", "192.0.2.7/32"),
          ("192.0.2.8", "192.0.2.255", "192.0.2.0/24")]),
        # a less severe narrower network inside a wider one changes nothing
        ([n("192.0.2.0/24", Rating.DANGEROUS), n("192.0.2.128/25", Rating.SAFE)],
         [("192.0.2.0", "192.0.2.255", "192.0.2.0/24")]),
        # equal severity: the narrower network is the one reported
        ([n("10.0.0.0/8", Rating.DANGEROUS), n("10.1.0.0/16", Rating.DANGEROUS)],
         [("10.0.0.0", "10.0.255.255", "10.0.0.0/8"),
          ("10.1.0.0", "10.1.255.255", "10.1.0.0/16"),
          ("10.2.0.0", "10.255.255.255", "10.0.0.0/8")]),
        # adjacent, disjoint and duplicate networks
        ([n("10.0.0.0/25", Rating.SAFE), n("10.0.0.128/25", Rating.SAFE),
          n("10.0.0.0/25", Rating.SUSPICIOUS), n("172.16.0.0/12", Rating.SAFE)],
         [("10.0.0.0", "10.0.0.127", "10.0.0.0/25"),
          ("10.0.0.128", "10.0.0.255", "10.0.0.128/25"),
          ("172.16.0.0", "172.31.255.255", "172.16.0.0/12")]),
        ([n("2001:db8::/32", Rating.SUSPICIOUS), n("2001:db8:bad::/48", Rating.DANGEROUS)],
         [("2001:db8::", "2001:db8:bac:ffff:ffff:ffff:ffff:ffff", "2001:db8::/32"),
          ("2001:db8:bad::", "2001:db8:bad:ffff:ffff:ffff:ffff:ffff", "2001:db8:bad::/48"),
          ("2001:db8:bae::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::/32")]),
        ([], []),
    ],
)
def test_flatten_networks(records: list[NetworkRecord],
                          expected: list[tuple[str, str, str]]) -> None:
    assert spans(records) == expected


def test_duplicate_network_merges_rating(tmp_path: Path) -> None:
    path = write(tmp_path, "d.txt", "192.0.2.0/24,safe\n192.0.2.0/24,highly_suspicious,bot\n")
    recs = [r for r in sources.read_domains(path) if isinstance(r, NetworkRecord)]
    (flat,) = flatten_networks(recs)
    assert flat.record.rating is Rating.HIGHLY_SUSPICIOUS
    assert flat.record.category == "bot"


# ---------------------------------------------------------------- ClamAV, hosts, --skip-bad

from proxy.patterns.sources import (  # noqa: E402
    BadLines,
    detect_format,
    parse_clamav_line,
    parse_hosts_line,
    read_clamav,
    read_hosts,
)

ALL_KINDS = frozenset(HashKind)


@pytest.mark.parametrize(
    ("line", "kinds", "kind", "threat"),
    [
        (f"{MD5}:68:Eicar-Test-Signature", frozenset({HashKind.MD5}), HashKind.MD5,
         "Eicar-Test-Signature"),
        (f"{SHA1}:68:Win.Test.EICAR_HDB-1", ALL_KINDS, HashKind.SHA1, "Win.Test.EICAR_HDB-1"),
        (f"{SHA256}:*:Win.Test.EICAR_HSB-1:73", ALL_KINDS, HashKind.SHA256,
         "Win.Test.EICAR_HSB-1"),
        (f"{SHA256.upper()}:68:Doc.Foo-2:51:255", ALL_KINDS, HashKind.SHA256, "Doc.Foo-2"),
    ],
)
def test_clamav_lines(line: str, kinds, kind: HashKind, threat: str) -> None:
    rec = parse_clamav_line(line, kinds)
    assert (rec.kind, rec.verdict, rec.threat) == (kind, Verdict.MALICIOUS, threat)
    assert rec.digest.hex() == line.split(":")[0].lower()


@pytest.mark.parametrize(
    ("line", "kinds", "message"),
    [
        (f"{MD5}:68", ALL_KINDS, "2 fields"),
        (f"{MD5}:68:a:1:2:3", ALL_KINDS, "6 fields"),
        (f"{SHA1}:68:Name", frozenset({HashKind.MD5}), "a sha1 hash where this file holds md5"),
        ("xyz:68:Name", ALL_KINDS, "not an MD5"),
        (f"{MD5}:-1:Name", ALL_KINDS, "bad size"),
        (f"{MD5}:12ab:Name", ALL_KINDS, "bad size"),
        (f"{MD5}:68:", ALL_KINDS, "bad signature name"),
        (f"{MD5}:68:a,b", ALL_KINDS, "bad signature name"),
        (f"{MD5}:68:Name:x", ALL_KINDS, "functionality level"),
    ],
)
def test_bad_clamav_lines(line: str, kinds, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_clamav_line(line, kinds)


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("0.0.0.0 ads.example.com", ["ads.example.com"]),
        ("127.0.0.1 Tracker.Example.NET. pixel.example.org", ["tracker.example.net",
                                                              "pixel.example.org"]),
        ("127.0.0.1 localhost", []),
        ("::1 localhost ip6-localhost ip6-loopback", []),
        ("255.255.255.255 broadcasthost", []),
        ("0.0.0.0 0.0.0.0", []),
        ("192.168.1.10 nas", []),  # a single label is a local name, not a list entry
    ],
)
def test_hosts_lines(line: str, names: list[str]) -> None:
    recs = parse_hosts_line(line)
    assert [r.name for r in recs] == names
    assert all(r.rating is Rating.DANGEROUS and r.category == "malware" for r in recs)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ads.example.com", "expected ADDRESS NAME"),
        ("banana ads.example.com", "not an IP address"),
        ("0.0.0.0 bad..name.com", "bad host name"),
    ],
)
def test_bad_hosts_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hosts_line(line)


@pytest.mark.parametrize(
    ("name", "default", "expected"),
    [
        ("main.hdb", "hashes", "clamav"),
        ("daily.HSB", "hashes", "clamav"),
        ("block.hosts", "domains", "hosts"),
        ("hosts", "domains", "hosts"),
        ("list.txt", "domains", "domains"),
        ("list.csv", "urls", "urls"),
    ],
)
def test_detect_format(name: str, default: str, expected: str) -> None:
    assert detect_format(Path(name), default) == expected


def test_hdb_file_holds_only_md5(tmp_path: Path) -> None:
    path = write(tmp_path, "main.hdb", f"{MD5}:68:Eicar\n{SHA256}:68:Other\n")
    with pytest.raises(SourceError, match=r"main.hdb:2: a sha256 hash"):
        list(read_clamav(path))
    hsb = write(tmp_path, "main.hsb", f"{MD5}:68:Eicar\n{SHA256}:*:Other\n")
    assert [r.kind for r in read_clamav(hsb)] == [HashKind.MD5, HashKind.SHA256]


def test_hosts_file_with_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts", "# blocklist\n127.0.0.1 localhost\n"
                                    "0.0.0.0 ads.example.com  # ads\n0.0.0.0 a.test b.test\n")
    assert [r.name for r in read_hosts(path)] == ["ads.example.com", "a.test", "b.test"]


def test_plain_domain_ip_and_cidr_list(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "evil.example\n192.0.2.7\n2001:db8::/32\n10.0.0.0/8\n")
    recs = list(sources.read_domains(path))
    assert [type(r).__name__ for r in recs] == ["DomainRecord"] + ["NetworkRecord"] * 3
    assert all(r.rating is Rating.DANGEROUS for r in recs)


@pytest.mark.parametrize(
    ("reader", "name", "body", "good", "bad_lines"),
    [
        (read_clamav, "x.hdb", f"{MD5}:1:A\nnope\n{MD5}:x:B\n{MD5}:2:C\n", 2, [2, 3]),
        (read_hosts, "hosts", "0.0.0.0 a.test\njunk\n0.0.0.0 b.test\n", 2, [2]),
        (sources.read_hashes, "h.txt", f"{MD5}\n{MD5}1\n", 1, [2]),
        (sources.read_urls, "u.txt", "http://a.test/\nhttp://b.test/,weird\n", 1, [2]),
        (sources.read_domains, "d.txt", "a.test\n10.0.0.1/8\nsingle\n", 1, [2, 3]),
    ],
)
def test_skip_bad_counts_and_names_lines(tmp_path: Path, reader, name, body, good,
                                         bad_lines) -> None:
    path = write(tmp_path, name, body)
    with pytest.raises(SourceError, match=rf"{name}:{bad_lines[0]}:"):
        list(reader(path))
    bad = BadLines()
    assert len(list(reader(path, bad))) == good
    assert bad.count == len(bad_lines)
    assert [e.split(":")[1] for e in bad.examples] == [str(n) for n in bad_lines]
