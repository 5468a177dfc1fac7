"""A small Safe Browsing v4 local-database client, written for the tests from the v4 Update
API's description alone (not from proxy.sb): it keeps each list's prefixes and client state,
asks threatListUpdates:fetch, applies a FULL_UPDATE or PARTIAL_UPDATE (removals by index into
the sorted old prefixes, then the additions), checks the checksum, and asks fullHashes:find
for the prefixes a URL's expressions hit. URLs are cut into expressions with the project's
canonicaliser (proxy.wire.urls), the one part of the client the tests take from Rampart."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.wire import urls

LISTS = ("MALWARE", "SOCIAL_ENGINEERING", "UNWANTED_SOFTWARE")
CLIENT = {"clientId": "rampart-tests", "clientVersion": "1.0"}


class ChecksumMismatch(AssertionError):
    pass


def rice_decode(first: int, k: int, count: int, data: bytes) -> list[int]:
    """The v4 Rice-Golomb delta encoding: ``first``, then ``count`` deltas, each a unary
    quotient (1s ended by a 0) and ``k`` remainder bits, bits read least significant first."""
    values = [first]
    bit = 0

    def read() -> int:
        nonlocal bit
        if bit >= 8 * len(data):
            raise AssertionError("Rice data ends early")
        b = (data[bit >> 3] >> (bit & 7)) & 1
        bit += 1
        return b

    for _ in range(count):
        q = 0
        while read():
            q += 1
        r = 0
        for i in range(k):
            r |= read() << i
        values.append(values[-1] + (q << k) + r)
    return values


def _rice(enc: dict[str, Any]) -> list[int]:
    return rice_decode(int(enc.get("firstValue", 0)), int(enc.get("riceParameter", 0)),
                       int(enc.get("numEntries", 0)), base64.b64decode(enc.get("encodedData", "")))


def additions_of(entry_set: dict[str, Any]) -> list[bytes]:
    if "rawHashes" in entry_set:
        raw = entry_set["rawHashes"]
        size, blob = int(raw["prefixSize"]), base64.b64decode(raw.get("rawHashes", ""))
        assert 4 <= size <= 32 and len(blob) % size == 0, raw
        return [blob[i:i + size] for i in range(0, len(blob), size)]
    if "riceHashes" in entry_set:
        return [v.to_bytes(4, "little") for v in _rice(entry_set["riceHashes"])]
    return []


def removals_of(entry_set: dict[str, Any]) -> list[int]:
    if "rawIndices" in entry_set:
        return [int(i) for i in entry_set["rawIndices"].get("indices", [])]
    if "riceIndices" in entry_set:
        return _rice(entry_set["riceIndices"])
    return []


@dataclass
class LocalList:
    threat: str
    prefixes: list[bytes] = field(default_factory=list)  # sorted
    state: str = ""  # base64, as received


@dataclass
class LocalDatabase:
    base: str  # http://host:port
    compression: str = "RAW"  # or RICE
    lists: dict[str, LocalList] = field(default_factory=lambda: {t: LocalList(t) for t in LISTS})
    responses: list[str] = field(default_factory=list)  # responseType of the last update, per list
    forms: set[str] = field(default_factory=set)  # rawHashes, riceHashes, rawIndices, riceIndices seen

    def update(self) -> None:
        body = {"client": CLIENT, "listUpdateRequests": [
            {"threatType": t, "platformType": "ANY_PLATFORM", "threatEntryType": "URL",
             "state": ll.state, "constraints": {"supportedCompressions": [self.compression]}}
            for t, ll in self.lists.items()]}
        r = httpx.post(f"{self.base}/v4/threatListUpdates:fetch?key=test", json=body, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        answers = doc["listUpdateResponses"]
        assert sorted(a["threatType"] for a in answers) == sorted(self.lists)
        assert doc["minimumWaitDuration"].endswith("s")
        self.responses = []
        for answer in answers:
            self._apply(self.lists[answer["threatType"]], answer)

    def _apply(self, ll: LocalList, answer: dict[str, Any]) -> None:
        kind = answer["responseType"]
        self.responses.append(kind)
        old = [] if kind == "FULL_UPDATE" else ll.prefixes
        gone = {i for removal in answer.get("removals", []) for i in removals_of(removal)}
        assert all(0 <= i < len(old) for i in gone), "a removal index outside the list"
        kept = [p for i, p in enumerate(old) if i not in gone]
        added = [p for a in answer.get("additions", []) for p in additions_of(a)]
        self.forms.update(k for part in ("additions", "removals") for s in answer.get(part, [])
                          for k in s if k.startswith("r"))
        new = sorted(kept + added)
        want = base64.b64decode(answer["checksum"]["sha256"])
        if hashlib.sha256(b"".join(new)).digest() != want:
            raise ChecksumMismatch(f"{ll.threat}: checksum differs after a {kind}")
        ll.prefixes, ll.state = new, answer["newClientState"]

    def hits(self, url: str) -> dict[bytes, str]:
        """Each full hash of ``url``'s expressions some local prefix starts: full hash -> list."""
        found: dict[bytes, str] = {}
        for expr in urls.expressions(urls.canonicalize(url)):
            full = hashlib.sha256(expr.encode()).digest()
            for ll in self.lists.values():
                if any(full.startswith(p) for p in ll.prefixes):
                    found[full] = ll.threat
        return found

    def lookup(self, url: str) -> set[str]:
        """The threat lists ``url`` is on: local prefixes first, then the full hashes asked."""
        hits = self.hits(url)
        if not hits:
            return set()
        prefixes = sorted({next(p for p in self.lists[t].prefixes if h.startswith(p))
                           for h, t in hits.items()})
        body = {"client": CLIENT, "clientStates": [ll.state for ll in self.lists.values()],
                "threatInfo": {"threatTypes": list(LISTS), "platformTypes": ["ANY_PLATFORM"],
                               "threatEntryTypes": ["URL"],
                               "threatEntries": [{"hash": base64.b64encode(p).decode()}
                                                 for p in prefixes]}}
        r = httpx.post(f"{self.base}/v4/fullHashes:find", json=body, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc.get("negativeCacheDuration", "").endswith("s"), doc
        found = set()
        for m in doc.get("matches", []):
            assert m["cacheDuration"].endswith("s") and "threatEntryMetadata" in m, m
            if base64.b64decode(m["threat"]["hash"]) in hits:
                found.add(m["threatType"])
        return found


# ---------------------------------------------------------------- the protobuf wire form, by hand
# Field numbers from the published safebrowsing.proto (v4), encoded and read here without
# any generated code, so a mistake in proxy.sb.messages cannot hide behind a shared one.

ENUM = {"MALWARE": 1, "SOCIAL_ENGINEERING": 2, "UNWANTED_SOFTWARE": 3, "ANY_PLATFORM": 8,
        "URL": 1, "RAW": 1, "RICE": 2, "FULL_UPDATE": 2, "PARTIAL_UPDATE": 1}


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb(field_number: int, value: int | bytes | str) -> bytes:
    """One field: an int as a varint, bytes or text as length-delimited."""
    if isinstance(value, int):
        return varint(field_number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(field_number << 3 | 2) + varint(len(data)) + data


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """A message's fields in order: (number, varint value or length-delimited bytes)."""
    out: list[tuple[int, int | bytes]] = []
    i = 0

    def read_varint() -> int:
        nonlocal i
        n = shift = 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, read_varint()))
        elif wire == 2:
            size = read_varint()
            out.append((number, data[i:i + size]))
            i += size
        else:
            raise AssertionError(f"wire type {wire} in field {number}")
    return out


def field_values(data: bytes, number: int) -> list[Any]:
    return [v for n, v in fields(data) if n == number]


def one(data: bytes, number: int, default: Any = None) -> Any:
    found = field_values(data, number)
    return found[-1] if found else default
