"""Shared fixtures: free loopback ports, real `rampart` processes, and an opened App."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from proxy.serve.app import App

T = TypeVar("T")

EICAR_MD5 = "44d88612fea8a8f36de82e1278abb02f"
EICAR_SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def in_threads(count: int, start: Callable[[], T]) -> tuple[list[T], list[BaseException]]:
    """Run ``start`` in ``count`` threads together: what the calls returned and what they raised."""
    got: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            got.append(start())
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RAMPART = [sys.executable, "-m", "addons.cli"]


@dataclass
class Proc:
    args: list[str]
    data_dir: Path
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str, verify: str | bool = False, timeout: float = 30) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(self.args, stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.args[3]} exited {self.popen.returncode}:\n{self.output()}")
            try:
                if httpx.get(ready_url, verify=verify, timeout=1).status_code == 200:
                    return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args[3]} did not come up:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.popen)


def stop_process(popen: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, ten seconds to exit, then SIGKILL (nothing to do when it already ended)."""
    if popen is not None and popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s series in a Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_cloud(tmp: Path, port: int | None = None) -> Proc:
    port = port or free_port()
    data = tmp / "cloud"
    p = Proc(
        [*RAMPART, "cloud", "--data-dir", str(data), "--port", str(port), "--listen", "127.0.0.1",
         "--log-level", "warning"],
        data, tmp / "cloud.log", {"https": port},
    )
    # The CA appears on first start; poll without verification, then tests verify with ca.pem.
    return p.start(f"https://127.0.0.1:{port}/healthz", verify=False)


def start_appliance(tmp: Path, cloud: Proc | None, *extra: str) -> Proc:
    http, https = free_port(), free_port()
    data = tmp / "appliance"
    args = [*RAMPART, "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
            "--query-port", str(http), "--query-tls-port", str(https), "--log-level", "warning",
            *extra]
    for door in ("--proxy-port", "--transparent-port"):  # intercept doors off unless asked for
        if door not in extra:
            args += [door, "0"]
    if cloud is not None:
        args += ["--cloud", f"https://localhost:{cloud.ports['https']}",
                 "--cloud-ca", str(cloud.data_dir / "ca.pem")]
    p = Proc(args, data, tmp / "appliance.log", {"http": http, "https": https})
    return p.start(f"http://127.0.0.1:{http}/healthz")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    """A reference cloud and an appliance relaying to it, for a whole test module."""
    tmp = tmp_path_factory.mktemp("chain")
    cloud = start_cloud(tmp)
    try:
        appliance = start_appliance(tmp, cloud)
    except Exception:
        cloud.stop()
        raise
    yield cloud, appliance
    appliance.stop()
    cloud.stop()


@pytest.fixture(autouse=True, scope="session")
def _doors_off_unless_asked() -> Iterator[None]:
    """Appliances started by tests keep the intercept doors, the capture port, the console and
    the DNS door off unless a test passes the flags: their default ports (3128, 8081, 4344,
    4343, 5353) would collide between tests and with anything else on the machine."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RAMPART_PROXY_PORT", "RAMPART_TRANSPARENT_PORT", "RAMPART_CAPTURE_PORT",
                     "RAMPART_CONSOLE_PORT", "RAMPART_DNS_PORT"):
            mp.setenv(name, "0")
        yield


@contextlib.contextmanager
def opened_app(data_dir: Path) -> Iterator[App]:
    """An App opened (no door listening, no task) on ``data_dir`` with the bundled sample
    pattern; its list store and pattern closed afterwards."""
    from proxy.config import Config
    from proxy.serve.app import App

    app = App(Config(data_dir=data_dir, query_port=0, query_tls_port=0))
    app.open()
    try:
        yield app
    finally:
        app.lists_store.close()
        app.engine.patterns.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """``opened_app`` on the test's own folder."""
    with opened_app(tmp_path) as opened:
        yield opened
