"""The client's settings: defaults < a TOML file (``--config``) < command-line options.

The file is flat, like the appliance's::

    servers = ["https://spa.corp.example:8443", "https://spb.corp.example:8443@1",
               "external:https://global.example.net"]
    order = "random"          # or "in-order": within one priority
    query = "filtered"        # or "all"
    fail_closed = false
    ca = "/etc/rampart/ca.pem"

A server is ``URL`` or ``URL@PRIORITY`` (0 first, the default), ``external:URL`` for a
server used outside the intranet (https only). Unknown keys and bad values are refused
naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.client.errors import ClientError
from proxy.files import read_toml

MAX_FILE = 64 << 10
ORDERS = ("in-order", "random")
QUERIES = ("filtered", "all")
KINDS = ("sha256", "sha1", "md5")


def default_state_dir() -> Path:
    """``$RAMPART_CLIENT_DIR``, else ``~/.local/share/rampart-client`` (XDG_DATA_HOME)."""
    env = os.environ.get("RAMPART_CLIENT_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rampart-client"


@dataclass(frozen=True)
class ClientOptions:
    servers: tuple[str, ...] = ("http://127.0.0.1:8080",)
    order: str = "in-order"
    query: str = "filtered"
    fail_closed: bool = False
    ca: Path | None = None
    deadline: float = 10.0
    cooldown: float = 30.0
    probe_timeout: float = 1.0
    agent_interval: float = 3600.0
    digests: tuple[str, ...] = ("sha256",)
    state_dir: Path = field(default_factory=default_state_dir)

    def __post_init__(self) -> None:
        _check(self)


_FLOATS = {"deadline": (0.1, 600.0), "cooldown": (0.0, 86400.0), "probe_timeout": (0.05, 60.0),
           "agent_interval": (60.0, 30 * 86400.0)}


def _check(o: ClientOptions) -> None:
    if not o.servers:
        raise ClientError("client setting 'servers' is empty: name at least one server")
    if len(o.servers) > 64:
        raise ClientError("client setting 'servers' names more than 64 servers")
    if o.order not in ORDERS:
        raise ClientError(f"client setting 'order': {o.order!r} is not one of {', '.join(ORDERS)}")
    if o.query not in QUERIES:
        raise ClientError(f"client setting 'query': {o.query!r} is not one of {', '.join(QUERIES)}")
    bad = [k for k in o.digests if k not in KINDS]
    if bad or not o.digests or "sha256" not in o.digests:
        raise ClientError(f"client setting 'digests': {list(o.digests)!r} must hold sha256 and"
                          f" may add {', '.join(KINDS[1:])}")
    for name, (lo, hi) in _FLOATS.items():
        value = getattr(o, name)
        if not lo <= value <= hi:
            raise ClientError(f"client setting {name!r}: {value!r} is out of range [{lo:g}, {hi:g}]")
    if o.ca is not None and not o.ca.is_file():
        raise ClientError(f"client setting 'ca': no such file {str(o.ca)!r}")


def load(path: Path | None, overrides: Mapping[str, Any]) -> ClientOptions:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (None and empty skipped)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read(path))
    values.update({k: v for k, v in overrides.items() if v not in (None, (), [])})
    fields = {f.name: f for f in dataclasses.fields(ClientOptions)}
    try:
        coerced = {k: _coerce(k, v, str(fields[k].type)) for k, v in values.items()}
    except KeyError as e:
        raise ClientError(f"unknown client setting {e.args[0]!r}") from None
    return ClientOptions(**coerced)


def _read(path: Path) -> dict[str, Any]:
    doc = read_toml(path, MAX_FILE, error=ClientError, label=f"client config {path}")
    known = {f.name for f in dataclasses.fields(ClientOptions)}
    for key in doc:
        if key.replace("-", "_") not in known:
            raise ClientError(f"client config {path}: unknown key {key!r}")
    return {k.replace("-", "_"): v for k, v in doc.items()}


def _coerce(name: str, value: Any, kind: str) -> Any:
    try:
        if kind.startswith("tuple"):
            items = [value] if isinstance(value, str) else list(value)
            if not all(isinstance(v, str) for v in items):
                raise TypeError
            return tuple(items)
        if kind.startswith("Path"):
            return None if value in (None, "") else Path(os.path.expanduser(str(value)))
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise ClientError(f"client setting {name!r}: {str(value)[:80]!r} is not a valid"
                          f" {kind.split('[')[0].replace('Path | None', 'path')}") from None
