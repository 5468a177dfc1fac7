"""The Safe Browsing v4 messages this facade speaks, written from the published v4 reference
(``safebrowsing.proto``: same message names, field names and numbers, so the protobuf wire
form and the JSON form, lowerCamelCase through ``google.protobuf.json_format``, are the ones
v4 clients send and read).

Built at import from a ``FileDescriptorProto`` in a private descriptor pool: no protoc step,
no generated files. Only what this API needs is defined (no ChromeClientInfo, no
ThreatHit): a client that sends a field not defined here gets a 400 naming it.

Classes: ``ClientInfo``, ``ThreatInfo``, ``ThreatEntry``, ``ThreatEntrySet``, ``RawHashes``,
``RawIndices``, ``RiceDeltaEncoding``, ``ThreatEntryMetadata``, ``ThreatMatch``,
``Checksum``, ``ThreatListDescriptor``, ``ListThreatListsResponse``,
``FetchThreatListUpdatesRequest`` (``.ListUpdateRequest``, ``.ListUpdateRequest.Constraints``),
``FetchThreatListUpdatesResponse`` (``.ListUpdateResponse`` with its ``ResponseType``),
``FindFullHashesRequest``/``Response``, ``FindThreatMatchesRequest``/``Response``. Enums
(name -> number dicts and the enum descriptors' values): ``ThreatType``, ``PlatformType``,
``ThreatEntryType``, ``CompressionType``, ``ResponseType``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory

PACKAGE = "safebrowsing.v4"

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
}

THREAT_TYPES = (
    "THREAT_TYPE_UNSPECIFIED", "MALWARE", "SOCIAL_ENGINEERING", "UNWANTED_SOFTWARE",
    "POTENTIALLY_HARMFUL_APPLICATION", "SOCIAL_ENGINEERING_INTERNAL", "API_ABUSE",
    "MALICIOUS_BINARY", "CSD_WHITELIST", "CSD_DOWNLOAD_WHITELIST", "CLIENT_INCIDENT",
    "CLIENT_INCIDENT_WHITELIST", "APK_MALWARE_OFFLINE", "SUBRESOURCE_FILTER", "SUSPICIOUS",
    "TRICK_TO_BILL", "HIGH_CONFIDENCE_ALLOWLIST", "ACCURACY_TIPS",
)
PLATFORM_TYPES = (
    "PLATFORM_TYPE_UNSPECIFIED", "WINDOWS", "LINUX", "ANDROID", "OSX", "IOS", "ANY_PLATFORM",
    "ALL_PLATFORMS", "CHROME",
)
THREAT_ENTRY_TYPES = (
    "THREAT_ENTRY_TYPE_UNSPECIFIED", "URL", "EXECUTABLE", "IP_RANGE", "CHROME_EXTENSION",
    "FILENAME", "CERT",
)
COMPRESSION_TYPES = ("COMPRESSION_TYPE_UNSPECIFIED", "RAW", "RICE")
RESPONSE_TYPES = ("RESPONSE_TYPE_UNSPECIFIED", "PARTIAL_UPDATE", "FULL_UPDATE")

# message name -> fields (name, number, type, repeated); a type not in _TYPES names a message
# or enum of this file (or google.protobuf.Duration). Nested messages are "Outer.Inner".
_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "ClientInfo": [("client_id", 1, "string", False), ("client_version", 2, "string", False)],
    "Checksum": [("sha256", 1, "bytes", False)],
    "ThreatEntry": [("hash", 1, "bytes", False), ("url", 2, "string", False),
                    ("digest", 3, "bytes", False)],
    "RawIndices": [("indices", 1, "int32", True)],
    "RawHashes": [("prefix_size", 1, "int32", False), ("raw_hashes", 2, "bytes", False)],
    "RiceDeltaEncoding": [("first_value", 1, "int64", False), ("rice_parameter", 2, "int32", False),
                          ("num_entries", 3, "int32", False), ("encoded_data", 4, "bytes", False)],
    "ThreatEntrySet": [("compression_type", 1, "CompressionType", False),
                       ("raw_hashes", 2, "RawHashes", False), ("raw_indices", 3, "RawIndices", False),
                       ("rice_hashes", 4, "RiceDeltaEncoding", False),
                       ("rice_indices", 5, "RiceDeltaEncoding", False)],
    "ThreatEntryMetadata.MetadataEntry": [("key", 1, "bytes", False), ("value", 2, "bytes", False)],
    "ThreatEntryMetadata": [("entries", 1, "ThreatEntryMetadata.MetadataEntry", True)],
    "ThreatInfo": [("threat_types", 1, "ThreatType", True), ("platform_types", 2, "PlatformType", True),
                   ("threat_entry_types", 4, "ThreatEntryType", True),
                   ("threat_entries", 3, "ThreatEntry", True)],
    "ThreatMatch": [("threat_type", 1, "ThreatType", False), ("platform_type", 2, "PlatformType", False),
                    ("threat_entry_type", 6, "ThreatEntryType", False), ("threat", 3, "ThreatEntry", False),
                    ("threat_entry_metadata", 4, "ThreatEntryMetadata", False),
                    ("cache_duration", 5, ".google.protobuf.Duration", False)],
    "FindThreatMatchesRequest": [("client", 1, "ClientInfo", False), ("threat_info", 2, "ThreatInfo", False)],
    "FindThreatMatchesResponse": [("matches", 1, "ThreatMatch", True)],
    "FetchThreatListUpdatesRequest.ListUpdateRequest.Constraints": [
        ("max_update_entries", 1, "int32", False), ("max_database_entries", 2, "int32", False),
        ("region", 3, "string", False), ("supported_compressions", 4, "CompressionType", True),
        ("language", 5, "string", False), ("device_location", 6, "string", False)],
    "FetchThreatListUpdatesRequest.ListUpdateRequest": [
        ("threat_type", 1, "ThreatType", False), ("platform_type", 2, "PlatformType", False),
        ("threat_entry_type", 5, "ThreatEntryType", False), ("state", 3, "bytes", False),
        ("constraints", 4, "FetchThreatListUpdatesRequest.ListUpdateRequest.Constraints", False)],
    "FetchThreatListUpdatesRequest": [
        ("client", 1, "ClientInfo", False),
        ("list_update_requests", 3, "FetchThreatListUpdatesRequest.ListUpdateRequest", True)],
    "FetchThreatListUpdatesResponse.ListUpdateResponse": [
        ("threat_type", 1, "ThreatType", False), ("threat_entry_type", 2, "ThreatEntryType", False),
        ("platform_type", 3, "PlatformType", False),
        ("response_type", 4, "FetchThreatListUpdatesResponse.ListUpdateResponse.ResponseType", False),
        ("additions", 5, "ThreatEntrySet", True), ("removals", 6, "ThreatEntrySet", True),
        ("new_client_state", 7, "bytes", False), ("checksum", 8, "Checksum", False)],
    "FetchThreatListUpdatesResponse": [
        ("list_update_responses", 1, "FetchThreatListUpdatesResponse.ListUpdateResponse", True),
        ("minimum_wait_duration", 2, ".google.protobuf.Duration", False)],
    "FindFullHashesRequest": [("client", 1, "ClientInfo", False), ("client_states", 2, "bytes", True),
                              ("threat_info", 3, "ThreatInfo", False)],
    "FindFullHashesResponse": [("matches", 1, "ThreatMatch", True),
                               ("minimum_wait_duration", 2, ".google.protobuf.Duration", False),
                               ("negative_cache_duration", 3, ".google.protobuf.Duration", False)],
    "ThreatListDescriptor": [("threat_type", 1, "ThreatType", False),
                             ("platform_type", 2, "PlatformType", False),
                             ("threat_entry_type", 3, "ThreatEntryType", False)],
    "ListThreatListsResponse": [("threat_lists", 1, "ThreatListDescriptor", True)],
}
_ENUMS = {
    "ThreatType": THREAT_TYPES, "PlatformType": PLATFORM_TYPES,
    "ThreatEntryType": THREAT_ENTRY_TYPES, "CompressionType": COMPRESSION_TYPES,
    "FetchThreatListUpdatesResponse.ListUpdateResponse.ResponseType": RESPONSE_TYPES,
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="rampart/safebrowsing_v4.proto", package=PACKAGE,
                                             syntax="proto3")
    fdp.dependency.append("google/protobuf/duration.proto")
    protos: dict[str, Any] = {}
    for name in _MESSAGES:  # outer messages come after their nested ones in the table
        outer, _, inner = name.rpartition(".")
        protos[name] = None
    for name in sorted(_MESSAGES, key=lambda n: n.count(".")):
        outer, _, inner = name.rpartition(".")
        parent = protos[outer].nested_type if outer else fdp.message_type
        protos[name] = parent.add(name=inner)
    for name, values in _ENUMS.items():
        outer, _, inner = name.rpartition(".")
        parent = protos[outer].enum_type if outer else fdp.enum_type
        enum = parent.add(name=inner)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for name, fields in _MESSAGES.items():
        for field, number, kind, repeated in fields:
            f = protos[name].field.add(name=field, number=number,
                                       label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if kind in _TYPES:
                f.type = _TYPES[kind]
            else:
                f.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
                f.type_name = kind if kind.startswith(".") else f".{PACKAGE}.{kind}"
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.Add(descriptor_pb2.FileDescriptorProto.FromString(duration_pb2.DESCRIPTOR.serialized_pb))
_pool.Add(_file())


def _cls(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ClientInfo = _cls("ClientInfo")
Checksum = _cls("Checksum")
ThreatEntry = _cls("ThreatEntry")
RawIndices = _cls("RawIndices")
RawHashes = _cls("RawHashes")
RiceDeltaEncoding = _cls("RiceDeltaEncoding")
ThreatEntrySet = _cls("ThreatEntrySet")
ThreatEntryMetadata = _cls("ThreatEntryMetadata")
ThreatInfo = _cls("ThreatInfo")
ThreatMatch = _cls("ThreatMatch")
FindThreatMatchesRequest = _cls("FindThreatMatchesRequest")
FindThreatMatchesResponse = _cls("FindThreatMatchesResponse")
FetchThreatListUpdatesRequest = _cls("FetchThreatListUpdatesRequest")
FetchThreatListUpdatesResponse = _cls("FetchThreatListUpdatesResponse")
ListUpdateResponse = FetchThreatListUpdatesResponse.ListUpdateResponse
FindFullHashesRequest = _cls("FindFullHashesRequest")
FindFullHashesResponse = _cls("FindFullHashesResponse")
ThreatListDescriptor = _cls("ThreatListDescriptor")
ListThreatListsResponse = _cls("ListThreatListsResponse")

ThreatType = {n: i for i, n in enumerate(THREAT_TYPES)}
PlatformType = {n: i for i, n in enumerate(PLATFORM_TYPES)}
ThreatEntryType = {n: i for i, n in enumerate(THREAT_ENTRY_TYPES)}
CompressionType = {n: i for i, n in enumerate(COMPRESSION_TYPES)}
ResponseType = {n: i for i, n in enumerate(RESPONSE_TYPES)}
