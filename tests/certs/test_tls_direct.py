"""``DirectSSLObject``, the server contexts' TLS object: its C ``read``, ``write`` and
``pending`` behave as ``ssl.SSLObject``'s forwarding methods over a real handshake and
data both ways, ``SSLWantReadError`` included."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from certs import CA, client_context, server_context
from certs.tls import DirectSSLObject


def pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    dst.write(src.read())


def talk(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> list[object]:
    """A handshake and a few records each way over memory BIOs; what the server saw."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        pump(c_out, s_in)
        pump(s_out, c_in)
    seen: list[object] = [type(server).__name__]
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)  # nothing sent yet
    seen.append(server.pending())
    for message in (b"GET / HTTP/1.1\r\n\r\n", b"x" * 20000):
        client.write(message)
        pump(c_out, s_in)
        got = b""
        while len(got) < len(message):
            got += server.read(4096)
        seen += [got == message, server.pending()]
        buffer = bytearray(8)
        client.write(b"12345678")
        pump(c_out, s_in)
        seen += [server.read(8, buffer), bytes(buffer)]
        seen.append(server.write(b"answer " + message[:10]))
        pump(s_out, c_in)
        seen.append(client.read(1024))
    return seen


def test_the_direct_object_behaves_as_ssl_s_own(tmp_path: Path) -> None:
    ca = CA.ensure(tmp_path / "data")
    direct = server_context(ca, ["localhost"], state_dir=tmp_path / "state")
    assert direct.sslobject_class is DirectSSLObject
    plain = server_context(ca, ["localhost"], state_dir=tmp_path / "state")
    plain.sslobject_class = ssl.SSLObject
    client = client_context(str(tmp_path / "data" / "ca.pem"))
    got, want = talk(direct, client), talk(plain, client)
    assert got[0] == "DirectSSLObject" and want[0] == "SSLObject"
    assert got[1:] == want[1:]
    made = direct.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    for name in ("read", "write", "pending"):  # the C object's own: no Python frame between
        assert getattr(made, name).__self__ is made._sslobj  # type: ignore[attr-defined]
