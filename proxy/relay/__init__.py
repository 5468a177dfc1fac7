"""Talking to the cloud: a pooled, verifying HTTP/1.1 client (``http_client``, reading
responses with ``http_response``) and the relay that batches, de-duplicates and fails
over between cloud endpoints (``relay``; each endpoint's circuit breaker in ``breaker``,
what goes upstream and through what in ``upstream``).

May import: the bottom layer and ``proxy.wire``.
"""
