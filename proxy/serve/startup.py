"""What ``rampart serve`` and ``rampart cloud`` check before they start anything.

A server that cannot do its job should say so at once, in one line that names the
flag to change: every door off is refused (nothing would answer), and each port is
tried before mitmproxy and the query door bind it, because their own errors name
neither the flag nor who holds the port. A server holds ``DATA_DIR/serve.lock``
(an ``flock``, with its pid inside) while it runs, so a busy port can be told to be
another Rampart's on the same data directory. ``DATA_DIR/role`` says whose folder it is
(an appliance's or the reference cloud's), so neither starts on the other's patterns
and CA. The check and the real bind are not
atomic; the doors' own errors still catch a port taken in between.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.config import Config
from proxy.errors import ConfigError, RampartError
from proxy.files import check_private_dir, open_private, read_bounded, write_atomic

LOCK_FILE = "serve.lock"
ROLE_FILE = "role"
ROLES = {"appliance": "rampart serve", "cloud": "rampart cloud"}

DOORS = {
    "query_port": ("--query-port", "query door (http)"),
    "query_tls_port": ("--query-tls-port", "query door (https)"),
    "proxy_port": ("--proxy-port", "intercept door (explicit proxy)"),
    "transparent_port": ("--transparent-port", "intercept door (transparent)"),
    "capture_port": ("--capture-port", "capture stream"),
    "console_port": ("--console-port", "console door (https)"),
    "dns_port": ("--dns-port", "DNS door (udp and tcp)"),
}
"""Each port key: the flag that sets it and what listens there."""

CLOUD_FLAGS = {"query_tls_port": "--port"}
"""`rampart cloud` sets its one door with --port."""

ANSWERING = ("query_port", "query_tls_port", "proxy_port", "transparent_port", "dns_port")
"""The ports that answer products: at least one must be on."""


@dataclass
class Claim:
    """This process's hold on a data directory: the lock's descriptor, and the pid of another
    server already holding it (None when this process holds it)."""

    fd: int
    other: int | None

    def release(self) -> None:
        os.close(self.fd)


def claim(cfg: Config) -> Claim:
    """Take DATA_DIR/serve.lock without waiting; when another server holds it, say who.

    A second server on one data directory is not refused here: its ports, which
    cannot be the first one's, are what fails, and :func:`check_ports` names the holder.
    """
    fd = open_private(cfg.data_dir / LOCK_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return Claim(fd, _holder(fd))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Claim(fd, None)


def lock_holder(data_dir: Path) -> int | None:
    """The pid written in DATA_DIR/serve.lock by the server that took it (None: none yet). The
    query-door workers' supervisor checks it is its own: a second server on the same data
    directory (on other ports) must not share the workers' run folder."""
    try:
        text = read_bounded(data_dir / LOCK_FILE, 32).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holder(fd: int) -> int:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else 0


@contextmanager
def checked(cfg: Config, role: str, say: Callable[[str], None]) -> Iterator[None]:
    """Every check before ``role`` (``appliance`` or ``cloud``) starts, in order: a door on, the
    data directory made (``say`` tells so) and ``role``'s, the ports free; then the data
    directory's lock held while the block runs. Raises ConfigError or RampartError."""
    check_doors(cfg)
    if prepare_data_dir(cfg, role):
        say(f"created data directory {cfg.data_dir} (mode 0700)")
    held = claim(cfg)
    try:
        check_ports(cfg, held, CLOUD_FLAGS if role == "cloud" else None)
        yield
    finally:
        held.release()


def check_doors(cfg: Config) -> None:
    """Refuse a configuration with every answering door off: such a server would only idle."""
    if not any(getattr(cfg, key) for key in ANSWERING):
        flags = ", ".join(DOORS[key][0] for key in ANSWERING)
        raise ConfigError(f"every door is off ({flags} are all 0): nothing would answer;"
                          " turn one on")


def check_ports(cfg: Config, claim: Claim | None = None,
                flags: dict[str, str] | None = None) -> None:
    """Try to bind every port that is on; RampartError naming the flag on the first that fails
    (``flags``: the command's own flag for a port key, where it is not serve's)."""
    for key, (flag, what) in DOORS.items():
        flag = (flags or {}).get(key, flag)
        port = getattr(cfg, key)
        if not port:
            continue
        host = "127.0.0.1" if key == "capture_port" else (cfg.listen or "0.0.0.0")
        problem = _try_bind(host, port)
        if problem is None:
            continue
        if problem == errno.EADDRINUSE:
            who = (f"another rampart server (pid {claim.other}) on data directory {cfg.data_dir}"
                   if claim is not None and claim.other is not None else "another program")
            raise RampartError(
                f"port {port} for the {what} on {host} is in use by {who}; stop it, or change"
                f" {flag} (0 turns the door off)")
        if problem == errno.EACCES:
            raise RampartError(
                f"port {port} for the {what} needs root or CAP_NET_BIND_SERVICE (ports below"
                f" 1024); change {flag}, or use the systemd unit (appliance/rampart.service)")
        raise RampartError(f"cannot listen on {host}:{port} for the {what}:"
                           f" {os.strerror(problem)}; check --listen and {flag}")


def _try_bind(host: str, port: int) -> int | None:
    """The errno binding ``host:port`` gives (None: free). SO_REUSEADDR, as the doors set it,
    so a port in TIME_WAIT after a restart counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        return e.errno or errno.EINVAL
    return None


def prepare_data_dir(cfg: Config, role: str) -> bool:
    """Make the data directory (0700) if missing and check it is ``role``'s; True if it was made.

    The first start writes ``role`` into DATA_DIR/role; a later start as the other
    role is refused (ConfigError), naming the folder and the fix.
    """
    made = not cfg.data_dir.exists()
    check_private_dir(cfg.data_dir)
    marker = cfg.data_dir / ROLE_FILE
    try:
        found = read_bounded(marker, 64).decode(errors="replace").strip()
    except FileNotFoundError:
        write_atomic(marker, f"{role}\n".encode())
        return made
    if found != role:
        owner = ROLES.get(found, repr(found))
        raise ConfigError(f"data directory {cfg.data_dir} is {owner}'s (its {ROLE_FILE} file says"
                          f" {found!r}); give {ROLES[role]} its own --data-dir")
    return made
