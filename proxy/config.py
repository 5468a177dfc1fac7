"""Configuration: every key declared once, with its default and its help line.

Precedence: built-in defaults < the console's saved settings (``proxy.settings``) < TOML
file (``--config``) < command-line flags.
Nothing needs a file. A bad key or value is refused with a ConfigError that
names the key. The TOML file is flat: ``query_port = 8080``; sections are
allowed for readability and are ignored as prefixes (``[relay] read_timeout``
is the same key as ``read_timeout``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config_checks import DEGRADED_ACTIONS as DEGRADED_ACTIONS
from proxy.config_checks import LOG_CLIENTS as LOG_CLIENTS
from proxy.config_checks import LOG_FORMATS as LOG_FORMATS
from proxy.config_checks import LOG_LEVELS as LOG_LEVELS
from proxy.config_checks import PORT_KEYS as PORT_KEYS
from proxy.config_checks import SYSLOG_FACILITIES as SYSLOG_FACILITIES
from proxy.config_checks import network_modes as network_modes
from proxy.config_checks import validate
from proxy.errors import ConfigError
from proxy.files import read_toml

MAX_CONFIG_BYTES = 1 << 20
LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                  "fc00::/7")
"""Loopback and private ranges: who the doors serve unless configured otherwise."""


def default_data_dir(role: str = "appliance") -> Path:
    """The default data directory of ``rampart serve`` (``role`` appliance: $RAMPART_DATA_DIR or
    ~/.local/share/rampart) or of ``rampart cloud`` (cloud: $RAMPART_CLOUD_DATA_DIR or
    ~/.local/share/rampart-cloud). Never the same folder: each refuses the other's."""
    env = os.environ.get("RAMPART_CLOUD_DATA_DIR" if role == "cloud" else "RAMPART_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / ("rampart-cloud" if role == "cloud" else "rampart")


def _opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None) -> Any:
    meta = {"help": help, "lo": lo, "hi": hi}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    # where things live
    data_dir: Path = _opt(
        default_data_dir(), "state: patterns, lists (SQLite), CA and certificates ($RAMPART_DATA_DIR)"
    )
    pattern_dir: Path | None = _opt(
        None, "serve this pattern directory instead of DATA_DIR/patterns (built from the samples)"
    )
    # doors
    listen: str = _opt("0.0.0.0", "address the doors listen on (use 127.0.0.1 for local only)")
    query_port: int = _opt(8080, "query door, plain HTTP; 0 turns it off", lo=0, hi=65535)
    query_tls_port: int = _opt(8443, "query door, HTTPS; 0 turns it off", lo=0, hi=65535)
    tls_names: list[str] = _opt(
        [], "extra names and addresses for the HTTPS certificate (besides localhost and host name)"
    )
    # intercept door (mitmproxy)
    proxy_port: int = _opt(
        3128, "intercept door, explicit HTTP(S) proxy for products; 0 turns it off", lo=0, hi=65535
    )
    transparent_port: int = _opt(
        8081, "intercept door, transparent mode (traffic redirected by the gateway's firewall);"
        " 0 turns it off", lo=0, hi=65535,
    )
    intercept_hosts: list[str] = _opt(
        [], "cloud hosts (name or *.domain) whose TLS is intercepted and /v1/* answered by the"
        " engine; the cloud hosts are included; all else passes through untouched",
    )
    allow_clients: list[str] = _opt(
        list(LOCAL_NETWORKS),
        "client networks (CIDR) the intercept door serves; others are refused (never an open relay)",
    )
    intercept_allow_destinations: list[str] = _opt(
        [], "destinations the intercept door may reach although loopback, link-local or this"
        " machine's (HOST[:PORT], [V6]:PORT or CIDR); the cloud endpoints always are",
    )
    # troubleshooting
    capture: Path | None = _opt(
        None, "write reputation flows to this mitmproxy flow file (`mitmdump -nr FILE` reads it)"
    )
    capture_filter: str = _opt(
        "", "mitmproxy filter expression choosing the flows `capture` writes (empty: all"
        " reputation flows), e.g. '~d cloud.example.com & ~u /v1/file'",
    )
    capture_port: int = _opt(
        4344, "loopback-only port `rampart capture` reads the live capture stream from;"
        " 0 turns it off", lo=0, hi=65535,
    )
    # request bounds
    max_body: int = _opt(1 << 20, "largest request body in bytes (413 above)", lo=1024, hi=64 << 20)
    max_batch: int = _opt(1000, "most items in one request (413 above)", lo=1, hi=100_000)
    max_url: int = _opt(4096, "longest URL in characters", lo=64, hi=65536)
    max_header: int = _opt(16384, "largest request head (line + headers) in bytes", lo=1024, hi=1 << 20)
    max_inspect_content: int = _opt(
        256 * 1024, "largest decoded inspection content in bytes", lo=0, hi=16 << 20
    )
    idle_timeout: float = _opt(60.0, "seconds an idle keep-alive connection is kept", lo=1, hi=3600)
    head_timeout: float = _opt(
        10.0, "seconds a client has for a request's head from its first byte, and for a TLS"
        " handshake (408 after)", lo=0.1, hi=600,
    )
    request_timeout: float = _opt(
        30.0, "seconds a client has for a whole request, head and body, from its first byte"
        " (408 after)", lo=0.1, hi=3600,
    )
    max_connections: int = _opt(
        0, "most connections open at once over every door (0: the open-file limit, raised to its"
        " hard limit at start, less a reserve)", lo=0, hi=10_000_000,
    )
    max_client_connections: int = _opt(
        1024, "most connections open at once from one client address (at most half of"
        " max_connections)", lo=1, hi=10_000_000,
    )
    query_clients: list[str] = _opt(
        list(LOCAL_NETWORKS), "client networks (CIDR) the query door answers, others get 403;"
        " it relays to the cloud, so not every network by default (0.0.0.0/0 and ::/0 open"
        " it); /healthz answers loopback always",
    )
    trusted_proxies: list[str] = _opt(
        [], "proxies (CIDR) in front of the query door, e.g. HAProxy: their requests count as"
        " from the last X-Forwarded-For address (for query_clients, rate_limit, the logs)",
    )
    rate_limit: float = _opt(
        0.0, "query-door requests per second per client address, 429 above (0: no limit)",
        lo=0, hi=1e9,
    )
    rate_burst: int = _opt(200, "requests a client may make at once before rate_limit applies",
                           lo=1, hi=1_000_000)
    # answers
    local_ttl: int = _opt(3600, "TTL in seconds given with answers from patterns and lists", lo=0)
    cache_size: int = _opt(200_000, "most cloud answers kept in the cache", lo=0, hi=50_000_000)
    degraded_retry_after: int = _opt(
        60, "seconds a product should wait before asking again about a degraded item", lo=1, hi=86400
    )
    degraded_action: str = _opt(
        "allow", "web action (allow or block) for a degraded item under the low and medium"
        " policies (high blocks it, as it blocks untested); it keeps retry_after either way",
    )
    lists_poll: float = _opt(1.0, "seconds between checks for list changes", lo=0.05, hi=60)
    authoritative: bool = _opt(
        False, "answer unknown items as unknown/untested instead of relaying (the reference cloud)"
    )
    # relay
    cloud: list[str] = _opt([], "cloud endpoints (https://host:port), in priority order")
    cloud_ca: Path | None = _opt(None, "CA bundle to verify the cloud with (default: system bundle)")
    connect_timeout: float = _opt(2.0, "seconds to connect to a cloud endpoint", lo=0.01, hi=60)
    read_timeout: float = _opt(5.0, "seconds to wait for a cloud answer", lo=0.01, hi=300)
    total_timeout: float = _opt(8.0, "seconds for a relayed item across all endpoints", lo=0.01, hi=600)
    batch_window: float = _opt(
        0.002, "seconds to gather concurrent unknown items into one upstream request", lo=0, hi=1
    )
    max_relay_concurrency: int = _opt(64, "most upstream requests in flight", lo=1, hi=10_000)
    breaker_failures: int = _opt(3, "consecutive failures that open an endpoint's circuit", lo=1)
    breaker_cooldown: float = _opt(15.0, "seconds before an open circuit is tried again", lo=0.1)
    # operations
    log_level: str = _opt("info", "debug, info, warning or error")
    stale_after: int = _opt(
        6 * 3600, "seconds after which a pattern counts as stale in /readyz", lo=60
    )
    # the DNS door
    dns_port: int = _opt(
        5353, "DNS door: domain/IP reputation as DNSBL zones over UDP and TCP; 0 turns it off",
        lo=0, hi=65535,
    )
    dns_ip_zone: str = _opt("ip.rampart.local", "DNSBL zone of IP addresses (7.2.0.192.ZONE)")
    dns_domain_zone: str = _opt("dn.rampart.local", "DNSBL zone of domains (bad.example.ZONE)")
    dns_clients: list[str] = _opt(
        list(LOCAL_NETWORKS), "client networks (CIDR) the DNS door answers; others get REFUSED"
    )
    dns_rate_limit: float = _opt(
        2000.0, "DNS queries per second per client address, REFUSED above (0: no limit)",
        lo=0, hi=1e9,
    )
    dns_rate_burst: int = _opt(4000, "DNS queries a client may make at once before"
                               " dns_rate_limit applies", lo=1, hi=10_000_000)
    dns_codes: list[str] = _opt(
        [], "DNSBL answer codes, NAME=127.0.0.X, over the defaults (dangerous=127.0.0.2,"
        " highly_suspicious=127.0.0.3, suspicious=127.0.0.4, blocked=127.0.0.10); NAME is a"
        " rating, blocked, or category:NAME",
    )
    dns_upstream_zone: str = _opt(
        "", "DNSBL zone asked about names nothing here knows (e.g. another appliance's);"
        " empty: the cloud's domain/IP reputation, or not listed",
    )
    dns_upstream_server: str = _opt(
        "", "resolver (IP[:PORT]) asked for dns_upstream_zone; empty: the system's resolvers"
    )
    dns_timeout: float = _opt(
        2.0, "seconds a DNS answer may wait for the cloud or the upstream zone (then SERVFAIL)",
        lo=0.05, hi=30,
    )
    # scale-out (docs/architecture.md, "Workers and shared state")
    workers: int = _opt(
        1, "processes answering the query door on the same ports (SO_REUSEPORT); 0: one per"
        " core (`--workers auto`); above 1 the main process keeps the updater and the other doors",
        lo=0, hi=256,
    )
    redis: str = _opt(
        "", "Redis server the appliances share (redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://"
        " or unix:///PATH): the cloud-answer cache, the lists and the rate limits; empty: none"
        " ($RAMPART_REDIS)",
    )
    redis_prefix: str = _opt(
        "rampart:", "prefix of every Redis key and channel (appliances sharing state use the same)"
    )
    redis_timeout: float = _opt(
        0.25, "seconds a Redis command may take before the appliance answers from its own state",
        lo=0.01, hi=10,
    )
    # console and admin API
    console_port: int = _opt(
        4343, "console door: the admin API and web console over HTTPS; 0 turns it off",
        lo=0, hi=65535,
    )
    console_clients: list[str] = _opt(
        list(LOCAL_NETWORKS), "client networks (CIDR) the console door answers; others get 403"
    )
    console_sessions: int = _opt(
        64, "most browser sessions kept at once; a new login evicts the oldest", lo=1, hi=100_000
    )
    session_idle_timeout: float = _opt(
        8 * 3600.0, "seconds a browser session lasts without use", lo=60, hi=30 * 86400
    )
    login_attempts: int = _opt(
        5, "failed logins a client may make a minute before it must wait (429)", lo=1, hi=1000
    )
    # logs
    query_log: bool = _opt(True, "keep the query log (DATA_DIR/logs.sqlite) for search and export")
    dns_query_log: bool = _opt(
        True, "with query_log on, also log the DNS door's answers about domains and addresses;"
        " off: only counted (a row per distinct name costs more than its answer)",
    )
    log_clients: str = _opt(
        "full", "client addresses in the query log: full, truncated (IPv4 /24, IPv6 /48) or none"
    )
    log_client_networks: list[str] = _opt(
        [], "per-network log_clients: NETWORK=MODE entries (10.20.0.0/16=none); the most"
        " specific network holding a client decides",
    )
    log_retention_days: int = _opt(30, "days query-log entries are kept", lo=1, hi=3650)
    log_max_rows: int = _opt(
        1_000_000, "most query-log rows kept; the oldest go first", lo=1000, hi=1_000_000_000
    )
    log_queue: int = _opt(
        10_000, "log entries waiting for the writer; above it entries are dropped and counted,"
        " never queries", lo=100, hi=10_000_000,
    )
    log_format: str = _opt("text", "standard-error log lines: text or json")
    syslog: str = _opt(
        "", "also send log lines to syslog: udp://HOST[:514], tcp://HOST[:514] or a local socket"
        " path (/dev/log); empty: off",
    )
    syslog_facility: str = _opt("daemon", "syslog facility: daemon, user or local0 to local7")
    # pattern updates
    update_source: str = _opt(
        "", "update source to follow (http(s)://host[:port][/path], a `rampart pattern serve`"
        " or any static web server, or another appliance's /v1/patterns); empty: no updates",
    )
    update_key: Path | None = _opt(
        None, "Ed25519 public key (KEY.pub from `rampart pattern keygen`) update manifests must be"
        " signed with; required with update_source",
    )
    update_interval: int = _opt(3600, "seconds between update checks", lo=1, hi=7 * 86400)
    update_interval_smart_scan: int = _opt(
        0, "seconds between updates of the Smart Scan Pattern (0: update_interval)", lo=0, hi=7 * 86400
    )
    update_interval_web_blocking: int = _opt(
        0, "seconds between updates of the Web Blocking List (0: update_interval)", lo=0, hi=7 * 86400
    )
    update_interval_suspicious_urls: int = _opt(
        0, "seconds between updates of the Suspicious URLs (0: update_interval)", lo=0, hi=7 * 86400
    )
    update_interval_domain_ip: int = _opt(
        0, "seconds between updates of the domain/IP list (0: update_interval)", lo=0, hi=7 * 86400
    )
    update_interval_agent: int = _opt(
        0, "seconds between updates of the agent pattern (0: update_interval)", lo=0, hi=7 * 86400
    )
    update_backoff_max: float = _opt(
        3600.0, "longest wait in seconds between retries of a failing update (exponential, jittered)",
        lo=1, hi=7 * 86400,
    )
    update_timeout: float = _opt(
        600.0, "seconds one whole update (manifest and every file) may take", lo=1, hi=86400
    )
    update_max_bytes: int = _opt(
        1 << 31, "largest file an update may fetch, in bytes", lo=1 << 16, hi=1 << 40
    )
    update_max_clock_skew: float = _opt(
        86400.0, "seconds an update manifest's publication time may be ahead of this clock;"
        " a manifest published later than that is refused", lo=60, hi=30 * 86400,
    )
    keep_versions: int = _opt(3, "pattern versions kept in DATA_DIR/patterns for rollback", lo=1, hi=100)
    pattern_poll: float = _opt(
        1.0, "seconds between checks for a pattern version installed by another process"
        " (`rampart update now`, `rampart pattern rollback`)", lo=0.05, hi=60,
    )

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes``, each checked like a flag; raises ConfigError naming the key."""
        for name in changes:
            if name not in FIELDS:
                raise ConfigError(f"unknown config key {name!r}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        return validate(dataclasses.replace(self, **coerced))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    f = FIELDS[name]
    kind = str(f.type)
    try:
        if kind.startswith("Path"):
            if value is None or value == "":
                if "None" in kind:
                    return None
                raise ValueError("a path is required")
            if not isinstance(value, str | os.PathLike):
                raise ValueError("must be a path")
            return Path(os.path.expanduser(value))
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("must be a whole number")
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError("must be a number")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
        elif kind == "list[str]":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError("must be a list of strings")
            value = list(value)
        elif kind == "str" and not isinstance(value, str):
            raise ValueError("must be a string")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key {name!r}: {value!r} {e}") from None
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"config key {name!r}: {value!r} is out of range [{lo}, {hi}]")
    return value


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if isinstance(value, dict):
            inner = _flatten(value, f"{prefix}{name}.")
        else:
            inner = {name: (prefix + name, value)}
        for leaf, (shown, v) in inner.items():
            if leaf in out:
                raise ConfigError(f"config key {leaf!r} is set twice (as {out[leaf][0]!r} and {shown!r})")
            out[leaf] = (shown, v)
    return out


def read_file(path: Path) -> dict[str, Any]:
    """The keys the TOML file at ``path`` sets, each value checked; raises ConfigError."""
    doc = read_toml(path, MAX_CONFIG_BYTES, error=ConfigError, label=f"config file {path}")
    values: dict[str, Any] = {}
    for name, (shown, value) in _flatten(doc).items():
        if name not in FIELDS:
            raise ConfigError(f"config file {path}: unknown key {shown!r}")
        values[name] = _coerce(name, value)
    return values


def given(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``overrides`` (flags) that were given: None and empty values are not."""
    return {k: v for k, v in (overrides or {}).items() if not (v is None or v == () or v == [])}


def load(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (flags; None values skipped)."""
    values = read_file(path) if path is not None else {}
    for name, value in given(overrides).items():
        if name not in FIELDS:
            raise ConfigError(f"unknown config key {name!r}")
        values[name] = _coerce(name, value)
    return validate(Config(**values))


def describe() -> list[tuple[str, str, str]]:
    """(key, default, help) for every key: the documentation of the config file."""
    cfg = Config()
    return [(n, repr(getattr(cfg, n)), f.metadata["help"]) for n, f in FIELDS.items()]


def default(name: str) -> Any:
    """The declared default of config key ``name``: the one place every other module's
    default for the same setting comes from (a flag, ``Gate``, ``AnswerCache``, the updater)."""
    f = FIELDS.get(name)
    if f is None:
        raise KeyError(name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
