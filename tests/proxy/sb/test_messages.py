"""The v4 messages read and written as v4 clients send them: lowerCamelCase JSON, bytes in
base64, durations as seconds, the same protobuf wire form."""

from __future__ import annotations

import json

from google.protobuf import json_format

from proxy.sb import messages as m


def test_a_fetch_request_from_a_v4_client_parses() -> None:
    doc = {"client": {"clientId": "c", "clientVersion": "1"},
           "listUpdateRequests": [{"threatType": "MALWARE", "platformType": "ANY_PLATFORM",
                                   "threatEntryType": "URL", "state": "",
                                   "constraints": {"maxUpdateEntries": 2048,
                                                   "supportedCompressions": ["RAW", "RICE"]}}]}
    req = json_format.Parse(json.dumps(doc), m.FetchThreatListUpdatesRequest())
    lu = req.list_update_requests[0]
    assert lu.threat_type == m.ThreatType["MALWARE"]
    assert list(lu.constraints.supported_compressions) == [m.CompressionType["RAW"],
                                                            m.CompressionType["RICE"]]
    assert m.FetchThreatListUpdatesRequest.FromString(req.SerializeToString()) == req


def test_a_response_renders_with_v4_field_names_and_durations() -> None:
    r = m.FindFullHashesResponse()
    match = r.matches.add(threat_type=m.ThreatType["MALWARE"],
                          platform_type=m.PlatformType["ANY_PLATFORM"],
                          threat_entry_type=m.ThreatEntryType["URL"])
    match.threat.hash = b"\x01\x02\x03\x04"
    match.threat_entry_metadata.SetInParent()
    match.cache_duration.seconds = 300
    r.negative_cache_duration.seconds = 300
    doc = json_format.MessageToDict(r)
    assert doc == {"matches": [{"threatType": "MALWARE", "platformType": "ANY_PLATFORM",
                                "threatEntryType": "URL", "threat": {"hash": "AQIDBA=="},
                                "threatEntryMetadata": {}, "cacheDuration": "300s"}],
                   "negativeCacheDuration": "300s"}


def test_update_responses_carry_the_response_type_and_entry_sets() -> None:
    r = m.FetchThreatListUpdatesResponse()
    lu = r.list_update_responses.add(response_type=m.ResponseType["PARTIAL_UPDATE"])
    lu.removals.add(compression_type=m.CompressionType["RAW"]).raw_indices.indices.extend([0, 3])
    lu.additions.add(compression_type=m.CompressionType["RICE"]).rice_hashes.first_value = 9
    doc = json_format.MessageToDict(r)["listUpdateResponses"][0]
    assert doc["responseType"] == "PARTIAL_UPDATE"
    assert doc["removals"] == [{"compressionType": "RAW", "rawIndices": {"indices": [0, 3]}}]
    assert doc["additions"] == [{"compressionType": "RICE", "riceHashes": {"firstValue": "9"}}]
