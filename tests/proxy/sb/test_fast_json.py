"""The fast reading of fullHashes:find JSON requests equals protobuf's json_format, and
gives way to it for every shape it does not read itself."""

from __future__ import annotations

import base64
import json
import random

import pytest
from google.protobuf import json_format

from proxy.sb import messages as m
from proxy.sb.fast_json import full_hashes_json, full_hashes_request

THREATS = ["MALWARE", "SOCIAL_ENGINEERING", "UNWANTED_SOFTWARE", "POTENTIALLY_HARMFUL_APPLICATION"]


def plain(doc: object) -> object:
    out = m.FindFullHashesRequest()
    json_format.Parse(json.dumps(doc), out)
    return out


def request(rng: random.Random) -> dict[str, object]:
    doc: dict[str, object] = {}
    if rng.random() < 0.8:
        client = {}
        if rng.random() < 0.9:
            client["clientId"] = rng.choice(["rampart-test", "", "ä-client"])
        if rng.random() < 0.9:
            client["clientVersion"] = "1.2.3"
        doc["client"] = client
    if rng.random() < 0.7:
        doc["clientStates"] = [base64.b64encode(rng.randbytes(rng.randrange(0, 40))).decode()
                               for _ in range(rng.randrange(0, 3))]
    if rng.random() < 0.95:
        info: dict[str, object] = {}
        if rng.random() < 0.9:
            info["threatTypes"] = rng.sample(THREATS, rng.randrange(0, 4))
        if rng.random() < 0.9:
            info["platformTypes"] = rng.sample(["ANY_PLATFORM", "WINDOWS", "LINUX"], rng.randrange(0, 3))
        if rng.random() < 0.9:
            info["threatEntryTypes"] = ["URL"]
        info["threatEntries"] = [{"hash": base64.b64encode(rng.randbytes(rng.choice([4, 5, 32]))).decode()}
                                 for _ in range(rng.randrange(0, 120))]
        doc["threatInfo"] = info
    return doc


def test_the_fast_reading_equals_json_format_on_the_common_shape() -> None:
    rng = random.Random(7)
    for _ in range(500):
        doc = request(rng)
        fast = full_hashes_request(json.dumps(doc).encode())
        assert fast is not None, doc
        assert fast == plain(doc), doc


@pytest.mark.parametrize("doc", [
    {"client": {"clientId": "x"}, "apiClient": {}},  # a field the fast reading does not know
    {"threatInfo": {"threatTypes": [1]}},  # an enum as a number
    {"threatInfo": {"threatTypes": ["NOT_A_THREAT"]}},
    {"threatInfo": {"threatEntries": [{"hash": "AAAA", "url": "http://x/"}]}},
    {"threatInfo": {"threatEntries": [{"hash": "AAA"}]}},  # base64 without its padding
    {"threatInfo": {"threatEntries": [{"hash": "@@@@"}]}},
    {"clientStates": "AAAA"},
    ["not", "an", "object"],
])
def test_other_shapes_take_the_plain_path(doc: object) -> None:
    assert full_hashes_request(json.dumps(doc).encode()) is None


def test_not_json_takes_the_plain_path() -> None:
    assert full_hashes_request(b"{not json") is None
    assert full_hashes_request(b"\xff\xfe") is None


def test_the_fast_answer_is_what_message_to_dict_writes() -> None:
    rng = random.Random(8)
    for _ in range(300):
        out = m.FindFullHashesResponse()
        for _ in range(rng.randrange(0, 20)):
            match = out.matches.add(threat_type=rng.choice([1, 2, 3]),
                                    platform_type=rng.choice([0, 1, 8]),
                                    threat_entry_type=rng.choice([0, 1]))
            if rng.random() < 0.95:
                match.threat.hash = rng.randbytes(32)
            if rng.random() < 0.9:
                match.threat_entry_metadata.SetInParent()
            if rng.random() < 0.9:
                match.cache_duration.seconds = rng.choice([0, 300, 3600])
        if rng.random() < 0.9:
            out.negative_cache_duration.seconds = 300
        if rng.random() < 0.9:
            out.minimum_wait_duration.seconds = 0
        fast = full_hashes_json(out)
        assert fast is not None
        assert json.loads(fast) == json_format.MessageToDict(out)


def test_an_answer_it_does_not_write_takes_the_plain_path() -> None:
    out = m.FindFullHashesResponse()
    out.matches.add(threat_type=1).threat_entry_metadata.entries.add(key=b"k", value=b"v")
    assert full_hashes_json(out) is None
    nanos = m.FindFullHashesResponse()
    nanos.minimum_wait_duration.nanos = 5
    assert full_hashes_json(nanos) is None
