"""Shared fixtures: a private data directory, a clock tests move by hand, and cheap scrypt.

The real scrypt cost (N=2**15) is kept by the password tests that check it; everywhere else
hashing is made cheap so the suite stays fast, which changes no behaviour under test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.console import passwords
from proxy.console.accounts import Accounts

CHEAP = passwords.Cost(2**4, 8, 1)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "CURRENT", CHEAP)


@pytest.fixture
def accounts(data: Path, clock: Clock, cheap_scrypt: None) -> Iterator[Accounts]:
    a = Accounts.open(data, now=clock)
    yield a
    a.close()
