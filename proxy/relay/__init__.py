"""Talking to the cloud: a pooled, verifying HTTP/1.1 client and the relay that
batches, de-duplicates and fails over between cloud endpoints.

May import: the bottom layer and ``proxy.wire``.
"""
