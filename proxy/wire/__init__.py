"""The wire: the v1 protocol (docs/protocol.md), its requests parsed (``protocol``) and its
replies rendered and read back from the cloud (``replies``), the one table of its paths
and methods (``paths``), the HTTP request and response values both doors share
(``http``), and URL canonicalization (``urls``, IP hosts in ``ip_hosts``). Bytes in, typed
values out, and back.

May import: the bottom layer (``proxy.errors``, ``proxy.model``, ``proxy.config``).
"""
