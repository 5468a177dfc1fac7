"""The Safe Browsing v4 API without HTTP: messages in, messages out, and ``handle`` for the
query door's ``/v4/`` routes (decode, answer, encode; never raises).

- ``GET /v4/threatLists``: MALWARE, SOCIAL_ENGINEERING, UNWANTED_SOFTWARE for ANY_PLATFORM,
  URL (what each holds: ``proxy.sb.prefixes``). Any platform a client asks for is served
  the same list, answered with the platform it asked for.
- ``POST /v4/threatListUpdates:fetch``: a FULL_UPDATE for no state or a state this server
  does not remember (it keeps the last few prefix sets), a PARTIAL_UPDATE (removal indices
  into the client's sorted prefixes, then additions) otherwise; 4-byte prefixes Rice-encoded
  when the client lists RICE in ``supportedCompressions``, raw otherwise (longer prefixes are
  always raw, one set per size); ``newClientState`` names the pattern version and the set;
  ``checksum.sha256`` over the sorted prefixes after the update. ``maxUpdateEntries`` and
  ``maxDatabaseEntries`` are checked, not applied (the whole list is sent).
- ``POST /v4/fullHashes:find``: every full hash starting with each asked prefix (4 to 32
  bytes, at most MAX_PREFIXES) in each asked threat list that is served, with
  ``cacheDuration`` and ``negativeCacheDuration`` (the ``local_ttl``), ``minimumWaitDuration``
  and an empty ``threatEntryMetadata``.
- ``POST /v4/threatMatches:find`` (the Lookup API): each URL (at most MAX_URLS) canonicalized
  as the v1 protocol does and decided by the engine's local sources (the lists, then the
  pattern, its domain and IP tables included; the cloud is not asked), mapped to a threat
  type by ``prefixes.threat_type``; ``{}`` when nothing matches.

Requests are JSON (``application/json``, the v4 field names) or protobuf
(``application/x-protobuf``); the answer is JSON, or protobuf with ``alt=proto``; ``key=``
is ignored. Errors are v4's ``{"error": {"code", "message", "status"}}``: 400
INVALID_ARGUMENT naming what is wrong for anything a client sent, 404/405 for a path or
method this API does not have.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from proxy.config import Config
from proxy.errors import ProtocolError
from proxy.sb import messages as m
from proxy.sb import prefixes as px
from proxy.sb.fast_json import full_hashes_json, full_hashes_request
from proxy.wire import protocol

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20
MAX_LIST_REQUESTS = 32
MAX_STATE = 256  # bytes of one client state
MAX_CLIENT_STATES = 32
MAX_PREFIXES = 1000  # hash prefixes in one fullHashes:find
MAX_URLS = 500  # URLs in one threatMatches:find (the v4 Lookup API's own limit)
ENCODED_KEPT = 2 * px.KEEP_SETS * len(px.THREAT_TYPES) * 2  # (old, new, list, rice)
UPDATE_WAIT = 300  # seconds: minimumWaitDuration of an update
JSON = "application/json"
PROTO = "application/x-protobuf"
PATHS = {
    "/v4/threatLists": ("GET", "threat_lists", None),
    "/v4/threatListUpdates:fetch": ("POST", "fetch", m.FetchThreatListUpdatesRequest),
    "/v4/fullHashes:find": ("POST", "full_hashes", m.FindFullHashesRequest),
    "/v4/threatMatches:find": ("POST", "threat_matches", m.FindThreatMatchesRequest),
}
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 500: "INTERNAL"}
_URL = m.ThreatEntryType["URL"]
_ANY = m.PlatformType["ANY_PLATFORM"]
_RAW, _RICE = m.CompressionType["RAW"], m.CompressionType["RICE"]
_SERVED = {m.ThreatType[t]: t for t in px.THREAT_TYPES}


class BadRequest(Exception):
    """Something the client sent: answered 400 with this message."""


def error_body(code: int, message: str) -> bytes:
    status = _STATUS.get(code, "INVALID_ARGUMENT")
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


def _name(enum: tuple[str, ...], number: int) -> str:
    return enum[number] if 0 <= number < len(enum) else str(number)


class SafeBrowsing:
    """The v4 API over an engine: ``engine_of()`` gives the engine (its patterns and lists
    are read once per request); ``cfg`` gives the cache durations (``local_ttl``) and the
    URL length bound (``max_url``)."""

    def __init__(self, engine_of: Callable[[], Any], cfg: Config | None = None,
                 cache: px.PrefixCache | None = None) -> None:
        cfg = cfg or Config()
        self.engine_of = engine_of
        self.cache = cache or px.PrefixCache()
        self.ttl = int(cfg.local_ttl)
        self.limits = protocol.Limits(max_url=cfg.max_url)
        self._lock = threading.Lock()
        self._encoded: OrderedDict[tuple[bytes, bytes, str, bool], tuple[list[Any], list[Any]]] = (
            OrderedDict())

    def prepare(self) -> None:
        """Build the current prefix set and its full updates (raw and Rice) now, so no request
        waits for them: seconds for a million entries, so call it from a thread after a
        pattern swap or a list change (requests build it themselves otherwise)."""
        current = self.cache.current(self.engine_of(), wait=True)
        for threat in px.THREAT_TYPES:
            for rice in (False, True):
                self._entry_sets(None, current, threat, rice)

    # ------------------------------------------------------------ the four methods

    def threat_lists(self) -> Any:
        out = m.ListThreatListsResponse()
        for t in px.THREAT_TYPES:
            out.threat_lists.add(threat_type=m.ThreatType[t], platform_type=_ANY,
                                 threat_entry_type=_URL)
        return out

    def fetch(self, request: Any) -> Any:
        asked = request.list_update_requests
        if not asked:
            raise BadRequest("listUpdateRequests is empty: name at least one threat list")
        if len(asked) > MAX_LIST_REQUESTS:
            raise BadRequest(f"{len(asked)} listUpdateRequests; the maximum is {MAX_LIST_REQUESTS}")
        for i, lu in enumerate(asked):
            self._check_list(i, lu)
        current = self.cache.current(self.engine_of())
        out = m.FetchThreatListUpdatesResponse()
        out.minimum_wait_duration.seconds = UPDATE_WAIT
        for lu in asked:
            threat = _SERVED[lu.threat_type]
            rice = _RICE in lu.constraints.supported_compressions
            answer = out.list_update_responses.add(
                threat_type=lu.threat_type, platform_type=lu.platform_type, threat_entry_type=_URL)
            new = current.lists[threat]
            old = self.cache.find(lu.state) if lu.state else None
            answer.response_type = m.ResponseType["FULL_UPDATE" if old is None else "PARTIAL_UPDATE"]
            additions, removals = self._entry_sets(old, current, threat, rice)
            answer.additions.extend(additions)
            answer.removals.extend(removals)
            answer.new_client_state = current.state
            answer.checksum.sha256 = new.checksum
        return out

    def full_hashes(self, request: Any) -> Any:
        info = request.threat_info
        states = request.client_states
        if len(states) > MAX_CLIENT_STATES or any(len(s) > MAX_STATE for s in states):
            raise BadRequest(f"clientStates: at most {MAX_CLIENT_STATES} of {MAX_STATE} bytes each")
        threats, platforms = self._threat_info(info)
        entries = info.threat_entries
        if len(entries) > MAX_PREFIXES:
            raise BadRequest(f"{len(entries)} threatEntries; the maximum is {MAX_PREFIXES}")
        for i, e in enumerate(entries):
            if not 4 <= len(e.hash) <= 32:
                raise BadRequest(f"threatInfo.threatEntries[{i}].hash has {len(e.hash)} bytes; "
                                 "a hash prefix has 4 to 32")
        current = self.cache.current(self.engine_of())
        out = m.FindFullHashesResponse()
        seen: set[tuple[int, bytes]] = set()
        for e in entries:
            for t in threats:
                for full in current.lists[_SERVED[t]].full_hashes(e.hash):
                    if (t, full) in seen:
                        continue
                    seen.add((t, full))
                    for p in platforms:
                        match = out.matches.add(threat_type=t, platform_type=p,
                                                threat_entry_type=_URL)
                        match.threat.hash = full
                        match.threat_entry_metadata.SetInParent()
                        match.cache_duration.seconds = self.ttl
        out.negative_cache_duration.seconds = self.ttl
        out.minimum_wait_duration.seconds = 0
        return out

    def threat_matches(self, request: Any) -> Any:
        info = request.threat_info
        threats, platforms = self._threat_info(info)
        entries = info.threat_entries
        if len(entries) > MAX_URLS:
            raise BadRequest(f"{len(entries)} threatEntries; the maximum is {MAX_URLS}")
        queries = []
        for i, e in enumerate(entries):
            if not e.url:
                raise BadRequest(f"threatInfo.threatEntries[{i}] has no url")
            try:
                queries.append(protocol.parse_url(e.url, self.limits))
            except ProtocolError as err:
                raise BadRequest(f"threatInfo.threatEntries[{i}].url: {err}") from None
        engine = self.engine_of()
        out = m.FindThreatMatchesResponse()
        for q in queries:
            answer = engine.web_local_one(q)
            if answer is None:
                continue
            threat = px.threat_type(answer.rating, answer.category)
            if threat is None or m.ThreatType[threat] not in threats:
                continue
            for p in platforms:
                match = out.matches.add(threat_type=m.ThreatType[threat], platform_type=p,
                                        threat_entry_type=_URL)
                match.threat.url = q.url
                match.threat_entry_metadata.SetInParent()
                match.cache_duration.seconds = self.ttl
        return out

    # ------------------------------------------------------------ HTTP, without HTTP

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes,
               content_type: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for one ``/v4/`` request; never raises."""
        try:
            return self._handle(method, path, query, body, content_type)
        except BadRequest as e:
            return 400, error_body(400, str(e)), JSON
        except Exception:
            logger.exception("Safe Browsing %s %s failed", method, path[:100])
            return 500, error_body(500, "internal error"), JSON

    def _handle(self, method: str, path: str, query: dict[str, str], body: bytes,
                content_type: str) -> tuple[int, bytes, str]:
        route = PATHS.get(path)
        if route is None:
            return 404, error_body(404, f"no such method: {path[:100]}"), JSON
        want, name, request_type = route
        if method.upper() not in (want, "HEAD" if want == "GET" else want):
            return 405, error_body(405, f"{path} takes {want}, not {method[:10]}"), JSON
        alt = query.get("alt", "json")
        if alt not in ("json", "proto"):
            raise BadRequest(f"alt={alt[:20]!r}: use json or proto")
        if request_type is None:
            answer = self.threat_lists()
        else:
            answer = getattr(self, name)(self._decode(request_type, body, content_type))
        if alt == "proto":
            return 200, answer.SerializeToString(), PROTO
        if request_type is m.FindFullHashesRequest:
            fast = full_hashes_json(answer)  # json_format's walk is most of the method's time
            if fast is not None:
                return 200, fast, JSON
        return 200, json.dumps(json_format.MessageToDict(answer), separators=(",", ":")).encode(), JSON

    def _decode(self, request_type: Any, body: bytes, content_type: str) -> Any:
        if len(body) > MAX_BODY:
            raise BadRequest(f"request body has {len(body)} bytes; the maximum is {MAX_BODY}")
        kind = content_type.split(";", 1)[0].strip().lower()
        message = request_type()
        if kind in (PROTO, "application/protobuf", "application/octet-stream"):
            try:
                message.ParseFromString(body)
            except Exception as e:  # DecodeError, or a nesting too deep
                raise BadRequest(f"request body is not a valid protobuf message: {e}") from None
            return message
        if request_type is m.FindFullHashesRequest:
            fast = full_hashes_request(body)  # the common shape, without json_format's walk
            if fast is not None:
                return fast
        try:
            text = body.decode("utf-8") if body.strip() else "{}"
            json_format.Parse(text, message)
        except Exception as e:  # ParseError, UnicodeDecodeError, RecursionError
            raise BadRequest(f"request body is not a valid v4 JSON message: {str(e)[:300]}") from None
        return message

    # ------------------------------------------------------------ checks and encodings

    def _check_list(self, i: int, lu: Any) -> None:
        where = f"listUpdateRequests[{i}]"
        if lu.threat_type not in _SERVED:
            raise BadRequest(f"{where}: threat list {_name(m.THREAT_TYPES, lu.threat_type)} is not "
                             f"served; GET /v4/threatLists lists {', '.join(px.THREAT_TYPES)}")
        if lu.platform_type == 0 or lu.platform_type >= len(m.PLATFORM_TYPES):
            raise BadRequest(f"{where}: platformType is missing or unknown")
        if lu.threat_entry_type not in (0, _URL):
            raise BadRequest(f"{where}: threatEntryType "
                             f"{_name(m.THREAT_ENTRY_TYPES, lu.threat_entry_type)} is not served (URL is)")
        if len(lu.state) > MAX_STATE:
            raise BadRequest(f"{where}: state has {len(lu.state)} bytes; the maximum is {MAX_STATE}")
        c = lu.constraints
        if c.max_update_entries < 0 or c.max_database_entries < 0:
            raise BadRequest(f"{where}: maxUpdateEntries and maxDatabaseEntries cannot be negative")
        if any(x not in (_RAW, _RICE) for x in c.supported_compressions):
            raise BadRequest(f"{where}: supportedCompressions holds an unknown compression")

    def _threat_info(self, info: Any) -> tuple[list[int], list[int]]:
        """The served threat types and the platforms asked (ANY_PLATFORM when none is)."""
        if not info.threat_types:
            raise BadRequest("threatInfo.threatTypes is empty")
        if any(not 0 <= t < len(m.THREAT_TYPES) for t in info.threat_types):
            raise BadRequest("threatInfo.threatTypes holds an unknown threat type")
        if any(not 0 <= p < len(m.PLATFORM_TYPES) for p in info.platform_types):
            raise BadRequest("threatInfo.platformTypes holds an unknown platform")
        if any(not 0 <= e < len(m.THREAT_ENTRY_TYPES) for e in info.threat_entry_types):
            raise BadRequest("threatInfo.threatEntryTypes holds an unknown entry type")
        threats = sorted({t for t in info.threat_types if t in _SERVED})
        platforms = sorted({p for p in info.platform_types if p != 0}) or [_ANY]
        return threats, platforms

    def _entry_sets(self, old: px.PrefixSet | None, new: px.PrefixSet, threat: str,
                    rice: bool) -> tuple[list[Any], list[Any]]:
        """The additions and removals taking ``old`` (None: nothing) to ``new``, encoded once
        per pair and compression and shared (Rice-encoding a big list takes seconds)."""
        key = (old.id if old is not None else b"", new.id, threat, rice)
        with self._lock:
            found = self._encoded.get(key)
        if found is not None:
            return found
        answer = m.ListUpdateResponse()
        if old is None:
            self._additions(answer, new.lists[threat].prefixes, rice)
        elif old.id != new.id:
            d = self.cache.diff(old, new, threat)
            self._removals(answer, d.removals, rice)
            self._additions(answer, d.additions, rice)
        found = (list(answer.additions), list(answer.removals))
        with self._lock:
            self._encoded[key] = found
            while len(self._encoded) > ENCODED_KEPT:
                self._encoded.popitem(last=False)
        return found

    @staticmethod
    def _additions(answer: Any, prefixes: list[bytes], rice: bool) -> None:
        by_size: dict[int, list[bytes]] = {}
        for p in prefixes:
            by_size.setdefault(len(p), []).append(p)
        for size in sorted(by_size):
            group = by_size[size]
            entry = answer.additions.add()
            if rice and size == px.PREFIX_SIZE:
                entry.compression_type = _RICE
                first, k, count, data = px.rice_encode(px.prefix_values(group))
                entry.rice_hashes.first_value = first
                entry.rice_hashes.rice_parameter = k
                entry.rice_hashes.num_entries = count
                entry.rice_hashes.encoded_data = data
            else:
                entry.compression_type = _RAW
                entry.raw_hashes.prefix_size = size
                entry.raw_hashes.raw_hashes = b"".join(sorted(group))

    @staticmethod
    def _removals(answer: Any, indices: list[int], rice: bool) -> None:
        if not indices:
            return
        entry = answer.removals.add()
        if rice:
            entry.compression_type = _RICE
            first, k, count, data = px.rice_encode(indices)
            entry.rice_indices.first_value = first
            entry.rice_indices.rice_parameter = k
            entry.rice_indices.num_entries = count
            entry.rice_indices.encoded_data = data
        else:
            entry.compression_type = _RAW
            entry.raw_indices.indices.extend(indices)
