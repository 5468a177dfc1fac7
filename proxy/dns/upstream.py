"""An upstream DNSBL zone the DNS door asks about names nothing here knows
(``dns_upstream_zone``, ``dns_upstream_server``), with dnspython."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from proxy.dns import wire
from proxy.errors import ConfigError


class Upstream:
    """An upstream DNSBL zone (``dns_upstream_zone``) asked with dnspython about names nothing
    here knows: the same labels in front of its zone, through ``dns_upstream_server`` or the
    system's resolvers. Only A records in 127.0.0.0/8 count as listed: a resolver that
    answers NXDOMAIN with an address of its own must not list everyone."""

    def __init__(self, zone: str, server: str, timeout: float) -> None:
        try:
            self.zone = dns.name.from_text(zone)
        except dns.exception.DNSException as e:
            raise ConfigError(f"config key 'dns_upstream_zone': {zone!r}: {e}") from None
        self.server = _server(server) if server else None
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:  # made at first use: the system's may lack a resolv.conf
            resolver = dns.asyncresolver.Resolver(configure=self.server is None)
            if self.server is not None:
                resolver.nameservers, resolver.port = [self.server[0]], self.server[1]
            resolver.cache = None
            self._resolver = resolver
        return self._resolver

    async def ask(self, front: Sequence[bytes], qtype: int) -> tuple[int, list[tuple[int, int, bytes]]]:
        """(rcode, [(type, ttl, rdata)]) for ``front`` in the upstream zone; A for any type but
        TXT (other types answer NOERROR with no records when listed)."""
        name = dns.name.Name([*front, *self.zone.labels])
        rdtype = wire.TXT if qtype == wire.TXT else wire.A
        try:
            got = await self.resolver().resolve(
                name, dns.rdatatype.RdataType.make(rdtype), raise_on_no_answer=False,
                lifetime=self.timeout, search=False)
        except dns.resolver.NXDOMAIN:
            return wire.NXDOMAIN, []
        except dns.exception.DNSException:  # timeouts, no servers, SERVFAIL upstream
            return wire.SERVFAIL, []
        rrset = got.rrset
        if rrset is None:
            return (wire.NXDOMAIN if rdtype == wire.A else wire.NOERROR), []
        if rdtype == wire.TXT:
            return wire.NOERROR, [(wire.TXT, rrset.ttl, b"".join(
                bytes([len(s)]) + s for s in rd.strings)) for rd in rrset]
        codes = [ipaddress.IPv4Address(rd.address) for rd in rrset]
        listed = [ip.packed for ip in codes if ip in _LOOPBACK_8]
        if not listed:
            return wire.NXDOMAIN, []
        if qtype not in (wire.A, wire.ANY):
            return wire.NOERROR, []
        return wire.NOERROR, [(wire.A, rrset.ttl, code) for code in listed]


_LOOPBACK_8 = ipaddress.IPv4Network("127.0.0.0/8")


def _server(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``."""
    host, port = text, "53"
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("53" if closed and not rest else "")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
        return str(ipaddress.ip_address(host)), number
    except ValueError:
        raise ConfigError(f"config key 'dns_upstream_server': {text!r} is not IP[:PORT]") from None
