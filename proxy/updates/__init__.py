"""The pattern life cycle across machines: Ed25519 signing, publishing builds into a
signed update source, planning the smallest fetch from it, the appliance's versioned
pattern store, and the updater that fetches, verifies, merges and installs.

May import: the bottom layer, ``proxy.wire``, ``proxy.patterns`` and
``proxy.relay.http_client`` (to fetch).
"""
