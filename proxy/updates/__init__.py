"""The pattern life cycle across machines: Ed25519 signing, publishing builds into a
signed update source (its manifest: ``source``; its layout and plan: ``repo``), the
appliance's versioned pattern store and the local manifest of each version, and the
updater that fetches, verifies, merges (``assemble``) and installs.

May import: the bottom layer, ``proxy.wire``, ``proxy.patterns`` and
``proxy.relay.http_client`` (to fetch).
"""
