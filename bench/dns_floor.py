"""The floor of a Python UDP DNS server, for bench/bench_dns.py ``--floor``: run by hand.

    python3 bench/dns_floor.py uvloop PORT      # an asyncio (uvloop) datagram protocol
    python3 bench/dns_floor.py blocking PORT    # a plain recvfrom/sendto loop

Each answers every query NXDOMAIN by turning its header into a response's (QR, AA, RCODE 3)
and sending the rest back as it came: no name read, no lookup, no log, nothing counted. What
such a responder costs per query is what the DNS door's transport costs before it answers
anything, so its rate against rbldnsd's in the same run is the most any Python answer path on
that transport can reach on one core.
"""

from __future__ import annotations

import asyncio
import socket
import sys


def _nxdomain(query: bytes) -> bytes:
    return query[:2] + bytes([query[2] | 0x84, (query[3] & 0xF0) | 3]) + query[4:]


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12:
            self.transport.sendto(_nxdomain(data), addr)


async def _uvloop(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


def _blocking(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    recv, send = sock.recvfrom, sock.sendto
    while True:
        data, addr = recv(4096)
        if len(data) >= 12:
            send(_nxdomain(data), addr)


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "uvloop":
        import uvloop

        uvloop.run(_uvloop(port))
    elif kind == "blocking":
        _blocking(port)
    else:
        sys.exit(f"dns_floor: {kind!r}: uvloop or blocking")


if __name__ == "__main__":
    main()
