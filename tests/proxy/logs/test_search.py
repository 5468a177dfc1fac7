"""The query log as an administrator searches it: real answers written by the writer into a
real SQLite file, then found by every filter, by text and regular expression, page by page."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import pytest

from proxy.logs.search import Search, search
from proxy.logs.store import FILENAME, LogQueryError, LogStore
from proxy.logs.writer import LogWriter
from tests.proxy.logs.conftest import EICAR_MD5, EICAR_SHA256, MALWARE_URL, Ask

T0 = 1_800_000_000.0


def fill(ask: Ask, writer: LogWriter, t0: float = T0) -> None:
    """Six requests (nine items) from three clients, one second apart from ``t0``."""
    requests: list[tuple[str, str, Any, str]] = [
        ("GET", f"/v1/file/{EICAR_SHA256}", None, "192.0.2.10"),
        ("POST", "/v1/file", {"items": [{"md5": EICAR_MD5}, {"sha256": "cd" * 32}]}, "192.0.2.11"),
        ("POST", "/v1/web", {"urls": [MALWARE_URL + "?session=secret", "http://a.example.test/x"],
                             "policy": "medium"}, "198.51.100.7"),
        ("GET", "/v1/domain/malware.example.test", None, "192.0.2.10"),
        ("POST", "/v1/domain", {"items": ["192.0.2.7", "2001:db8:bad::1"]}, "198.51.100.7"),
        ("GET", "/v1/web?url=http://downloads.example.test/free/tool.exe", None, "192.0.2.11"),
    ]
    for i, (method, target, body, client) in enumerate(requests):
        request, response = ask(method, target, body, client=client)
        writer.clock = lambda i=i: t0 + i  # type: ignore[misc]
        writer.observe(request, response, 0.002)
    writer.stop()


@pytest.fixture
def filled(ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> LogStore:
    fill(ask, make_writer())
    return store


def items(store: LogStore, **kw: Any) -> list[str]:
    return [r["item"] for r in search(store, Search(**kw)).rows]


def test_the_database_is_private_and_every_item_is_a_row(filled: LogStore) -> None:
    assert stat.S_IMODE(os.stat(filled.path).st_mode) == 0o600
    assert filled.path.name == FILENAME
    rows = search(filled, Search()).rows
    assert len(rows) == 9
    assert rows[0]["item"] == "http://downloads.example.test/free/tool.exe"  # newest first
    assert rows[-1]["item"] == EICAR_SHA256


def test_a_row_says_what_was_decided_and_a_url_keeps_no_query(filled: LogStore) -> None:
    (row,) = search(filled, Search(where=(("origin", "web-blocking"),))).rows
    assert row["item"] == MALWARE_URL  # "?session=secret" is not kept
    assert row["client"] == "198.51.100.7"
    assert row["service"] == "web"
    assert (row["verdict"], row["action"], row["source"]) == ("dangerous", "block", "pattern")
    assert row["matched"] == "testsafebrowsing.appspot.com/s/malware.html"
    assert row["threat"] == "malware"
    assert row["blocked"] is True
    assert row["latency_ms"] == 2.0
    assert row["time"] == "2027-01-15T08:00:02.000Z"


@pytest.mark.parametrize(("where", "expected"), [
    ({"client": "192.0.2.10"}, [("domain", "malware.example.test"), ("file", EICAR_SHA256)]),
    ({"service": "domain"}, [("domain", "2001:db8:bad::1"), ("domain", "192.0.2.7"),
                             ("domain", "malware.example.test")]),
    ({"source": "local"}, [("web", "http://a.example.test/x"), ("file", "cd" * 32)]),
    ({"verdict": "malicious"}, [("file", EICAR_MD5), ("file", EICAR_SHA256)]),
    ({"action": "allow"}, [("web", "http://a.example.test/x")]),
    ({"origin": "suspicious-urls"}, [("web", "http://downloads.example.test/free/tool.exe")]),
    ({"service": "file", "client": "192.0.2.11"}, [("file", "cd" * 32), ("file", EICAR_MD5)]),
])
def test_every_filter(filled: LogStore, where: dict[str, str], expected: list[tuple[str, str]]) -> None:
    rows = search(filled, Search(where=tuple(where.items()))).rows
    assert [(r["service"], r["item"]) for r in rows] == expected


def test_time_range(filled: LogStore) -> None:
    # request 2 (the web batch) and 3 (one domain): since inclusive, until exclusive
    assert items(filled, since=T0 + 2, until=T0 + 4) == [
        "malware.example.test", "http://a.example.test/x", MALWARE_URL]
    params = {"since": "2027-01-15T08:00:04Z", "until": str(T0 + 5)}
    assert [r["item"] for r in search(filled, Search.from_params(params)).rows] == [
        "2001:db8:bad::1", "192.0.2.7"]


def test_blocked_access_log_by_origin(filled: LogStore) -> None:
    rows = search(filled, Search(log="blocked")).rows
    assert [(r["origin"], r["item"]) for r in rows] == [
        ("domain-ip", "2001:db8:bad::1"), ("domain-ip", "malware.example.test"),
        ("web-blocking", MALWARE_URL), ("smart-scan", EICAR_MD5), ("smart-scan", EICAR_SHA256)]
    assert items(filled, log="blocked", where=(("origin", "smart-scan"),)) == [EICAR_MD5, EICAR_SHA256]


def test_text_search_is_a_case_insensitive_substring(filled: LogStore) -> None:
    assert items(filled, text="EXAMPLE.test/free") == ["http://downloads.example.test/free/tool.exe"]
    assert items(filled, text="eicar-test") == [EICAR_MD5, EICAR_SHA256]  # the threat name
    assert items(filled, text="198.51.100") == [
        "2001:db8:bad::1", "192.0.2.7", "http://a.example.test/x", MALWARE_URL]  # the client
    assert items(filled, text="nowhere") == []


def test_regex_search(filled: LogStore) -> None:
    assert items(filled, regex=r"^[0-9a-f]{32}$") == [EICAR_MD5]
    assert items(filled, regex=r"\.exe$|^2001:") == [
        "http://downloads.example.test/free/tool.exe", "2001:db8:bad::1"]
    assert items(filled, regex="(?i)MALWARE\\.HTML") == [MALWARE_URL]


@pytest.mark.parametrize(("params", "field"), [
    ({"regex": "(unclosed"}, "regex"),
    ({"regex": "a" * 257}, "regex"),
    ({"log": "secrets"}, "log"),
    ({"colour": "red"}, "colour"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"since": "yesterday"}, "since"),
    ({"since": "5", "until": "4"}, "until"),
    ({"cursor": "nonsense"}, "cursor"),
    ({"blocked": "maybe"}, "blocked"),
    ({"log": "audit", "service": "file"}, "service"),
    ({"text": "x" * 300}, "text"),
])
def test_a_bad_search_is_refused_naming_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(LogQueryError) as e:
        Search.from_params(params)
    assert f"'{field}'" in e.value.message
    assert (e.value.status, e.value.code) == (400, "bad_log_query")


def test_paging_by_limit_and_offset(filled: LogStore) -> None:
    every = items(filled)
    first = search(filled, Search(limit=4))
    second = search(filled, Search(limit=4, offset=4))
    third = search(filled, Search(limit=4, offset=8))
    assert [r["item"] for r in first.rows + second.rows + third.rows] == every
    assert len(third.rows) == 1 and third.next is None


def test_paging_by_cursor_stays_right_while_rows_are_added(
        ask: Ask, filled: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    every = items(filled)
    first = search(filled, Search(limit=5))
    assert first.next is not None
    fill(ask, make_writer(), T0 + 60)  # nine newer rows meanwhile
    rest = search(filled, Search(limit=5, cursor=first.next))
    assert [r["item"] for r in first.rows + rest.rows] == every
    assert rest.next is None
    assert len(search(filled, Search(limit=1000)).rows) == 18


def test_a_truncated_client_is_found_by_its_address(
        ask: Ask, store: LogStore, make_writer: Callable[..., LogWriter]) -> None:
    fill(ask, make_writer(clients="truncated"))
    assert len(items(store, where=(("client", "198.51.100.99"),))) == 4  # its /24
    assert len(items(store, where=(("client", "198.51.100.0/24"),))) == 4
