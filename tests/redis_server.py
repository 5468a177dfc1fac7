"""A real redis-server for tests: on a free 127.0.0.1 port, in its own temp directory,
with ``stop()`` and ``start()`` on the same port to simulate an outage.

    with RedisServer(tmp_path) as redis:
        url = redis.url          # redis://127.0.0.1:PORT/0
        redis.stop()             # the outage
        redis.start()            # back, empty (it persists nothing; see restart)
        redis.pause()            # hung: connected, answering nothing (resume() ends it)

No persistence (``--save ""``, no AOF): a restarted server is empty, as after losing its
data; ``restart(keep=True)`` saves first (SAVE) and loads the dump again.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``url`` stays the same across ``stop``/``start``."""

    def __init__(self, directory: Path, port: int | None = None, password: str = "") -> None:
        self.dir = Path(directory) / f"redis-{id(self):x}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                "--dbfilename", "dump.rdb", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: "
                                   f"{(self.dir / 'redis.log').read_text()[-2000:]}")
            if _ping(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not come up")

    def stop(self) -> None:
        """Kill it (no goodbye to its clients, as in a crash or a cut network)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server dies on SIGKILL too; be tidy
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung or overloaded Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, keep: bool = False) -> None:
        """Stop and start again; ``keep``: save first so the data comes back."""
        if keep:
            self.command("SAVE")
        self.stop()
        if not keep:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.start()

    def command(self, *args: str) -> bytes:
        """One command by the wire protocol (for tests that look at the server directly)."""
        parts = ([b"AUTH", self.password.encode()] if self.password else [])
        out = b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            for cmd in ([parts] if parts else []) + [[a.encode() for a in args]]:
                wire = b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in cmd)
                s.sendall(wire)
                out = s.recv(1 << 16)
        return out

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
