"""Tests for proxy.wire.urls: canonicalization, expressions, digests, names."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from proxy.errors import UrlError
from proxy.wire import urls
from proxy.wire.urls import (
    canonicalize,
    digest,
    digests,
    domain_suffixes,
    expressions,
    host_of,
    normalize_domain,
    normalize_expression,
    parse_ip,
    strip_scheme,
)

# The canonicalization table published with Safe Browsing v4 ("URLs and Hashing").
PUBLISHED_CANONICAL = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    (
        "http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/"
        "%77%77%77%2E%65%62%61%79%2E%63%6F%6D/",
        "http://168.188.99.26/.secure/www.ebay.com/",
    ),
    (
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/"
        ".eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/"
        ".eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
    ),
    (
        "http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944_55%252B",
        "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+",
    ),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    # The published vector is a byte string: \x01 and the single byte 0x80.
    (b"http://\x01\x80.com/", "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]


@pytest.mark.parametrize(("url", "expected"), PUBLISHED_CANONICAL)
def test_published_canonicalization_vectors(url: str | bytes, expected: str) -> None:
    assert canonicalize(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # the published \x80 vector, as text decoded from raw bytes with surrogateescape
        ("http://\x01\udc80.com/", "http://%01%80.com/"),
        # the same code point as real text is UTF-8 (two bytes)
        ("http://\x01\x80.com/", "http://%01%C2%80.com/"),
        # IDNA, IPv6 literals, userinfo, scheme case, escapes in scheme
        ("http://www.\u00fcmlat.com/", "http://www.xn--mlat-zra.com/"),
        (b"http://www.\xc3\xbcmlat.com/", "http://www.xn--mlat-zra.com/"),
        ("http://[2001:470:1:18::114]/", "http://[2001:470:1:18::114]/"),
        ("http://[2001:0DB8:0000::1]:8080/x", "http://[2001:db8::1]/x"),
        ("http://[::ffff:1.2.3.4]/", "http://1.2.3.4/"),
        ("http://[64:ff9b::1.2.3.4]/", "http://1.2.3.4/"),
        ("http://user:pw@Example.COM:8080/a", "http://example.com/a"),
        ("HTTPS://example.com", "https://example.com/"),
        ("http%3A%2F%2Fwackyurl.com:80/", "http://wackyurl.com/"),
        ("ftp://ftp.myfiles.com/", "ftp://ftp.myfiles.com/"),
        ("www.google.com:80", "http://www.google.com/"),
        ("http://W!eird<>Ho$^.com/", "http://w!eird<>ho$^.com/"),
        # IPv4 in every legal encoding
        ("http://0x12.0x43.0x44.0x01/", "http://18.67.68.1/"),
        ("http://012.034.01.055/", "http://10.28.1.45/"),
        ("http://12.0x12.01234/", "http://12.18.2.156/"),
        ("http://167838211/", "http://10.1.2.3/"),
        ("http://4294967295/", "http://255.255.255.255/"),
        ("http://10.1/", "http://10.0.0.1/"),
        ("http://1.2.3.00x0/", "http://1.2.3.00x0/"),  # not an IP: left as a name
        ("http://4294967296/", "http://4294967296/"),  # too big for IPv4: a name
        ("http://123.123.0.0.1/", "http://123.123.0.0.1/"),  # five parts: a name
        # paths
        ("http://a.com/foo/.././bar/./../foo.html", "http://a.com/foo.html"),
        ("http://a.com//a//b///c////", "http://a.com/a/b/c/"),
        ("http://a.com/a/b/.", "http://a.com/a/b/"),
        ("http://a.com/../../x", "http://a.com/x"),
        ("http://a.com/a?x=/./../#f", "http://a.com/a?x=/./../"),
        ("http://a.com/%7e%41", "http://a.com/~A"),
        ("http://a.com/caf\u00e9", "http://a.com/caf%C3%A9"),
    ],
)
def test_canonicalize_more(url: str | bytes, expected: str) -> None:
    assert canonicalize(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("#ref", "empty"),
        ("/blah", "no host"),
        ("http://#ref", "no host"),
        ("http:///blah", "no host"),
        ("http://?query", "no host"),
        ("http://.../x", "no host"),
        ("mailto:someone@example.com", "not a web URL"),
        ("http:www.google.com/", "not a web URL"),
        ("http://example.com:abc/", "bad port"),
        ("http://[2001:db8::1/", "missing ']'"),
        ("http://[not-an-ip]/", "bad IPv6"),
        ("http://a:b:80/", "':'"),
        ("http://example.com/" + "a" * 9000, "longer than 8192"),
    ],
)
def test_canonicalize_rejects(url: str, problem: str) -> None:
    with pytest.raises(UrlError, match=problem):
        canonicalize(url)


def test_max_length_is_configurable() -> None:
    assert canonicalize("http://a.example/xyz", max_length=20) == "http://a.example/xyz"
    with pytest.raises(UrlError, match="longer than 19"):
        canonicalize("http://a.example/xyz", max_length=19)


def test_canonical_form_is_stable() -> None:
    for url, _ in PUBLISHED_CANONICAL:
        once = canonicalize(url)
        assert canonicalize(once) == once


# ---------------------------------------------------------------- expressions

# The examples published with Safe Browsing v4, in the published order.
PUBLISHED_EXPRESSIONS = [
    (
        "http://a.b.c/1/2.html?param=1",
        [
            "a.b.c/1/2.html?param=1",
            "a.b.c/1/2.html",
            "a.b.c/",
            "a.b.c/1/",
            "b.c/1/2.html?param=1",
            "b.c/1/2.html",
            "b.c/",
            "b.c/1/",
        ],
    ),
    (
        "http://a.b.c.d.e.f.g/1.html",
        [
            "a.b.c.d.e.f.g/1.html",
            "a.b.c.d.e.f.g/",
            # b.c.d.e.f.g is skipped: only the last five components are suffixed
            "c.d.e.f.g/1.html",
            "c.d.e.f.g/",
            "d.e.f.g/1.html",
            "d.e.f.g/",
            "e.f.g/1.html",
            "e.f.g/",
            "f.g/1.html",
            "f.g/",
        ],
    ),
    ("http://1.2.3.4/1/", ["1.2.3.4/1/", "1.2.3.4/"]),
]


@pytest.mark.parametrize(("url", "expected"), PUBLISHED_EXPRESSIONS)
def test_published_expressions(url: str, expected: list[str]) -> None:
    assert expressions(canonicalize(url)) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://a.b/saw-a-dog/sit-on-a-log/and/then/some.html?x=1",
            [
                "a.b/saw-a-dog/sit-on-a-log/and/then/some.html?x=1",
                "a.b/saw-a-dog/sit-on-a-log/and/then/some.html",
                "a.b/",
                "a.b/saw-a-dog/",
                "a.b/saw-a-dog/sit-on-a-log/",
                "a.b/saw-a-dog/sit-on-a-log/and/",
            ],
        ),
        (
            "http://a.b.c/1/2/3/4/5/",
            [
                "a.b.c/1/2/3/4/5/",
                "a.b.c/",
                "a.b.c/1/",
                "a.b.c/1/2/",
                "a.b.c/1/2/3/",
                "b.c/1/2/3/4/5/",
                "b.c/",
                "b.c/1/",
                "b.c/1/2/",
                "b.c/1/2/3/",
            ],
        ),
        ("http://a.b/?", ["a.b/"]),
        ("http://b/", ["b/"]),
        ("http://a.b.c.d.e/", ["a.b.c.d.e/", "b.c.d.e/", "c.d.e/", "d.e/"]),
        (
            "http://[2001:470:1:18::114]/a/b",
            ["[2001:470:1:18::114]/a/b", "[2001:470:1:18::114]/", "[2001:470:1:18::114]/a/"],
        ),
    ],
)
def test_expressions_more(url: str, expected: list[str]) -> None:
    assert expressions(canonicalize(url)) == expected


def test_expressions_are_bounded_to_5_hosts_and_6_paths() -> None:
    url = canonicalize("http://1.2.3.4.5.6.7.8.example/a/b/c/d/e/f/g.html?q=1")
    exprs = expressions(url)
    hosts = {e.split("/", 1)[0] for e in exprs}
    paths = {e[e.index("/") :] for e in exprs}
    assert hosts == {
        "1.2.3.4.5.6.7.8.example",
        "5.6.7.8.example",
        "6.7.8.example",
        "7.8.example",
        "8.example",
    }
    assert paths == {"/a/b/c/d/e/f/g.html?q=1", "/a/b/c/d/e/f/g.html", "/", "/a/", "/a/b/", "/a/b/c/"}
    assert len(exprs) == 30 == len(set(exprs))


def test_digest_is_sha256_of_expression() -> None:
    # the hash example published with Safe Browsing v4
    assert digest("abc").hex() == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    exprs = expressions(canonicalize("http://a.b.c/1/2.html?param=1"))
    assert digests(exprs) == [hashlib.sha256(e.encode()).digest() for e in exprs]
    assert len(set(digests(exprs))) == len(exprs)


@pytest.mark.parametrize(
    ("canonical", "host", "stripped"),
    [
        ("http://a.b.c/1/2.html?param=1", "a.b.c", "a.b.c/1/2.html?param=1"),
        ("https://[2001:db8::1]/", "[2001:db8::1]", "[2001:db8::1]/"),
        ("http://1.2.3.4/?a/b", "1.2.3.4", "1.2.3.4/?a/b"),
    ],
)
def test_host_of_and_strip_scheme(canonical: str, host: str, stripped: str) -> None:
    assert host_of(canonical) == host
    assert strip_scheme(canonical) == stripped


# ---------------------------------------------------------------- names and rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.test/x", "example.test/x"),
        ("http://Example.test/x", "example.test/x"),
        ("https://example.test/x", "example.test/x"),
        ("example.test", "example.test/"),
        ("Example.TEST./a/../b?Q=1", "example.test/b?Q=1"),
        ("  evil.example/%7Epath  ", "evil.example/~path"),
    ],
)
def test_normalize_expression(text: str, expected: str) -> None:
    assert normalize_expression(text) == expected


@pytest.mark.parametrize("text", ["", "  ", "mailto:x@example.com", "/no/host"])
def test_normalize_expression_rejects(text: str) -> None:
    with pytest.raises(UrlError):
        normalize_expression(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  a.b.example.com  ", "a.b.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_normalize_domain(text: str, expected: str) -> None:
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty domain"),
        ("a..example", "empty label"),
        (".example", "empty label"),
        ("a" * 64 + ".example", "label longer than 63"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("exa mple.com", "invalid character ' '"),
        ("*.evil.example", "already covers every subdomain"),
        ("evil.example/path", "invalid character '/'"),
        ("a" * 2000, "longer than 253"),
    ],
)
def test_normalize_domain_rejects(text: str, problem: str) -> None:
    with pytest.raises(UrlError, match=problem):
        normalize_domain(text)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.b.example.com", ["a.b.example.com", "b.example.com", "example.com"]),
        ("example.com", ["example.com"]),
        ("localhost", ["localhost"]),
    ],
)
def test_domain_suffixes(name: str, expected: list[str]) -> None:
    assert domain_suffixes(name) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.7", ipaddress.IPv4Address("192.0.2.7")),
        ("2001:db8::1", ipaddress.IPv6Address("2001:db8::1")),
        ("[2001:db8::1]", ipaddress.IPv6Address("2001:db8::1")),
        (" ::1 ", ipaddress.IPv6Address("::1")),
        ("example.com", None),
        ("3279880203", None),
        ("1.2.3", None),
        ("", None),
        ("[]", None),
        ("1" * 100, None),
    ],
)
def test_parse_ip(text: str, expected: object) -> None:
    assert parse_ip(text) == expected


def test_url_error_is_value_error() -> None:
    assert issubclass(UrlError, ValueError)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("%0\u00a10", "http://%250%C2%A10/"),  # '%' in a non-ASCII host: no IDNA, escaped as is
        ("x_\u00fc.test", "http://xn--x_-yka.test/"),
        ("a\u2024b", "http://a.b/"),  # dots that NFKC makes are collapsed like others
    ],
)
def test_found_by_property_testing_canonical_forms_are_fixed_points(raw: str, canonical: str) -> None:
    assert urls.canonicalize(raw) == canonical
    assert urls.canonicalize(canonical) == canonical


def test_a_host_that_is_only_a_dot_leader_has_no_host() -> None:
    with pytest.raises(UrlError, match="no host"):
        urls.canonicalize("\u2024")


def test_leading_dots_before_a_bracket_do_not_hide_it() -> None:
    with pytest.raises(UrlError, match="IPv6"):
        urls.canonicalize(".[")
    assert urls.canonicalize("http://.[::1]/x") == urls.canonicalize("http://[::1]/x")


def test_a_lone_surrogate_that_stands_for_no_byte_is_a_url_error() -> None:
    with pytest.raises(UrlError, match="lone surrogate"):
        urls.canonicalize("http://\ud800.example/")
    assert urls.canonicalize("http://a.test/\udcff") == "http://a.test/%FF"  # surrogateescape


@pytest.mark.parametrize(
    "url, message",
    [("http://%ff%fe.example/", "not UTF-8"), ("http://\udcff.example/", "not UTF-8"),
     ("http://exa%20mple.test/", "not a host name"), ("http://a%2525.test/", "not a host name"),
     ("http://%01.com/", "not a host name"), ("http://%01%80.com/", "not UTF-8")],
)
def test_check_host_refuses_a_canonical_host_holding_escapes(url: str, message: str) -> None:
    host = host_of(canonicalize(url))  # canonicalization itself keeps such hosts
    with pytest.raises(UrlError, match=message):
        urls.check_host(host)


@pytest.mark.parametrize(
    "url", ["http://example.test/", "http://b\u00fccher.example/", "http://10.1/", "http://[::1]/",
            "http://a_b-c.test/%ff", "http://W!eird<>Ho$^.com/"],
)
def test_check_host_accepts_names_and_ip_literals(url: str) -> None:
    urls.check_host(host_of(canonicalize(url)))
