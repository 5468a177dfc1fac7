"""A fast reading of the common ``fullHashes:find`` JSON request and a fast writing of its
answer, beside protobuf's ``json_format``.

Why: ``json_format.Parse`` walks every field in pure Python, and for a batch of prefixes it
is most of the method's time (about 85 % of a 100-prefix request in ``bench/bench_sb.py``).
Clients send one plain shape: a client id and version, client states, and threat info with
enum names and base64 hashes. That shape is read here with ``json.loads`` and filled in
through protobuf's C setters. Anything else (another field, a number for an enum, base64
without padding, a wrong type) returns None and takes ``json_format``, which also words the
error, so the answer to an odd request is exactly the plain path's. The answer is written
from the response message's fields as ``MessageToDict`` would write them.
``tests/proxy/sb/test_fast_json.py`` holds the two equal.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from proxy.sb import messages as m

_CLIENT = {"clientId": "client_id", "clientVersion": "client_version"}
_ENUM_LISTS = {"threatTypes": ("threat_types", m.ThreatType),
               "platformTypes": ("platform_types", m.PlatformType),
               "threatEntryTypes": ("threat_entry_types", m.ThreatEntryType)}


def full_hashes_request(body: bytes) -> Any | None:
    """The FindFullHashesRequest ``body`` holds, or None when it is not the plain shape."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not set(doc) <= {"client", "clientStates", "threatInfo"}:
        return None
    out = m.FindFullHashesRequest()
    client = doc.get("client", {})
    if not isinstance(client, dict) or not set(client) <= set(_CLIENT):
        return None
    for key, name in _CLIENT.items():
        if key in client:
            if not isinstance(client[key], str):
                return None
            setattr(out.client, name, client[key])
    if "client" in doc:
        out.client.SetInParent()
    states = doc.get("clientStates", [])
    if not isinstance(states, list):
        return None
    decoded = [_b64(s) for s in states]
    if any(d is None for d in decoded):
        return None
    out.client_states.extend(d for d in decoded if d is not None)
    info = doc.get("threatInfo")
    if info is None:
        return out
    if not isinstance(info, dict) or not set(info) <= {*_ENUM_LISTS, "threatEntries"}:
        return None
    out.threat_info.SetInParent()
    for key, (name, values) in _ENUM_LISTS.items():
        names = info.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n in values for n in names):
            return None
        getattr(out.threat_info, name).extend(values[n] for n in names)
    entries = info.get("threatEntries", [])
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"hash"}:
            return None
        raw = _b64(entry["hash"])
        if raw is None:
            return None
        out.threat_info.threat_entries.add(hash=raw)
    return out


def _b64(text: object) -> bytes | None:
    if not isinstance(text, str) or len(text) % 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


_THREAT_NAMES = {v: k for k, v in m.ThreatType.items()}
_PLATFORM_NAMES = {v: k for k, v in m.PlatformType.items()}
_ENTRY_NAMES = {v: k for k, v in m.ThreatEntryType.items()}


def full_hashes_json(answer: Any) -> bytes | None:
    """A FindFullHashesResponse as ``json_format.MessageToDict`` writes it (the same
    object; keys in field order), or None for one with what the api does not put there
    (metadata entries, durations with nanos)."""
    matches = []
    for match in answer.matches:
        meta = match.threat_entry_metadata
        if meta.entries or match.cache_duration.nanos or match.threat.url:
            return None
        one: dict[str, Any] = {}
        if match.threat_type:
            one["threatType"] = _THREAT_NAMES[match.threat_type]
        if match.platform_type:
            one["platformType"] = _PLATFORM_NAMES[match.platform_type]
        if match.HasField("threat"):
            digest = match.threat.hash
            one["threat"] = {"hash": base64.b64encode(digest).decode()} if digest else {}
        if match.HasField("threat_entry_metadata"):
            one["threatEntryMetadata"] = {}
        if match.HasField("cache_duration"):
            one["cacheDuration"] = f"{match.cache_duration.seconds}s"
        if match.threat_entry_type:
            one["threatEntryType"] = _ENTRY_NAMES[match.threat_entry_type]
        matches.append(one)
    out: dict[str, Any] = {"matches": matches} if matches else {}
    for field, key in (("minimum_wait_duration", "minimumWaitDuration"),
                       ("negative_cache_duration", "negativeCacheDuration")):
        if answer.HasField(field):
            duration = getattr(answer, field)
            if duration.nanos:
                return None
            out[key] = f"{duration.seconds}s"
    return json.dumps(out, separators=(",", ":")).encode()
