"""The cross-field and form checks of a Config (``validate``), and the value sets they
check against; ``proxy.config`` declares the keys and re-exports these names. Every
refusal is a ConfigError naming the key."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from proxy.errors import ConfigError
from proxy.forms import (
    endpoint_ok,
    host_pattern_ok,
    loopback,
    redis_url_ok,
    source_ok,
    syslog_address,
)
from proxy.model import Allowed

if TYPE_CHECKING:
    from proxy.config import Config

LOG_LEVELS = ("debug", "info", "warning", "error")
DEGRADED_ACTIONS = ("allow", "block")
LOG_CLIENTS = ("full", "truncated", "none")
LOG_FORMATS = ("text", "json")
SYSLOG_FACILITIES = ("daemon", "user", *(f"local{i}" for i in range(8)))
# every port the appliance listens on: no two may be the same, none is a destination
PORT_KEYS = ("query_port", "query_tls_port", "proxy_port", "transparent_port", "capture_port",
             "console_port", "dns_port")


def validate(cfg: Config) -> Config:
    """Cross-field and form checks; returns cfg unchanged or raises ConfigError naming the key."""
    try:
        ipaddress.ip_address(cfg.listen)
    except ValueError:
        if cfg.listen not in ("localhost", ""):
            raise ConfigError(f"config key 'listen': {cfg.listen!r} is not an IP address") from None
    _check_logs(cfg)
    if cfg.degraded_action not in DEGRADED_ACTIONS:
        raise ConfigError(f"config key 'degraded_action': {cfg.degraded_action!r} is not"
                          " 'allow' or 'block'")
    for url in cfg.cloud:
        if not endpoint_ok(url):
            raise ConfigError(
                f"config key 'cloud': {url!r} must be http(s)://host[:port]"
                " with no path, query or credentials"
            )
        if url.startswith("http:") and not loopback(urlsplit(url).hostname or ""):
            # upstream (docs/architecture.md, “The relay”):
            # traffic is verified TLS; plain HTTP only on this machine.
            raise ConfigError(f"config key 'cloud': {url!r} must use https (http only on loopback)")
    if cfg.query_port and cfg.query_port == cfg.query_tls_port:
        raise ConfigError("config keys 'query_port' and 'query_tls_port' must differ")
    _check_ports(cfg)
    for pattern in cfg.intercept_hosts:
        if not host_pattern_ok(pattern):
            raise ConfigError(
                f"config key 'intercept_hosts': {pattern!r} must be a host name, an IP address"
                " or *.domain"
            )
    for entry in cfg.intercept_allow_destinations:
        try:
            Allowed.parse(entry)
        except ValueError:
            raise ConfigError(
                f"config key 'intercept_allow_destinations': {entry!r} must be HOST[:PORT],"
                " [V6]:PORT, an address or a network (CIDR)"
            ) from None
    _check_clients(cfg)
    if cfg.cloud_ca is not None and not cfg.cloud_ca.is_file():
        raise ConfigError(f"config key 'cloud_ca': no such file {cfg.cloud_ca.name!r}")
    _check_updates(cfg)
    _check_redis(cfg)
    return cfg


def _check_redis(cfg: Config) -> None:
    if cfg.redis and not redis_url_ok(cfg.redis):
        # never echo the value: it may hold the password
        raise ConfigError("config key 'redis': must be redis://[:PASSWORD@]HOST[:PORT][/DB],"
                          " rediss://… or unix:///PATH")
    if not cfg.redis_prefix or len(cfg.redis_prefix) > 64 or any(
            c.isspace() or not c.isprintable() for c in cfg.redis_prefix):
        raise ConfigError("config key 'redis_prefix': must be 1 to 64 printable characters"
                          " without spaces")


def _check_logs(cfg: Config) -> None:
    for key, allowed in (("log_clients", LOG_CLIENTS), ("log_format", LOG_FORMATS)):
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key {key!r}: {getattr(cfg, key)!r} is not one of"
                              f" {', '.join(allowed)}")
    network_modes(cfg.log_client_networks)
    if cfg.syslog and syslog_address(cfg.syslog) is None:
        raise ConfigError(f"config key 'syslog': {cfg.syslog[:200]!r} must be udp://HOST[:PORT],"
                          " tcp://HOST[:PORT] or an absolute socket path")
    if cfg.syslog_facility not in SYSLOG_FACILITIES:
        raise ConfigError(f"config key 'syslog_facility': {cfg.syslog_facility!r} is not one of"
                          f" {', '.join(SYSLOG_FACILITIES)}")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"config key 'log_level': {cfg.log_level!r} is not debug/info/warning/error")


def _check_clients(cfg: Config) -> None:
    for key, door in (("query_clients", "query door"), ("dns_clients", "DNS door")):
        if not getattr(cfg, key):
            # an empty list would leave the door unrestricted: say every client on purpose
            raise ConfigError(f"config key {key!r} is empty: name the networks the {door}"
                              " answers (0.0.0.0/0 and ::/0 for every client)")
    for key in ("allow_clients", "query_clients", "dns_clients", "trusted_proxies"):
        for cidr in getattr(cfg, key):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"config key '{key}': {cidr!r} is not a network (CIDR) or address"
                ) from None


def network_modes(entries: list[str] | tuple[str, ...] | Any) -> list[tuple[Any, str]]:
    """``log_client_networks`` entries (``NETWORK=MODE``) as (network, mode) pairs; raises
    ConfigError naming the first bad entry."""
    out: list[tuple[Any, str]] = []
    for entry in entries:
        cidr, _, mode = str(entry).partition("=")
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            network = None
        if network is None or mode.strip() not in LOG_CLIENTS:
            raise ConfigError(f"config key 'log_client_networks': {str(entry)[:100]!r} must be"
                              f" NETWORK=MODE, MODE one of {', '.join(LOG_CLIENTS)}")
        out.append((network, mode.strip()))
    return out


def _check_updates(cfg: Config) -> None:
    if cfg.update_source and not source_ok(cfg.update_source):
        raise ConfigError(
            f"config key 'update_source': {cfg.update_source[:200]!r} must be"
            " http(s)://host[:port][/path] with no query or credentials"
        )
    if cfg.update_source and cfg.update_key is None:
        raise ConfigError("config key 'update_key' is required with 'update_source'"
                          " (updates are only taken signed)")
    if cfg.update_key is not None and not cfg.update_key.is_file():
        raise ConfigError(f"config key 'update_key': no such file {cfg.update_key.name!r}")


def _check_ports(cfg: Config) -> None:
    seen: dict[int, str] = {}
    for key in PORT_KEYS:
        port = getattr(cfg, key)
        if port and port in seen:
            raise ConfigError(f"config keys {seen[port]!r} and {key!r} must differ (both {port})")
        seen[port] = key
